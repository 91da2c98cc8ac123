//! `/metrics` scraping and parsing. Every scrape is parsed twice: by Prometheus's own Python
//! parser (`prometheus_client.parser.text_string_to_metric_families`, installed by `.ci/run`),
//! which gives the samples, and by a strict line check here (each sample's family declared by
//! `# TYPE` before it, no series twice, values that parse).

use super::admin::admin_get;
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PARSER: &str = r#"
import json, sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    sys.stdout.write("MISSING_PROMETHEUS_CLIENT %s\n" % e)
    sys.exit(3)
out = []
try:
    for f in text_string_to_metric_families(sys.stdin.read()):
        out.append({"name": f.name, "type": f.type,
                    "samples": [[s.name, s.labels, repr(float(s.value))] for s in f.samples]})
except Exception as e:
    sys.stdout.write("PARSE_ERROR %s: %s\n" % (type(e).__name__, e))
    sys.exit(4)
sys.stdout.write(json.dumps(out))
"#;

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub families: Vec<Family>,
}

/// Parses exposition text with prometheus_client (panics with the reason, or with a clear
/// message when python3 or the module is missing) and checks every line strictly.
pub fn parse_prometheus(text: &str) -> Metrics {
    let mine = strict_lines(text);
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); the /metrics tests need python3 with prometheus_client (.ci/run installs both)")
        });
    let mut stdin = child.stdin.take().unwrap();
    let input = text.to_string();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let pid = child.id();
    let status = match super::watch_exit(child).recv_timeout(Duration::from_secs(30)) {
        Ok(s) => s,
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("python3 prometheus parser did not finish within 30 s");
        }
    };
    let _ = writer.join();
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    if status.code() == Some(3) {
        panic!(
            "python3 has no prometheus_client module ({}); install it: python3 -m pip install prometheus_client (.ci/run does)",
            stdout.trim()
        );
    }
    assert!(
        status.success(),
        "prometheus_client rejected the /metrics text: {}{stderr}\n--- text ---\n{text}",
        stdout.trim()
    );
    let raw: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("parser output is not JSON ({e}): {stdout}"));
    let mut families = Vec::new();
    for f in raw.as_array().expect("a list of families") {
        let samples = f["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s[1]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let v = s[2].as_str().unwrap();
                Sample {
                    name: s[0].as_str().unwrap().to_string(),
                    labels,
                    value: v
                        .parse()
                        .unwrap_or_else(|e| panic!("sample value {v:?}: {e}")),
                }
            })
            .collect();
        families.push(Family {
            name: f["name"].as_str().unwrap().to_string(),
            kind: f["type"].as_str().unwrap().to_string(),
            samples,
        });
    }
    // The two parsers must agree on every sample.
    let theirs: Vec<&Sample> = families.iter().flat_map(|f| f.samples.iter()).collect();
    assert_eq!(
        theirs.len(),
        mine.len(),
        "prometheus_client saw {} samples, the line check {}\n--- text ---\n{text}",
        theirs.len(),
        mine.len()
    );
    for s in &mine {
        let same = theirs.iter().any(|t| {
            t.name == s.name
                && t.labels == s.labels
                && (t.value == s.value || (t.value - s.value).abs() <= 1e-9 * s.value.abs())
        });
        assert!(
            same,
            "prometheus_client does not agree on sample {s:?}\n--- text ---\n{text}"
        );
    }
    Metrics {
        text: text.to_string(),
        families,
    }
}

/// The family a sample name belongs to, given the declared families.
fn family_of<'a>(sample: &str, declared: &'a BTreeMap<String, String>) -> Option<&'a str> {
    if let Some((k, _)) = declared.get_key_value(sample) {
        return Some(k);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix) {
            if let Some((k, t)) = declared.get_key_value(base) {
                if t == "histogram" || t == "summary" {
                    return Some(k);
                }
            }
        }
    }
    None
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        })
}

/// Parses `{a="x",b="y\"z"}` (the exposition format's escapes: `\\`, `\"`, `\n`).
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let inner = s
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or("label set not in braces")?;
    let mut chars = inner.chars().peekable();
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        if !valid_name(&key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("label {key} without =\""));
        }
        let mut val = String::new();
        loop {
            match chars.next() {
                None => return Err(format!("label {key}: unterminated value")),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('\\') => val.push('\\'),
                    Some('"') => val.push('"'),
                    Some('n') => val.push('\n'),
                    other => return Err(format!("label {key}: bad escape {other:?}")),
                },
                Some('\n') => return Err(format!("label {key}: raw newline")),
                Some(c) => val.push(c),
            }
        }
        if out.insert(key.clone(), val).is_some() {
            return Err(format!("label {key} twice"));
        }
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(c) => return Err(format!("unexpected {c:?} after label {key}")),
        }
    }
    Ok(out)
}

