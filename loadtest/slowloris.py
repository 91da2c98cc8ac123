#!/usr/bin/env python3
"""Slow clients (issue 16): N connections trickling request heads and N trickling request bodies
against one edgeshard process, while a paced normal client (rategen, open loop) measures its
latency. Each trickler sends one byte per `--trickle-interval` seconds and reconnects when the
proxy closes it, so the attack lasts the whole run; the time from connect to close is recorded
for every trickler connection and compared with the deadline the configuration sets:

  heads:  the first head must be complete within timeouts.client_header of the accept (408, close)
  bodies: limits.client_body_min_rate: the allowance starts at timeouts.client_body and grows by
          1 s per min_rate bytes received; a trickle of r bytes/s is cut after about
          client_body / (1 - r/min_rate) of waiting (408, close)

The same paced client runs first without tricklers (baseline), then with them. Writes
slowloris.md and slowloris.csv to --out. Loopback only; bounded by --duration per phase.

  python3 loadtest/slowloris.py --out DIR [--tricklers 1000] [--duration 30] [--rate 200]
"""
import argparse
import csv
import datetime
import os
import re
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


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


def rategen(binary, port, rate, duration, conns):
    out = subprocess.run(
        [binary, "--url", "http://127.0.0.1:%d/" % port, "--rate", str(rate), "--duration",
         str(duration), "--connections", str(conns), "--timeout", "10"],
        capture_output=True, text=True, timeout=duration + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), "")
    return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)


def metrics(admin):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=5).read().decode()
    vals = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, v = line.rpartition(" ")
            vals[name] = float(v)
    return vals


class Trickler:
    """One trickling connection: `kind` is "head" or "body"."""

    def __init__(self, kind, port):
        self.kind = kind
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))
        self.opened = time.monotonic()
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


def attack(port, n, interval, stop_at, lifetimes):
    """Keeps n head and n body tricklers open until stop_at; records each closed one's life."""
    sel = selectors.DefaultSelector()
    live = []
    for kind in ("head", "body"):
        for _ in range(n):
            t = Trickler(kind, port)
            sel.register(t.sock, selectors.EVENT_READ, t)
            live.append(t)
    next_tick = time.monotonic()
    while time.monotonic() < stop_at:
        timeout = max(0.0, min(next_tick, stop_at) - time.monotonic())
        for key, _ in sel.select(timeout):
            t = key.data
            try:
                data = t.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            status = None
            m = re.match(rb"HTTP/1\.1 (\d{3})", data or b"")
            if m:
                status = int(m.group(1))
                # The answer came; wait for the close (the next readable event).
                t.status = status
                try:
                    rest = t.sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    rest = b""
                if rest:
                    continue
            lifetimes.append((t.kind, time.monotonic() - t.opened, getattr(t, "status", status)))
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
    for t in live:
        sel.unregister(t.sock)
        t.sock.close()


