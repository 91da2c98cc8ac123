//! Unit tests of [`super`]: route precedence, host and path normalisation, and the path index
//! checked against a plain scan of the routes in precedence order.

use super::*;
use std::path::Path;

fn table(routes: &str) -> RouteTable {
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n{routes}\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n"
    );
    RouteTable::new(&Config::parse(&text, Path::new("t.toml")).unwrap())
}

fn find(
    t: &RouteTable,
    host: &str,
    path: &str,
    method: &str,
    hdr: Option<(&str, &str)>,
) -> Option<usize> {
    t.find(host.as_bytes(), path.as_bytes(), method.as_bytes(), |n| {
        hdr.filter(|(hn, _)| hn.as_bytes() == n)
            .map(|(_, v)| v.as_bytes())
    })
    .map(|r| r.index)
}

#[test]
fn most_specific_first() {
    let t = table(
        r#"
[[route]]
upstream = "u"
[[route]]
host = "*.example.com"
upstream = "u"
[[route]]
host = "api.example.com"
path_prefix = "/v1/"
upstream = "u"
[[route]]
host = "api.example.com"
path_prefix = "/v1/admin/"
upstream = "u"
[[route]]
host = "api.example.com"
path = "/v1/exact"
upstream = "u"
[[route]]
host = "api.example.com"
methods = ["POST"]
upstream = "u"
[[route]]
host = "*.b.example.com"
headers = { "x-canary" = "1" }
upstream = "u"
"#,
    );
    assert_eq!(
        find(&t, "API.example.com:8080", "/v1/x", "GET", None),
        Some(2)
    );
    assert_eq!(
        find(&t, "api.example.com", "/v1/admin/x", "GET", None),
        Some(3)
    );
    assert_eq!(
        find(&t, "api.example.com", "/v1/exact", "GET", None),
        Some(4)
    );
    assert_eq!(find(&t, "api.example.com", "/other", "POST", None), Some(5));
    assert_eq!(find(&t, "api.example.com", "/other", "GET", None), Some(1));
    assert_eq!(
        find(&t, "x.b.example.com", "/", "GET", Some(("x-canary", "1"))),
        Some(6)
    );
    assert_eq!(
        find(&t, "x.b.example.com", "/", "GET", Some(("x-canary", "2"))),
        Some(1)
    );
    assert_eq!(find(&t, "example.com", "/", "GET", None), Some(0));
    assert_eq!(find(&t, "[::1]:80", "/", "GET", None), Some(0));
}

#[test]
fn no_route_is_none() {
    let t = table("[[route]]\nhost = \"a.com\"\nupstream = \"u\"\n");
    assert_eq!(find(&t, "b.com", "/", "GET", None), None);
    assert_eq!(find(&t, "a.com.", "/", "GET", None), Some(0));
    let long = "a".repeat(300);
    assert_eq!(find(&t, &long, "/", "GET", None), None);
}

#[test]
fn authorities() {
    for ok in [
        &b"example.com"[..],
        b"a.example:8080",
        b"[::1]:80",
        b"",
        b"xn--bcher-kva.example",
        b"a.example:",
        b"[::ffff:127.0.0.1]",
        b"127.0.0.1:8080",
        b"a.example.",
        b"a.example.:80",
    ] {
        assert!(valid_authority(ok), "{:?}", String::from_utf8_lossy(ok));
    }
    for bad in [
        &b"a b"[..],
        b"user@host",
        b"a/b",
        b"a\\b",
        b"h\"q",
        b"secret.example:80:81",
        b"secret.example:1:",
        b"a.example:8o",
        b"[::1",
        b"[]:80",
        b"[::1]x",
        b"[::1]:80:1",
        b"a[::1]",
        b"[g::1]",
        // Empty labels and escapes, which would miss the routes of the name they spell.
        b"app.exampl%65",
        b"app.example..",
        b".app.example",
        b"a..example:80",
    ] {
        assert!(!valid_authority(bad), "{:?}", String::from_utf8_lossy(bad));
    }
}

/// The table allows exactly RFC 3986's authority characters: every byte value.
#[test]
fn authority_table_is_the_character_list() {
    for b in 0..=255u8 {
        let listed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b);
        assert_eq!(AUTHORITY_BYTES[usize::from(b)], listed, "byte {b:#04x}");
    }
}

