#!/usr/bin/env python3
"""Slow clients (issue 16): N connections trickling request heads and N trickling request bodies
against one proxy, while a paced normal client (rategen, open loop) measures its latency. The
proxies (`--targets`, default `edgeshard,nginx`, run back to back in that order in one invocation,
against the same nginx origin) are edgeshard with one shard and nginx with one worker
(`nginx-proxy.conf.tmpl`, as the other load tests render it, with the deadlines below), both pinned
to the same CPU (`--proxy-cpus`, default the last one); the origin, rategen and the tricklers run
on the other CPUs (`--client-cpus`). Each trickler sends one byte per `--trickle-interval` seconds
and reconnects when the proxy closes it, so the attack lasts the whole phase; the time from connect
to close is recorded for every trickler connection (and the age of those still open when the phase
ends) and compared with the deadline the configuration sets:

  edgeshard heads:  the first head must be complete within timeouts.client_header of the accept
                    (408, close)
  edgeshard bodies: limits.client_body_min_rate: the allowance starts at timeouts.client_body and
                    grows by 1 s per min_rate bytes received; a trickle of r bytes/s is cut after
                    about client_body / (1 - r/min_rate) of waiting (408, close)
  nginx heads:      client_header_timeout, from the accept (nginx closes without an answer)
  nginx bodies:     client_body_timeout, which is the longest wait between two successive reads:
                    a 1 byte/s trickle is never cut by it (nginx has no minimum body rate); send_timeout
                    is set to the same value

For each target the same paced client runs first without tricklers (baseline), then with them
(attack). Writes NAME.md and NAME.csv to --out; NAME is `slowloris` for edgeshard alone (the
original result), `slowloris-vs-nginx` for both, `slowloris-nginx` for nginx alone, or --name.
Loopback only; every phase is bounded by --duration (+2 s for the attack), every process this
script starts is stopped by PID at the end.

  python3 loadtest/slowloris.py --out DIR [--targets edgeshard,nginx] [--tricklers 1000]
                                [--kinds head,body] [--duration 30] [--rate 200] [--name NAME] [--note TEXT]
"""
import argparse
import csv
import datetime
import os
import re
import resource
import selectors
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TARGETS = ("edgeshard", "nginx")


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def wait_port(port, proc, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit("process exited early: %s" % proc.args)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("port %d not open after %ds" % (port, timeout))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def parse_cpus(s):
    out = []
    for part in s.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def cpus_str(lst):
    return ",".join(str(c) for c in lst)


def taskset(cpus):
    return ["taskset", "-c", cpus_str(cpus)] if cpus else []


def rategen_argv(a, port):
    return [a.rategen, "--url", "http://127.0.0.1:%d/" % port, "--rate", str(a.rate), "--duration",
            str(a.duration), "--connections", str(a.conns), "--timeout", "10"] + (
        ["--cpus", cpus_str(a.client_cpus)] if a.client_cpus else [])


def parse_result(stdout):
    line = next((l for l in stdout.splitlines() if l.startswith("RESULT")), "")
    return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)


def metrics(admin):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=5).read().decode()
    vals = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, v = line.rpartition(" ")
            vals[name] = float(v)
    return vals


def proc_tree(pid):
    """pid and its children (nginx: master and workers)."""
    pids = [pid]
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return pids


def cpu_seconds(pid):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in proc_tree(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def rss_kb(pid):
    total = 0
    for p in proc_tree(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                m = re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M)
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total


class Trickler:
    """One trickling connection: `kind` is "head" or "body"."""

    def __init__(self, kind, port):
        self.kind = kind
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))
        self.opened = time.monotonic()
        self.status = None
        if kind == "head":
            self.pending = b"GET / HTTP/1.1\r\nHost: slow.example\r\nX-Slow: "
        else:
            # The origin reads a whole body before answering /upload (nginx buffers it to
            # proxy it to itself), so the proxy relays the trickle until it cuts it.
            self.pending = (b"POST /upload HTTP/1.1\r\nHost: slow.example\r\nContent-Length: 1000000\r\n\r\n")
        self.first = True

    def tick(self):
        """Sends the opening bytes once, then one byte. False when the proxy has closed it."""
        try:
            if self.first:
                self.sock.send(self.pending)
                self.first = False
            else:
                self.sock.send(b"a")
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return False
        return True


