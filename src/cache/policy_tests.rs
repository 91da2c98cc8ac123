//! Unit tests of the cache's RFC 9111 rules: directives, storability and freshness,
//! usability with stale windows and the request's limits, conditionals, dates and keys.
use super::*;

fn facts(fields: &[(&str, &str)]) -> ResponseFacts {
    response_facts(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

const NOW: u64 = 1_700_000_000;

#[test]
fn freshness_prefers_s_maxage_then_max_age_then_expires_minus_date() {
    let req = RequestRules::default();
    let f = facts(&[("Cache-Control", "max-age=60, s-maxage=120")]);
    assert_eq!(
        storable(200, &f, req, &[], (NOW, None)),
        Storable::Yes { lifetime: 120 }
    );
    let f = facts(&[("cache-control", "public, MAX-AGE=\"30\"")]);
    assert_eq!(
        storable(200, &f, req, &[], (NOW, None)),
        Storable::Yes { lifetime: 30 }
    );
    let f = facts(&[
        ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("Expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
    ]);
    assert_eq!(
        storable(200, &f, req, &[], (NOW, None)),
        Storable::Yes { lifetime: 60 }
    );
    let f = facts(&[("Expires", "0")]);
    assert_eq!(
        storable(200, &f, req, &[], (NOW, None)),
        Storable::No("stale")
    );
    assert_eq!(
        storable(200, &facts(&[]), req, &[], (NOW, None)),
        Storable::No("no explicit freshness")
    );
    let f = facts(&[("Cache-Control", "max-age=99999999999999999999999")]);
    assert_eq!(
        storable(200, &f, req, &[], (NOW, None)),
        Storable::Yes { lifetime: u64::MAX }
    );
    let f = facts(&[("Cache-Control", "max-age=abc")]);
    assert_eq!(
        storable(200, &f, req, &[], (NOW, None)),
        Storable::No("stale")
    );
    // A directive given twice keeps its strictest value, in one field or two.
    for fields in [
        &[("Cache-Control", "max-age=0, max-age=3600")][..],
        &[("Cache-Control", "max-age=3600, max-age=0")],
        &[
            ("Cache-Control", "max-age=0"),
            ("Cache-Control", "max-age=3600"),
        ],
        &[("Cache-Control", "s-maxage=0, s-maxage=3600, max-age=60")],
    ] {
        assert_eq!(
            storable(200, &facts(fields), req, &[], (NOW, None)),
            Storable::No("stale")
        );
    }
    let f = facts(&[("Cache-Control", "max-age=3600, max-age=60")]);
    assert_eq!(
        storable(200, &f, req, &[], (NOW, None)),
        Storable::Yes { lifetime: 60 }
    );
    let f = facts(&[
        ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("Expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
        ("Expires", "Sun, 06 Nov 1994 09:50:37 GMT"),
    ]);
    assert_eq!(
        storable(200, &f, req, &[], (NOW, None)),
        Storable::No("stale")
    );
    let mut d = Directives::default();
    d.add(b"min-fresh=5, stale-if-error=60, min-fresh=50, stale-if-error=6");
    assert_eq!((d.min_fresh, d.stale_if_error), (Some(50), Some(6)));
}

#[test]
fn what_is_never_stored() {
    let req = RequestRules::default();
    for (fields, why) in [
        (
            &[("Cache-Control", "no-store, max-age=60")][..],
            "cache-control",
        ),
        (&[("Cache-Control", "private, max-age=60")], "cache-control"),
        (
            &[("Cache-Control", "max-age=60, no-cache")],
            "cache-control",
        ),
        (
            &[("Cache-Control", "max-age=60"), ("Set-Cookie", "a=b")],
            "set-cookie",
        ),
        (&[("Cache-Control", "max-age=60"), ("Vary", "*")], "vary"),
        (
            &[
                ("Cache-Control", "max-age=60"),
                ("Vary", "Accept, X-Forwarded-For"),
            ],
            "vary",
        ),
        (
            &[("Cache-Control", "max-age=60"), ("Vary", "x_request_id")],
            "vary",
        ),
        (&[("Cache-Control", "max-age=60"), ("Vary", "Via")], "vary"),
    ] {
        assert_eq!(
            storable(200, &facts(fields), req, &[], (NOW, None)),
            Storable::No(why)
        );
    }
    // A field the configuration named for the proxy (a request id, an mTLS subject).
    let own: [Box<[u8]>; 1] = [Box::from(&b"x-trace"[..])];
    let f = facts(&[("Cache-Control", "max-age=60"), ("Vary", "Accept, X_Trace")]);
    assert_eq!(
        storable(200, &f, req, &own, (NOW, None)),
        Storable::No("vary")
    );
    assert_eq!(
        storable(200, &f, req, &[], (NOW, None)),
        Storable::Yes { lifetime: 60 }
    );
    // `cache.valid` (nginx's proxy_cache_valid): a lifetime for a response without one of
    // its own, for a status it names (302 too); the response's own lifetime, and its refusal,
    // come first.
    let none = facts(&[]);
    assert_eq!(
        storable(200, &none, req, &[], (NOW, Some(600))),
        Storable::Yes { lifetime: 600 }
    );
    assert_eq!(
        storable(302, &none, req, &[], (NOW, Some(600))),
        Storable::Yes { lifetime: 600 }
    );
    assert_eq!(
        storable(302, &none, req, &[], (NOW, None)),
        Storable::No("status")
    );
    let own_age = facts(&[("Cache-Control", "max-age=5")]);
    assert_eq!(
        storable(200, &own_age, req, &[], (NOW, Some(600))),
        Storable::Yes { lifetime: 5 }
    );
    for refused in ["private", "no-store", "no-cache"] {
        let f = facts(&[("Cache-Control", refused)]);
        assert_eq!(
            storable(200, &f, req, &[], (NOW, Some(600))),
            Storable::No("cache-control")
        );
    }
    let expired = facts(&[("Expires", "Thu, 01 Jan 1970 00:00:00 GMT")]);
    assert_eq!(
        storable(200, &expired, req, &[], (NOW, Some(600))),
        Storable::No("stale")
    );
    let f = facts(&[("Cache-Control", "max-age=60")]);
    assert_eq!(
        storable(500, &f, req, &[], (NOW, None)),
        Storable::No("status")
    );
    assert_eq!(
        storable(206, &f, req, &[], (NOW, None)),
        Storable::No("status")
    );
    let auth = RequestRules {
        authorization: true,
        ..Default::default()
    };
    assert_eq!(
        storable(200, &f, auth, &[], (NOW, None)),
        Storable::No("authorization")
    );
    let f = facts(&[("Cache-Control", "public, max-age=60")]);
    assert_eq!(
        storable(200, &f, auth, &[], (NOW, None)),
        Storable::Yes { lifetime: 60 }
    );
}

#[test]
fn request_directives_bypass_the_cache() {
    let rules = |fields: &[(&str, &str)]| {
        request_rules(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    };
    assert!(rules(&[("Cache-Control", "no-cache")]).bypass);
    assert!(rules(&[("Cache-Control", "max-age=0, no-store")]).bypass);
    assert!(rules(&[("Pragma", "no-cache")]).bypass);
    assert!(!rules(&[("Pragma", "no-cache"), ("Cache-Control", "max-age=5")]).bypass);
    assert!(!rules(&[("Accept", "*/*")]).bypass);
    assert!(rules(&[("X-HTTP-Method-Override", "DELETE")]).bypass);
    assert!(rules(&[("authorization", "Basic x")]).authorization);
    let r = rules(&[
        ("Cache-Control", "max-age=0"),
        ("Cache-Control", "min-fresh=\"7\""),
    ]);
    assert_eq!(
        (r.bypass, r.max_age, r.min_fresh),
        (false, Some(0), Some(7))
    );
}

#[test]
fn request_max_age_and_min_fresh_narrow_what_is_used() {
    let req = |max_age, min_fresh| RequestRules {
        max_age,
        min_fresh,
        ..Default::default()
    };
    let swr = Usable::WhileRevalidate { if_error: true };
    let stale = |if_error| Usable::Stale { if_error };
    // Nothing asked: the entry's own verdict.
    assert_eq!(for_request(swr, 12, 10, &req(None, None)), swr);
    // A reload (max-age=0): a fresh entry of age 0 is fine, one of age 1 is revalidated,
    // a stale one is not served while revalidating but keeps its stale-if-error.
    assert_eq!(
        for_request(Usable::Fresh, 0, 10, &req(Some(0), None)),
        Usable::Fresh
    );
    assert_eq!(
        for_request(Usable::Fresh, 1, 10, &req(Some(0), None)),
        stale(false)
    );
    assert_eq!(for_request(swr, 12, 10, &req(Some(0), None)), stale(true));
    assert_eq!(
        for_request(Usable::Fresh, 5, 10, &req(Some(5), None)),
        Usable::Fresh
    );
    // min-fresh: at least that much freshness left.
    assert_eq!(
        for_request(Usable::Fresh, 5, 10, &req(None, Some(5))),
        Usable::Fresh
    );
    assert_eq!(
        for_request(Usable::Fresh, 6, 10, &req(None, Some(5))),
        stale(false)
    );
    assert_eq!(
        for_request(stale(false), 30, 10, &req(None, Some(0))),
        stale(false)
    );
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn age_is_corrected_per_rfc_9111() {
    let f = facts(&[("Age", "10"), ("Date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
    let date = parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
    // Apparent age 5 (received 5 s after its Date), age value 10 + 2 s of delay.
    assert_eq!(initial_age(&f, secs(2), date + 5), 12);
    assert_eq!(
        initial_age(&f, secs(30), date + 30),
        40,
        "10 + 30 s of delay"
    );
    // A delay under a second adds nothing, whichever ticks it straddled.
    assert_eq!(initial_age(&facts(&[]), Duration::from_millis(999), 100), 0);
    // A Date in the future is not a negative age.
    let f = facts(&[("Date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
    assert_eq!(initial_age(&f, secs(0), date - 10), 0);
}

#[test]
fn an_age_list_counts_by_its_first_member_and_an_invalid_age_as_stale() {
    let age = |fields: &[(&str, &str)]| facts(fields).age;
    assert_eq!(age(&[("Age", "7200, 0")]), Some(7200));
    assert_eq!(age(&[("Age", "7200"), ("Age", "0")]), Some(7200));
    assert_eq!(age(&[("Age", "0,7200")]), Some(0));
    assert_eq!(age(&[("Age", "0"), ("Age", "7200")]), Some(0));
    assert_eq!(
        age(&[("Age", " , 30")]),
        Some(30),
        "an empty member is no member"
    );
    for v in ["abc", "-7200", "7200.0", "7200;foo=bar", "\"10\""] {
        assert_eq!(age(&[("Age", v)]), Some(u64::MAX), "{v}");
    }
    // Older than any lifetime, however long: never stored.
    let f = facts(&[
        ("Cache-Control", "max-age=99999999999999999999"),
        ("Age", "abc"),
    ]);
    assert_eq!(initial_age(&f, secs(0), NOW), u64::MAX);
}

#[test]
fn stale_windows_count_from_the_end_of_the_lifetime() {
    let d = |v: &str| facts(&[("Cache-Control", v)]).directives;
    let w = stale_windows(&d(
        "max-age=10, stale-while-revalidate=5, stale-if-error=20",
    ));
    assert_eq!(w, (5, 20));
    assert_eq!(usable(9, 10, w), Usable::Fresh);
    assert_eq!(
        usable(10, 10, w),
        Usable::WhileRevalidate { if_error: true }
    );
    assert_eq!(
        usable(14, 10, w),
        Usable::WhileRevalidate { if_error: true }
    );
    assert_eq!(usable(15, 10, w), Usable::Stale { if_error: true });
    assert_eq!(usable(29, 10, w), Usable::Stale { if_error: true });
    assert_eq!(usable(30, 10, w), Usable::Stale { if_error: false });
    // A long window and a huge age: no overflow.
    let huge = (u64::MAX, u64::MAX);
    assert_eq!(
        usable(u64::MAX, 1, huge),
        Usable::WhileRevalidate { if_error: true }
    );
    assert_eq!(
        usable(u64::MAX, 0, (0, 0)),
        Usable::Stale { if_error: false }
    );
    // must-revalidate and proxy-revalidate forbid serving stale; no window, none.
    for cc in [
        "max-age=1, stale-while-revalidate=5, must-revalidate",
        "max-age=1, stale-if-error=5, proxy-revalidate",
        "max-age=1",
    ] {
        assert_eq!(stale_windows(&d(cc)), (0, 0), "{cc}");
    }
    assert_eq!(
        stale_windows(&d("s-maxage=1, stale-while-revalidate=7")),
        (7, 0)
    );
    assert_eq!(stale_windows(&d("stale-if-error")), (0, 0));
}

#[test]
fn http_dates_parse_and_bad_ones_do_not() {
    assert_eq!(
        parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(784_111_777)
    );
    assert_eq!(parse_http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    assert_eq!(
        parse_http_date(b"Tue, 29 Feb 2000 00:00:00 GMT"),
        Some(951_782_400)
    );
    let now = crate::http::date::http_date(NOW);
    assert_eq!(parse_http_date(&now), Some(NOW));
    // The obsolete forms RFC 9110 §5.6.7 has recipients accept: RFC 850 and asctime.
    assert_eq!(
        parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"),
        Some(784_111_777)
    );
    assert_eq!(
        parse_http_date(b"Sun Nov  6 08:49:37 1994"),
        Some(784_111_777)
    );
    assert_eq!(
        parse_http_date(b"Thu Jan 15 00:00:00 1970"),
        Some(14 * 86_400)
    );
    // A two-digit year more than 50 years ahead is the last century's.
    let in_2026 = |v: &[u8]| parse_date_at(v, || 2026);
    assert_eq!(
        in_2026(b"Monday, 01-Jan-76 00:00:00 GMT"),
        parse_http_date(b"Thu, 01 Jan 2076 00:00:00 GMT")
    );
    assert_eq!(
        in_2026(b"Sunday, 01-Jan-77 00:00:00 GMT"),
        parse_http_date(b"Sat, 01 Jan 1977 00:00:00 GMT")
    );
    for bad in [
        &b"Sunday, 06-Nov-94 08:49:37 UTC"[..],
        b"Sonday, 06-Nov-94 08:49:37 GMT",
        b"Sunday, 06-Nov-1994 08:49:37 GMT",
        b"Sunday, 31-Feb-94 08:49:37 GMT",
        b"Sun Nov 06 08:49:37 94",
        b"Sun Nov  x 08:49:37 1994",
        b"Sun Xyz  6 08:49:37 1994",
        b"Sun Nov  6 08-49-37 1994",
        b",",
        b"Sun, 06 Nov 1994 08:49:37 UTC",
        b"Sun, 06 Xyz 1994 08:49:37 GMT",
        b"Sun, 0x Nov 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1994 28:49:37 GMT",
        b"Tue, 31 Feb 2099 00:00:00 GMT",
        b"Fri, 29 Feb 2100 00:00:00 GMT",
        b"Wed, 31 Apr 2026 00:00:00 GMT",
        b"",
        "Sun, 06 Nov 1994 08:49:3\u{e9}GMT".as_bytes(),
    ] {
        assert_eq!(
            parse_http_date(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn conditionals_use_weak_etags_and_dates() {
    assert!(none_match(b"\"a\", W/\"b\"", Some(b"\"b\"")));
    assert!(none_match(b"W/\"b\"", Some(b"W/\"b\"")));
    assert!(!none_match(b"\"c\"", Some(b"\"b\"")));
    assert!(none_match(b"*", None));
    assert!(!none_match(b"\"b\"", None));
    let lm = parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT");
    let same = Some(&b"Sun, 06 Nov 1994 08:49:37 GMT"[..]);
    let before = Some(&b"Sat, 05 Nov 1994 08:49:37 GMT"[..]);
    assert!(not_modified(None, same, None, lm, || u64::MAX));
    assert!(!not_modified(None, before, None, lm, || u64::MAX));
    assert!(!not_modified(None, Some(b"garbage"), None, lm, || u64::MAX));
    // If-None-Match wins over If-Modified-Since.
    assert!(!not_modified(
        Some(b"\"x\""),
        same,
        Some(b"\"y\""),
        lm,
        || u64::MAX
    ));
}

#[test]
fn keys_normalise_scheme_host_and_default_port() {
    let key = |https, host: &str, target: &str| {
        let mut k = Vec::new();
        primary_key(https, host.as_bytes(), target.as_bytes(), &mut k);
        String::from_utf8(k).unwrap()
    };
    assert_eq!(
        key(false, "Example.COM:80", "/a?b=C"),
        "http://example.com/a?b=C"
    );
    assert_eq!(
        key(false, "example.com:8080", "/"),
        "http://example.com:8080/"
    );
    assert_eq!(key(true, "example.com:443", "/x"), "https://example.com/x");
    assert_eq!(
        key(true, "example.com:80", "/x"),
        "https://example.com:80/x"
    );
    // Escapes' hex digits in one case; nothing else of the target changes.
    assert_eq!(
        key(false, "h", "/caf%c3%a9?q=%2f%zz%a"),
        "http://h/caf%C3%A9?q=%2F%zz%a"
    );
    assert_eq!(key(false, "h", "/ab%"), "http://h/ab%");
    let mut k = Vec::new();
    let names: Vec<Box<[u8]>> = vec![b"accept-encoding".to_vec().into()];
    let fields = [
        (&b"Accept-Encoding"[..], &b" gzip "[..]),
        (b"x", b"y"),
        (b"accept-encoding", b"br"),
    ];
    vary_key(&names, fields.into_iter(), &mut k);
    assert_eq!(k, b"\naccept-encoding:gzip,br");
    // Absent and empty are different variants.
    let (mut absent, mut empty) = (Vec::new(), Vec::new());
    vary_key(&names, [(&b"x"[..], &b"y"[..])].into_iter(), &mut absent);
    vary_key(
        &names,
        [(&b"accept-encoding"[..], &b""[..])].into_iter(),
        &mut empty,
    );
    assert_eq!(absent, b"\naccept-encoding!");
    assert_eq!(empty, b"\naccept-encoding:");
    // A `_` spelling is keyed apart from the field itself: a backend may read it as the
    // field (CGI) or not at all.
    let mut under = Vec::new();
    vary_key(
        &names,
        [(&b"Accept_Encoding"[..], &b"br"[..])].into_iter(),
        &mut under,
    );
    assert_eq!(under, b"\naccept-encoding!\n@_:br");
    let mut both = Vec::new();
    let fields = [
        (&b"accept-encoding"[..], &b"gzip"[..]),
        (b"accept_encoding", b"br"),
    ];
    vary_key(&names, fields.into_iter(), &mut both);
    assert_eq!(both, b"\naccept-encoding:gzip\n@_:br");
}

#[test]
fn purge_urls_are_keyed_as_requests_are() {
    let k = |u: &str, prefix: bool| String::from_utf8(purge_key(u.as_bytes(), prefix)).unwrap();
    assert_eq!(
        k("http://Shop.Example:80/a?b=1", false),
        "http://shop.example/a?b=1"
    );
    assert_eq!(
        k("HTTPS://shop.example:443/x", false),
        "https://shop.example/x"
    );
    assert_eq!(
        k("https://shop.example:8443/x", false),
        "https://shop.example:8443/x"
    );
    assert_eq!(k("http://shop.example", false), "http://shop.example/");
    assert_eq!(
        k("http://Shop", true),
        "http://shop",
        "a prefix may end inside a host"
    );
    assert_eq!(k("/not-a-url", false), "/not-a-url");
    // Escapes in the keys' case, a prefix's last one cut short too.
    assert_eq!(k("http://h/caf%c3%a9", false), "http://h/caf%C3%A9");
    assert_eq!(k("http://h/caf%c", true), "http://h/caf%C");
    assert_eq!(k("http://h/caf%", true), "http://h/caf%");
    assert_eq!(
        k("http://h/caf%g", true),
        "http://h/caf%g",
        "not an escape: as written"
    );
    // The key a request gets, for comparison.
    let mut req = Vec::new();
    primary_key(false, b"Shop.Example:80", b"/a?b=1", &mut req);
    assert_eq!(
        k("http://SHOP.example:80/a?b=1", false).as_bytes(),
        &req[..]
    );
}

#[test]
fn a_comma_inside_a_quoted_directive_value_does_not_start_a_directive() {
    // RFC 9110 §5.6.4: the quoted string is one value; `s-maxage=600` inside it is not one.
    let f = facts(&[("Cache-Control", r#"max-age=0, ext="a,s-maxage=600,b""#)]);
    assert_eq!(f.directives.s_maxage, None);
    assert_eq!(f.directives.max_age, Some(0));
    assert!(none_match(r#""x", "a,b""#.as_bytes(), Some(br#""a,b""#)));
    assert!(!none_match(r#""a", "b""#.as_bytes(), Some(br#""a,b""#)));
}

#[test]
fn location_urls_resolve_against_the_request_and_stay_in_its_origin() {
    let base = b"http://shop.example/items/list?page=2";
    let n = |r: &str| named_url(base, r.as_bytes()).map(|k| String::from_utf8(k).unwrap());
    let same = |r: &str, want: &str| assert_eq!(n(r).as_deref(), Some(want), "{r}");
    // RFC 3986 §5.4's kinds of reference.
    same("/items/7", "http://shop.example/items/7");
    same("7", "http://shop.example/items/7");
    same("./7?x=1#top", "http://shop.example/items/7?x=1");
    same("../cart", "http://shop.example/cart");
    same("../../../cart", "http://shop.example/cart");
    same("..", "http://shop.example/");
    same("sub/./a/../b", "http://shop.example/items/sub/b");
    same("?page=3", "http://shop.example/items/list?page=3");
    same("//Shop.Example:80/a", "http://shop.example/a");
    same(
        "HTTP://SHOP.example/a/%c3%a9",
        "http://shop.example/a/%C3%A9",
    );
    same("http://shop.example", "http://shop.example/");
    same("  /spaced  ", "http://shop.example/spaced");
    // Another origin (host, port or scheme), another scheme, or no reference at all.
    for other in [
        "http://evil.example/items/7",
        "//evil.example/x",
        "http://shop.example:8080/items/7",
        "https://shop.example/items/7",
        "http://shop.example.evil/x",
        "http://shop.exampl/x",
        "mailto:a@shop.example",
        "",
        "#frag",
        "/a b",
        "/a\u{7f}",
    ] {
        assert_eq!(n(other), None, "{other:?}");
    }
    // Behind a trusted proxy the key's `Host` part is kept.
    let mut fwd = b"https://shop.example/a".to_vec();
    fwd.extend_from_slice(SENT_HOST);
    fwd.extend_from_slice(b"internal");
    let mut want = b"https://shop.example/b".to_vec();
    want.extend_from_slice(SENT_HOST);
    want.extend_from_slice(b"internal");
    assert_eq!(named_url(&fwd, b"/b"), Some(want));
    // What a request for the URL is keyed as.
    let mut req = Vec::new();
    primary_key(false, b"shop.example", b"/items/7", &mut req);
    assert_eq!(n("7").unwrap().as_bytes(), &req[..]);
}