def pct(vals, p):
    if not vals:
        return float("nan")
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(p / 100.0 * len(vals)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--edgeshard", default=os.path.join(REPO, "target/release/edgeshard"))
    ap.add_argument("--rategen", default=os.path.join(HERE, "rategen/target/release/rategen"))
    ap.add_argument("--tricklers", type=int, default=1000, help="per kind (heads, bodies)")
    ap.add_argument("--trickle-interval", type=float, default=1.0)
    ap.add_argument("--duration", type=int, default=30, help="seconds per phase")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--client-header", default="5s")
    ap.add_argument("--client-body", default="5s")
    ap.add_argument("--min-rate", type=int, default=500)
    ap.add_argument("--shards", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="edgeshard-slowloris-")
    procs = []
    try:
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write("x" * 100)
        origin_port, proxy_port, admin_port = free_port(), free_port(), free_port()
        with open(os.path.join(tmp, "origin.conf"), "w") as f:
            f.write("worker_processes 1;\npid %s/origin.pid;\nevents { worker_connections 4096; }\n"
                    "http { access_log off; keepalive_requests 1000000;\n"
                    "  client_body_temp_path %s; proxy_temp_path %s; fastcgi_temp_path %s; uwsgi_temp_path %s; scgi_temp_path %s;\n"
                    "  client_max_body_size 16m; client_body_timeout 300s;\n"
                    "  server { listen 127.0.0.1:%d; root %s;\n"
                    "    location = /upload { proxy_pass http://127.0.0.1:%d/index.html; proxy_method GET; } } }\n"
                    % (tmp, tmp, tmp, tmp, tmp, tmp, origin_port, www, origin_port))
        origin = subprocess.Popen(["nginx", "-p", tmp, "-c", os.path.join(tmp, "origin.conf"),
                                   "-e", os.path.join(tmp, "origin-error.log"), "-g", "daemon off;"])
        procs.append(origin)
        wait_port(origin_port, origin)
        conf = os.path.join(tmp, "edgeshard.toml")
        with open(conf, "w") as f:
            f.write('[[listener]]\naddress = "127.0.0.1:%d"\n\n[admin]\naddress = "127.0.0.1:%d"\n\n'
                    '[timeouts]\nclient_header = "%s"\nclient_body = "%s"\n\n'
                    '[limits]\nclient_body_min_rate = %d\n\n'
                    '[[route]]\nupstream = "o"\n\n[[upstream]]\nname = "o"\nbackends = [{ address = "127.0.0.1:%d" }]\n'
                    % (proxy_port, admin_port, a.client_header, a.client_body, a.min_rate, origin_port))
        proxy = subprocess.Popen([a.edgeshard, "run", "--config", conf, "--shards", str(a.shards)],
                                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "proxy.log"), "w"))
        procs.append(proxy)
        wait_port(proxy_port, proxy)
        wait_port(admin_port, proxy)

        log("baseline: rategen %d req/s for %d s" % (a.rate, a.duration))
        base = rategen(a.rategen, proxy_port, a.rate, a.duration, a.conns)
        before = metrics(admin_port)
        log("attack: %d head + %d body tricklers, rategen alongside" % (a.tricklers, a.tricklers))
        lifetimes = []
        stop_at = time.monotonic() + a.duration + 2
        gen = subprocess.Popen(
            [a.rategen, "--url", "http://127.0.0.1:%d/" % proxy_port, "--rate", str(a.rate),
             "--duration", str(a.duration), "--connections", str(a.conns), "--timeout", "10"],
            stdout=subprocess.PIPE, text=True)
        procs.append(gen)
        attack(proxy_port, a.tricklers, a.trickle_interval, stop_at, lifetimes)
        out, _ = gen.communicate(timeout=120)
        line = next((l for l in out.splitlines() if l.startswith("RESULT")), "")
        under = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
        after = metrics(admin_port)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    heads = [l for k, l, _ in lifetimes if k == "head"]
    bodies = [l for k, l, _ in lifetimes if k == "body"]
    statuses = {}
    for k, _, s in lifetimes:
        statuses[(k, s)] = statuses.get((k, s), 0) + 1
    hdr = float(a.client_header.rstrip("s"))
    body = float(a.client_body.rstrip("s"))
    rate = 1.0 / a.trickle_interval
    body_deadline = body / (1 - rate / a.min_rate)
    delta = lambda name: after.get(name, 0) - before.get(name, 0)
    rows = [
        ("baseline p50/p99/max (us)", "%s / %s / %s" % (base.get("p50_us"), base.get("p99_us"), base.get("max_us"))),
        ("baseline completed / errors", "%s / %s" % (base.get("completed"), base.get("errors"))),
        ("under attack p50/p99/max (us)", "%s / %s / %s" % (under.get("p50_us"), under.get("p99_us"), under.get("max_us"))),
        ("under attack completed / errors", "%s / %s" % (under.get("completed"), under.get("errors"))),
        ("head tricklers closed", "%d, life min/median/max %.2f / %.2f / %.2f s (deadline %.2f s)"
         % (len(heads), min(heads or [0]), statistics.median(heads or [0]), max(heads or [0]), hdr)),
        ("body tricklers closed", "%d, life min/median/max %.2f / %.2f / %.2f s (deadline %.2f s of waiting)"
         % (len(bodies), min(bodies or [0]), statistics.median(bodies or [0]), max(bodies or [0]), body_deadline)),
        ("answers seen by tricklers", ", ".join("%s %s: %d" % (k, s, n) for (k, s), n in sorted(statuses.items(), key=str))),
        ("edgeshard_slow_clients_total{reason=\"request_body\"} delta", "%d" % delta('edgeshard_slow_clients_total{reason="request_body"}')),
    ]
    host = subprocess.run(["sh", "-c", "uname -sr; nproc; grep -m1 'model name' /proc/cpuinfo"],
                          capture_output=True, text=True).stdout.strip().replace("\n", ", ")
    with open(os.path.join(a.out, "slowloris.md"), "w") as f:
        f.write("# Slow clients: %d head and %d body tricklers vs a paced client\n\n" % (a.tricklers, a.tricklers))
        f.write("%s, host: %s, edgeshard %d shard(s), commit %s.\n\n" % (
            datetime.date.today(), host, a.shards,
            subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()))
        f.write("Command: `python3 loadtest/slowloris.py %s`\n\n" % " ".join(sys.argv[1:]))
        f.write("Config: client_header = %s, client_body = %s, client_body_min_rate = %d B/s; tricklers send "
                "1 byte every %.1f s and reconnect when closed; paced client: rategen %d req/s over %d "
                "keep-alive connections, %d s per phase (latency from the intended send time).\n\n"
                % (a.client_header, a.client_body, a.min_rate, a.trickle_interval, a.rate, a.conns, a.duration))
        f.write("| measure | value |\n|---|---|\n")
        for k, v in rows:
            f.write("| %s | %s |\n" % (k, v))
    with open(os.path.join(a.out, "slowloris.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "life_s", "status"])
        for r in lifetimes:
            w.writerow([r[0], "%.3f" % r[1], r[2]])
    print(open(os.path.join(a.out, "slowloris.md")).read())


if __name__ == "__main__":
    main()
