#!/usr/bin/env python3
"""TLS termination: 1 edgeshard shard vs 1 nginx worker on the same CPU, same certificate, same origin.

For each certificate type (ECDSA P-256, RSA 2048; generated here with `openssl req`, CA-signed,
the cert file holds leaf + CA) both proxies are started with that certificate, and these cells run,
every cell `--reps` times with the target order rotating per repetition (medians in tls.md):

  full      new TLS connection per request, no resumption (tlsgen handshake --resume off):
            handshakes/s and server CPU-us per handshake (+ the request it carries)
  resumed   the same with session tickets (tlsgen --resume on; resumed count checked per run)
  ka        keep-alive GET / (small body) over TLS, wrk -c 50: CPU-us/request
  get1m     keep-alive GET of a 1 MiB file over TLS, wrk -c 50: CPU-us/response
  paced     open-loop keep-alive GETs on established TLS connections (tlsgen paced): p99
  flood     the same while a full-handshake flood (tlsgen handshake, nice 19) runs against the same proxy
  idle      N idle TLS connections (handshake + one request each): RSS delta / N (fresh proxy per rep)

Server CPU = utime+stime from /proc/PID/stat of the whole process (nginx: master + worker), as
in driver.py. When the server was not saturated (busy < 90% of the run) the client was the bottleneck:
then handshakes/s says little and CPU-us per handshake is the robust figure (tls.md says which).

  python3 loadtest/tls.py --out DIR [--reps 3] [--duration 4] [--keys ecdsa,rsa] [--cells ...]
"""
import argparse
import csv
import datetime
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import driver as d  # noqa: E402  (shared helpers: Proc, start_origin, cpu_ticks, rss_kb, fmt, ...)

