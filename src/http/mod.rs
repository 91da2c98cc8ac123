//! The HTTP/1.1 engine: head parsing by offsets, chunked coding, head encoding for the
//! upstream and client sides (which fields are the proxy's: `fields`), the proxy's own
//! canned responses, the `Date` they carry, and a look at what a backend sends before the
//! request is all out (`early`).
pub mod canned;
pub mod chunked;
pub mod date;
pub mod early;
pub mod encode;
pub mod fields;
pub mod parse;
