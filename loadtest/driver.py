#!/usr/bin/env python3
"""edgeshard benchmark driver (stdlib; matplotlib optional, for the PNG plots).

Subcommands (normally called through the bash wrappers, see loadtest/README.md):
  matrix      run the benchmark matrix, write raw.csv / env.txt / summary.md / *.png
  summarize   rebuild summary.md and plots from an existing raw.csv
  scaling     combine several matrix result dirs (one per shard count) into scaling.md
  syscalls    strace -c syscalls per request (difference of N and 2N requests)
  instructions valgrind --tool=callgrind user-space instructions per request (same method)

Every process this script starts is recorded and stopped by PID (SIGTERM, then SIGKILL)
on exit, on error and on SIGINT/SIGTERM.  Every wait is bounded.
"""
import argparse
import csv
import datetime
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOSTS_COUNT = 1000
HOST_PICK = "h0500.bench.test"  # the route in the middle of the 1,000

# ----------------------------------------------------------------------------------------
# cells

CELLS = {
    "ka50":      dict(conns=50,  path="/", desc="keep-alive GET, small body, 50 conns"),
    "ka256":     dict(conns=256, path="/", desc="keep-alive GET, small body, 256 conns"),
    "close":     dict(conns=50,  path="/", headers=["Connection: close"],
                      desc="new connection per request (Connection: close), 50 conns"),
    "post1k":    dict(conns=50,  path="/", body=1024, desc="keep-alive POST 1 KiB body, 50 conns"),
    "post64k":   dict(conns=50,  path="/", body=65536, desc="keep-alive POST 64 KiB body, 50 conns"),
    "get64k":    dict(conns=50,  path="/static/64k.bin", desc="keep-alive GET 64 KiB file, 50 conns"),
    "get1m":     dict(conns=50,  path="/static/1m.bin", desc="keep-alive GET 1 MiB file, 50 conns"),
    "get16k":    dict(conns=50,  path="/static/16k.bin", desc="keep-alive GET 16 KiB file, 50 conns"),
    "get256k":   dict(conns=50,  path="/static/256k.bin", desc="keep-alive GET 256 KiB file, 50 conns"),
    "get1m_chunked": dict(conns=50, path="/chunked/1m.bin", desc="keep-alive GET 1 MiB, chunked by the origin, 50 conns"),
    "hosts1000": dict(conns=50,  path="/", headers=["Host: " + HOST_PICK], variant="hosts",
                      desc="1,000 host routes, Host of the 500th, keep-alive GET, 50 conns"),
    "idle10k":   dict(idle=True, desc="10,000 idle keep-alive client connections: proxy RSS per connection"),
    "rate":      dict(rate=True, conns=50, path="/",
                      desc="open loop (rategen): keep-alive GET, small body, at fixed fractions of nginx's max req/s"),
}
# get16k and get256k exist for the splice threshold measurement (splice.sh), not the matrix
DEFAULT_CELLS = [c for c in CELLS if c not in ("get16k", "get256k", "get1m_chunked")]
# the rate cell writes one row per load level, cell = "rate<pct>" (rate50, rate80 by default)
RATE_CELL_RX = re.compile(r"^rate(\d+)$")


def cell_desc(cell):
    m = RATE_CELL_RX.match(cell)
    if m:
        return "open loop (rategen), keep-alive GET small body, offered rate = %s%% of nginx's max req/s" % m.group(1)
    return CELLS.get(cell, {}).get("desc", "")

PROXIES = ("edgeshard", "nginx", "floor", "haproxy")
TARGET_ORDER = ("edgeshard", "nginx", "haproxy", "floor", "direct")
# proxies measured in the idle10k cell (RSS per idle client connection)
IDLE_TARGETS = ("edgeshard", "nginx", "haproxy")
ORIGIN_STATUS = "/__origin_status"  # stub_status of the origin nginx (nginx-origin.conf.tmpl)

RAW_FIELDS = [
    "time", "cell", "target", "rep", "conns", "duration_s", "requests", "rps",
    "lat_p50_us", "lat_p90_us", "lat_p99_us", "lat_p999_us", "lat_mean_us", "lat_max_us",
    "non2xx", "err_connect", "err_read", "err_write", "err_timeout",
    "proxy_cpu_s", "cpu_us_per_req", "origin_cpu_us_per_req",
    # new connections the origin accepted during the run (stub_status `accepts`, own read subtracted)
    "upstream_connects", "upstream_connects_per_1k",
    "rss_before_kb", "rss_after_kb", "idle_open", "idle_failed", "idle_alive", "bytes_per_idle_conn",
    "shards", "proxy_cpus", "client_cpus", "engine", "note",
    # rate cell (open loop, rategen) only
    "load_pct", "offered_rps", "base_rps", "base_src", "sent", "unfinished", "gen_lag_p99_us",
]
ERR_FIELDS = ("non2xx", "err_connect", "err_read", "err_write", "err_timeout", "unfinished")

# ----------------------------------------------------------------------------------------
# process bookkeeping

STARTED = []  # list of Proc


def log(msg):
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


