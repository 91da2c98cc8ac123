//! Stage 7, *respond*, for the proxy's own answers: small, fixed error responses written
//! straight from static bytes. Each one says whether the connection must close afterwards.

/// A status the proxy itself answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Canned {
    /// `redirect_https` and route `redirect` answers, with a `Location` (see [`crate::proxy`]).
    MovedPermanently,
    /// Route `redirect` answers only.
    Found,
    SeeOther,
    TemporaryRedirect,
    PermanentRedirect,
    BadRequest,
    /// A route's `auth` refused the request, with a `WWW-Authenticate` challenge.
    Unauthorized,
    /// A listener's or route's `allow`/`deny` refused the client.
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    UriTooLong,
    ExpectationFailed,
    /// A `rate_limit` bucket is empty, with a `Retry-After`.
    TooManyRequests,
    HeadersTooLarge,
    /// A route's `auth.forward` could not ask its auth service (as nginx `auth_request`).
    InternalServerError,
    BadGateway,
    ServiceUnavailable,
    GatewayTimeout,
    VersionNotSupported,
}

// `concat!` cannot compute lengths, so each body is written with its length beside it.
macro_rules! canned_table {
    ($( $variant:ident => $code:literal, $reason:literal, $len:literal, $body:literal, $close:literal; )*) => {
        impl Canned {
            pub fn status(self) -> u16 {
                match self { $( Canned::$variant => $code, )* }
            }
            /// Whether the connection must close after this response, whatever the client asked.
            pub fn forces_close(self) -> bool {
                match self { $( Canned::$variant => $close, )* }
            }
            /// The full response; `close` adds `Connection: close`.
            pub fn bytes(self, close: bool) -> &'static [u8] {
                match (self, close) {
                    $(
                        (Canned::$variant, false) => concat!(
                            "HTTP/1.1 ", stringify!($code), " ", $reason, "\r\n",
                            "Content-Type: text/plain\r\nContent-Length: ", stringify!($len), "\r\n\r\n",
                            $body
                        ).as_bytes(),
                        (Canned::$variant, true) => concat!(
                            "HTTP/1.1 ", stringify!($code), " ", $reason, "\r\n",
                            "Content-Type: text/plain\r\nContent-Length: ", stringify!($len), "\r\n",
                            "Connection: close\r\n\r\n",
                            $body
                        ).as_bytes(),
                    )*
                }
            }
            pub const ALL: &'static [Canned] = &[ $( Canned::$variant, )* ];
        }
        #[cfg(test)]
        mod table_tests {
            #[test]
            fn lengths_match_bodies() {
                $( assert_eq!($body.len(), $len, stringify!($variant)); )*
            }
        }
    };
}

canned_table! {
    MovedPermanently => 301, "Moved Permanently", 18, "moved permanently\n", false;
    Found => 302, "Found", 6, "found\n", false;
    SeeOther => 303, "See Other", 10, "see other\n", false;
    TemporaryRedirect => 307, "Temporary Redirect", 19, "temporary redirect\n", false;
    PermanentRedirect => 308, "Permanent Redirect", 19, "permanent redirect\n", false;
    BadRequest => 400, "Bad Request", 12, "bad request\n", true;
    Unauthorized => 401, "Unauthorized", 13, "unauthorized\n", false;
    Forbidden => 403, "Forbidden", 10, "forbidden\n", false;
    NotFound => 404, "Not Found", 10, "not found\n", false;
    MethodNotAllowed => 405, "Method Not Allowed", 19, "method not allowed\n", false;
    RequestTimeout => 408, "Request Timeout", 16, "request timeout\n", true;
    PayloadTooLarge => 413, "Content Too Large", 18, "content too large\n", true;
    UriTooLong => 414, "URI Too Long", 13, "uri too long\n", true;
    ExpectationFailed => 417, "Expectation Failed", 19, "expectation failed\n", true;
    TooManyRequests => 429, "Too Many Requests", 18, "too many requests\n", false;
    HeadersTooLarge => 431, "Request Header Fields Too Large", 32, "request header fields too large\n", true;
    InternalServerError => 500, "Internal Server Error", 22, "internal server error\n", false;
    BadGateway => 502, "Bad Gateway", 12, "bad gateway\n", false;
    ServiceUnavailable => 503, "Service Unavailable", 20, "service unavailable\n", false;
    GatewayTimeout => 504, "Gateway Timeout", 16, "gateway timeout\n", false;
    VersionNotSupported => 505, "HTTP Version Not Supported", 27, "http version not supported\n", true;
}

/// The reason a status of the proxy's own is counted under
/// (`edgeshard_responses_generated_total{reason}`) and logged as (`$error_reason`).
pub fn reason_of(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "no_route",
        405 => "method_not_allowed",
        408 => "timeout",
        413 => "body_too_large",
        414 => "uri_too_long",
        417 => "expectation_failed",
        429 => "rate_limited",
        431 => "headers_too_large",
        500 => "auth_unavailable",
        502 => "bad_gateway",
        503 => "no_backend",
        504 => "upstream_timeout",
        505 => "version",
        301 | 308 => "redirect_https",
        302 | 303 | 307 => "redirect",
        _ => "other",
    }
}