CELLS = ("full", "resumed", "ka", "get1m", "paced", "flood", "idle")
KEYS = {
    "ecdsa": dict(newkey=["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], desc="ECDSA P-256",
                  ku="digitalSignature"),
    "rsa": dict(newkey=["-newkey", "rsa:2048"], desc="RSA 2048", ku="digitalSignature,keyEncipherment"),
}
TARGETS = ("edgeshard", "nginx")
FIELDS = ["time", "key", "cell", "target", "rep", "threads", "conns", "duration_s", "completed", "per_s",
          "full", "resumed", "errors", "lat_p50_us", "lat_p90_us", "lat_p99_us", "lat_p999_us", "lat_max_us",
          "lag_p99_us", "offered_rps", "server_cpu_s", "server_busy", "cpu_us_per_op", "origin_cpu_us_per_op", "client_cpu_s",
          "others_on_proxy_cpu", "flood_per_s", "rss_before_kb", "rss_after_kb", "idle_open", "idle_failed",
          "idle_alive", "bytes_per_idle_conn", "version", "suite", "engine", "note"]
CERT_CMDS = []  # the openssl commands, for tls.md


# ----------------------------------------------------------------------------------------
# certificates

def openssl(args, cwd):
    CERT_CMDS.append("openssl " + " ".join(args))
    r = subprocess.run(["openssl"] + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    if r.returncode != 0:
        raise SystemExit("openssl %s failed:\n%s" % (" ".join(args), r.stdout.decode(errors="replace")))


def make_cert(tmp, key):
    """CA + leaf for localhost / 127.0.0.1 of the given key type; returns (fullchain.pem, leaf.key)."""
    k = KEYS[key]
    dd = os.path.join(tmp, "certs-" + key)
    os.makedirs(dd, exist_ok=True)
    openssl(["req", "-x509"] + k["newkey"] + ["-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
                                            "-subj", "/CN=edgeshard bench CA %s" % key], dd)
    openssl(["req"] + k["newkey"] + ["-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost"], dd)
    with open(os.path.join(dd, "leaf.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,%s\nextendedKeyUsage=serverAuth\n" % k["ku"])
    openssl(["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "30", "-out", "leaf.pem", "-extfile", "leaf.ext"], dd)
    with open(os.path.join(dd, "fullchain.pem"), "w") as f:
        f.write(d.read(os.path.join(dd, "leaf.pem")) + d.read(os.path.join(dd, "ca.pem")))
    os.chmod(dd, 0o755)
    for n in os.listdir(dd):
        os.chmod(os.path.join(dd, n), 0o644)
    return os.path.join(dd, "fullchain.pem"), os.path.join(dd, "leaf.key")


# ----------------------------------------------------------------------------------------
# proxies

NGINX_TLS = """    server {
        listen 127.0.0.1:%(port)d ssl default_server backlog=4096;
        server_name _;
        ssl_certificate     %(cert)s;
        ssl_certificate_key %(key)s;
        ssl_protocols TLSv1.2 TLSv1.3;
        # Mozilla "intermediate" TLS 1.2 suites; TLS 1.3 suites are OpenSSL's defaults
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
        ssl_prefer_server_ciphers off;
        # ssl_ecdh_curve: nginx's default (auto: X25519, P-256, P-384 with OpenSSL 3.0)
        ssl_session_cache shared:SSL:10m;
        ssl_session_timeout 1d;
        ssl_session_tickets on;
        location / { proxy_pass http://origin; }
    }"""


def start_nginx(cfg, cert, key):
    conf = os.path.join(cfg.tmp, "nginx-tls.conf")
    text = d.render("nginx-proxy.conf.tmpl", dict(
        WORKERS=1, AFFINITY=d.nginx_affinity(cfg.proxy_cpus, 1), NOFILE=cfg.nofile,
        WORKER_CONNECTIONS=max(1024, cfg.nofile - 64), PREFIX=cfg.tmp, ORIGIN_PORT=cfg.ports["origin"],
        KEEPALIVE=cfg.keepalive, SERVERS=NGINX_TLS % dict(port=cfg.ports["nginx"], cert=cert, key=key)))
    with open(conf, "w") as f:
        f.write(text)
    argv = ["taskset", "-c", d.cpus_str(cfg.proxy_cpus), cfg.nginx, "-p", cfg.tmp,
            "-e", os.path.join(cfg.tmp, "proxy-error.log"), "-c", conf, "-g", "daemon off;"]
    p = d.Proc("nginx", argv, os.path.join(cfg.tmp, "nginx.out"), kind="nginx")
    if not d.wait_port(cfg.ports["nginx"], p, cfg.ready_timeout):
        out = p.output() + d.read(os.path.join(cfg.tmp, "proxy-error.log"))
        p.stop(timeout=5)
        raise RuntimeError("nginx did not start\n" + out[-3000:])
    t = time.monotonic() + 10
    while not d.children(p.pid) and time.monotonic() < t:
        time.sleep(0.05)
    return p, "epoll"


def edgeshard_tls_conf(cfg, cert, key):
    text = d.edgeshard_conf(cfg, "default")
    addr = 'address = "127.0.0.1:%d"' % cfg.ports["edgeshard"]
    if addr not in text:
        raise SystemExit("driver.edgeshard_conf changed: no %r line" % addr)
    return text.replace(addr, addr + '\ntls = { certificates = [ { cert = "%s", key = "%s" } ] }' % (cert, key), 1)


def start_edgeshard(cfg, cert, key):
    conf = os.path.join(cfg.tmp, "edgeshard-tls.toml")
    with open(conf, "w") as f:
        f.write(edgeshard_tls_conf(cfg, cert, key))
    chk = d.run_cmd([cfg.edgeshard, "check", "--config", conf], timeout=30)
    argv = ["taskset", "-c", d.cpus_str(cfg.proxy_cpus), cfg.edgeshard, "run", "--config", conf,
            "--cpus", d.cpus_str(cfg.proxy_cpus), "--shards", "1", "--io-engine", cfg.io_engine]
    p = d.Proc("edgeshard", argv, os.path.join(cfg.tmp, "edgeshard.out"))
    m = d.wait_line(p, r"^edgeshard: ready shards=(\d+) engine=(\w+)", cfg.ready_timeout)
    if not m or not d.wait_port(cfg.ports["edgeshard"], p, 10):
        out = p.output()
        p.stop(timeout=5)
        raise RuntimeError("edgeshard did not become ready (check said: %s)\n%s" % (chk, out[-3000:]))
    return p, m.group(2)


def start(cfg, target, cert, key):
    return (start_edgeshard if target == "edgeshard" else start_nginx)(cfg, cert, key)


# ----------------------------------------------------------------------------------------
# clients

def cpu_busy_s(cpus):
    """Busy seconds (all but idle and iowait) of the given CPUs, from /proc/stat."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts[0].startswith("cpu") and parts[0][3:].isdigit() and int(parts[0][3:]) in cpus:
                v = [int(x) for x in parts[1:]]
                total += sum(v[:8]) - v[3] - v[4]  # user nice system idle iowait irq softirq steal
    return total / d.CLK_TCK


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def parse_result(out, tag="RESULT"):
    m = re.search(r"^%s (.*)$" % tag, out, re.M)
    if not m:
        return None
    res = {}
    for kv in m.group(1).split():
        k, _, v = kv.partition("=")
        try:
            res[k] = float(v)
        except ValueError:
            res[k] = v
    return res


def tlsgen_argv(cfg, mode, port, **kw):
    argv = ["taskset", "-c", d.cpus_str(cfg.client_cpus), cfg.tlsgen, mode, "--addr", "127.0.0.1:%d" % port]
    for k, v in kw.items():
        argv += ["--" + k, str(v)]
    return argv


def run_client(argv, timeout):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                           start_new_session=True)
        return r.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        return (e.stdout or b"").decode(errors="replace") + "\nTIMEOUT"


def wrk_tls(cfg, port, path, duration):
    argv = ["taskset", "-c", d.cpus_str(cfg.client_cpus), cfg.wrk, "-t", str(max(1, len(cfg.client_cpus))),
            "-c", str(cfg.wrk_conns), "-d", "%ds" % duration, "--timeout", "5s", "--latency",
            "-s", os.path.join(HERE, "bench.lua"), "https://localhost:%d%s" % (port, path)]
    out = run_client(argv, duration + 30)
    res = parse_result(out)
    if res:
        res["completed"] = res["requests"]
        res["duration_s"] = res["duration_us"] / 1e6
        res["errors"] = sum(res[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
        for k in ("p50", "p90", "p99", "p999", "max"):
            res[k + "_us"] = res["lat_%s_us" % k]
    return res, out


# ----------------------------------------------------------------------------------------
# one measured run

def new_row(cfg, key, cell, target, rep, engine):
    row = {k: "" for k in FIELDS}
    row.update(time=datetime.datetime.now().isoformat(timespec="seconds"), key=key, cell=cell, target=target,
               rep=rep, engine=engine)
    return row


def measured(cfg, key, cell, target, rep, proc, origin, engine):
    port = cfg.ports[target]
    row = new_row(cfg, key, cell, target, rep, engine)
    flood = None
    ppids, opids = proc.pids(), origin.pids()
    c0 = children_cpu_s()
    if cell == "flood":
        flood = d.Proc("flood", ["nice", "-n", "19"] + tlsgen_argv(
            cfg, "handshake", port, threads=cfg.hs_threads, duration=cfg.duration + 1.5, resume="off"),
            os.path.join(cfg.tmp, "flood-%s-%s-%d.out" % (key, target, rep)))
        time.sleep(0.5)  # the flood is running before the first paced request
    p0, o0, t0, b0 = d.cpu_ticks(ppids), d.cpu_ticks(opids), time.monotonic(), cpu_busy_s(cfg.proxy_cpus)
    if cell in ("full", "resumed"):
        row.update(threads=cfg.hs_threads)
        out = run_client(tlsgen_argv(cfg, "handshake", port, threads=cfg.hs_threads, duration=cfg.duration,
                                     resume="on" if cell == "resumed" else "off"), cfg.duration + 30)
        res = parse_result(out)
    elif cell in ("paced", "flood"):
        row.update(conns=cfg.paced_conns, offered_rps=cfg.paced_rate, threads=cfg.hs_threads if cell == "flood" else "")
        out = run_client(tlsgen_argv(cfg, "paced", port, conns=cfg.paced_conns, rate=cfg.paced_rate,
                                     duration=cfg.duration), cfg.duration + 30)
        res = parse_result(out)
    else:
        row.update(conns=cfg.wrk_conns)
        res, out = wrk_tls(cfg, port, "/" if cell == "ka" else "/static/1m.bin", cfg.duration)
    p1, o1, t1, b1 = d.cpu_ticks(proc.pids()), d.cpu_ticks(origin.pids()), time.monotonic(), cpu_busy_s(cfg.proxy_cpus)
    if flood is not None:
        try:
            flood.p.wait(timeout=cfg.duration + 30)
        except subprocess.TimeoutExpired:
            pass
        fout = flood.output()
        flood.stop(timeout=5)
        fres = parse_result(fout)
        if fres:
            row["flood_per_s"] = "%.1f" % fres["per_s"]
        else:
            row["note"] = "flood client failed: " + fout.strip().replace("\n", " | ")[-200:]
    row["client_cpu_s"] = "%.2f" % (children_cpu_s() - c0)
    if res is None:
        row["note"] = (row["note"] + "; " if row["note"] else "") + "client failed: " + \
            out.strip().replace("\n", " | ")[-300:]
        d.log("  %s/%s/%s rep %d: client failed: %s" % (key, cell, target, rep, out[-500:]))
        return row
    n = res["completed"]
    wall = t1 - t0
    cpu_s = (p1 - p0) / d.CLK_TCK
    row.update(duration_s="%.3f" % res["duration_s"], completed=int(n), per_s="%.1f" % (n / res["duration_s"]),
               errors=int(res["errors"]), lat_p50_us=int(res["p50_us"]), lat_p90_us=int(res["p90_us"]),
               lat_p99_us=int(res["p99_us"]), lat_p999_us=int(res["p999_us"]), lat_max_us=int(res["max_us"]),
               server_cpu_s="%.2f" % cpu_s, server_busy="%.2f" % (cpu_s / wall if wall else 0),
               # busy time of the proxy CPU that was not the proxy (other processes, softirq charged
               # elsewhere): the interference of whatever else runs on the host
               others_on_proxy_cpu="%.2f" % max(0.0, ((b1 - b0) - cpu_s) / wall if wall else 0))
    for k in ("full", "resumed", "version", "suite"):
        if k in res:
            row[k] = int(res[k]) if k in ("full", "resumed") else res[k]
    if "lag_p99_us" in res and cell in ("paced", "flood"):
        row["lag_p99_us"] = int(res["lag_p99_us"])
    if n > 0 and cell != "flood":  # with the flood the server's CPU goes mostly to the flood's handshakes
        row["cpu_us_per_op"] = "%.2f" % (cpu_s * 1e6 / n)
        row["origin_cpu_us_per_op"] = "%.2f" % ((o1 - o0) / d.CLK_TCK * 1e6 / n)
    if res.get("err_handshake") or res.get("err_io"):
        m = re.search(r"^LAST_ERROR (.*)$", out, re.M)
        if m:
            row["note"] = (row["note"] + "; " if row["note"] else "") + "last error: " + m.group(1)[:200]
    if not proc.alive():
        row["note"] = (row["note"] + "; " if row["note"] else "") + "proxy exited during run"
    extra = ""
    if cell == "resumed":
        extra = " resumed %s/%s" % (row["resumed"], n)
    if cell == "flood":
        extra = " flood %s hs/s" % row["flood_per_s"]
    d.log("  %-5s %-7s %-9s rep %d: %8.0f /s  cpu %7s us/op  busy %s others %s  p50 %6dus p99 %6dus  errs %d%s"
          % (key, cell, target, rep, n / res["duration_s"], row["cpu_us_per_op"] or "-", row["server_busy"],
             row["others_on_proxy_cpu"], row["lat_p50_us"], row["lat_p99_us"], row["errors"], extra))
    return row


def idle(cfg, key, target, rep, proc, engine):
    row = new_row(cfg, key, "idle", target, rep, engine)
    row.update(conns=cfg.idle_conns)
    time.sleep(0.5)
    before = d.rss_kb(proc.pids())
    cl = d.Proc("tlsgen-idle", tlsgen_argv(cfg, "idle", cfg.ports[target], conns=cfg.idle_conns, threads=4,
                                           hold=120),
                os.path.join(cfg.tmp, "idle-%s-%s-%d.out" % (key, target, rep)), stdin=subprocess.PIPE)
    try:
        m = d.wait_line(cl, r"^READY open=(\d+) ok=(\d+) failed=(\d+)", 100)
        if not m:
            row["note"] = "idle client did not finish opening: " + cl.output()[-300:]
            return row
        time.sleep(cfg.idle_settle)
        after = d.rss_kb(proc.pids())
        try:
            cl.p.stdin.write(b"done\n")
            cl.p.stdin.flush()
        except OSError:
            pass
        a = d.wait_line(cl, r"^ALIVE (\d+)", 30)
        opened = int(m.group(1))
        row.update(rss_before_kb=before, rss_after_kb=after, idle_open=opened, idle_failed=int(m.group(3)),
                   idle_alive=int(a.group(1)) if a else "",
                   bytes_per_idle_conn="%.0f" % ((after - before) * 1024.0 / opened) if opened else "")
        if int(m.group(3)):
            le = re.search(r"^LAST_ERROR (.*)$", cl.output(), re.M)
            row["note"] = "last error: " + (le.group(1)[:200] if le else "?")
        d.log("  %-5s idle    %-9s rep %d: open %d failed %s alive %s  RSS %d -> %d kB  => %s bytes/conn"
              % (key, target, rep, opened, m.group(3), row["idle_alive"], before, after, row["bytes_per_idle_conn"]))
    finally:
        try:
            cl.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        cl.stop(timeout=5)
    return row


# ----------------------------------------------------------------------------------------
# the matrix

def run(a):
    cfg = d.base_cfg(a)
    if cfg.shards != 1:
        raise SystemExit("tls.py compares 1 shard with 1 worker")
    cfg.keepalive = 1024
    cfg.wrk = a.wrk
    cfg.tlsgen = a.tlsgen
    cfg.duration, cfg.reps, cfg.warmup = a.duration, a.reps, a.warmup
    cfg.hs_threads, cfg.wrk_conns = a.hs_threads, a.wrk_conns
    cfg.paced_conns, cfg.paced_rate = a.paced_conns, a.paced_rate
    cfg.idle_conns, cfg.idle_settle = a.idle_conns, a.idle_settle
    targets = [t for t in a.targets.split(",") if t]
    keys = [k for k in a.keys.split(",") if k]
    cells = [c for c in a.cells.split(",") if c]
    for c in cells:
        if c not in CELLS:
            raise SystemExit("unknown cell %r (known: %s)" % (c, ", ".join(CELLS)))
    for k in keys:
        if k not in KEYS:
            raise SystemExit("unknown key %r (known: %s)" % (k, ", ".join(KEYS)))
    if not os.access(cfg.tlsgen, os.X_OK):
        raise SystemExit("tlsgen not built: %s" % cfg.tlsgen)
    if "edgeshard" in targets and not os.access(cfg.edgeshard, os.X_OK):
        raise SystemExit("edgeshard not built: %s" % cfg.edgeshard)
    if cfg.idle_conns + 512 > cfg.nofile:
        d.log("warning: nofile hard limit %d is low for %d idle connections" % (cfg.nofile, cfg.idle_conns))
    stem = os.path.join(a.out, a.name)
    rows, engines = [], {}
    t_start = time.monotonic()
    csv_path = stem + ".csv"
    new = a.fresh or not os.path.exists(csv_path)
    if not new:
        with open(csv_path, newline="") as f:
            rd = csv.DictReader(f)
            old_fields, old_rows = rd.fieldnames, list(rd)
        if old_fields != FIELDS:  # an older column set: rewrite with the current one, then append
            d.log("%s: migrating %d rows to the current columns" % (csv_path, len(old_rows)))
            with open(csv_path, "w", newline="") as f:
                w0 = csv.DictWriter(f, fieldnames=FIELDS, restval="", extrasaction="ignore")
                w0.writeheader()
                w0.writerows(old_rows)
    csvf = open(csv_path, "w" if new else "a", newline="")
    w = csv.DictWriter(csvf, fieldnames=FIELDS, extrasaction="ignore")
    if new:
        w.writeheader()

    def emit(row):
        w.writerow(row)
        csvf.flush()
        rows.append(row)

    procs = {}
    try:
        origin = d.start_origin(cfg)
        for key in keys:
            cert, keyf = make_cert(cfg.tmp, key)
            d.log("certificate %s: %s" % (KEYS[key]["desc"], cert))
            for t in targets:
                procs[t], engines[t] = start(cfg, t, cert, keyf)
            for cell in cells:
                if cell == "idle":
                    continue
                if cfg.warmup > 0:
                    for t in targets:
                        tmp = dict(cfg.__dict__)
                        cfg.duration = cfg.warmup
                        measured(cfg, key, "paced" if cell == "flood" else cell, t, -1, procs[t], origin, engines[t])
                        cfg.__dict__.update(tmp)
                for rep in range(cfg.reps):
                    k = rep % len(targets)
                    for t in targets[k:] + targets[:k]:
                        if not procs[t].alive():
                            d.log("  %s died (exit %s); restarting:\n%s" % (t, procs[t].p.returncode,
                                                                            procs[t].output()[-2000:]))
                            procs[t].stop()
                            procs[t], engines[t] = start(cfg, t, cert, keyf)
                        emit(measured(cfg, key, cell, t, rep, procs[t], origin, engines[t]))
            if "idle" in cells:
                for rep in range(cfg.reps):
                    k = rep % len(targets)
                    for t in targets[k:] + targets[:k]:
                        # a fresh process: RSS before must not include what the other cells grew
                        procs[t].stop()
                        procs[t], engines[t] = start(cfg, t, cert, keyf)
                        emit(idle(cfg, key, t, rep, procs[t], engines[t]))
            for t in list(procs):
                procs.pop(t).stop()
    finally:
        d.stop_all()
        csvf.close()
        for src, dst in (("nginx-tls.conf", a.name + "-nginx.conf"), ("edgeshard-tls.toml", a.name + "-edgeshard.toml")):
            if os.path.exists(os.path.join(cfg.tmp, src)):
                shutil.copy(os.path.join(cfg.tmp, src), os.path.join(a.out, dst))
        for lf in ("proxy-error.log", "edgeshard.out"):
            txt = d.read(os.path.join(cfg.tmp, lf))
            if lf == "edgeshard.out":
                txt = "\n".join(l for l in txt.splitlines() if not l.startswith("edgeshard: ready"))
            if txt.strip():
                with open(os.path.join(a.out, "%s-%s" % (a.name, lf)), "w") as f:
                    f.write(txt[-20000:])
        if a.keep_tmp:
            d.log("temp dir kept: %s" % cfg.tmp)
        else:
            shutil.rmtree(cfg.tmp, ignore_errors=True)
    d.write_env(cfg, stem + "-env.txt", engines)
    with open(stem + "-env.txt", "a") as f:
        f.write("\ntls.py options: %s\ntlsgen: %s\nwall time: %.0f s\n"
                % (" ".join(sys.argv[1:]), cfg.tlsgen, time.monotonic() - t_start))
    summarize(a.out, a.name, cfg, " ".join(sys.argv[1:]))
    d.log("done in %.0f s: %s.md" % (time.monotonic() - t_start, stem))


# ----------------------------------------------------------------------------------------
# summary

def paired(rows, key, cell, field, invert=False):
    by = {}
    for r in rows:
        if r["key"] == key and r["cell"] == cell and not r["note"]:
            v = d.fnum(r[field])
            if v is not None:
                by.setdefault(r["rep"], {})[r["target"]] = v
    out = []
    for p in by.values():
        if "edgeshard" in p and "nginx" in p and p["nginx"] and p["edgeshard"]:
            out.append(p["nginx"] / p["edgeshard"] if invert else p["edgeshard"] / p["nginx"])
    return out


TARGET_SPEC = {
    # cell: (what, field, ratio sense, threshold, invert) ; ratio = edgeshard/nginx unless invert
    "full": ("full handshakes/s", ">=", 1.3),
    "resumed": ("resumed handshakes/s", ">=", 1.5),
    "ka": ("keep-alive TLS CPU-us/request", "<=", 0.75),
    "get1m": ("1 MiB over TLS CPU-us/response", "<=", 1.0),
    "idle": ("memory per idle TLS connection", "<=", 1.0),
}


def verdict(ratios, sense, thr):
    if not ratios:
        return "-"
    m = statistics.median(ratios)
    ok = m >= thr if sense == ">=" else m <= thr
    every = all((x >= thr if sense == ">=" else x <= thr) for x in ratios)
    return ("yes" if ok and every else "median only" if ok else "**no**") + " (%d/%d reps)" % (
        sum(1 for x in ratios if (x >= thr if sense == ">=" else x <= thr)), len(ratios))


def summarize(out, name, cfg=None, cmdline=""):
    with open(os.path.join(out, name + ".csv"), newline="") as f:
        rows = [dict({k: "" for k in FIELDS}, **r) for r in csv.DictReader(f) if r["rep"] != "-1"]
    keys = [k for k in KEYS if any(r["key"] == k for r in rows)]
    g = lambda sel, t, fld, nd=0: d.fmt_range([d.fnum(r[fld]) for r in sel if r["target"] == t], nd)
    L = ["# TLS termination: 1 edgeshard shard vs 1 nginx worker", ""]
    if cfg is not None:
        L += ["Proxy CPU %s (both, one at a time under load), clients (tlsgen, wrk) and the origin on CPU %s. "
              "%d s per run, %d repetitions, order rotating per repetition; medians (min–max). Ratios are "
              "edgeshard/nginx **paired by repetition** (same repetition = adjacent in time), then the median."
              % (d.cpus_str(cfg.proxy_cpus), d.cpus_str(cfg.client_cpus), cfg.duration, cfg.reps), ""]
    if cmdline:
        L += ["Command: `loadtest/tls.sh` → `tls.py %s`" % cmdline, ""]
    vers = sorted(set("%s %s" % (r["version"], r["suite"]) for r in rows if r["version"] and r["version"] != "-"))
    if vers:
        L += ["Negotiated by tlsgen (handshake and paced cells): %s; key exchange X25519 (the only group tlsgen "
              "offers). wrk (OpenSSL 3.0) does the ka and get1m cells with its own defaults (TLS 1.3)." %
              ", ".join(vers), ""]
    L += ["## Targets (issue 14)", "",
          "| certificate | figure | edgeshard | nginx | ratio e/n (paired) | target | met |", "|---|---|---|---|---|---|---|"]
    for key in keys:
        sel = [r for r in rows if r["key"] == key and not r["note"]]
        for cell in ("full", "resumed"):
            cs = [r for r in sel if r["cell"] == cell]
            if not cs:
                continue
            busy = [d.fnum(r["server_busy"]) or 0 for r in cs]
            others = [d.fnum(r.get("others_on_proxy_cpu")) or 0 for r in cs]
            # busy < 0.9: the proxy did not use its CPU fully, either because the client was too slow or
            # because something else ran on the proxy CPU (others); say which
            why = ""
            if min(busy) < 0.9:
                why = " (proxy CPU shared with other load: others up to %.2f CPU)" % max(others) \
                    if max(others) > 0.1 else " (server not saturated: client-bound)"
            rr = paired(rows, key, cell, "per_s")
            cap = paired(rows, key, cell, "cpu_us_per_op", invert=True)
            what, sense, thr = TARGET_SPEC[cell]
            L.append("| %s | %s | %s | %s | %s | %s %s | %s |" % (
                KEYS[key]["desc"], what, g(cs, "edgeshard", "per_s"), g(cs, "nginx", "per_s"),
                d.fmt_range(rr, 2), sense, thr, verdict(rr, sense, thr) + why))
            L.append("| %s | CPU-µs per %s handshake → capacity ratio (nginx CPU-µs / edgeshard CPU-µs) | %s | %s | %s | %s %s | %s |" % (
                KEYS[key]["desc"], cell, g(cs, "edgeshard", "cpu_us_per_op", 1), g(cs, "nginx", "cpu_us_per_op", 1),
                d.fmt_range(cap, 2), sense, thr, verdict(cap, sense, thr)))
        for cell in ("ka", "get1m"):
            cs = [r for r in sel if r["cell"] == cell]
            if not cs:
                continue
            rr = paired(rows, key, cell, "cpu_us_per_op")
            what, sense, thr = TARGET_SPEC[cell]
            L.append("| %s | %s | %s | %s | %s | %s %s | %s |" % (
                KEYS[key]["desc"], what, g(cs, "edgeshard", "cpu_us_per_op", 1), g(cs, "nginx", "cpu_us_per_op", 1),
                d.fmt_range(rr, 2), sense, thr, verdict(rr, sense, thr)))
        cs = [r for r in sel if r["cell"] == "idle"]
        if cs:
            rr = paired(rows, key, "idle", "bytes_per_idle_conn")
            L.append("| %s | memory per idle TLS connection (bytes) | %s | %s | %s | <= 1.0 | %s |" % (
                KEYS[key]["desc"], g(cs, "edgeshard", "bytes_per_idle_conn"), g(cs, "nginx", "bytes_per_idle_conn"),
                d.fmt_range(rr, 2), verdict(rr, "<=", 1.0)))
    L += ["", "Handshake rows: *handshakes/s* is the target as written; it is meaningful only when the server was "
          "saturated (`busy` ≥ 0.9 of a CPU in every run, see below). When it was not, the client (one CPU) was "
          "the bottleneck and **CPU-µs per handshake is the robust figure**: its inverse is the handshake rate "
          "one server CPU can sustain, so the capacity ratio = nginx CPU-µs / edgeshard CPU-µs. Each handshake "
          "carries one small GET proxied to the origin (`Connection: close`), so CPU-µs per handshake includes "
          "one request and the TCP connect/close.", ""]
    # p99 with and without flood
    uniq = lambda fld, cells_: ", ".join(sorted(set(r.get(fld) for r in rows if r["cell"] in cells_ and r.get(fld)))) or "?"
    L += ["## p99 of keep-alive requests on established TLS connections, without and with a full-handshake flood",
          "", "tlsgen paced: %s connections opened first, %s req/s in total, latency from each request's intended "
              "send time (a late response delays that connection's next request, and that wait counts). Flood: "
              "tlsgen handshake --resume off, %s threads, `nice 19`, against the same proxy for the whole run. "
              "`client lag` = how late tlsgen itself sent (after max(due time, previous response)): high values "
              "mean the client CPU was short." % (uniq("conns", ("paced", "flood")), uniq("offered_rps", ("paced", "flood")),
                                                  uniq("threads", ("flood",))), "",
          "| certificate | target | p50 µs | p99 µs | p99.9 µs | p99 with flood µs | p99.9 with flood µs | "
          "flood handshakes/s | p99 flood/no flood | errors (no flood / flood) | client lag p99 µs (flood) |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in keys:
        for t in TARGETS:
            p = [r for r in rows if r["key"] == key and r["cell"] == "paced" and r["target"] == t]
            fl = [r for r in rows if r["key"] == key and r["cell"] == "flood" and r["target"] == t]
            if not p and not fl:
                continue
            ok = lambda sel: [r for r in sel if not r["note"]]
            mp, mf = d.med([d.fnum(r["lat_p99_us"]) for r in ok(p)]), d.med([d.fnum(r["lat_p99_us"]) for r in ok(fl)])
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s |" % (
                KEYS[key]["desc"], t, g(ok(p), t, "lat_p50_us"), g(ok(p), t, "lat_p99_us"), g(ok(p), t, "lat_p999_us"),
                g(ok(fl), t, "lat_p99_us"), g(ok(fl), t, "lat_p999_us"), g(ok(fl), t, "flood_per_s"),
                d.fmt(mf / mp if mp and mf else None, 1),
                d.fmt(sum(d.fnum(r["errors"]) or 0 for r in p)), d.fmt(sum(d.fnum(r["errors"]) or 0 for r in fl)),
                g(ok(fl), t, "lag_p99_us")))
    # every cell
    L += ["", "## Every cell (medians, min–max)", "",
          "| certificate | cell | target | ops/s | server CPU-µs/op | server busy (CPUs) | others on the proxy CPU | origin CPU-µs/op | "
          "client CPU s | p50 µs | p99 µs | resumed/completed | errors | runs with a note |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in keys:
        for cell in CELLS:
            if cell == "idle":
                continue
            for t in TARGETS:
                sel = [r for r in rows if r["key"] == key and r["cell"] == cell and r["target"] == t]
                if not sel:
                    continue
                good = [r for r in sel if not r["note"]]
                res = "%d/%d" % (sum(int(r["resumed"] or 0) for r in good), sum(int(r["completed"] or 0) for r in good)) \
                    if cell in ("full", "resumed") else "-"
                L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |" % (
                    KEYS[key]["desc"], cell, t, g(good, t, "per_s"), g(good, t, "cpu_us_per_op", 1),
                    g(good, t, "server_busy", 2), g(good, t, "others_on_proxy_cpu", 2), g(good, t, "origin_cpu_us_per_op", 1), g(good, t, "client_cpu_s", 2),
                    g(good, t, "lat_p50_us"), g(good, t, "lat_p99_us"), res,
                    d.fmt(sum(d.fnum(r["errors"]) or 0 for r in sel)), len(sel) - len(good)))
    idl = [r for r in rows if r["cell"] == "idle"]
    if idl:
        L += ["", "## Idle TLS connections", "",
              "| certificate | target | connections | failed | still open at the end | RSS before kB | RSS after kB | "
              "bytes/connection |", "|---|---|---|---|---|---|---|---|"]
        for key in keys:
            for t in TARGETS:
                sel = [r for r in idl if r["key"] == key and r["target"] == t]
                if sel:
                    L.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                        KEYS[key]["desc"], t, g(sel, t, "idle_open"), g(sel, t, "idle_failed"), g(sel, t, "idle_alive"),
                        g(sel, t, "rss_before_kb"), g(sel, t, "rss_after_kb"), g(sel, t, "bytes_per_idle_conn")))
    notes = [r for r in rows if r["note"]]
    if notes:
        L += ["", "## Runs with a note (left out of the medians)", ""]
        L += ["- %s/%s/%s rep %s: %s" % (r["key"], r["cell"], r["target"], r["rep"], r["note"]) for r in notes]
    with open(os.path.join(out, name + ".md"), "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))


# ----------------------------------------------------------------------------------------
# testssl.sh against the TLS listener(s)

TESTSSL_ARGS = ["--quiet", "--color", "0", "--warnings", "off", "--openssl-timeout", "5", "-p", "-P", "-S", "-E", "-U"]
VULN_IDS = ["heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego", "secure_client_renego", "CRIME_TLS",
            "BREACH", "POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "DROWN", "LOGJAM", "LOGJAM-common_primes",
            "BEAST", "LUCKY13", "RC4"]
PROTO_IDS = ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"]
# findings about the generated test certificate (own CA, 30 days, no CRL/OCSP, no CAA): expected, not the server's
CERT_IDS_PREFIX = ("cert", "DNS_CAA", "certificate_transparency", "OCSP_stapling")


def run_testssl(a):
    cfg = d.base_cfg(a)
    cfg.keepalive = 1024
    targets = [t for t in a.targets.split(",") if t]
    keys = [k for k in a.keys.split(",") if k]
    testssl = shutil.which("testssl") or shutil.which("testssl.sh")
    if not testssl:
        raise SystemExit("testssl not found (apt-get install testssl.sh)")
    version = d.run_cmd([testssl, "--version"], timeout=30)
    m = re.search(r"testssl\S*\s+(\d[\w.+~-]*)", version)
    version = m.group(1) if m else "?"
    results = []
    try:
        origin = d.start_origin(cfg)
        for key in keys:
            cert, keyf = make_cert(cfg.tmp, key)
            for t in targets:
                proc, _ = start(cfg, t, cert, keyf)
                jf = os.path.join(a.out, "%s-%s-%s.json" % (a.name, t, key))
                if os.path.exists(jf):
                    os.remove(jf)
                argv = [testssl] + TESTSSL_ARGS + ["--jsonfile", jf, "127.0.0.1:%d" % cfg.ports[t]]
                d.log("testssl %s %s: %s" % (t, key, " ".join(argv)))
                t0 = time.monotonic()
                out = run_client(argv, a.testssl_timeout)
                d.log("  done in %.0f s" % (time.monotonic() - t0))
                try:
                    import json
                    with open(jf) as f:
                        findings = json.load(f)
                except (OSError, ValueError) as e:
                    findings = []
                    d.log("  no JSON from testssl (%s): %s" % (e, out[-1000:]))
                with open(jf[:-5] + ".cmd", "w") as f:
                    f.write(" ".join(["testssl"] + argv[1:]) + "\n")
                results.append((t, key, argv, findings, out))
                proc.stop()
        origin.stop()
    finally:
        d.stop_all()
        if os.path.exists(os.path.join(cfg.tmp, "edgeshard-tls.toml")):
            shutil.copy(os.path.join(cfg.tmp, "edgeshard-tls.toml"), os.path.join(a.out, a.name + "-edgeshard.toml"))
        shutil.rmtree(cfg.tmp, ignore_errors=True)
    write_testssl_md(a, targets, version, results)


def testssl_from_json(a):
    """Rebuild NAME.md from the NAME-<target>-<key>.json / .cmd files of an earlier run."""
    import json
    targets = [t for t in a.targets.split(",") if t]
    results = []
    for key in [k for k in a.keys.split(",") if k]:
        for t in targets:
            jf = os.path.join(a.out, "%s-%s-%s.json" % (a.name, t, key))
            if os.path.exists(jf):
                with open(jf) as f:
                    findings = json.load(f)
                cmd = d.read(jf[:-5] + ".cmd").split() or ["testssl"]
                results.append((t, key, cmd, findings, ""))
    version = d.run_cmd([shutil.which("testssl") or "testssl", "--version"], timeout=30)
    m = re.search(r"testssl\S*\s+(\d[\w.+~-]*)", version)
    write_testssl_md(a, targets, m.group(1) if m else "?", results)


def write_testssl_md(a, targets, version, results):
    L = ["# testssl.sh against %s's TLS listener" % " and ".join(targets), "",
         "testssl.sh %s (Debian package `testssl.sh`, with the system OpenSSL %s), run by `loadtest/testssl.sh` "
         "(`tls.py --testssl`) on %s. The listener is the one tls.sh benchmarks: `[[listener]] tls = { certificates "
         "= [ { cert, key } ] }` with a certificate generated by `openssl req` (leaf for localhost / 127.0.0.1 "
         "signed by a CA of the same key type; cert file = leaf + CA), every TLS setting at edgeshard's default. "
         "Raw findings: `%s-<target>-<key>.json`; config: `%s-edgeshard.toml`." % (
             version, d.run_cmd(["openssl", "version"]).split()[1] if d.run_cmd(["openssl", "version"]) else "?",
             datetime.date.today().isoformat(), a.name, a.name), ""]
    L += ["| target | certificate | protocols offered | suites offered (TLS 1.2 / 1.3) | vulnerability and "
          "renegotiation checks not OK | other server findings LOW or worse |", "|---|---|---|---|---|---|"]
    for t, key, argv, findings, out in results:
        offered = [e["id"].replace("_", ".") for e in findings if e.get("id") in PROTO_IDS
                   and e.get("finding", "").startswith("offered")]
        n12 = sum(1 for e in findings if e.get("id", "").startswith("cipher-tls1_2_"))
        n13 = sum(1 for e in findings if e.get("id", "").startswith("cipher-tls1_3_"))
        vul = ["%s %s" % (e["id"], e.get("severity")) for e in findings if e.get("id") in VULN_IDS
               and e.get("severity") not in ("OK", "INFO")]
        other = ["%s %s" % (e["id"], e.get("severity")) for e in findings
                 if e.get("severity") in ("LOW", "MEDIUM", "HIGH", "CRITICAL") and e.get("id") not in VULN_IDS
                 and not e.get("id", "").startswith(CERT_IDS_PREFIX)]
        L.append("| %s | %s | %s | %d / %d | %s | %s |" % (
            t, KEYS[key]["desc"], ", ".join(offered) or "-", n12, n13, ", ".join(vul) or "none",
            ", ".join(other) or "none"))
    client_order = any(e.get("id") == "cipher_order" and e.get("severity") not in ("OK", "INFO")
                       for _, _, _, findings, _ in results for e in findings)
    para = ""
    if client_order:
        para = ("`cipher_order` (testssl rates it HIGH) means the server lets the client choose among its suites; "
                "with only forward-secret AEAD suites offered that is harmless (Mozilla's intermediate profile sets "
                "`ssl_prefer_server_ciphers off` for the same reason). ")
    para += ("Certificate findings (own CA, 30-day validity, no CRL/OCSP/CAA) concern the generated test "
             "certificate, not the server, and are listed per section.")
    L += ["", para, ""]
    for t, key, argv, findings, out in results:
        by = {}
        for e in findings:
            by.setdefault(e.get("id", ""), []).append(e)
        f1 = lambda i: (by.get(i) or [{}])[0]
        L += ["## %s, %s certificate" % (t, KEYS[key]["desc"]), "",
              "Command: `%s`" % " ".join(["testssl"] + argv[1:]), ""]
        if not findings:
            L += ["**testssl produced no findings** (timeout or failure); its output ends with:", "", "```",
                  out[-1500:], "```", ""]
            continue
        L += ["| protocol | testssl says | severity |", "|---|---|---|"]
        for i in PROTO_IDS:
            e = f1(i)
            L.append("| %s | %s | %s |" % (i.replace("_", "."), e.get("finding", "-"), e.get("severity", "-")))
        ciphers = {}
        for e in findings:
            mm = re.match(r"cipher-(tls1_\d|tls1|ssl\d)_x", e.get("id", ""))
            if mm:
                parts = e["finding"].split()
                ciphers.setdefault(mm.group(1), []).append(parts[-1] if parts else e["finding"])
        L += ["", "Cipher suites offered (IANA names, in testssl's order by strength):", ""]
        for proto in sorted(ciphers):
            L.append("- %s: %s" % (proto.replace("tls1_", "TLS 1.").replace("_", "."), ", ".join(ciphers[proto])))
        if not ciphers:
            L.append("- (none listed)")
        L += ["", "Negotiation and session:", ""]
        for i in ("protocol_negotiated", "cipher_negotiated", "cipher_order", "ALPN", "TLS_session_ticket",
                  "sessionresumption_ticket", "sessionresumption_ID", "TLS_extensions", "FS", "FS_ECDHE_curves",
                  "FS_TLS12_sig_algs", "FS_TLS13_sig_algs"):
            for e in by.get(i, []):
                L.append("- `%s` (%s): %s" % (i, e.get("severity"), e.get("finding")))
        L += ["", "| vulnerability / renegotiation check | severity | finding |", "|---|---|---|"]
        for i in VULN_IDS:
            for e in by.get(i, []):
                L.append("| %s | %s | %s |" % (i, e.get("severity"), e.get("finding")))
        bad = [e for e in findings if e.get("severity") in ("LOW", "MEDIUM", "HIGH", "CRITICAL")
               and not e.get("id", "").startswith(CERT_IDS_PREFIX)]
        certbad = [e for e in findings if e.get("severity") in ("LOW", "MEDIUM", "HIGH", "CRITICAL")
                   and e.get("id", "").startswith(CERT_IDS_PREFIX)]
        L += ["", "Findings of severity LOW or worse about the server's protocol/cipher/renegotiation setup: %s" %
              ("**none**" if not bad else "")]
        for e in bad:
            L.append("- `%s` **%s**: %s" % (e.get("id"), e.get("severity"), e.get("finding")))
            if e.get("id") == "cipher_order":
                weak = [c for p_ in ciphers.values() for c in p_
                        if not (c.startswith("TLS_AES_") or c.startswith("TLS_CHACHA20_")
                                or (c.startswith("TLS_ECDHE_") and ("_GCM_" in c or "CHACHA20" in c)))]
                L.append("  (the server follows the client's preference; %s)" % (
                    "every suite offered is forward-secret AEAD, so whichever the client prefers is a strong one: "
                    "this is what Mozilla's intermediate profile recommends (`ssl_prefer_server_ciphers off`)"
                    if not weak else "suites that are not forward-secret AEAD are offered: %s" % ", ".join(weak)))
        if certbad:
            L += ["", "About the generated test certificate (own CA, short validity, no CRL/OCSP/CAA; expected, not "
                  "a server property): %s" % "; ".join("`%s` %s" % (e.get("id"), e.get("severity")) for e in certbad)]
        L.append("")
    with open(os.path.join(a.out, a.name + ".md"), "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="tls", help="output file stem (tls.md, tls.csv, tls-env.txt)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--keys", default="ecdsa,rsa")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--targets", default="edgeshard,nginx")
    ap.add_argument("--hs-threads", type=int, default=16, help="tlsgen handshake threads (full, resumed, flood)")
    ap.add_argument("--wrk-conns", type=int, default=50)
    ap.add_argument("--paced-conns", type=int, default=16)
    ap.add_argument("--paced-rate", type=float, default=1000)
    ap.add_argument("--idle-conns", type=int, default=2000)
    ap.add_argument("--idle-settle", type=float, default=1.0)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--proxy-cpus", default="")
    ap.add_argument("--client-cpus", default="")
    ap.add_argument("--io-engine", default="auto")
    ap.add_argument("--base-port", type=int, default=18400)
    ap.add_argument("--edgeshard", default=os.path.join(d.REPO, "target/release/edgeshard"))
    ap.add_argument("--floor", default="")
    ap.add_argument("--nginx-bin", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    ap.add_argument("--tlsgen", default=os.path.join(HERE, "tlsgen/target/release/tlsgen"))
    ap.add_argument("--ready-timeout", type=float, default=30)
    ap.add_argument("--fresh", action="store_true", help="overwrite tls.csv instead of appending")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--summarize", action="store_true", help="only rebuild tls.md from tls.csv")
    ap.add_argument("--testssl", action="store_true",
                    help="run testssl.sh against each target's TLS listener instead (writes NAME.md, NAME-*.json)")
    ap.add_argument("--testssl-timeout", type=int, default=420)
    a = ap.parse_args()
    if a.testssl:
        (testssl_from_json if a.summarize else run_testssl)(a)
        return
    if a.summarize:
        summarize(a.out, a.name)
        return
    import signal
    signal.signal(signal.SIGTERM, d._on_signal)
    try:
        run(a)
    except KeyboardInterrupt:
        d.log("interrupted; processes stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()
