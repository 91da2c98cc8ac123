//! The HTTP/1.1 engine: head parsing by offsets, chunked coding, head encoding for the
//! upstream and client sides, and the proxy's own canned responses.
pub mod canned;
pub mod chunked;
pub mod encode;
pub mod parse;