#[test]
fn dot_segments() {
    for bad in [
        &b"/api/../admin"[..],
        b"/..",
        b"/a/./b",
        b"/a/%2E%2e/b",
        b"/a/.%2e",
        b"/.",
        b"/a%2F..%2Fadmin",
        b"/a%2f%2e%2e%2fadmin",
        b"/a/..%2Fb",
        b"/a%2F.",
        b"/public/..;/admin",
        b"/a/.;x/b",
        b"/a/%2e%2e;jsessionid=1/b",
        b"/x/..%5Cadmin",
        b"/x%5C..%5Cadmin",
        b"/x/%2e%2e%5cadmin",
    ] {
        assert!(has_dot_segment(bad), "{:?}", String::from_utf8_lossy(bad));
    }
    for ok in [
        &b"/"[..],
        b"/a/b.c",
        b"/.well-known/x",
        b"/a..b/",
        b"/...",
        b"*",
        b"/group%2Fproject",
        b"/a%2F...%2Fb",
        b"/%2F",
        b"/a;b/c",
        b"/a/..b;c",
        b"/a/;../b",
        b"/a%5Cb",
        b"/a..%5Cb",
    ] {
        assert!(!has_dot_segment(ok), "{:?}", String::from_utf8_lossy(ok));
    }
}