class Proc:
    def __init__(self, name, argv, stdout_path, env=None, stdin=subprocess.DEVNULL, kind="plain"):
        self.name = name
        self.kind = kind
        self.stdout_path = stdout_path
        self.out = open(stdout_path, "wb")
        self.p = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, stdin=stdin,
                                  env=env, start_new_session=True)
        self.pid = self.p.pid
        STARTED.append(self)
        log("started %s pid=%d: %s" % (name, self.pid, " ".join(argv)))

    def alive(self):
        return self.p.poll() is None

    def pids(self):
        """The process plus its direct children (nginx master + workers)."""
        if not self.alive():
            return []
        out = [self.pid]
        if self.kind == "nginx":
            out += children(self.pid)
        return out

    def output(self):
        try:
            with open(self.stdout_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        if self.p.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log("%s pid=%d did not exit after %s, SIGKILL" % (self.name, self.pid, sig))
                kids = children(self.pid)
                for pid in [self.pid] + kids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    self.p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        # nginx workers exit with the master; make sure nothing we own is left behind
        if self in STARTED:
            STARTED.remove(self)
        self.out.close()
        return self.p.returncode


def children(ppid):
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        if int(fields[1]) == ppid:
            kids.append(int(d))
    return kids


def stop_all():
    for p in list(reversed(STARTED)):
        try:
            p.stop(timeout=10)
        except Exception as e:  # keep going, stop the others
            log("stop %s: %s" % (p.name, e))


def _on_signal(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def cpu_ticks(pids):
    """utime+stime of the whole process (all threads), summed over pids."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # fields 14, 15 of stat(5)
    return total


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port, proc, timeout):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if proc is not None and not proc.alive():
            return False
        if port_open(port):
            return True
        time.sleep(0.05)
    return False


def wait_line(proc, regex, timeout):
    t = time.monotonic() + timeout
    rx = re.compile(regex, re.M)
    while time.monotonic() < t:
        m = rx.search(proc.output())
        if m:
            return m
        if not proc.alive():
            return None
        time.sleep(0.05)
    return None


def parse_cpus(s):
    out = []
    for part in str(s).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def cpus_str(lst):
    return ",".join(str(c) for c in lst)


def nginx_affinity(cpus, workers):
    if not cpus:
        return ""
    width = max(cpus) + 1
    masks = []
    for i in range(workers):
        c = cpus[i % len(cpus)]
        masks.append("".join("1" if (width - 1 - b) == c else "0" for b in range(width)))
    return "worker_cpu_affinity %s;" % " ".join(masks)


def nofile_hard():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def git_rev():
    r = run_cmd(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    if not re.match(r"^[0-9a-f]{4,}$", r):
        return "no commit yet (working tree)"
    dirty = run_cmd(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"])
    return r + ("-dirty" if dirty and not dirty.startswith("unavailable") else "")


def run_cmd(argv, timeout=30):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        return r.stdout.decode(errors="replace").strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return "unavailable (%s)" % e


# ----------------------------------------------------------------------------------------
# rendering configs

def render(template, values):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@@%s@@" % k, str(v))
    left = re.findall(r"@@[A-Z_]+@@", text)
    if left:
        raise SystemExit("unrendered placeholders in %s: %s" % (template, left))
    return text


def nginx_proxy_conf(cfg, variant):
    # listen options (backlog, reuseport) may appear once per address:port: on the first server only
    first = "listen 127.0.0.1:%d default_server backlog=4096%s;" % (
        cfg.ports["nginx"], " reuseport" if cfg.shards > 1 else "")
    plain = "listen 127.0.0.1:%d;" % cfg.ports["nginx"]
    if variant == "hosts":
        blocks = []
        for i in range(HOSTS_COUNT):
            blocks.append("    server { %s server_name h%04d.bench.test; location / { proxy_pass http://origin; } }"
                          % (first if i == 0 else plain, i))
        servers = "\n".join(blocks)
    else:
        servers = ("    server {\n        %s\n        server_name _;\n"
                   "        location / { proxy_pass http://origin; }\n    }" % first)
    return render("nginx-proxy.conf.tmpl", dict(
        WORKERS=cfg.shards, AFFINITY=nginx_affinity(cfg.proxy_cpus, cfg.shards),
        NOFILE=cfg.nofile, WORKER_CONNECTIONS=max(1024, cfg.nofile - 64), PREFIX=cfg.tmp,
        ORIGIN_PORT=cfg.ports["origin"], KEEPALIVE=cfg.keepalive, SERVERS=servers))


def haproxy_cpu_map(cpus, threads):
    """cpu-map pinning thread i to the i-th proxy CPU, as nginx_affinity does for workers. The
    `auto:` form: HAProxy 2.6.12 ignores a series of per-thread lines (`cpu-map 1/1 0`,
    `cpu-map 1/2 1` left both threads on 0-1; checked in /proc/PID/task/*/status)."""
    if not cpus:
        return ""
    if threads == 1:
        return "    cpu-map 1/1 %d" % cpus[0]
    if threads <= len(cpus):
        return "    cpu-map auto:1/1-%d %s" % (threads, " ".join(str(c) for c in sorted(cpus[:threads])))
    # more threads than proxy CPUs (the driver warns): all threads on the proxy CPUs
    return "    cpu-map 1/all %s" % " ".join(str(c) for c in cpus)


def haproxy_conf(cfg, variant):
    """haproxy.cfg.tmpl rendered for `variant` ("default" or "hosts"); the hosts variant routes
    through a map of the 1,000 host names (an exact-match tree lookup per request, like nginx's
    server_name hash and edgeshard's host table), written next to the config."""
    if variant == "hosts":
        mp = os.path.join(cfg.tmp, "haproxy-hosts.map")
        with open(mp, "w") as f:
            f.write("".join("h%04d.bench.test origin\n" % i for i in range(HOSTS_COUNT)))
        # no default_backend: an unknown Host gets 503, as edgeshard (no catch-all route) answers
        # an unrouted request with an error
        routing = ("    # 1,000 host routes, all to the one origin (edgeshard: 1,000 [[route]] host = ...)\n"
                   "    use_backend %%[req.hdr(host),lower,map_str(%s)]" % mp)
    elif variant == "default":
        routing = "    default_backend origin"
    else:
        raise ValueError("haproxy has no variant %r" % variant)
    return render("haproxy.cfg.tmpl", dict(
        THREADS=cfg.shards, CPU_MAP=haproxy_cpu_map(cfg.proxy_cpus, cfg.shards),
        # as nginx's worker_connections: every client connection the nofile limit allows
        MAXCONN=max(1024, cfg.nofile - 64), PORT=cfg.ports["haproxy"],
        BIND_OPTS=" shards by-thread" if cfg.shards > 1 else "",
        POOL_LOW=2 * cfg.shards if cfg.shards > 1 else 0,
        ORIGIN_PORT=cfg.ports["origin"], ROUTING=routing))


def edgeshard_conf(cfg, variant):
    # "base:key=value,key=value" adds [server] keys to a base variant (experiments)
    full = variant
    variant, _, extra = variant.partition(":")
    extra_lines = [kv.replace("=", " = ", 1) for kv in extra.split(",") if kv]
    lines = [
        "# generated by loadtest/driver.py (variant %s); equivalent nginx config: nginx-proxy.conf.tmpl" % full,
        "[server]", 'io_engine = "%s"' % cfg.io_engine, 'shutdown_timeout = "5s"',
    ] + extra_lines + (['splice = "off"'] if variant == "splice-off" else []) + (
        ['splice_min_bytes = 0'] if variant == "splice-all" else []) + [
        "",
        "[[listener]]", 'address = "127.0.0.1:%d"' % cfg.ports["edgeshard"], "",
        "[timeouts]", 'client_header = "10s"', 'client_idle = "300s"', 'client_body = "30s"',
        'upstream_connect = "3s"', 'upstream_response = "30s"', "",
        "[limits]", 'max_body_bytes = "16MiB"', "max_connections_per_shard = 65536", "",
        "[[upstream]]", 'name = "origin"', 'balance = "round_robin"',
        'backends = [{ address = "127.0.0.1:%d", weight = 1 }]' % cfg.ports["origin"],
        "max_idle_per_backend = %d" % cfg.keepalive, 'idle_timeout = "120s"', "",
    ]
    if cfg.__dict__.get("admin_port"):
        lines += ["[admin]", 'address = "127.0.0.1:%d"' % cfg.admin_port, ""]
    if variant.startswith("log-"):
        # access log on, to a file in the run's temp dir (the logging cell)
        lines += ["[log]", 'access = "%s"' % os.path.join(cfg.tmp, "access-%s.log" % variant),
                  'access_format = "%s"' % variant[4:], ""]
    if variant == "hosts":
        for i in range(HOSTS_COUNT):
            lines += ["[[route]]", 'host = "h%04d.bench.test"' % i, 'upstream = "origin"', ""]
    else:
        lines += ["[[route]]", 'path_prefix = "/"', 'upstream = "origin"', ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# starting things

class Env:
    pass


def start_origin(cfg):
    docroot = os.path.join(cfg.tmp, "docroot")
    os.makedirs(docroot, exist_ok=True)
    for name, size in (("16k.bin", 16 * 1024), ("64k.bin", 64 * 1024), ("256k.bin", 256 * 1024),
                       ("1m.bin", 1024 * 1024)):
        with open(os.path.join(docroot, name), "wb") as f:
            f.write(os.urandom(size))
    os.chmod(docroot, 0o755)
    conf = os.path.join(cfg.tmp, "origin.conf")
    with open(conf, "w") as f:
        f.write(render("nginx-origin.conf.tmpl", dict(
            WORKERS=len(cfg.origin_cpus), AFFINITY=nginx_affinity(cfg.origin_cpus, len(cfg.origin_cpus)),
            NOFILE=cfg.nofile, WORKER_CONNECTIONS=max(1024, cfg.nofile - 64), PREFIX=cfg.tmp,
            PORT=cfg.ports["origin"], REUSEPORT="reuseport" if len(cfg.origin_cpus) > 1 else "",
            DOCROOT=docroot)))
    p = Proc("origin", ["taskset", "-c", cpus_str(cfg.origin_cpus), cfg.nginx, "-p", cfg.tmp,
                        "-e", os.path.join(cfg.tmp, "origin-error.log"), "-c", conf, "-g", "daemon off;"],
             os.path.join(cfg.tmp, "origin.out"), kind="nginx")
    if not wait_port(cfg.ports["origin"], p, 15):
        raise SystemExit("origin nginx did not start:\n" + p.output() + read(os.path.join(cfg.tmp, "origin-error.log")))
    return p


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def start_proxy(cfg, target, variant, extra_prefix=None, single_process=False):
    """Start one proxy; returns (Proc, engine string)."""
    pre = ["taskset", "-c", cpus_str(cfg.proxy_cpus)] + (extra_prefix or [])
    port = cfg.ports[target]
    if target == "edgeshard":
        # "variant@/path/to/edgeshard" runs another build (an A/B of two commits)
        variant, _, binary = variant.partition("@")
        binary = binary or cfg.edgeshard
        tag = re.sub(r"[^\w.=:,-]", "_", variant + ("@" + binary if binary != cfg.edgeshard else ""))
        conf = os.path.join(cfg.tmp, "edgeshard-%s.toml" % tag)
        with open(conf, "w") as f:
            f.write(edgeshard_conf(cfg, variant))
        chk = run_cmd([binary, "check", "--config", conf], timeout=30)
        argv = pre + [binary, "run", "--config", conf, "--cpus", cpus_str(cfg.proxy_cpus),
                      "--shards", str(cfg.shards), "--io-engine", cfg.io_engine]
        p = Proc("edgeshard", argv, os.path.join(cfg.tmp, "edgeshard-%s.out" % tag))
        m = wait_line(p, r"^edgeshard: ready shards=(\d+) engine=(\w+)", cfg.ready_timeout)
        if not m:
            out = p.output()
            p.stop(timeout=5)
            raise RuntimeError("edgeshard did not become ready (check said: %s)\n%s" % (chk, out[-3000:]))
        if not wait_port(port, p, 10):
            p.stop(timeout=5)
            raise RuntimeError("edgeshard ready but port %d closed" % port)
        return p, m.group(2)
    if target == "floor":
        argv = pre + [cfg.floor, "--listen", "127.0.0.1:%d" % port,
                      "--upstream", "127.0.0.1:%d" % cfg.ports["origin"],
                      "--shards", str(cfg.shards), "--cpus", cpus_str(cfg.proxy_cpus),
                      "--io-engine", cfg.io_engine]
        p = Proc("floor", argv, os.path.join(cfg.tmp, "floor.out"))
        m = wait_line(p, r"^floor: ready shards=(\d+) engine=(\w+)", cfg.ready_timeout)
        if not m or not wait_port(port, p, 10):
            out = p.output()
            p.stop(timeout=5)
            raise RuntimeError("floor did not become ready\n" + out[-3000:])
        return p, m.group(2)
    if target == "nginx":
        conf = os.path.join(cfg.tmp, "nginx-proxy-%s.conf" % variant)
        text = nginx_proxy_conf(cfg, variant)
        g = "daemon off;"
        if single_process:
            g += " master_process off;"
        with open(conf, "w") as f:
            f.write(text)
        argv = pre + [cfg.nginx, "-p", cfg.tmp, "-e", os.path.join(cfg.tmp, "proxy-error.log"),
                      "-c", conf, "-g", g]
        p = Proc("nginx", argv, os.path.join(cfg.tmp, "nginx-%s.out" % variant),
                 kind="plain" if single_process else "nginx")
        if not wait_port(port, p, cfg.ready_timeout):
            out = p.output() + read(os.path.join(cfg.tmp, "proxy-error.log"))
            p.stop(timeout=5)
            raise RuntimeError("nginx proxy did not start\n" + out[-3000:])
        if not single_process:
            t = time.monotonic() + 10
            while len(children(p.pid)) < cfg.shards and time.monotonic() < t:
                time.sleep(0.05)
        return p, "epoll"
    if target == "haproxy":
        binary = getattr(cfg, "haproxy", None) or shutil.which("haproxy") or "/usr/sbin/haproxy"
        conf = os.path.join(cfg.tmp, "haproxy-%s.cfg" % variant)
        with open(conf, "w") as f:
            f.write(haproxy_conf(cfg, variant))
        # -db: foreground, no daemon, no master-worker: one process, all threads counted by /proc/PID/stat
        argv = pre + [binary, "-db", "-f", conf]
        p = Proc("haproxy", argv, os.path.join(cfg.tmp, "haproxy-%s.out" % variant))
        if not wait_port(port, p, cfg.ready_timeout):
            out = p.output()
            p.stop(timeout=5)
            raise RuntimeError("haproxy did not start (%s)\n%s" % (run_cmd([binary, "-c", "-f", conf]), out[-3000:]))
        return p, "epoll"
    raise ValueError(target)


# ----------------------------------------------------------------------------------------
# one wrk run

def wrk(cfg, port, cell, duration, timeout_s=5):
    c = CELLS[cell]
    threads = max(1, min(len(cfg.client_cpus), c["conns"]))
    argv = ["taskset", "-c", cpus_str(cfg.client_cpus), cfg.wrk, "-t", str(threads), "-c", str(c["conns"]),
            "-d", "%ds" % duration, "--timeout", "%ds" % timeout_s, "--latency", "-s", os.path.join(HERE, "bench.lua")]
    for h in c.get("headers", []):
        argv += ["-H", h]
    argv.append("http://127.0.0.1:%d%s" % (port, c["path"]))
    env = dict(os.environ, WRK_BODY_BYTES=str(c.get("body", 0)))
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                           timeout=duration + 30, start_new_session=True)
        out = r.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + "\nTIMEOUT"
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        return None, out
    res = {}
    for kv in m.group(1).split():
        k, v = kv.split("=")
        res[k] = float(v)
    return res, out


def origin_accepts(cfg):
    """The origin nginx's `accepts` counter (stub_status, all workers); this read's own connection
    is included. None when it cannot be read (an origin without the status location)."""
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (cfg.ports["origin"], ORIGIN_STATUS),
                                    timeout=5) as r:
            text = r.read().decode(errors="replace")
    except (OSError, ValueError) as e:
        log("origin status unavailable: %s" % e)
        return None
    m = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", text, re.M)  # "accepts handled requests"
    return int(m.group(1)) if m else None


def set_connects(row, a0, a1, requests):
    """New upstream connections during a run: accepts after - before - 1 (the second read's own
    connection; the first read's is already in a0), and per 1,000 completed requests."""
    if a0 is None or a1 is None:
        return
    n = max(0, a1 - a0 - 1)
    row["upstream_connects"] = n
    if requests:
        row["upstream_connects_per_1k"] = "%.3f" % (n * 1000.0 / requests)


def measured_run(cfg, cell, target, rep, port, proxy, origin, duration, engine):
    row = {k: "" for k in RAW_FIELDS}
    row.update(time=datetime.datetime.now().isoformat(timespec="seconds"), cell=cell, target=target, rep=rep,
               conns=CELLS[cell]["conns"], shards=cfg.shards, proxy_cpus=cpus_str(cfg.proxy_cpus),
               client_cpus=cpus_str(cfg.client_cpus), engine=engine)
    ppids = proxy.pids() if proxy else []
    opids = origin.pids()
    a0 = origin_accepts(cfg)
    p0, o0 = cpu_ticks(ppids), cpu_ticks(opids)
    res, out = wrk(cfg, port, cell, duration)
    p1, o1 = cpu_ticks(proxy.pids() if proxy else []), cpu_ticks(origin.pids())
    a1 = origin_accepts(cfg)
    if res is None:
        row["note"] = "wrk failed: " + out.strip().replace("\n", " | ")[-300:]
        log("  %s/%s rep %d: wrk failed: %s" % (cell, target, rep, out[-500:]))
        return row
    req = res["requests"]
    dur = res["duration_us"] / 1e6
    row.update(duration_s="%.3f" % dur, requests=int(req), rps="%.1f" % (req / dur if dur else 0),
               lat_p50_us=int(res["lat_p50_us"]), lat_p90_us=int(res["lat_p90_us"]),
               lat_p99_us=int(res["lat_p99_us"]), lat_p999_us=int(res["lat_p999_us"]),
               lat_mean_us="%.1f" % res["lat_mean_us"], lat_max_us=int(res["lat_max_us"]),
               non2xx=int(res["err_status"]), err_connect=int(res["err_connect"]), err_read=int(res["err_read"]),
               err_write=int(res["err_write"]), err_timeout=int(res["err_timeout"]))
    if req > 0:
        if proxy:
            row["proxy_cpu_s"] = "%.2f" % ((p1 - p0) / CLK_TCK)
            row["cpu_us_per_req"] = "%.2f" % ((p1 - p0) / CLK_TCK * 1e6 / req)
        row["origin_cpu_us_per_req"] = "%.2f" % ((o1 - o0) / CLK_TCK * 1e6 / req)
    set_connects(row, a0, a1, req)
    if proxy and not proxy.alive():
        row["note"] = "proxy exited during run"
    errs = row["non2xx"] + row["err_connect"] + row["err_read"] + row["err_write"] + row["err_timeout"]
    log("  %-9s %-9s rep %d: %9.0f req/s  p50 %6dus p99 %6dus p99.9 %6dus  cpu %s us/req  errs %d  "
        "upstream connects %s (%s/1k req)"
        % (cell, target, rep, req / dur if dur else 0, row["lat_p50_us"], row["lat_p99_us"],
           row["lat_p999_us"], row["cpu_us_per_req"] or "-", errs, row["upstream_connects"],
           row["upstream_connects_per_1k"] or "-"))
    return row


def idle_run(cfg, target, rep, port, proxy, engine):
    row = {k: "" for k in RAW_FIELDS}
    row.update(time=datetime.datetime.now().isoformat(timespec="seconds"), cell="idle10k", target=target, rep=rep,
               conns=cfg.idle_conns, shards=cfg.shards, proxy_cpus=cpus_str(cfg.proxy_cpus),
               client_cpus=cpus_str(cfg.client_cpus), engine=engine)
    time.sleep(0.5)
    before = rss_kb(proxy.pids())
    out_path = os.path.join(cfg.tmp, "idle-%s-%d.out" % (target, rep))
    cl = Proc("idle_client", ["taskset", "-c", cpus_str(cfg.client_cpus), sys.executable,
                              os.path.join(HERE, "idle_client.py"), "--port", str(port),
                              "--conns", str(cfg.idle_conns), "--hold", "120", "--timeout", "90"],
              out_path, stdin=subprocess.PIPE)
    try:
        m = wait_line(cl, r"^READY open=(\d+) ok=(\d+) failed=(\d+)", 100)
        if not m:
            row["note"] = "idle client did not finish opening: " + cl.output()[-300:]
            return row
        time.sleep(cfg.idle_settle)
        after = rss_kb(proxy.pids())
        try:
            cl.p.stdin.write(b"done\n")
            cl.p.stdin.flush()
        except OSError:
            pass
        a = wait_line(cl, r"^ALIVE (\d+)", 30)
        opened = int(m.group(1))
        row.update(rss_before_kb=before, rss_after_kb=after, idle_open=opened, idle_failed=int(m.group(3)),
                   idle_alive=int(a.group(1)) if a else "",
                   bytes_per_idle_conn="%.0f" % ((after - before) * 1024.0 / opened) if opened else "")
        log("  idle10k   %-9s rep %d: open %d failed %s alive %s  RSS %d -> %d kB  => %s bytes/conn"
            % (target, rep, opened, m.group(3), row["idle_alive"], before, after, row["bytes_per_idle_conn"]))
    finally:
        try:
            cl.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        cl.stop(timeout=5)
    time.sleep(1.0)  # let the proxy reap the closed connections
    return row


# ----------------------------------------------------------------------------------------
# rate cell: open loop at fixed offered rates (rategen)

def rategen(cfg, port, rate, duration, conns):
    argv = ["taskset", "-c", cpus_str(cfg.client_cpus), cfg.rategen, "--url", "http://127.0.0.1:%d/" % port,
            "--rate", "%.1f" % rate, "--duration", str(duration), "--connections", str(conns), "--timeout", "5"]
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=duration + 30, start_new_session=True)
        out = r.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + "\nTIMEOUT"
    except OSError as e:
        out = "cannot run %s: %s" % (cfg.rategen, e)
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m or "failed=" in m.group(1):
        return None, out
    res = {}
    for kv in m.group(1).split():
        k, v = kv.split("=", 1)
        try:
            res[k] = float(v)
        except ValueError:
            pass
    return res, out


def rate_run(cfg, cell, target, rep, port, proxy, origin, duration, engine, rate, pct, base, base_src):
    row = {k: "" for k in RAW_FIELDS}
    row.update(time=datetime.datetime.now().isoformat(timespec="seconds"), cell=cell, target=target, rep=rep,
               conns=cfg.rate_conns, shards=cfg.shards, proxy_cpus=cpus_str(cfg.proxy_cpus),
               client_cpus=cpus_str(cfg.client_cpus), engine=engine, load_pct=pct, offered_rps="%.1f" % rate,
               base_rps="%.1f" % base, base_src=base_src)
    a0 = origin_accepts(cfg)
    p0, o0 = cpu_ticks(proxy.pids() if proxy else []), cpu_ticks(origin.pids())
    res, out = rategen(cfg, port, rate, duration, cfg.rate_conns)
    p1, o1 = cpu_ticks(proxy.pids() if proxy else []), cpu_ticks(origin.pids())
    a1 = origin_accepts(cfg)
    if res is None:
        row["note"] = "rategen failed: " + out.strip().replace("\n", " | ")[-300:]
        log("  %s/%s rep %d: rategen failed: %s" % (cell, target, rep, out[-500:]))
        return row
    req = res["completed"]
    row.update(duration_s="%.3f" % res["duration_s"], requests=int(req), rps="%.1f" % res["achieved_rps"],
               offered_rps="%.1f" % res["rate"],
               lat_p50_us=int(res["p50_us"]), lat_p90_us=int(res["p90_us"]), lat_p99_us=int(res["p99_us"]),
               lat_p999_us=int(res["p999_us"]), lat_mean_us="%.1f" % res["mean_us"], lat_max_us=int(res["max_us"]),
               non2xx=int(res["non2xx"]), err_connect=int(res["err_connect"]), err_read=int(res["err_read"]),
               err_write=int(res["err_write"]), err_timeout=int(res["timeouts"]), unfinished=int(res["unfinished"]),
               sent=int(res["sent"]), gen_lag_p99_us=int(res["lag_p99_us"]))
    if req > 0:
        if proxy:
            row["proxy_cpu_s"] = "%.2f" % ((p1 - p0) / CLK_TCK)
            row["cpu_us_per_req"] = "%.2f" % ((p1 - p0) / CLK_TCK * 1e6 / req)
        row["origin_cpu_us_per_req"] = "%.2f" % ((o1 - o0) / CLK_TCK * 1e6 / req)
    set_connects(row, a0, a1, req)
    if proxy and not proxy.alive():
        row["note"] = "proxy exited during run"
    errs = sum(int(row[k]) for k in ERR_FIELDS)
    log("  %-9s %-9s rep %d: offered %7.0f done %7.0f req/s  p50 %6dus p99 %6dus p99.9 %6dus  cpu %s us/req  "
        "errs %d  gen lag p99 %dus"
        % (cell, target, rep, res["rate"], res["achieved_rps"], row["lat_p50_us"], row["lat_p99_us"],
           row["lat_p999_us"], row["cpu_us_per_req"] or "-", errs, row["gen_lag_p99_us"]))
    return row


def rate_base(cfg, done_rows, procs, engines):
    """nginx's maximum keep-alive small-GET req/s: the ka50 nginx runs of this invocation, else a wrk run."""
    if cfg.rate_base:
        return cfg.rate_base, "given (--rate-base)"
    ka = [fnum(r["rps"]) for r in done_rows if r["cell"] == "ka50" and r["target"] == "nginx" and not r["note"]]
    ka = [v for v in ka if v]
    if ka:
        return statistics.median(ka), "median of the %d ka50 nginx wrk run(s) of this invocation" % len(ka)
    if "nginx" not in procs:
        procs["nginx"], engines["nginx"] = start_proxy(cfg, "nginx", "default")
    dur = max(3, cfg.duration)
    log("rate: measuring nginx's max req/s (wrk ka50, %d s)" % dur)
    if cfg.warmup > 0:
        wrk(cfg, cfg.ports["nginx"], "ka50", cfg.warmup)
    res, out = wrk(cfg, cfg.ports["nginx"], "ka50", dur)
    if not res or not res["requests"]:
        raise RuntimeError("rate: wrk against nginx failed, no base rate: " + out[-500:])
    return res["requests"] / (res["duration_us"] / 1e6), "wrk ka50 against nginx, %d s, run for this cell" % dur


def rate_cell(cfg, targets, procs, engines, origin, done_rows, write_row):
    if not os.access(cfg.rategen, os.X_OK):
        raise SystemExit("rategen not built: %s (cargo build --release --manifest-path loadtest/rategen/Cargo.toml)"
                         % cfg.rategen)
    base, src = rate_base(cfg, done_rows, procs, engines)
    log("rate: nginx max = %.0f req/s (%s); loads %s%%" % (base, src, ",".join(str(p) for p in cfg.rate_loads)))
    port_of = lambda t: cfg.ports["origin" if t == "direct" else t]
    if cfg.warmup > 0:
        for t in targets:
            rategen(cfg, port_of(t), base * cfg.rate_loads[0] / 100.0, cfg.warmup, cfg.rate_conns)
    for rep in range(cfg.reps):
        for pct in cfg.rate_loads:
            k = rep % len(targets)
            for t in targets[k:] + targets[:k]:
                if t in PROXIES and not procs[t].alive():
                    log("  %s died (exit %s); restarting" % (t, procs[t].p.returncode))
                    procs[t].stop()
                    procs[t], engines[t] = start_proxy(cfg, t, "default")
                write_row(rate_run(cfg, "rate%d" % pct, t, rep, port_of(t), procs.get(t), origin, cfg.duration,
                                   engines.get(t, "") if t != "direct" else "", base * pct / 100.0, pct, base, src))


def open_raw(raw_path, fresh):
    """raw.csv writer; an existing raw.csv with an older column set is rewritten with the current one."""
    if os.path.exists(raw_path) and not fresh:
        with open(raw_path, newline="") as f:
            rd = csv.DictReader(f)
            old_fields, old_rows = rd.fieldnames, list(rd)
        if old_fields != RAW_FIELDS:
            log("raw.csv: migrating %d rows to the current columns" % len(old_rows))
            with open(raw_path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=RAW_FIELDS, restval="", extrasaction="ignore")
                w.writeheader()
                w.writerows(old_rows)
        rawf = open(raw_path, "a", newline="")
        return rawf, csv.DictWriter(rawf, fieldnames=RAW_FIELDS)
    rawf = open(raw_path, "w", newline="")
    raw = csv.DictWriter(rawf, fieldnames=RAW_FIELDS)
    raw.writeheader()
    return rawf, raw


# ----------------------------------------------------------------------------------------
# matrix

def write_env(cfg, path, engines):
    model = ""
    ncpu = 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("processor"):
                ncpu += 1
    sysctls = ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_port_range",
               "net.ipv4.tcp_tw_reuse", "net.core.rmem_max", "net.core.wmem_max", "net.ipv4.tcp_rmem",
               "net.ipv4.tcp_wmem", "kernel.io_uring_disabled", "net.ipv4.tcp_congestion_control",
               "net.core.default_qdisc"]
    gov = read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip() or "n/a"
    lines = [
        "date: %s" % datetime.datetime.now().isoformat(timespec="seconds"),
        "hostname: %s" % socket.gethostname(),
        "cpu model: %s" % model,
        "cpus (/proc/cpuinfo processors): %d; online (nproc): %s" % (ncpu, run_cmd(["nproc"])),
        "memory: %s" % (read("/proc/meminfo").splitlines() or ["?"])[0],
        "kernel: %s" % run_cmd(["uname", "-srvm"]),
        "os: %s" % (re.search(r'PRETTY_NAME="?([^"\n]*)', read("/etc/os-release")) or re.match("(.*)", "?")).group(1),
        "cpu governor (cpu0): %s" % gov,
        "nginx: %s" % run_cmd([cfg.nginx, "-v"]),
    ] + ([
        "haproxy: %s" % (run_cmd([cfg.haproxy, "-v"]).splitlines() or ["?"])[0],
    ] if "haproxy" in getattr(cfg, "targets", ()) else []) + [
        "wrk: %s" % run_cmd([cfg.wrk, "-v"]).splitlines()[0],
        "rategen: %s" % (cfg.rategen if os.path.exists(getattr(cfg, "rategen", "")) else "not built"),
        "rustc: %s" % run_cmd(["rustc", "-V"]),
        "cargo: %s" % run_cmd(["cargo", "-V"]),
        "edgeshard git: %s" % git_rev(),
        "edgeshard version: %s" % (run_cmd([cfg.edgeshard, "--version"], 10) if os.path.exists(cfg.edgeshard) else "not built"),
        "proxy engines reported: %s" % ", ".join("%s=%s" % kv for kv in sorted(engines.items())),
        "nofile limit used: %d" % cfg.nofile,
        "",
        "pinning:",
        "  proxy CPUs (edgeshard --cpus, nginx worker_cpu_affinity, floor --cpus, haproxy cpu-map): %s"
        % cpus_str(cfg.proxy_cpus),
        "  shards = nginx workers = floor shards = haproxy threads: %d" % cfg.shards,
        "  client CPUs (wrk, idle client): %s" % cpus_str(cfg.client_cpus),
        "  origin CPUs (origin nginx workers): %s (workers %d)" % (cpus_str(cfg.origin_cpus), len(cfg.origin_cpus)),
        "  overlap proxy/client: %s" % bool(set(cfg.proxy_cpus) & (set(cfg.client_cpus) | set(cfg.origin_cpus))),
    ] + ([
        "",
        "options: duration=%ds reps=%d warmup=%ds cells=%s targets=%s floor_cells=%s direct=%s keepalive=%d "
        "idle_conns=%d io_engine=%s rate_loads=%s rate_conns=%d"
        % (cfg.duration, cfg.reps, cfg.warmup, ",".join(cfg.cells), ",".join(cfg.targets),
           ",".join(cfg.floor_cells), cfg.direct, cfg.keepalive, cfg.idle_conns, cfg.io_engine,
           ",".join(str(p) for p in cfg.rate_loads), cfg.rate_conns),
    ] if hasattr(cfg, "cells") else []) + [
        "",
        "sysctls:",
    ] + ["  %s = %s" % (s, read("/proc/sys/" + s.replace(".", "/")).strip().replace("\t", " ")) for s in sysctls]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def cmd_matrix(a):
    cfg = Env()
    ncpu = os.cpu_count() or 1
    cfg.shards = a.shards
    cfg.proxy_cpus = parse_cpus(a.proxy_cpus) if a.proxy_cpus else list(range(ncpu - cfg.shards, ncpu)) if ncpu > cfg.shards else list(range(ncpu))
    if len(cfg.proxy_cpus) < cfg.shards:
        log("warning: %d shards on %d proxy CPUs" % (cfg.shards, len(cfg.proxy_cpus)))
    rest = [c for c in range(ncpu) if c not in cfg.proxy_cpus] or list(range(ncpu))
    cfg.client_cpus = parse_cpus(a.client_cpus) if a.client_cpus else rest
    cfg.origin_cpus = parse_cpus(a.origin_cpus) if a.origin_cpus else cfg.client_cpus
    if set(cfg.proxy_cpus) & (set(cfg.client_cpus) | set(cfg.origin_cpus)):
        log("warning: proxy CPUs overlap client/origin CPUs: numbers will include interference")
    cfg.duration, cfg.reps, cfg.warmup = a.duration, a.reps, a.warmup
    cfg.cells = [c for c in a.cells.split(",") if c]
    for c in cfg.cells:
        if c not in CELLS:
            raise SystemExit("unknown cell %r (known: %s)" % (c, ", ".join(CELLS)))
    cfg.targets = [t for t in a.targets.split(",") if t]
    cfg.floor_cells = [c for c in a.floor_cells.split(",") if c]
    cfg.direct = a.direct
    cfg.keepalive = a.keepalive
    cfg.idle_conns = a.idle_conns
    cfg.idle_settle = a.idle_settle
    cfg.io_engine = a.io_engine
    cfg.ready_timeout = a.ready_timeout
    cfg.edgeshard, cfg.floor, cfg.nginx, cfg.wrk = a.edgeshard, a.floor, a.nginx_bin, a.wrk
    cfg.haproxy = a.haproxy_bin
    for t in cfg.targets:
        if t not in PROXIES + ("direct",):
            raise SystemExit("unknown target %r (known: %s; direct is added unless --no-direct)"
                             % (t, ", ".join(PROXIES)))
    if "haproxy" in cfg.targets and not (os.access(cfg.haproxy, os.X_OK) or shutil.which(cfg.haproxy)):
        raise SystemExit("haproxy not found (%s): apt-get install haproxy, or drop it from --targets" % cfg.haproxy)
    cfg.rategen = a.rategen
    cfg.rate_conns = a.rate_conns
    cfg.rate_loads = [int(x) for x in a.rate_loads.split(",") if x.strip()]
    if not cfg.rate_loads or any(not 0 < p <= 200 for p in cfg.rate_loads):
        raise SystemExit("--rate-loads: comma list of percentages in (0, 200]")
    cfg.rate_base = a.rate_base
    # the rate cell reuses nginx's ka50 req/s of this invocation: run ka50 first if both are asked for
    if "rate" in cfg.cells and "ka50" in cfg.cells and cfg.cells.index("rate") < cfg.cells.index("ka50"):
        cfg.cells.remove("rate")
        cfg.cells.insert(cfg.cells.index("ka50") + 1, "rate")
    base = a.base_port
    cfg.ports = dict(origin=base, edgeshard=base + 1, nginx=base + 2, floor=base + 3, haproxy=base + 4)
    for name, port in cfg.ports.items():
        if name == "haproxy" and name not in cfg.targets:
            continue  # base+4 is only checked when haproxy runs (it was not part of the harness before)
        if port_open(port):
            raise SystemExit("port %d (%s) is already in use; choose another --base-port" % (port, name))
    cfg.nofile = nofile_hard()
    if cfg.idle_conns + 512 > cfg.nofile:
        log("warning: nofile hard limit %d is low for %d idle connections" % (cfg.nofile, cfg.idle_conns))
    os.makedirs(a.out, exist_ok=True)
    cfg.tmp = tempfile.mkdtemp(prefix="edgeshard-bench-")
    os.chmod(cfg.tmp, 0o755)
    rawf, raw = open_raw(os.path.join(a.out, "raw.csv"), a.fresh)
    done_rows = []

    def write_row(row):
        raw.writerow(row)
        rawf.flush()
        done_rows.append(row)

    engines = {}
    procs = {}
    t_start = time.monotonic()
    try:
        origin = start_origin(cfg)
        variant = None
        for cell in cfg.cells:
            spec = CELLS[cell]
            want = spec.get("variant", "default")
            targets = [t for t in cfg.targets if t != "floor" or cell in cfg.floor_cells]
            if spec.get("idle"):
                targets = [t for t in targets if t in IDLE_TARGETS]
            elif cfg.direct:
                targets = targets + ["direct"]
            if want != variant:
                for p in procs.values():
                    p.stop()
                procs.clear()
                variant = want
            for t in targets:
                if t in PROXIES and t not in procs:
                    procs[t], engines[t] = start_proxy(cfg, t, variant)
            log("cell %s: %s  [%s]" % (cell, spec["desc"], ", ".join(targets)))
            if spec.get("rate"):
                rate_cell(cfg, targets, procs, engines, origin, done_rows, write_row)
                continue
            # warm-up once per (cell, target): connection pools, page cache, CPU frequency
            if cfg.warmup > 0 and not spec.get("idle"):
                for t in targets:
                    port = cfg.ports["origin" if t == "direct" else t]
                    wrk(cfg, port, cell, cfg.warmup)
            for rep in range(cfg.reps):
                # rotate the order every repetition so slow drift hits every target alike
                k = rep % len(targets)
                order = targets[k:] + targets[:k]
                for t in order:
                    if spec.get("idle") and t in PROXIES:
                        # A fresh process per repetition: RSS before the connections must not
                        # include buffers and pools grown by the cells run earlier.
                        procs[t].stop()
                        procs[t], engines[t] = start_proxy(cfg, t, variant)
                    if t in PROXIES and not procs[t].alive():
                        log("  %s died (exit %s); restarting" % (t, procs[t].p.returncode))
                        out = procs[t].output()
                        procs[t].stop()
                        log(out[-2000:])
                        procs[t], engines[t] = start_proxy(cfg, t, variant)
                    proxy = procs.get(t)
                    port = cfg.ports["origin" if t == "direct" else t]
                    if spec.get("idle"):
                        row = idle_run(cfg, t, rep, port, proxy, engines.get(t, ""))
                    else:
                        row = measured_run(cfg, cell, t, rep, port, proxy, origin, cfg.duration,
                                           engines.get(t, "") if t != "direct" else "")
                    write_row(row)
    finally:
        stop_all()
        rawf.close()
        for lf in ("origin-error.log", "proxy-error.log"):
            txt = read(os.path.join(cfg.tmp, lf))
            if txt.strip():
                with open(os.path.join(a.out, lf), "w") as f:
                    f.write(txt[-20000:])
        for v in ("default", "hosts"):
            src = os.path.join(cfg.tmp, "edgeshard-%s.toml" % v)
            if os.path.exists(src) and v == "default":
                shutil.copy(src, os.path.join(a.out, "edgeshard-%s.toml" % v))
            src = os.path.join(cfg.tmp, "nginx-proxy-%s.conf" % v)
            if os.path.exists(src) and v == "default":
                shutil.copy(src, os.path.join(a.out, "nginx-proxy-%s.conf" % v))
            src = os.path.join(cfg.tmp, "haproxy-%s.cfg" % v)
            if os.path.exists(src) and v == "default":
                shutil.copy(src, os.path.join(a.out, "haproxy-%s.cfg" % v))
        # haproxy has no error log file: its start-up warnings/alerts go to stderr (-db)
        txt = "".join("== %s\n%s" % (v, read(os.path.join(cfg.tmp, "haproxy-%s.out" % v)))
                      for v in ("default", "hosts") if read(os.path.join(cfg.tmp, "haproxy-%s.out" % v)).strip())
        if txt:
            with open(os.path.join(a.out, "haproxy.log"), "w") as f:
                f.write(txt[-20000:])
        if not a.keep_tmp:
            shutil.rmtree(cfg.tmp, ignore_errors=True)
        else:
            log("temp dir kept: %s" % cfg.tmp)
    write_env(cfg, os.path.join(a.out, "env.txt"), engines)
    with open(os.path.join(a.out, "env.txt"), "a") as f:
        f.write("\nmatrix wall time: %.0f s\n" % (time.monotonic() - t_start))
    summarize(a.out)
    log("done in %.0f s: %s" % (time.monotonic() - t_start, a.out))


# ----------------------------------------------------------------------------------------
# summary

def fnum(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=0):
    if v is None:
        return "-"
    if nd == 0:
        return "{:,.0f}".format(v)
    return ("{:,.%df}" % nd).format(v)


def fmt_range(vals, nd=0, scale=1.0):
    vals = [v * scale for v in vals if v is not None]
    if not vals:
        return "-"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m, nd)
    return "%s (%s–%s)" % (fmt(m, nd), fmt(min(vals), nd), fmt(max(vals), nd))


def load_rows(out):
    with open(os.path.join(out, "raw.csv"), newline="") as f:
        return list(csv.DictReader(f))


def paired_ratios(rows, cell, num, den, key):
    """Ratio num/den of `key` per repetition (same rep = adjacent in time), then median/min/max."""
    by = {}
    for r in rows:
        if r["cell"] == cell and r["target"] in (num, den):
            v = fnum(r[key])
            if v is not None:
                by.setdefault(r["rep"], {})[r["target"]] = v
    ratios = [d[num] / d[den] for d in by.values() if num in d and den in d and d[den]]
    return ratios


def row_errors(r):
    return sum((fnum(r.get(k)) or 0) for k in ERR_FIELDS)


def rate_section(rows, cells):
    """Open-loop section: p99 at fixed offered rates, edgeshard vs nginx, and the target check."""
    rcells = sorted((c for c in cells if RATE_CELL_RX.match(c)), key=lambda c: int(RATE_CELL_RX.match(c).group(1)))
    if not rcells:
        return []
    L = ["## Open loop: latency at fixed offered rates (rate cell, rategen)", "",
         "Target: **edgeshard p99 ≤ nginx p99** at offered rates of 50%% and 80%% of nginx's maximum keep-alive "
         "small-GET req/s (1 shard vs 1 worker). rategen sends at fixed intervals over %s keep-alive connections "
         "(one request outstanding per connection) and measures latency from each request's *intended* send time "
         "(coordinated-omission corrected, like wrk2), so these percentiles are comparable across runs, unlike "
         "wrk's closed-loop ones." % (", ".join(sorted(set(r["conns"] for r in rows if r["cell"] in rcells))) or "-"),
         ""]
    srcs = sorted(set("%s req/s (%s)" % (fmt(fnum(r["base_rps"])), r["base_src"])
                      for r in rows if r["cell"] in rcells and r.get("base_rps")))
    for s_ in srcs:
        L.append("- nginx max used as 100%%: %s" % s_)
    L += ["", "| load | offered req/s | edgeshard p99 ms | nginx p99 ms | **p99 ratio** e/n (paired) | p50 ratio "
          "| p99.9 ratio | edgeshard p99.9 ms | nginx p99.9 ms | errors e / n | CPU-µs/req e / n | target met |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in rcells:
        sel = [r for r in rows if r["cell"] == c and not r["note"]]
        g = lambda t, k, sc=1.0: fmt_range([fnum(r.get(k)) for r in sel if r["target"] == t], 2 if sc != 1.0 else 0, sc)
        pr = paired_ratios(sel, c, "edgeshard", "nginx", "lat_p99_us")
        if not pr:
            verdict = "-"
        elif all(x <= 1.0 for x in pr):
            verdict = "yes (%d/%d reps)" % (len(pr), len(pr))
        elif statistics.median(pr) <= 1.0:
            verdict = "median only (%d/%d reps)" % (sum(1 for x in pr if x <= 1.0), len(pr))
        else:
            verdict = "**no** (%d/%d reps)" % (sum(1 for x in pr if x <= 1.0), len(pr))
        if any(row_errors(r) > 0 or r["note"] for r in rows if r["cell"] == c and r["target"] == "edgeshard"):
            verdict = "**no** (edgeshard errors or failed runs)"
        errs = lambda t: fmt_range([row_errors(r) for r in rows if r["cell"] == c and r["target"] == t])
        cpu = lambda t: fmt_range([fnum(r["cpu_us_per_req"]) for r in sel if r["target"] == t], 2)
        L.append("| %s%% | %s | %s | %s | **%s** | %s | %s | %s | %s | %s / %s | %s / %s | %s |" % (
            RATE_CELL_RX.match(c).group(1), g("nginx", "offered_rps") if any(r["target"] == "nginx" for r in sel)
            else g("edgeshard", "offered_rps"),
            g("edgeshard", "lat_p99_us", 1e-3), g("nginx", "lat_p99_us", 1e-3), fmt_range(pr, 2),
            fmt_range(paired_ratios(sel, c, "edgeshard", "nginx", "lat_p50_us"), 2),
            fmt_range(paired_ratios(sel, c, "edgeshard", "nginx", "lat_p999_us"), 2),
            g("edgeshard", "lat_p999_us", 1e-3), g("nginx", "lat_p999_us", 1e-3),
            errs("edgeshard"), errs("nginx"), cpu("edgeshard"), cpu("nginx"), verdict))
    for c in rcells:
        pr = paired_ratios([r for r in rows if not r["note"]], c, "edgeshard", "nginx", "lat_p99_us")
        if pr:
            L.append("")
            L.append("%s: edgeshard/nginx p99 ratio = %s (median, min–max over %d paired reps)"
                     % (c, fmt_range(pr, 2), len(pr)))
    lagged = [r for r in rows if r["cell"] in rcells and (fnum(r.get("gen_lag_p99_us")) or 0) > 1000]
    unf = [r for r in rows if r["cell"] in rcells and row_errors(r) > 0]
    L.append("")
    L.append("Runs with errors are listed in the per-cell tables; a run with errors or unfinished requests "
             "does not meet the target whatever its p99. `rategen lag` = how late rategen itself handed out "
             "requests (its own scheduling delay, included in the latencies): p99 above 1 ms in %d run(s)%s."
             % (len(lagged), " (the client CPU was busy: compare with care)" if lagged else ""))
    if unf:
        L.append("Runs with errors: %s." % ", ".join("%s/%s rep %s" % (r["cell"], r["target"], r["rep"]) for r in unf))
    L.append("")
    return L


def vs_section(rows, cells, other):
    """Headline table edgeshard / `other` (paired per repetition), e.g. haproxy."""
    L = ["## edgeshard / %s (paired per repetition)" % other, "",
         "| cell | req/s ratio | p99 ratio | CPU-µs/req ratio | edgeshard CPU-µs/req | %s CPU-µs/req "
         "| %s req/s | %s p99 ms |" % (other, other, other),
         "|---|---|---|---|---|---|---|---|"]
    for cell in cells:
        sel = [r for r in rows if r["cell"] == cell]
        if not any(r["target"] == other for r in sel):
            continue
        g = lambda t, k, nd=0, sc=1.0: fmt_range([fnum(r.get(k)) for r in sel if r["target"] == t], nd, sc)
        if cell == "idle10k":
            L.append("| idle10k (bytes/conn) | | | ratio %s | %s | %s | | |" % (
                fmt_range(paired_ratios(rows, cell, "edgeshard", other, "bytes_per_idle_conn"), 2),
                g("edgeshard", "bytes_per_idle_conn"), g(other, "bytes_per_idle_conn")))
            continue
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            cell, fmt_range(paired_ratios(rows, cell, "edgeshard", other, "rps"), 2),
            fmt_range(paired_ratios(rows, cell, "edgeshard", other, "lat_p99_us"), 2),
            fmt_range(paired_ratios(rows, cell, "edgeshard", other, "cpu_us_per_req"), 2),
            g("edgeshard", "cpu_us_per_req", 2), g(other, "cpu_us_per_req", 2), g(other, "rps"),
            g(other, "lat_p99_us", 2, 1e-3)))
    L += ["", "Ratios < 1 are better for edgeshard in the p99 and CPU columns, > 1 better in the req/s column.", ""]
    return L


def connects_section(rows, cells):
    """New upstream connections per 1,000 requests, every target side by side."""
    sel = [r for r in rows if r.get("upstream_connects_per_1k")]
    if not sel:
        return []
    targets = [t for t in TARGET_ORDER if any(r["target"] == t for r in sel)]
    L = ["## New upstream connections per 1,000 requests", "",
         "Connections the origin accepted during each measured run (stub_status `accepts`) per 1,000 "
         "requests completed; the warm-up run before the first repetition opens the pools. ≈ 0 = every "
         "request went over an already open upstream connection. A proxy that closes the upstream "
         "connections of the requests wrk cut off when its previous run stopped (nginx: "
         "`proxy_ignore_client_abort off`) reopens them at the start of the next run, up to one per "
         "wrk connection. `direct`: wrk's own connections.", "",
         "| cell | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for cell in cells:
        cs = [r for r in sel if r["cell"] == cell]
        if not cs:
            continue
        L.append("| %s | %s |" % (cell, " | ".join(
            fmt_range([fnum(r["upstream_connects_per_1k"]) for r in cs if r["target"] == t], 2) for t in targets)))
    L.append("")
    return L


def summarize(out):
    rows = load_rows(out)
    cells = []
    for r in rows:
        if r["cell"] not in cells:
            cells.append(r["cell"])
    env = read(os.path.join(out, "env.txt"))
    has_hap = any(r["target"] == "haproxy" for r in rows)
    L = ["# edgeshard vs nginx%s: benchmark summary" % (" vs haproxy" if has_hap else ""), ""]
    L.append("Directory: `%s`. Medians over repetitions, (min–max) in brackets. Latencies from wrk "
             "(`--latency` + bench.lua percentiles, closed-loop: wrk does not correct for coordinated omission). "
             "CPU-µs/req = (utime+stime of the whole proxy process, all threads / nginx master+workers) "
             "during the run ÷ requests completed%s. `direct` is wrk straight at the origin (the ceiling); "
             "`floor` is the minimal monoio byte relay (loadtest/floor). Errors = non-2xx + socket errors "
             "(connect/read/write/timeout) + unfinished (rate cells). The `rateNN` cells are open loop (rategen, "
             "latency from the intended send time, see *Open loop* below), not wrk. **Upstream connects/1k req** = "
             "new connections the origin accepted during the run (its stub_status `accepts`, read before and "
             "after, the read's own connection subtracted) × 1,000 ÷ requests completed: ≈ 0 for a proxy that "
             "keeps reusing its upstream connections; for `direct` it counts wrk's own connections."
             % (os.path.basename(os.path.normpath(out)),
                " (haproxy: its one process, all threads)" if has_hap else ""))
    L.append("")
    for key in ("cpu model", "kernel", "  proxy CPUs", "  client CPUs", "  origin CPUs", "options",
                "proxy engines", "edgeshard git", "nginx:", "haproxy:", "matrix wall time"):
        for line in env.splitlines():
            if line.startswith(key):
                L.append("- " + line.strip())
                break
    L.append("")
    # headline table
    L += ["## Headline: edgeshard / nginx (paired per repetition)", "",
          "| cell | req/s ratio | p99 ratio | CPU-µs/req ratio | edgeshard CPU-µs/req | nginx CPU-µs/req | floor CPU-µs/req | edgeshard/floor CPU |",
          "|---|---|---|---|---|---|---|---|"]
    for cell in cells:
        if cell == "idle10k":
            continue
        rr = paired_ratios(rows, cell, "edgeshard", "nginx", "rps")
        pr = paired_ratios(rows, cell, "edgeshard", "nginx", "lat_p99_us")
        cr = paired_ratios(rows, cell, "edgeshard", "nginx", "cpu_us_per_req")
        fr = paired_ratios(rows, cell, "edgeshard", "floor", "cpu_us_per_req")
        cpu = lambda t: fmt_range([fnum(r["cpu_us_per_req"]) for r in rows if r["cell"] == cell and r["target"] == t], 2)
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            cell, fmt_range(rr, 2), fmt_range(pr, 2), fmt_range(cr, 2), cpu("edgeshard"), cpu("nginx"),
            cpu("floor"), fmt_range(fr, 2)))
    idle = [r for r in rows if r["cell"] == "idle10k"]
    if idle:
        br = paired_ratios(rows, "idle10k", "edgeshard", "nginx", "bytes_per_idle_conn")
        L.append("| idle10k (bytes/conn) | | | | %s | %s | | ratio %s |" % (
            fmt_range([fnum(r["bytes_per_idle_conn"]) for r in idle if r["target"] == "edgeshard"]),
            fmt_range([fnum(r["bytes_per_idle_conn"]) for r in idle if r["target"] == "nginx"]),
            fmt_range(br, 2)))
    L.append("")
    L.append("Ratios < 1 are better for edgeshard in the p99 and CPU columns, > 1 better in the req/s column.")
    L.append("")
    if has_hap and any(r["target"] == "edgeshard" for r in rows):
        L += vs_section(rows, cells, "haproxy")
    L += connects_section(rows, cells)
    L += rate_section(rows, cells)
    # per cell detail
    L.append("## Per cell")
    for cell in cells:
        cr = [r for r in rows if r["cell"] == cell]
        L += ["", "### %s — %s" % (cell, cell_desc(cell)), ""]
        if cell == "idle10k":
            L += ["| target | runs | open | failed | still open at end | RSS before kB | RSS with conns kB | bytes/conn |",
                  "|---|---|---|---|---|---|---|---|"]
            for t in TARGET_ORDER:
                tr = [r for r in cr if r["target"] == t]
                if not tr:
                    continue
                g = lambda k: [fnum(r[k]) for r in tr]
                L.append("| %s | %d | %s | %s | %s | %s | %s | %s |" % (
                    t, len(tr), fmt_range(g("idle_open")), fmt_range(g("idle_failed")), fmt_range(g("idle_alive")),
                    fmt_range(g("rss_before_kb")), fmt_range(g("rss_after_kb")), fmt_range(g("bytes_per_idle_conn"))))
            continue
        if RATE_CELL_RX.match(cell):
            L += ["| target | runs | offered req/s | completed req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
                  "| errors | CPU-µs/req | origin CPU-µs/req | rategen lag p99 ms | upstream connects/1k req |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for t in TARGET_ORDER:
                tr = [r for r in cr if r["target"] == t]
                if not tr:
                    continue
                g = lambda k: [fnum(r.get(k)) for r in tr]
                failed = sum(1 for r in tr if r["note"])
                L.append("| %s | %d%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    t, len(tr), " (%d noted)" % failed if failed else "", fmt_range(g("offered_rps")),
                    fmt_range(g("rps")), fmt_range(g("lat_p50_us"), 2, 1e-3), fmt_range(g("lat_p90_us"), 2, 1e-3),
                    fmt_range(g("lat_p99_us"), 2, 1e-3), fmt_range(g("lat_p999_us"), 2, 1e-3),
                    fmt_range(g("lat_max_us"), 2, 1e-3), fmt_range([row_errors(r) for r in tr]),
                    fmt_range(g("cpu_us_per_req"), 2), fmt_range(g("origin_cpu_us_per_req"), 2),
                    fmt_range(g("gen_lag_p99_us"), 2, 1e-3), fmt_range(g("upstream_connects_per_1k"), 2)))
            for n in sorted(set(r["note"] for r in cr if r["note"])):
                L += ["", "> note: %s" % n[:300]]
            continue
        L += ["| target | runs | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU-µs/req | origin CPU-µs/req "
              "| upstream connects/1k req |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for t in TARGET_ORDER:
            tr = [r for r in cr if r["target"] == t]
            if not tr:
                continue
            g = lambda k: [fnum(r.get(k)) for r in tr]
            errs = [row_errors(r) for r in tr]
            failed = sum(1 for r in tr if r["note"])
            L.append("| %s | %d%s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                t, len(tr), " (%d noted)" % failed if failed else "", fmt_range(g("rps")),
                fmt_range(g("lat_p50_us"), 2, 1e-3), fmt_range(g("lat_p99_us"), 2, 1e-3),
                fmt_range(g("lat_p999_us"), 2, 1e-3), fmt_range(errs),
                fmt_range(g("cpu_us_per_req"), 2), fmt_range(g("origin_cpu_us_per_req"), 2),
                fmt_range(g("upstream_connects_per_1k"), 2)))
        notes = sorted(set(r["note"] for r in cr if r["note"]))
        for n in notes:
            L.append("")
            L.append("> note: %s" % n[:300])
    plots = make_plots(out, rows, cells)
    if plots:
        L += ["", "## Plots", ""] + ["![%s](%s)" % (p, p) for p in plots]
    else:
        L += ["", "(plots skipped: matplotlib not importable by %s)" % sys.executable]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    log("wrote %s" % os.path.join(out, "summary.md"))


def make_plots(out, rows, cells):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    colors = {"edgeshard": "#1f77b4", "nginx": "#2ca02c", "haproxy": "#ff7f0e", "floor": "#7f7f7f",
              "direct": "#d62728"}
    cells = [c for c in cells if c != "idle10k"]
    targets = [t for t in TARGET_ORDER if any(r["target"] == t for r in rows if r["cell"] in cells)]
    made = []

    def grouped(ax, key, scale, ylabel, log_y=False, only=None):
        tl = [t for t in targets if only is None or t in only]
        width = 0.8 / max(1, len(tl))
        for i, t in enumerate(tl):
            meds, lo, hi = [], [], []
            for c in cells:
                vals = [fnum(r[key]) for r in rows if r["cell"] == c and r["target"] == t]
                vals = [v * scale for v in vals if v is not None]
                m = statistics.median(vals) if vals else 0
                meds.append(m)
                lo.append(m - min(vals) if vals else 0)
                hi.append(max(vals) - m if vals else 0)
            xs = [j + (i - (len(tl) - 1) / 2) * width for j in range(len(cells))]
            ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=t, color=colors.get(t))
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels(cells, rotation=20)
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)

    if not cells:
        return made
    fig, axes = plt.subplots(3, 1, figsize=(max(8, 1.3 * len(cells) + 3), 11), sharex=True)
    for ax, (key, name) in zip(axes, (("lat_p50_us", "p50"), ("lat_p99_us", "p99"), ("lat_p999_us", "p99.9"))):
        grouped(ax, key, 1e-3, "%s latency (ms, log)" % name, log_y=True)
        ax.set_title("%s latency (median of runs, bars = min-max)" % name)
    axes[0].legend(ncol=4)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency.png"), dpi=90)
    plt.close(fig)
    made.append("latency.png")

    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(cells) + 3), 5))
    grouped(ax, "cpu_us_per_req", 1.0, "proxy CPU-µs per request", only=("edgeshard", "nginx", "haproxy", "floor"))
    ax.set_title("Proxy CPU time per request (utime+stime / requests)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cpu_per_request.png"), dpi=90)
    plt.close(fig)
    made.append("cpu_per_request.png")

    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(cells) + 3), 5))
    grouped(ax, "rps", 1.0, "requests/s (log)", log_y=True)
    ax.set_title("Throughput")
    ax.legend(ncol=4)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "rps.png"), dpi=90)
    plt.close(fig)
    made.append("rps.png")
    return made


# ----------------------------------------------------------------------------------------
# scaling: combine matrix outputs for several shard counts

def cmd_scaling(a):
    rows = []
    for d in a.dirs:
        try:
            rows += load_rows(d)
        except OSError as e:
            log("skip %s: %s" % (d, e))
    shards = sorted(set(int(r["shards"]) for r in rows if r["shards"]))
    cells = []
    for r in rows:
        if r["cell"] not in cells and r["cell"] != "idle10k":
            cells.append(r["cell"])
    L = ["# scaling: edgeshard shards vs nginx workers", "",
         "Median req/s and CPU-µs/req per shard/worker count (proxy CPUs = shard count).", ""]
    for cell in cells:
        L += ["### %s" % cell, "", "| shards/workers | edgeshard req/s | nginx req/s | ratio | edgeshard CPU-µs/req | nginx CPU-µs/req |",
              "|---|---|---|---|---|---|"]
        for s in shards:
            sel = [r for r in rows if r["cell"] == cell and r["shards"] == str(s)]
            g = lambda t, k: med([fnum(r[k]) for r in sel if r["target"] == t])
            e, n = g("edgeshard", "rps"), g("nginx", "rps")
            L.append("| %d | %s | %s | %s | %s | %s |" % (s, fmt(e), fmt(n), fmt(e / n, 2) if e and n else "-",
                                                          fmt(g("edgeshard", "cpu_us_per_req"), 2),
                                                          fmt(g("nginx", "cpu_us_per_req"), 2)))
        L.append("")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 5))
        for cell in cells:
            for t, style in (("edgeshard", "-o"), ("nginx", "--s")):
                ys = [med([fnum(r["rps"]) for r in rows if r["cell"] == cell and r["shards"] == str(s)
                           and r["target"] == t]) or 0 for s in shards]
                ax.plot(shards, ys, style, label="%s %s" % (t, cell))
        ax.set_xlabel("shards / workers")
        ax.set_ylabel("requests/s")
        ax.set_xticks(shards)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "scaling.png"), dpi=90)
        L += ["![scaling](scaling.png)", ""]
    except Exception as e:
        L += ["(plot skipped: %s)" % e]
    with open(os.path.join(a.out, "scaling.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    log("wrote %s" % os.path.join(a.out, "scaling.md"))


# ----------------------------------------------------------------------------------------
# syscalls and instructions per request

def h2load(cfg, port, n, conns, timeout):
    argv = ["taskset", "-c", cpus_str(cfg.client_cpus), "h2load", "--h1", "-n", str(n), "-c", str(conns),
            "-t", "1", "http://127.0.0.1:%d/" % port]
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                           start_new_session=True)
        out = r.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        return None, (e.stdout or b"").decode(errors="replace") + "\nTIMEOUT"
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not m:
        return None, out
    return dict(total=int(m.group(1)), done=int(m.group(2)), ok=int(m.group(3)), failed=int(m.group(4))), out


def base_cfg(a):
    cfg = Env()
    ncpu = os.cpu_count() or 1
    cfg.shards = a.shards
    cfg.proxy_cpus = parse_cpus(a.proxy_cpus) if a.proxy_cpus else [ncpu - 1]
    rest = [c for c in range(ncpu) if c not in cfg.proxy_cpus] or list(range(ncpu))
    cfg.client_cpus = parse_cpus(a.client_cpus) if a.client_cpus else rest
    cfg.origin_cpus = cfg.client_cpus
    cfg.keepalive = 1024
    cfg.io_engine = a.io_engine
    cfg.ready_timeout = a.ready_timeout
    cfg.edgeshard, cfg.floor, cfg.nginx, cfg.wrk = a.edgeshard, a.floor, a.nginx_bin, "wrk"
    cfg.ports = dict(origin=a.base_port, edgeshard=a.base_port + 1, nginx=a.base_port + 2, floor=a.base_port + 3)
    for name, port in cfg.ports.items():
        if port_open(port):
            raise SystemExit("port %d (%s) is already in use; choose another --base-port" % (port, name))
    cfg.nofile = nofile_hard()
    cfg.tmp = tempfile.mkdtemp(prefix="edgeshard-prof-")
    os.chmod(cfg.tmp, 0o755)
    os.makedirs(a.out, exist_ok=True)
    return cfg


def strace_count(cfg, proc, port, n, conns, tag):
    tids = []
    for pid in proc.pids():
        tids += [int(t) for t in os.listdir("/proc/%d/task" % pid)]
    outf = os.path.join(cfg.tmp, "strace-%s.txt" % tag)
    argv = ["strace", "-c", "-f", "-q", "-o", outf]
    for t in tids:
        argv += ["-p", str(t)]
    st = Proc("strace", argv, os.path.join(cfg.tmp, "strace-%s.log" % tag))
    time.sleep(1.5)  # attach
    res, out = h2load(cfg, port, n, conns, timeout=300)
    time.sleep(0.3)
    st.stop(sig=signal.SIGINT, timeout=30)
    text = read(outf)
    m = re.search(r"^\s*100\.00\s+\S+\s+\S+\s+(\d+)\s+(\d*)\s*total", text, re.M)
    if not m:
        m = re.search(r"^.*\s(\d+)\s+(\d*)\s*total\s*$", text, re.M)
    per = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 5 and re.match(r"^\d+\.\d+$", f[0]) and f[-1] != "total":
            try:
                per[f[-1]] = int(f[3])
            except ValueError:
                pass
    return (int(m.group(1)) if m else None), per, res, text


def cmd_syscalls(a):
    cfg = base_cfg(a)
    n = a.requests
    lines = ["# syscalls per request (strace -c -f, difference of %d and %d requests)" % (n, 2 * n), "",
             "h2load --h1 -c %d, keep-alive GET / (small body), %d shard(s) on CPUs %s, engine=%s. "
             "strace makes everything slow: compare counts, not timings." % (
                 a.conns, cfg.shards, cpus_str(cfg.proxy_cpus), cfg.io_engine), "",
             "| target | engine | syscalls (N) | syscalls (2N) | syscalls/request | top syscalls per request |",
             "|---|---|---|---|---|---|"]
    csv_rows = []
    try:
        origin = start_origin(cfg)
        for t in [x for x in a.targets.split(",") if x]:
            try:
                p, engine = start_proxy(cfg, t, "default")
            except RuntimeError as e:
                log(str(e))
                lines.append("| %s | - | failed to start | | | |" % t)
                continue
            h2load(cfg, cfg.ports[t], 2000, a.conns, 60)  # warm-up: pools, allocator
            c1, per1, r1, _ = strace_count(cfg, p, cfg.ports[t], n, a.conns, t + "-n")
            c2, per2, r2, _ = strace_count(cfg, p, cfg.ports[t], 2 * n, a.conns, t + "-2n")
            p.stop()
            ok = r1 and r2 and r1["failed"] == 0 and r2["failed"] == 0 and c1 is not None and c2 is not None
            spr = (c2 - c1) / float(n) if ok else None
            top = sorted(((per2.get(k, 0) - per1.get(k, 0)) / float(n), k) for k in set(per1) | set(per2))
            top = ", ".join("%s %.2f" % (k, v) for v, k in reversed(top[-6:]) if v > 0.005)
            lines.append("| %s | %s | %s | %s | %s | %s |" % (t, engine, c1, c2, fmt(spr, 2), top))
            csv_rows.append(dict(target=t, engine=engine, n=n, calls_n=c1, calls_2n=c2,
                                 syscalls_per_req="%.3f" % spr if spr is not None else ""))
            log("%s: %s syscalls/request (%s)" % (t, fmt(spr, 2), top))
    finally:
        stop_all()
        shutil.rmtree(cfg.tmp, ignore_errors=True)
    with open(os.path.join(a.out, "syscalls.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "syscalls.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["target", "engine", "n", "calls_n", "calls_2n", "syscalls_per_req"])
        w.writeheader()
        w.writerows(csv_rows)
    print("\n".join(lines))


def cmd_logging(a):
    """Access log on vs off: the same edgeshard config with and without [log] access, run back to
    back (order rotating per repetition) on the ka50 cell; CPU-us/request and req/s medians."""
    cfg = base_cfg(a)
    variants = ["off"] + ["log-" + f for f in a.formats.split(",") if f]
    rows = []
    try:
        origin = start_origin(cfg)
        for rep in range(a.reps):
            k = rep % len(variants)
            for v in variants[k:] + variants[:k]:
                p, engine = start_proxy(cfg, "edgeshard", v)
                wrk(cfg, cfg.ports["edgeshard"], "ka50", a.warmup)
                row = measured_run(cfg, "ka50", "edgeshard", rep, cfg.ports["edgeshard"], p, origin,
                                   a.duration, engine)
                p.stop()
                lines = ""
                if v != "off":
                    path = os.path.join(cfg.tmp, "access-%s.log" % v)
                    with open(path, "rb") as f:
                        lines = sum(1 for _ in f)
                    os.unlink(path)
                row.update(variant=v, log_lines=lines)
                rows.append(row)
    finally:
        stop_all()
        shutil.rmtree(cfg.tmp, ignore_errors=True)
    fields = ["variant", "rep", "requests", "rps", "cpu_us_per_req", "lat_p50_us", "lat_p99_us",
              "log_lines", "non2xx", "err_connect", "err_read", "err_write", "err_timeout", "engine"]
    with open(os.path.join(a.out, "logging.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    base_rps = med([fnum(r["rps"]) for r in rows if r["variant"] == "off"])
    base_cpu = med([fnum(r["cpu_us_per_req"]) for r in rows if r["variant"] == "off"])
    out = ["# access log on vs off (ka50: keep-alive GET, 50 connections)", "",
           "%d shard(s) on CPUs %s, wrk on CPUs %s, %d x %d s per variant, order rotating; "
           "medians. Lines = lines in the log file after the run (wrk's count excludes requests "
           "in flight when it stops, and includes the warm-up run's)." % (
               cfg.shards, cpus_str(cfg.proxy_cpus), cpus_str(cfg.client_cpus), a.reps, a.duration), "",
           "| variant | req/s | vs off | CPU-us/req | vs off | p99 us | errors |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        rps = med([fnum(r["rps"]) for r in rs])
        cpu = med([fnum(r["cpu_us_per_req"]) for r in rs])
        p99 = med([fnum(r["lat_p99_us"]) for r in rs])
        errs = sum(int(r.get(k) or 0) for r in rs for k in ("non2xx", "err_connect", "err_read", "err_write", "err_timeout"))
        out.append("| %s | %s | %s | %s | %s | %s | %d |" % (
            v, fmt(rps), fmt(rps / base_rps if rps and base_rps else None, 3), fmt(cpu, 2),
            fmt(cpu / base_cpu if cpu and base_cpu else None, 3), fmt(p99), errs))
    with open(os.path.join(a.out, "logging.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))


CC_SYSCTL = "/proc/sys/net/ipv4/tcp_congestion_control"


def set_host_cc(cc):
    """Sets the host's default TCP congestion control (new sockets); returns the old one."""
    old = read(CC_SYSCTL).strip()
    if cc and cc != old:
        with open(CC_SYSCTL, "w") as f:
            f.write(cc)
        log("host tcp_congestion_control: %s -> %s" % (old, cc))
    return old


def splice_matrix(a, cfg, cells, cc):
    """One pass of every cell over every variant with fresh processes (their sockets take
    the host's congestion control as it is now); returns the rows."""
    rows, procs = [], {}
    try:
        origin = start_origin(cfg)
        base = cfg.ports["edgeshard"]
        for k, v in enumerate(a.variants.split(",")):
            cfg.ports["edgeshard"] = base + 10 + k
            p, engine = start_proxy(cfg, "edgeshard", v)
            procs[v] = (p, cfg.ports["edgeshard"], engine)
        cfg.ports["edgeshard"] = base
        if "nginx" in a.targets.split(","):
            p, engine = start_proxy(cfg, "nginx", "default")
            procs["nginx"] = (p, cfg.ports["nginx"], engine)
        names = list(procs)
        for cell in cells:
            for v in names:
                p, port, engine = procs[v]
                wrk(cfg, port, cell, a.warmup)
            for rep in range(a.reps):
                k = rep % len(names)
                for v in names[k:] + names[:k]:
                    p, port, engine = procs[v]
                    target = "nginx" if v == "nginx" else "edgeshard"
                    row = measured_run(cfg, cell, target, rep, port, p, origin, a.duration, engine)
                    row.update(variant=v, host_cc=cc)
                    rows.append(row)
    finally:
        stop_all()
    return rows, names


def cmd_splice(a):
    """Copy vs splice per body size: edgeshard with `splice = "off"` and with every
    Content-Length body spliced (`splice_min_bytes = 0`), and nginx, on GETs of 16 KiB to
    1 MiB files; order rotating per repetition; CPU-us per request and req/s. With
    --host-cc, the whole matrix runs once per host congestion control (sysctl, restored at
    the end): it is a host setting both proxies get, and it changes what a large send costs."""
    cfg = base_cfg(a)
    cells = [c for c in a.cells.split(",") if c]
    ccs = [c for c in (a.host_cc or "").split(",") if c] or [read(CC_SYSCTL).strip()]
    rows, names = [], []
    original = read(CC_SYSCTL).strip()
    try:
        for cc in ccs:
            set_host_cc(cc)
            r, names = splice_matrix(a, cfg, cells, cc)
            rows += r
    finally:
        set_host_cc(original)
        shutil.rmtree(cfg.tmp, ignore_errors=True)
    fields = ["host_cc", "cell", "variant", "rep", "requests", "rps", "cpu_us_per_req", "lat_p50_us",
              "lat_p99_us", "non2xx", "err_connect", "err_read", "err_write", "err_timeout", "engine"]
    write_env(cfg, os.path.join(a.out, a.name + "-env.txt"),
              {r["variant"]: r.get("engine", "") for r in rows})
    with open(os.path.join(a.out, a.name + ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    out = ["# copy vs splice by response size", "",
           "%d shard(s) / nginx worker(s) on CPUs %s, wrk on CPUs %s, %d x %d s per variant and cell, "
           "order rotating; medians. `copy` = edgeshard with `splice = \"off\"`, `splice` = edgeshard "
           "splicing every Content-Length body (`splice_min_bytes = 0`)." % (
               cfg.shards, cpus_str(cfg.proxy_cpus), cpus_str(cfg.client_cpus), a.reps, a.duration)]
    for cc in ccs:
        out += ["", "Host congestion control: `%s` (net.ipv4.tcp_congestion_control, for every process)" % cc, "",
                "| cell | variant | req/s | CPU-us/req | vs nginx CPU | vs copy CPU | p99 us | errors |",
                "|---|---|---|---|---|---|---|---|"]
        for cell in cells:
            sel = [r for r in rows if r["cell"] == cell and r["host_cc"] == cc]
            med_of = lambda v, key: med([fnum(r[key]) for r in sel if r["variant"] == v])
            ng = med_of("nginx", "cpu_us_per_req") if "nginx" in names else None
            cp = med_of("splice-off", "cpu_us_per_req") if "splice-off" in names else None
            for v in names:
                rs = [r for r in sel if r["variant"] == v]
                cpu = med_of(v, "cpu_us_per_req")
                errs = sum(int(r.get(k) or 0) for r in rs
                           for k in ("non2xx", "err_connect", "err_read", "err_write", "err_timeout"))
                out.append("| %s | %s | %s | %s | %s | %s | %s | %d |" % (
                    cell, {"splice-off": "copy", "splice-all": "splice"}.get(v, v), fmt(med_of(v, "rps")),
                    fmt(cpu, 1), fmt(cpu / ng if cpu and ng else None, 3), fmt(cpu / cp if cpu and cp else None, 3),
                    fmt(med_of(v, "lat_p99_us")), errs))
    with open(os.path.join(a.out, a.name + ".md"), "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))


def proc_sample(pid):
    """Threads (and how many are io_uring workers) and socket / pipe descriptors of `pid`."""
    threads = iou = sockets = pipes = 0
    for t in os.listdir("/proc/%d/task" % pid):
        threads += 1
        if read("/proc/%d/task/%s/comm" % (pid, t)).startswith("iou-wrk"):
            iou += 1
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        sockets += target.startswith("socket:")
        pipes += target.startswith("pipe:")
    return threads, iou, sockets, pipes


def cmd_iowq(a):
    """Kernel worker threads under many concurrent spliced transfers (issue 7): wrk keeps
    --conns keep-alive GETs of a 1 MiB file in flight through one io_uring shard that splices
    every body (a pipe per transfer); threads, iou-wrk threads, sockets and pipes of the proxy
    are sampled every second."""
    import resource
    # a spliced transfer holds 4 descriptors in the proxy: client, upstream, two pipe ends
    want = a.conns * 4 + 1024
    note = ""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError) as e:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        capped = (hard - 1024) // 4
        note = ("%d transfers need %d descriptors in the proxy; this host's RLIMIT_NOFILE hard limit is %d "
                "and cannot be raised here (%s), so the run used %d." % (a.conns, want, hard, e, capped))
        log(note)
        a.conns = capped
    cfg = base_cfg(a)
    cfg.keepalive = a.conns + 1024
    cfg.io_engine = "uring"
    cfg.admin_port = a.base_port + 9
    CELLS["many"] = dict(conns=a.conns, path="/static/%s" % a.file, desc="%d concurrent GETs" % a.conns)
    samples = []
    try:
        start_origin(cfg)
        variant = "splice-all:splice_max_pipes=%d,splice_pipe_bytes=65536" % (a.conns + 1024)
        p, engine = start_proxy(cfg, "edgeshard", variant)
        pid = p.pids()[0]
        res = {}
        t = threading.Thread(target=lambda: res.update(r=wrk(cfg, cfg.ports["edgeshard"], "many", a.duration, a.wrk_timeout)))
        t.start()
        t0 = time.monotonic()
        while t.is_alive() and time.monotonic() - t0 < a.duration + 40:
            samples.append((round(time.monotonic() - t0), ) + proc_sample(pid))
            time.sleep(1)
        t.join()
        r, out = res.get("r", (None, ""))
        # what the proxy answered by itself (anything but relayed responses), from /metrics
        try:
            import urllib.request
            text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % cfg.admin_port, timeout=10).read().decode()
            generated = [l for l in text.splitlines() if l.startswith(("edgeshard_responses_generated_total",
                                                                        "edgeshard_client_aborts_total",
                                                                        "edgeshard_upstream_aborts_total",
                                                                        "edgeshard_spliced_responses_total"))]
        except Exception as e:
            generated = ["(metrics unavailable: %s)" % e]
        proxy_log = p.output()[-3000:]
        origin_log = read(os.path.join(cfg.tmp, "origin-error.log"))[-2000:]
    finally:
        stop_all()
        shutil.rmtree(cfg.tmp, ignore_errors=True)
    print("--- proxy output (tail)\n" + proxy_log + "\n--- origin error log (tail)\n" + origin_log)
    peak = lambda i: max(x[i] for x in samples) if samples else None
    lines = ["# io-wq threads under %d concurrent spliced transfers" % a.conns, "",
             "edgeshard, 1 shard, engine %s, on CPU %s; `splice_min_bytes = 0`, `splice_pipe_bytes = 64KiB`, "
             "`splice_max_pipes = %d` (a pipe for every transfer); wrk -c %d -t 1 on CPU %s, GET /static/%s "
             "for %d s. Sampled every second from /proc." % (
                 engine, cpus_str(cfg.proxy_cpus), a.conns + 1024, a.conns, cpus_str(cfg.client_cpus),
                 a.file, a.duration) + ((" " + note) if note else ""), "",
             "| t s | threads | iou-wrk threads | sockets | pipe fds |", "|---|---|---|---|---|"]
    lines += ["| %d | %d | %d | %d | %d |" % x for x in samples]
    lines += ["", "Proxy counters at the end:", "", "```"] + generated + ["```"]
    lines += ["", "Peak: %s threads, **%s iou-wrk threads**, %s sockets (client + upstream), %s pipe fds "
              "(two per pipe). wrk: %s requests, %s errors (connect %s, read %s, write %s, timeout %s)." % (
                  peak(1), peak(2), peak(3), peak(4),
                  int(r["requests"]) if r else "-",
                  int(sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_timeout", "err_status"))) if r else "-",
                  *(int(r[k]) if r else "-" for k in ("err_connect", "err_read", "err_write", "err_timeout")))]
    with open(os.path.join(a.out, "iowq.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not r:
        print(out[-2000:])


def callgrind_totals(path):
    """Event totals of the callgrind files named path.*: {"Ir": n, ...}, or None."""
    totals = {}
    for fn in os.listdir(os.path.dirname(path)):
        full = os.path.join(os.path.dirname(path), fn)
        if not fn.startswith(os.path.basename(path)):
            continue
        events = ["Ir"]
        for line in read(full).splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            if line.startswith("summary:") or line.startswith("totals:"):
                for ev, v in zip(events, line.split()[1:]):
                    totals[ev] = totals.get(ev, 0) + int(v)
                break
    return totals or None


def cmd_instructions(a):
    cfg = base_cfg(a)
    cfg.shards = 1
    n = a.requests
    lines = ["# user-space instructions per request (valgrind --tool=callgrind, difference of %d and %d requests)"
             % (n, 2 * n), "",
             "Each count is a fresh process under callgrind serving N requests (h2load --h1 -c %d, keep-alive "
             "GET / small body) then stopped with SIGTERM; (I(2N) - I(N)) / N removes start-up and shutdown. "
             "1 shard / 1 nginx worker (master_process off), engine=%s. Kernel work is not counted."
             % (a.conns, cfg.io_engine), "",
             "| target | instructions (N) | instructions (2N) | instructions/request |", "|---|---|---|---|"]
    # --cache-sim: callgrind's cache and branch simulation (first-level data misses, last-level
    # misses, mispredicted branches per request), a proxy for cycles instructions do not show.
    sim_events = ("I1mr", "D1mr", "D1mw", "DLmr", "DLmw", "Bcm", "Bim") if a.cache_sim else ()
    sims = []
    try:
        origin = start_origin(cfg)
        cfg.ready_timeout = max(cfg.ready_timeout, 120)
        for t in [x for x in a.targets.split(",") if x]:
            counts = []
            for k in (n, 2 * n):
                base = os.path.join(cfg.tmp, "cg-%s-%d.out" % (t, k))
                vg = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + base + ".%p",
                      "--trace-children=no"]
                if a.cache_sim:
                    vg += ["--cache-sim=yes", "--branch-sim=yes"]
                try:
                    p, engine = start_proxy(cfg, t, "default", extra_prefix=vg, single_process=True)
                except RuntimeError as e:
                    log(str(e))
                    counts.append(None)
                    continue
                res, out = h2load(cfg, cfg.ports[t], k, a.conns, timeout=a.timeout)
                p.stop(sig=signal.SIGTERM, timeout=120)
                totals = callgrind_totals(base)
                if not res or res["failed"]:
                    log("%s: h2load problem: %s" % (t, out[-800:]))
                    totals = None
                counts.append(totals)
                log("%s: %d requests -> %s" % (t, k, totals))
            t1, t2 = (counts + [None, None])[:2]
            i1, i2 = (t1 or {}).get("Ir"), (t2 or {}).get("Ir")
            ipr = (i2 - i1) / float(n) if i1 is not None and i2 is not None else None
            lines.append("| %s | %s | %s | %s |" % (t, fmt(i1), fmt(i2), fmt(ipr)))
            if sim_events and t1 and t2:
                sims.append("| %s | %s |" % (t, " | ".join(
                    "%.1f" % ((t2.get(ev, 0) - t1.get(ev, 0)) / float(n)) for ev in sim_events)))
    finally:
        stop_all()
        shutil.rmtree(cfg.tmp, ignore_errors=True)
    if sims:
        lines += ["", "Simulated per request (callgrind --cache-sim=yes --branch-sim=yes: I1 = first-level instruction cache, D1 = first-level "
                  "data cache, LL = last level, r/w = read/write misses; Bcm/Bim = mispredicted "
                  "conditional/indirect branches):", "",
                  "| target | %s |" % " | ".join(sim_events), "|---|%s" % ("---|" * len(sim_events))] + sims
    with open(os.path.join(a.out, "instructions.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


# ----------------------------------------------------------------------------------------

def main():
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--out", required=True)
        p.add_argument("--shards", type=int, default=1)
        p.add_argument("--proxy-cpus", default="")
        p.add_argument("--client-cpus", default="")
        p.add_argument("--io-engine", default="auto")
        p.add_argument("--base-port", type=int, default=18080)
        p.add_argument("--edgeshard", default=os.path.join(REPO, "target/release/edgeshard"))
        p.add_argument("--floor", default=os.path.join(HERE, "floor/target/release/edgeshard-floor"))
        p.add_argument("--nginx-bin", default=shutil.which("nginx") or "/usr/sbin/nginx")
        p.add_argument("--ready-timeout", type=float, default=30)

    m = sub.add_parser("matrix")
    common(m)
    m.add_argument("--origin-cpus", default="")
    m.add_argument("--duration", type=int, default=10)
    m.add_argument("--reps", type=int, default=3)
    m.add_argument("--warmup", type=int, default=2)
    m.add_argument("--cells", default=",".join(DEFAULT_CELLS))
    m.add_argument("--targets", default="edgeshard,nginx,floor")
    m.add_argument("--floor-cells", default="ka50,ka256")
    m.add_argument("--no-direct", dest="direct", action="store_false")
    m.add_argument("--keepalive", type=int, default=1024)
    m.add_argument("--idle-conns", type=int, default=10000)
    m.add_argument("--idle-settle", type=float, default=2.0)
    m.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    m.add_argument("--haproxy-bin", default=shutil.which("haproxy") or "/usr/sbin/haproxy")
    m.add_argument("--rategen", default=os.path.join(HERE, "rategen/target/release/rategen"))
    m.add_argument("--rate-loads", default="50,80", help="rate cell: offered rates in %% of nginx's max req/s")
    m.add_argument("--rate-conns", type=int, default=50, help="rate cell: rategen connections")
    m.add_argument("--rate-base", type=float, default=0.0,
                   help="rate cell: nginx's max req/s to use instead of measuring it")
    m.add_argument("--fresh", action="store_true", help="overwrite raw.csv instead of appending")
    m.add_argument("--keep-tmp", action="store_true")

    s = sub.add_parser("summarize")
    s.add_argument("out")

    sc = sub.add_parser("scaling")
    sc.add_argument("--out", required=True)
    sc.add_argument("dirs", nargs="+")

    for name in ("syscalls", "instructions"):
        p = sub.add_parser(name)
        common(p)
        p.add_argument("--targets", default="edgeshard,nginx")
        p.add_argument("--requests", type=int, default=20000 if name == "syscalls" else 5000)
        p.add_argument("--conns", type=int, default=16)
        p.add_argument("--timeout", type=int, default=300)
        if name == "instructions":
            p.add_argument("--cache-sim", action="store_true",
                           help="also simulate caches and branches (misses per request)")

    sp = sub.add_parser("splice")
    common(sp)
    sp.add_argument("--reps", type=int, default=3)
    sp.add_argument("--duration", type=int, default=8)
    sp.add_argument("--warmup", type=int, default=2)
    sp.add_argument("--cells", default="get16k,get64k,get256k,get1m")
    sp.add_argument("--host-cc", default="",
                    help="comma list of host congestion controls to run the matrix under (sysctl; root)")
    sp.add_argument("--name", default="splice", help="output file stem in --out")
    sp.add_argument("--variants", default="splice-off,splice-all",
                    help="edgeshard variants; base[:key=value,...] adds [server] keys")
    sp.add_argument("--targets", default="edgeshard,nginx")

    iw = sub.add_parser("iowq", help="io-wq threads under many concurrent spliced transfers")
    common(iw)
    iw.add_argument("--conns", type=int, default=10000)
    iw.add_argument("--duration", type=int, default=20)
    iw.add_argument("--file", default="1m.bin")
    iw.add_argument("--wrk-timeout", type=int, default=60)

    lg = sub.add_parser("logging")
    common(lg)
    lg.add_argument("--reps", type=int, default=3)
    lg.add_argument("--duration", type=int, default=10)
    lg.add_argument("--warmup", type=int, default=2)
    lg.add_argument("--formats", default="combined,json")

    a = ap.parse_args()
    try:
        if a.cmd == "matrix":
            cmd_matrix(a)
        elif a.cmd == "summarize":
            summarize(a.out)
        elif a.cmd == "scaling":
            os.makedirs(a.out, exist_ok=True)
            cmd_scaling(a)
        elif a.cmd == "syscalls":
            cmd_syscalls(a)
        elif a.cmd == "instructions":
            cmd_instructions(a)
        elif a.cmd == "logging":
            cmd_logging(a)
        elif a.cmd == "splice":
            cmd_splice(a)
        elif a.cmd == "iowq":
            cmd_iowq(a)
    except KeyboardInterrupt as e:
        log("interrupted (%s); stopping everything" % e)
        stop_all()
        sys.exit(130)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
