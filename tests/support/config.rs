//! The config TOML the integration tests start the proxy with: [`Config`] renders the
//! sections in a fixed order from raw TOML values, and starts a [`Proxy`] on it.

use super::{Engine, Proxy};
use std::net::SocketAddr;

/// Config TOML builder. Sections are rendered in a fixed order; values are
/// raw TOML (so strings must carry their quotes).
#[derive(Clone)]
pub struct Config {
    pub server: Vec<(String, String)>,
    pub timeouts: Vec<(String, String)>,
    pub limits: Vec<(String, String)>,
    pub listeners: usize,
    /// Raw `[[listener]]` bodies rendered after the `listeners` plain ones (TLS listeners).
    pub raw_listeners: Vec<String>,
    pub routes: Vec<String>,
    pub upstreams: Vec<String>,
    /// Extra top-level sections (`[admin]`, `[log]`, `[request_id]`, ...), raw TOML bodies.
    pub sections: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

fn set(list: &mut Vec<(String, String)>, key: &str, raw: &str) {
    list.retain(|(k, _)| k != key);
    list.push((key.to_string(), raw.to_string()));
}

impl Config {
    /// One listener on 127.0.0.1:0, a short shutdown timeout, no routes.
    pub fn new() -> Config {
        Config {
            server: vec![("shutdown_timeout".into(), "\"10s\"".into())],
            timeouts: vec![("upstream_connect".into(), "\"2s\"".into())],
            limits: vec![],
            listeners: 1,
            raw_listeners: vec![],
            routes: vec![],
            upstreams: vec![],
            sections: vec![],
        }
    }

    /// A catch-all route to a single upstream "main" with one backend.
    pub fn single(backend: SocketAddr) -> Config {
        Config::new().upstream("main", &[backend]).route("main", "")
    }

    pub fn server(mut self, key: &str, raw: &str) -> Self {
        set(&mut self.server, key, raw);
        self
    }

    /// A duration/value under [timeouts]; `value` is quoted automatically.
    pub fn timeout(mut self, key: &str, value: &str) -> Self {
        set(&mut self.timeouts, key, &format!("\"{value}\""));
        self
    }

    /// A value under [limits]; `raw` is raw TOML (e.g. `4096` or `"16MiB"`).
    pub fn limit(mut self, key: &str, raw: &str) -> Self {
        set(&mut self.limits, key, raw);
        self
    }

    /// A [[route]] to `upstream`, with extra raw TOML lines (may be empty),
    /// e.g. `host = "a.example"\npath_prefix = "/v1/"`.
    pub fn route(mut self, upstream: &str, extra: &str) -> Self {
        self.routes
            .push(format!("{extra}\nupstream = \"{upstream}\""));
        self
    }

    /// A [[route]] with no upstream (one with `respond` or `redirect`): raw TOML lines.
    pub fn route_without_upstream(mut self, raw: &str) -> Self {
        self.routes.push(raw.to_string());
        self
    }

    /// A top-level `[name]` section with `raw` TOML lines as its body (replacing an earlier
    /// section of that name), e.g. `.section("admin", "address = \"127.0.0.1:0\"")`.
    pub fn section(mut self, name: &str, raw: &str) -> Self {
        set(&mut self.sections, name, raw);
        self
    }

    /// `[admin]` on 127.0.0.1:0, with `extra` raw TOML lines (may be empty).
    pub fn admin(self, extra: &str) -> Self {
        self.section("admin", &format!("address = \"127.0.0.1:0\"\n{extra}"))
    }

    /// Only this one listener: a raw `[[listener]]` body, e.g. a TLS one.
    pub fn only_listener(self, raw: &str) -> Self {
        self.only_listeners(&[raw])
    }

    /// Only these listeners, raw `[[listener]]` bodies, in this order.
    pub fn only_listeners(mut self, raws: &[&str]) -> Self {
        self.listeners = 0;
        self.raw_listeners = raws.iter().map(|r| r.to_string()).collect();
        self
    }

    pub fn upstream(self, name: &str, backends: &[SocketAddr]) -> Self {
        self.upstream_with(name, backends, "")
    }

    pub fn upstream_with(mut self, name: &str, backends: &[SocketAddr], extra: &str) -> Self {
        let list: Vec<String> = backends
            .iter()
            .map(|a| format!("{{ address = \"{a}\" }}"))
            .collect();
        self.upstreams.push(format!(
            "name = \"{name}\"\nbackends = [{}]\n{extra}",
            list.join(", ")
        ));
        self
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let kv = |s: &mut String, list: &[(String, String)]| {
            for (k, v) in list {
                s.push_str(&format!("{k} = {v}\n"));
            }
        };
        s.push_str("[server]\n");
        kv(&mut s, &self.server);
        if !self.timeouts.is_empty() {
            s.push_str("\n[timeouts]\n");
            kv(&mut s, &self.timeouts);
        }
        if !self.limits.is_empty() {
            s.push_str("\n[limits]\n");
            kv(&mut s, &self.limits);
        }
        for (name, body) in &self.sections {
            s.push_str(&format!("\n[{name}]\n{}\n", body.trim()));
        }
        for _ in 0..self.listeners {
            s.push_str("\n[[listener]]\naddress = \"127.0.0.1:0\"\n");
        }
        for l in &self.raw_listeners {
            s.push_str(&format!("\n[[listener]]\n{}\n", l.trim()));
        }
        for r in &self.routes {
            s.push_str(&format!("\n[[route]]\n{}\n", r.trim()));
        }
        for u in &self.upstreams {
            s.push_str(&format!("\n[[upstream]]\n{}\n", u.trim()));
        }
        s
    }

    pub fn start(&self, engine: Engine) -> Proxy {
        Proxy::start(&self.render(), engine)
    }

    pub fn start_shards(&self, engine: Engine, shards: usize) -> Proxy {
        Proxy::start_shards(&self.render(), engine, shards)
    }
}