#[test]
fn paths_are_matched_with_unreserved_escapes_decoded_and_slashes_merged() {
    for (raw, want) in [
        (&b"/%61dmin/x"[..], &b"/admin/x"[..]),
        (b"//admin///x", b"/admin/x"),
        (b"/%41%7e%2D%2e%5f", b"/A~-._"),
        // Reserved or other escapes stay: decoding them would change the path.
        (b"/a%2Fb%2f%25%3F%20", b"/a%2Fb%2f%25%3F%20"),
        // Decoded once only; broken escapes stay as they are.
        (b"/%2561dmin", b"/%2561dmin"),
        (b"/%6", b"/%6"),
        (b"/%zz/%", b"/%zz/%"),
        (b"/a%2F/%2F/b", b"/a%2F/%2F/b"),
    ] {
        assert_eq!(
            &normalize_path(raw)[..],
            want,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // The usual path is not copied.
    assert!(matches!(normalize_path(b"/a/b.c"), Cow::Borrowed(_)));
    let t = table(
        "[[route]]\npath_prefix = \"/admin/\"\nupstream = \"u\"\n[[route]]\nupstream = \"u\"\n",
    );
    for raw in [
        "/%61dmin/x",
        "//admin/x",
        "/admin//x",
        "/%61%64%6d%69%6e/",
        "/admin%2Fx",
        "/admin%2f%2F/x",
        "%2Fadmin/x",
    ] {
        let path = normalize_path(raw.as_bytes());
        let got = t
            .find(b"a", &match_path(&path), b"GET", |_| None)
            .map(|r| r.index);
        assert_eq!(got, Some(0), "{raw}");
    }
    // Path parameters, as Tomcat, Jetty and Spring strip them: the `/admin/` route's.
    for raw in ["/admin;x/y", "/admin;/y", "/admin;a=b;c/"] {
        let path = normalize_path(raw.as_bytes());
        let got = t
            .find(b"a", &match_path(&path), b"GET", |_| None)
            .map(|r| r.index);
        assert_eq!(got, Some(0), "{raw}");
    }
    assert_eq!(&match_path(b"/admin;")[..], b"/admin");
    // A parameter runs to the next literal `/`, escapes and all (Tomcat's reading).
    assert_eq!(&match_path(b"/admin;x%2Fy/z")[..], b"/admin/z");
    // ... and one that holds an encoded separator is refused: Tomcat drops it, a
    // decoding backend reads a `/` in it.
    for refused in ["/;%2Fx/admin/secret", "/api/;%5Cx/admin/k", "/a;b%2f"] {
        assert!(param_hides_separator(refused.as_bytes()), "{refused}");
    }
    for fine in ["/a%2Fb;c/d", "/a;b/%2Fc", "/a;b"] {
        assert!(!param_hides_separator(fine.as_bytes()), "{fine}");
    }
    assert_eq!(&match_path(b"/a;x/b;y/c")[..], b"/a/b/c");
    assert!(matches!(match_path(b"/a/b%20c"), Cow::Borrowed(_)));
    assert_eq!(&match_path(b"/g%2Fp%2F/x")[..], b"/g/p/x");
    assert_eq!(&match_path(b"/admin%5Cx%5c%2f/y")[..], b"/admin/x/y");
}

/// The path index gives what a scan of each host bucket in precedence order gives (the
/// table before the index), on random tables whose paths nest in every way (a prefix of
/// another, equal to an exact path, sharing all but the last byte), over bytes that sort
/// before `/` (`-`, `.`, `*`, `%20`) and after it, with request paths `*` and empty, with and
/// without method and header conditions, and with routes in several host buckets at once (a
/// `"*"` among hosts is any host).
#[test]
fn the_path_index_agrees_with_a_scan_in_precedence_order() {
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let alphabet = ["a", "-", ".", "*", "/", "~", "z", "0", "%20"];
    let path = |next: &mut dyn FnMut(usize) -> usize| {
        let mut p = String::from("/");
        for _ in 0..next(6) {
            let c = alphabet[next(alphabet.len())];
            if !(c == "/" && p.ends_with('/')) {
                p.push_str(c);
            }
        }
        p
    };
    let host_lists: [&[&str]; 5] = [
        &["a.com"],
        &["*.a.com", "a.com"],
        &["x.a.com", "*.com"],
        &["*"],
        &["a.com", "*"],
    ];
    let (mut tables, mut checked) = (0, 0);
    for _ in 0..400 {
        let n = 1 + next(14);
        let mut text = String::new();
        let mut spec = Vec::new();
        for _ in 0..n {
            text.push_str("[[route]]\nupstream = \"u\"\n");
            let hosts = [None, None, Some(host_lists[next(5)])][next(3)];
            if let Some(h) = hosts {
                text.push_str(&format!("host = {h:?}\n"));
            }
            let p = match next(3) {
                0 => None,
                k => Some((k == 1, path(&mut next))),
            };
            match &p {
                Some((true, p)) => text.push_str(&format!("path = \"{p}\"\n")),
                Some((false, p)) => text.push_str(&format!("path_prefix = \"{p}\"\n")),
                None => {}
            }
            let post_only = next(4) == 0;
            if post_only {
                text.push_str("methods = [\"POST\"]\n");
            }
            let canary = next(4) == 0;
            if canary {
                text.push_str("headers = { \"x-k\" = \"1\" }\n");
            }
            spec.push((hosts, p, post_only, canary));
        }
        let file = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n{text}\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n"
        );
        // A dot segment (`/.`, `/..`) is refused in a route's path: such a table is skipped.
        let Ok(config) = Config::parse(&file, Path::new("t.toml")) else {
            continue;
        };
        let t = RouteTable::new(&config);
        tables += 1;
        for _ in 0..300 {
            let host = ["a.com", "x.a.com", "y.x.a.com", "b.com", "a.org"][next(5)];
            let p = match next(10) {
                0 => "*".to_string(),
                1 => String::new(),
                2 => "-".to_string(),
                _ => path(&mut next),
            };
            let post = next(2) == 0;
            let canary = next(2) == 0;
            let rank = |h: &str| -> Option<usize> {
                match h {
                    "*" => Some(usize::MAX),
                    h if h == host => Some(0),
                    h => h
                        .strip_prefix('*')
                        .filter(|s| host.ends_with(s))
                        .map(|s| usize::MAX - 1 - s.len()),
                }
            };
            let want = (0..n)
                .flat_map(|i| {
                    let (hosts, path, post_only, needs_canary) = &spec[i];
                    let ranks: Vec<usize> = match hosts {
                        Some(hs) if !hs.contains(&"*") => {
                            hs.iter().filter_map(|h| rank(h)).collect()
                        }
                        _ => vec![usize::MAX],
                    };
                    let (len, exact, hit) = match path {
                        None => (0, false, true),
                        Some((true, q)) => (q.len(), true, *q == p),
                        Some((false, q)) => (q.len(), false, p.starts_with(q.as_str())),
                    };
                    let ok = hit && (!post_only || post) && (!needs_canary || canary);
                    (ranks.into_iter().filter(move |_| ok))
                        .map(move |rank| ((rank, std::cmp::Reverse(len), !exact, i), i))
                })
                .min()
                .map(|(_, i)| i);
            let method = if post { "POST" } else { "GET" };
            let got = find(&t, host, &p, method, canary.then_some(("x-k", "1")));
            assert_eq!(
                got, want,
                "{host} {p:?} post={post} canary={canary}\n{text}"
            );
            checked += 1;
        }
    }
    assert!(tables > 300, "{tables} tables parsed of 400");
    assert_eq!(checked, tables * 300);
}