def attack(port, n, interval, stop_at, lifetimes, at_end=None, kinds=("head", "body")):
    """Keeps n head and n body tricklers open until stop_at; records each closed one's life as
    (kind, life_s, status) where status is the answer's status code, "close" (closed without an
    answer) or "reset"; those still open at stop_at are recorded with status "open" and their age.
    at_end() is called before the open ones are closed."""
    sel = selectors.DefaultSelector()
    live = []
    for kind in kinds:
        for _ in range(n):
            t = Trickler(kind, port)
            sel.register(t.sock, selectors.EVENT_READ, t)
            live.append(t)
    next_tick = time.monotonic()
    while time.monotonic() < stop_at:
        timeout = max(0.0, min(next_tick, stop_at) - time.monotonic())
        for key, _ in sel.select(timeout):
            t = key.data
            how = None
            try:
                data = t.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data, how = b"", "reset"
            m = re.match(rb"HTTP/1\.[01] (\d{3})", data or b"")
            if m:
                # The answer came; wait for the close (the next readable event).
                t.status = int(m.group(1))
                try:
                    rest = t.sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    rest = b""
                if rest:
                    continue
            elif data:
                continue  # more of an answer already seen
            lifetimes.append((t.kind, time.monotonic() - t.opened, t.status or how or "close"))
            sel.unregister(t.sock)
            t.sock.close()
            live.remove(t)
            nt = Trickler(t.kind, port)
            sel.register(nt.sock, selectors.EVENT_READ, nt)
            live.append(nt)
        if time.monotonic() >= next_tick:
            for t in list(live):
                if not t.tick():
                    pass  # the close shows up as readable
            next_tick += interval
    now = time.monotonic()
    for t in live:
        lifetimes.append((t.kind, now - t.opened, "open"))
    if at_end:
        at_end()
    for t in live:
        sel.unregister(t.sock)
        t.sock.close()


def pct(vals, p):
    if not vals:
        return float("nan")
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(p / 100.0 * len(vals)))]


def start_edgeshard(a, tmp, proxy_port, admin_port, origin_port):
    conf = os.path.join(tmp, "edgeshard.toml")
    with open(conf, "w") as f:
        f.write('[[listener]]\naddress = "127.0.0.1:%d"\n\n[admin]\naddress = "127.0.0.1:%d"\n\n'
                '[timeouts]\nclient_header = "%s"\nclient_body = "%s"\n\n'
                '[limits]\nclient_body_min_rate = %d\n\n'
                '[[route]]\nupstream = "o"\n\n[[upstream]]\nname = "o"\nbackends = [{ address = "127.0.0.1:%d" }]\n'
                % (proxy_port, admin_port, a.client_header, a.client_body, a.min_rate, origin_port))
    argv = taskset(a.proxy_cpus) + [a.edgeshard, "run", "--config", conf, "--shards", str(a.shards)] + (
        ["--cpus", cpus_str(a.proxy_cpus[:a.shards])] if a.proxy_cpus else [])
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "edgeshard.log"), "w"))
    return proc, conf


