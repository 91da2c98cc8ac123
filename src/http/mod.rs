//! The HTTP/1.1 engine: head parsing by offsets, chunked coding, head encoding for the
//! upstream and client sides (which fields are the proxy's: `fields`), the proxy's own
//! canned responses, and the `Date` they carry.
pub mod canned;
pub mod chunked;
pub mod date;
pub mod encode;
pub mod fields;
pub mod parse;
