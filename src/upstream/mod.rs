//! Stage 5 of the pipeline, *pool*: per-shard upstream connections.
pub mod pool;
