//! Stages 4 and 5 of the pipeline, *balance* and *pool*, per shard: this shard's view of the
//! backends ([`state`]: picks, passive checks, breakers, retry budgets; [`loads`]: the
//! balancers' counts carried across reloads), its idle upstream connections ([`pool`]) and
//! new connections ([`connect`]), and the exchange of a request the shard sends on its own
//! ([`background`]).
pub mod background;
pub mod connect;
pub mod loads;
pub mod pool;
pub mod state;