/// Checks the exposition text line by line (format 0.0.4), independently of the Python
/// parser, and returns its samples.
fn strict_lines(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    assert!(
        text.ends_with('\n'),
        "/metrics text must end with a newline"
    );
    let mut declared: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let ctx = || format!("/metrics line {}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{}", ctx()));
            assert!(valid_name(name), "{}", ctx());
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "unknown type: {}",
                ctx()
            );
            assert!(
                declared
                    .insert(name.to_string(), kind.to_string())
                    .is_none(),
                "family declared twice: {}",
                ctx()
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "{}", ctx());
            assert!(helped.insert(name.to_string()), "HELP twice: {}", ctx());
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {}", ctx());
        let (name_labels, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{}", ctx()));
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad value ({e}): {}", ctx())),
        };
        assert!(!v.is_nan(), "NaN value: {}", ctx());
        let name = name_labels.split('{').next().unwrap();
        assert!(valid_name(name), "bad metric name: {}", ctx());
        let labels = &name_labels[name.len()..];
        let labels = if labels.is_empty() {
            BTreeMap::new()
        } else {
            parse_labels(labels).unwrap_or_else(|e| panic!("{e}: {}", ctx()))
        };
        let fam = family_of(name, &declared)
            .unwrap_or_else(|| panic!("sample without a preceding # TYPE: {}", ctx()));
        if declared[fam] == "counter" {
            assert!(v >= 0.0, "negative counter: {}", ctx());
        }
        assert!(
            series.insert(format!("{name}{labels:?}")),
            "series written twice: {}",
            ctx()
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: v,
        });
    }
    samples
}

/// Parses with the strict line check alone (no Python): cheap enough to poll with.
pub fn parse_quick(text: &str) -> Metrics {
    let samples = strict_lines(text);
    Metrics {
        text: text.to_string(),
        families: vec![Family {
            name: String::new(),
            kind: String::new(),
            samples,
        }],
    }
}

fn labels_eq(s: &Sample, want: &[(&str, &str)]) -> bool {
    s.labels.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
}

fn labels_match(s: &Sample, filter: &[(&str, &str)]) -> bool {
    filter
        .iter()
        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
}

impl Metrics {
    /// Every sample named `name` (a sample name: `..._total`, `..._bucket`, ...).
    pub fn samples(&self, name: &str) -> Vec<&Sample> {
        self.families
            .iter()
            .flat_map(|f| f.samples.iter())
            .filter(|s| s.name == name)
            .collect()
    }

    /// The type of the family holding sample `name`.
    pub fn kind_of(&self, name: &str) -> Option<&str> {
        self.families
            .iter()
            .find(|f| f.samples.iter().any(|s| s.name == name))
            .map(|f| f.kind.as_str())
    }

    /// The one sample `name` with exactly these labels; panics (with the text) if there is
    /// none or more than one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let hits: Vec<_> = self
            .samples(name)
            .into_iter()
            .filter(|s| labels_eq(s, labels))
            .collect();
        match hits.as_slice() {
            [one] => one.value,
            _ => panic!(
                "expected exactly one sample {name}{labels:?}, found {}\n--- /metrics ---\n{}",
                hits.len(),
                self.text
            ),
        }
    }

    /// The sum of every sample `name` whose labels include `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .into_iter()
            .filter(|s| labels_match(s, filter))
            .map(|s| s.value)
            .sum()
    }

    /// The distinct values of label `label` among samples `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .samples(name)
            .into_iter()
            .filter_map(|s| s.labels.get(label).cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// `GET /metrics` (with `token` if given), checked and parsed.
pub fn scrape(admin: SocketAddr, token: Option<&str>) -> Metrics {
    parse_prometheus(&scrape_text(admin, token))
}

fn scrape_text(admin: SocketAddr, token: Option<&str>) -> String {
    let r = admin_get(admin, "/metrics", token);
    assert_eq!(r.status, 200, "GET /metrics:\n{}\n{}", r.head.raw, r.body);
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "/metrics Content-Type must be the Prometheus text format 0.0.4; got {ct:?}"
    );
    r.body
}

/// Scrapes until `cond` holds (counters are updated just after a response is written, so a
/// scrape racing the last response may not see it yet); panics after `within` with the last
/// scrape. The proxy announces none of these updates (a shard's counters are read by asking
/// it), so the deadline is what bounds the wait; scrapes run on a 25 ms schedule up to it,
/// so that a wait for the once-a-second pool sweep does not keep both cores busy with scrapes.
/// Waits on anything that does announce itself use its event instead: the proxy's output
/// (`Proxy::wait_for_output_where`), an origin's state (`Origin::wait_for`), a file written
/// (inotify, `observability::wait_for_files`).
pub fn scrape_until(
    admin: SocketAddr,
    token: Option<&str>,
    within: Duration,
    what: &str,
    cond: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + within;
    let mut next = Instant::now();
    loop {
        let text = scrape_text(admin, token);
        let m = parse_quick(&text);
        if cond(&m) {
            // The scrape that satisfied the condition, through Prometheus's parser too.
            let full = parse_prometheus(&text);
            assert!(
                cond(&full),
                "the condition for {what} holds with the line check but not with prometheus_client"
            );
            return full;
        }
        if Instant::now() >= deadline {
            panic!(
                "/metrics did not show {what} within {within:?}\n--- last scrape ---\n{}",
                m.text
            );
        }
        // The next scrape on a 25 ms schedule, the last one at the deadline itself.
        next = (next + SCRAPE_PACE).min(deadline);
        super::wait_until(next);
    }
}

/// The schedule of [`scrape_until`]'s scrapes.
const SCRAPE_PACE: Duration = Duration::from_millis(25);