def nginx_conf(a, tmp, proxy_port, origin_port):
    """nginx-proxy.conf.tmpl as driver.py renders it, with the deadlines of this test."""
    with open(os.path.join(HERE, "nginx-proxy.conf.tmpl")) as f:
        text = f.read()
    width = max(a.proxy_cpus) + 1 if a.proxy_cpus else 0
    affinity = ""
    if a.proxy_cpus:
        masks = []
        for i in range(a.shards):
            c = a.proxy_cpus[i % len(a.proxy_cpus)]
            masks.append("".join("1" if (width - 1 - b) == c else "0" for b in range(width)))
        affinity = "worker_cpu_affinity %s;" % " ".join(masks)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    servers = ("    server {\n        listen 127.0.0.1:%d default_server backlog=4096%s;\n"
               "        server_name _;\n        location / { proxy_pass http://origin; }\n    }"
               % (proxy_port, " reuseport" if a.shards > 1 else ""))
    values = dict(WORKERS=a.shards, AFFINITY=affinity, NOFILE=nofile,
                  WORKER_CONNECTIONS=max(4096, nofile - 64), PREFIX=tmp, ORIGIN_PORT=origin_port,
                  KEEPALIVE=1024, SERVERS=servers)
    for k, v in values.items():
        text = text.replace("@@%s@@" % k, str(v))
    # The deadlines of this test (the template's are the other load tests' 10 s / 30 s), and
    # info-level errors so that every "client timed out" is logged and can be counted.
    subs = [(r"client_header_timeout \S+;", "client_header_timeout %s;" % a.client_header),
            (r"client_body_timeout \S+;",
             "client_body_timeout %s;\n    send_timeout %s;" % (a.client_body, a.client_body)),
            (r"(error_log \S+) warn;", r"\1 info;")]
    for pat, rep in subs:
        text, n = re.subn(pat, rep, text, count=1)
        if n != 1:
            raise SystemExit("nginx-proxy.conf.tmpl: %r not found" % pat)
    left = re.findall(r"@@[A-Z_]+@@", text)
    if left:
        raise SystemExit("unrendered placeholders in nginx-proxy.conf.tmpl: %s" % left)
    return text


def start_nginx(a, tmp, proxy_port, origin_port):
    conf = os.path.join(tmp, "nginx-proxy.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(a, tmp, proxy_port, origin_port))
    for d in ("proxy_body", "proxy_proxy", "proxy_fastcgi", "proxy_uwsgi", "proxy_scgi"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    argv = taskset(a.proxy_cpus) + [a.nginx, "-p", tmp, "-c", conf, "-e",
                                    os.path.join(tmp, "proxy-error.log"), "-g", "daemon off;"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "nginx-proxy.out"), "w"))
    return proc, conf


def nginx_timeouts(tmp, offset):
    """'client timed out' lines in the nginx proxy's error log after byte offset, by what it read."""
    counts = {}
    try:
        with open(os.path.join(tmp, "proxy-error.log"), "rb") as f:
            f.seek(offset)
            for line in f:
                if b"timed out" in line:
                    m = re.search(rb"timed out \([^)]*\) while ([a-z ]+)", line)
                    key = (m.group(1) if m else b"?").decode()
                    counts[key] = counts.get(key, 0) + 1
    except OSError:
        pass
    return counts


def run_target(a, target, tmp, origin_port, procs):
    proxy_port, admin_port = free_port(), free_port()
    if target == "edgeshard":
        proxy, conf = start_edgeshard(a, tmp, proxy_port, admin_port, origin_port)
    else:
        proxy, conf = start_nginx(a, tmp, proxy_port, origin_port)
    procs.append(proxy)
    wait_port(proxy_port, proxy)
    if target == "edgeshard":
        wait_port(admin_port, proxy)
    time.sleep(0.5)  # nginx: the worker is up (the master listens first)
    res = {"target": target, "conf": open(conf).read(), "load": [open("/proc/loadavg").read().split()[0]]}
    try:
        log("%s baseline: rategen %d req/s for %d s" % (target, a.rate, a.duration))
        out = subprocess.run(rategen_argv(a, proxy_port), capture_output=True, text=True,
                             timeout=a.duration + 60)
        res["base"] = parse_result(out.stdout)
        before = metrics(admin_port) if target == "edgeshard" else {}
        errlog = os.path.join(tmp, "proxy-error.log")
        log_off = os.path.getsize(errlog) if os.path.exists(errlog) else 0
        cpu0, rss0 = cpu_seconds(proxy.pid), rss_kb(proxy.pid)
        log("%s attack: %d tricklers of each kind (%s), rategen alongside" % (target, a.tricklers, ",".join(a.kinds)))
        lifetimes = []
        stop_at = time.monotonic() + a.duration + 2
        gen = subprocess.Popen(rategen_argv(a, proxy_port), stdout=subprocess.PIPE, text=True)
        procs.append(gen)
        at_end = {}

        def snapshot():
            at_end["rss_kb"] = rss_kb(proxy.pid)
            at_end["cpu_s"] = cpu_seconds(proxy.pid)
        attack(proxy_port, a.tricklers, a.trickle_interval, stop_at, lifetimes, snapshot, a.kinds)
        out, _ = gen.communicate(timeout=120)
        res["under"] = parse_result(out)
        res["lifetimes"] = lifetimes
        res["cpu_s"] = at_end["cpu_s"] - cpu0
        res["rss_kb"] = (rss0, at_end["rss_kb"])
        res["load"].append(open("/proc/loadavg").read().split()[0])
        if target == "edgeshard":
            after = metrics(admin_port)
            res["slow_counter"] = {k: after.get(k, 0) - before.get(k, 0)
                                   for k in after if k.startswith("edgeshard_slow_clients_total")}
        else:
            time.sleep(0.2)
            res["slow_counter"] = nginx_timeouts(tmp, log_off)
    finally:
        if proxy.poll() is None:
            proxy.terminate()
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(timeout=10)
    return res


