//! `edgeshard reload`: the command-line client of a running process's admin API. It finds the
//! `[admin]` address and token in the configuration file (read leniently: the file may be
//! the invalid one being reloaded), POSTs `/reload` and prints the outcome. Not part of the
//! request path; the reload itself is `edgeshard::reload`.

use std::io::Write;

use anyhow::{bail, Context, Result};

/// `edgeshard reload`: POST /reload to the running process, print what it answered.
pub fn reload(
    config: Option<&std::path::Path>,
    admin: Option<std::net::SocketAddr>,
    token: Option<String>,
) -> Result<i32> {
    use std::io::Read;
    let (addr, token) = match (admin, config) {
        (Some(a), _) => (a, token),
        (None, Some(path)) => admin_of(path)?,
        (None, None) => bail!("give --config FILE or --admin ADDR"),
    };
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .with_context(|| {
            format!("cannot reach the admin API on {addr}; is edgeshard running with [admin]?")
        })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "POST /reload HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .context("reading the admin API's answer")?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    let value: Option<serde_json::Value> = serde_json::from_str(body).ok();
    // The admin API's answer, not any server's 200: a listener or a backend at that address
    // answers too, and nothing was reloaded.
    let ok = status == "200" && value.as_ref().is_some_and(|v| v["result"] == "ok");
    match value.filter(|v| v["result"].is_string()) {
        Some(v) if ok => {
            println!("reloaded: generation {}", v["generation"]);
            for n in v["not_applied"].as_array().into_iter().flatten() {
                println!(
                    "not applied until restart: {}",
                    n.as_str().unwrap_or_default()
                );
            }
            warnings(&v);
        }
        Some(v) if v["applied"] == true => {
            eprintln!(
                "reloaded with errors: generation {} is in force, but:",
                v["generation"]
            );
            for e in v["errors"].as_array().into_iter().flatten() {
                eprintln!("  {}", e.as_str().unwrap_or_default());
            }
            warnings(&v);
        }
        Some(v) => {
            eprintln!("reload failed; the configuration in force is unchanged:");
            for e in v["errors"].as_array().into_iter().flatten() {
                eprintln!("  {}", e.as_str().unwrap_or_default());
            }
        }
        None if status == "401" => eprintln!(
            "reload: the admin API answered 401: {}. The running process checks the [admin] token \
it started with (a reload does not change it): if the file's token changed since, pass the one in \
force with --token (the new one takes effect at a restart or binary upgrade)",
            body.trim()
        ),
        None => eprintln!(
            "reload: {addr} answered {status} but not as edgeshard's admin API does (no \
{{\"result\": ...}}); nothing was reloaded. Is this the [admin] address?{}",
            if body.trim().is_empty() {
                String::new()
            } else {
                format!(" It said: {}", body.trim())
            }
        ),
    }
    Ok(if ok { 0 } else { 1 })
}

/// The `[admin]` address and token of a configuration file, read leniently: the file may be
/// the invalid one being reloaded, and the running process reports what is wrong with it.
fn admin_of(path: &std::path::Path) -> Result<(std::net::SocketAddr, Option<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: toml::Value = toml::from_str(&text).with_context(|| {
        format!(
            "{}: cannot find [admin] (the file does not parse)",
            path.display()
        )
    })?;
    let admin = value.get("admin").with_context(|| {
        format!(
            "{}: no [admin] section: reload needs the admin API (or send SIGHUP)",
            path.display()
        )
    })?;
    let addr: std::net::SocketAddr = admin
        .get("address")
        .and_then(toml::Value::as_str)
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{}: admin.address is not an address", path.display()))?;
    if addr.port() == 0 {
        bail!("{}: admin.address has port 0; use --admin with the address the running process printed", path.display());
    }
    let token = match (
        admin.get("token").and_then(toml::Value::as_str),
        admin.get("token_file").and_then(toml::Value::as_str),
    ) {
        (Some(t), _) => Some(t.to_owned()),
        // Relative to the file's directory, as the configuration reads it.
        (None, Some(f)) => {
            let f = path.parent().unwrap_or(std::path::Path::new(".")).join(f);
            let t = std::fs::read_to_string(&f).with_context(|| {
                format!(
                    "{}: admin.token_file: cannot read {}",
                    path.display(),
                    f.display()
                )
            })?;
            Some(t.trim().to_owned())
        }
        (None, None) => None,
    };
    Ok((addr, token))
}

/// The file's warnings from a reload put in force, one per line on stderr.
fn warnings(v: &serde_json::Value) {
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("{}", w.as_str().unwrap_or_default());
    }
}