def summarize(a, res):
    lt = res["lifetimes"]
    s = {}
    for kind in ("head", "body"):
        closed = [l for k, l, st in lt if k == kind and st != "open"]
        still = [l for k, l, st in lt if k == kind and st == "open"]
        s[kind] = (closed, still)
    statuses = {}
    for k, _, st in lt:
        statuses[(k, str(st))] = statuses.get((k, str(st)), 0) + 1
    return s, statuses


def fmt_life(closed, still, deadline, limit):
    """limit: the deadline in seconds; an open trickler older than limit + 2 s was not cut."""
    if closed:
        txt = "%d closed, life min/median/p99/max %.2f / %.2f / %.2f / %.2f s" % (
            len(closed), min(closed), statistics.median(closed), pct(closed, 99), max(closed))
    else:
        txt = "none closed"
    if still:
        old = [l for l in still if l > limit + 2]
        txt += "; %d open at the phase's end, aged %.1f-%.1f s" % (len(still), min(still), max(still))
        if old:
            txt += " (%d of them older than %.0f s: **not cut within the phase**)" % (len(old), limit + 2)
    return txt + " (deadline %s)" % deadline


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default="edgeshard,nginx",
                    help="comma list of edgeshard, nginx; run back to back in this order")
    ap.add_argument("--name", help="output file name without extension (default from --targets)")
    ap.add_argument("--note", default="", help="a line added to the report (e.g. about the host)")
    ap.add_argument("--edgeshard", default=os.path.join(REPO, "target/release/edgeshard"))
    ap.add_argument("--nginx", default="nginx")
    ap.add_argument("--rategen", default=os.path.join(HERE, "rategen/target/release/rategen"))
    ap.add_argument("--tricklers", type=int, default=1000, help="per kind (heads, bodies)")
    ap.add_argument("--kinds", default="head,body", help="trickler kinds: head, body or both")
    ap.add_argument("--trickle-interval", type=float, default=1.0)
    ap.add_argument("--duration", type=int, default=30, help="seconds per phase")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--client-header", default="5s")
    ap.add_argument("--client-body", default="5s")
    ap.add_argument("--min-rate", type=int, default=500)
    ap.add_argument("--shards", type=int, default=1, help="edgeshard shards = nginx workers")
    ap.add_argument("--proxy-cpus", default=None,
                    help="CPUs of both proxies (default: the last CPU on a host with 2 or more; 'none': not pinned)")
    ap.add_argument("--client-cpus", default=None,
                    help="CPUs of the origin, rategen and the tricklers (default: the others)")
    a = ap.parse_args()
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    a.kinds = tuple(k.strip() for k in a.kinds.split(",") if k.strip())
    if not a.kinds or any(k not in ("head", "body") for k in a.kinds):
        raise SystemExit("--kinds: head, body or head,body")
    for t in targets:
        if t not in TARGETS:
            raise SystemExit("--targets: unknown %r (edgeshard, nginx)" % t)
    if not a.name:
        a.name = {("edgeshard",): "slowloris", ("nginx",): "slowloris-nginx"}.get(
            tuple(targets), "slowloris-vs-nginx")
    allowed = sorted(os.sched_getaffinity(0))
    if a.proxy_cpus == "none" or (a.proxy_cpus is None and len(allowed) < 2):
        a.proxy_cpus, a.client_cpus = [], []
    else:
        a.proxy_cpus = parse_cpus(a.proxy_cpus) if a.proxy_cpus else allowed[-a.shards:]
        a.client_cpus = (parse_cpus(a.client_cpus) if a.client_cpus
                         else [c for c in allowed if c not in a.proxy_cpus] or allowed)
    os.makedirs(a.out, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host = subprocess.run(["sh", "-c", "uname -sr; nproc; grep -m1 'model name' /proc/cpuinfo"],
                          capture_output=True, text=True).stdout.strip().replace("\n", ", ")
    if a.client_cpus:
        os.sched_setaffinity(0, a.client_cpus)  # the tricklers (this process)
    tmp = tempfile.mkdtemp(prefix="edgeshard-slowloris-")
    procs = []
    results = []
    started = datetime.datetime.now()
    try:
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write("x" * 100)
        origin_port = free_port()
        with open(os.path.join(tmp, "origin.conf"), "w") as f:
            f.write("worker_processes 1;\npid %s/origin.pid;\nevents { worker_connections 4096; }\n"
                    "http { access_log off; keepalive_requests 1000000;\n"
                    "  client_body_temp_path %s; proxy_temp_path %s; fastcgi_temp_path %s; uwsgi_temp_path %s; scgi_temp_path %s;\n"
                    "  client_max_body_size 16m; client_body_timeout 300s;\n"
                    "  server { listen 127.0.0.1:%d; root %s;\n"
                    "    location = /upload { proxy_pass http://127.0.0.1:%d/index.html; proxy_method GET; } } }\n"
                    % (tmp, tmp, tmp, tmp, tmp, tmp, origin_port, www, origin_port))
        origin = subprocess.Popen(taskset(a.client_cpus) + [a.nginx, "-p", tmp, "-c", os.path.join(tmp, "origin.conf"),
                                  "-e", os.path.join(tmp, "origin-error.log"), "-g", "daemon off;"])
        procs.append(origin)
        wait_port(origin_port, origin)
        for t in targets:
            results.append(run_target(a, t, tmp, origin_port, procs))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
    wall = (datetime.datetime.now() - started).total_seconds()

    hdr = float(a.client_header.rstrip("s"))
    body = float(a.client_body.rstrip("s"))
    rate = 1.0 / a.trickle_interval
    deadlines = {
        "edgeshard": ("%.2f s from the accept" % hdr,
                      "%.2f s of waiting after the head (client_body %s, min_rate %d B/s)"
                      % (body / (1 - rate / a.min_rate), a.client_body, a.min_rate)),
        "nginx": ("%.2f s from the accept (client_header_timeout)" % hdr,
                  "%.2f s between two reads (client_body_timeout); a %.0f B/s trickle reads every %.1f s"
                  % (body, rate, a.trickle_interval)),
    }
    cols = [r["target"] for r in results]
    rows = []

    def row(name, fn):
        rows.append((name, [fn(r) for r in results]))
    lat = lambda d: "%s / %s / %s" % (d.get("p50_us"), d.get("p99_us"), d.get("max_us"))
    ce = lambda d: "%s / %s" % (d.get("completed"), d.get("errors"))
    row("baseline p50 / p99 / max (us)", lambda r: lat(r["base"]))
    row("baseline completed / errors", lambda r: ce(r["base"]))
    row("under attack p50 / p99 / max (us)", lambda r: lat(r["under"]))
    row("under attack completed / errors", lambda r: ce(r["under"]))
    row("under attack p99 / baseline p99", lambda r: "%.1fx" % (
        float(r["under"].get("p99_us", "nan")) / float(r["base"].get("p99_us", "nan"))))
    row("rategen lag p99 baseline / attack (us)", lambda r: "%s / %s" % (
        r["base"].get("lag_p99_us"), r["under"].get("lag_p99_us")))
    sums = {r["target"]: summarize(a, r) for r in results}
    limits = {"edgeshard": (hdr, body / (1 - rate / a.min_rate)), "nginx": (hdr, body)}
    for i, kind in enumerate(("head", "body")):
        if kind in a.kinds:
            row("%s tricklers" % kind, lambda r, i=i, kind=kind: fmt_life(
                *sums[r["target"]][0][kind], deadlines[r["target"]][i], limits[r["target"]][i]))
    row("trickler connections: how they ended", lambda r: ", ".join(
        "%s %s: %d" % (k, s, n) for (k, s), n in sorted(sums[r["target"]][1].items(), key=str)))
    row("proxy's own count of cut slow clients", lambda r: ", ".join(
        "%s: %d" % (k, v) for k, v in sorted(r["slow_counter"].items())) or "none")
    row("host load average (1 min) before the baseline / after the attack", lambda r: " / ".join(r["load"]))
    row("proxy CPU during the attack phase (s)", lambda r: "%.2f" % r["cpu_s"])
    row("proxy RSS before / at the end of the attack (MiB)", lambda r: "%.1f / %.1f" % (
        r["rss_kb"][0] / 1024.0, r["rss_kb"][1] / 1024.0))

    load = open("/proc/loadavg").read().split()[:3]
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    nginx_v = subprocess.run([a.nginx, "-v"], capture_output=True, text=True).stderr.strip()
    md = os.path.join(a.out, a.name + ".md")
    with open(md, "w") as f:
        f.write("# Slow clients: %s vs a paced client (%s)\n\n"
                % (" and ".join("%d %s tricklers" % (a.tricklers, k) for k in a.kinds), " vs ".join(cols)))
        f.write("%s, host: %s, load average at the end %s, commit %s, %s; %d shard(s) / worker(s); "
                "proxy CPUs %s, origin + rategen + tricklers on CPUs %s; targets run back to back in "
                "this order, %.0f s in all.\n\n" % (
                    started.date(), host, " ".join(load), rev, nginx_v, a.shards,
                    cpus_str(a.proxy_cpus) or "not pinned", cpus_str(a.client_cpus) or "not pinned", wall))
        if a.note:
            f.write(a.note + "\n\n")
        f.write("Command: `python3 loadtest/slowloris.py %s`\n\n" % " ".join(shlex.quote(x) for x in sys.argv[1:]))
        f.write("Tricklers send 1 byte every %.1f s and reconnect when closed (heads: `GET / ... X-Slow: ` "
                "and one byte a tick; bodies: a complete `POST /upload` head with Content-Length 1000000, "
                "then one body byte a tick); paced client: rategen %d req/s over %d keep-alive "
                "connections, %d s per phase (latency from the intended send time); the attack phase "
                "lasts %d s. Same origin (nginx) for both.\n\n"
                % (a.trickle_interval, a.rate, a.conns, a.duration, a.duration + 2))
        if "edgeshard" in cols:
            f.write("edgeshard: client_header = %s, client_body = %s, client_body_min_rate = %d B/s.\n\n"
                    % (a.client_header, a.client_body, a.min_rate))
        if "nginx" in cols:
            f.write("nginx: `nginx-proxy.conf.tmpl` (upstream keepalive 1024, proxy_request_buffering off "
                    "like edgeshard's streaming), with client_header_timeout %s, client_body_timeout %s, "
                    "send_timeout %s, worker_processes %d, worker_connections and worker_rlimit_nofile from the "
                    "nofile hard limit, error_log at info (to count \"client timed out\").\n\n"
                    % (a.client_header, a.client_body, a.client_body, a.shards))
        f.write("| measure | %s |\n|---|%s\n" % (" | ".join(cols), "---|" * len(cols)))
        for name, vals in rows:
            f.write("| %s | %s |\n" % (name, " | ".join(vals)))
        f.write("\nrategen lag = how late rategen itself handed requests to their connections; it is part "
                "of the measured latency, and a p99 above ~1 ms means the client CPU was busy, so that "
                "phase's tail says more about the client than the proxy. Trickler endings: a status code is "
                "the proxy's answer before closing, `close` a close without an answer, `reset` an RST "
                "(a trickle byte that reached a socket the proxy had just closed), `open` still open when "
                "the phase ended (closed by the script).\n")
        for r in results:
            f.write("\n<details><summary>%s configuration</summary>\n\n```\n%s```\n</details>\n"
                    % (r["target"], r["conf"]))
    with open(os.path.join(a.out, a.name + ".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "kind", "life_s", "status"])
        for r in results:
            for k, l, st in r["lifetimes"]:
                w.writerow([r["target"], k, "%.3f" % l, st])
    print(open(md).read())


if __name__ == "__main__":
    main()
