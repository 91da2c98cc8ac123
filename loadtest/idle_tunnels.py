#!/usr/bin/env python3
"""Memory per idle upgraded connection (WebSocket tunnel): edgeshard (1 shard) against nginx
(1 worker), each a fresh process per repetition, the same backend (this script's own: it
answers every upgrade with 101 and then echoes).

For each proxy: start it, open and close a few tunnels (warm-up), read the serving
process's RSS (edgeshard's process; nginx's worker), open N tunnels and wait until each has
its 101, let them sit idle SETTLE seconds, read the RSS again, then send a line on every
tunnel and count the echoes (all must come back: the tunnels are alive), let them sit idle
again and read the RSS a third time (a tunnel that carried traffic, then went quiet). Per
tunnel = RSS growth / N. Writes a Markdown table (medians of REPS) to --out. Stdlib only; bounded in
time (every wait has a deadline) and count (N).

  python3 loadtest/idle_tunnels.py --edgeshard target/release/edgeshard --conns 2000 \
      --reps 3 --out F.md [--nginx /usr/sbin/nginx] [--cpu 1]
"""
import argparse
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REQUEST = (b"GET /ws HTTP/1.1\r\nHost: tunnels.test\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def backend(stop):
    """Accepts upgrades: answers 101 to a head, then echoes. One thread, selectors."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ, None)

    def run():
        heads = {}
        while not stop.is_set():
            for key, _ in sel.select(0.2):
                if key.data is None:
                    try:
                        c, _ = ls.accept()
                    except BlockingIOError:
                        continue
                    c.setblocking(False)
                    heads[c] = b""
                    sel.register(c, selectors.EVENT_READ, "conn")
                    continue
                c = key.fileobj
                try:
                    data = c.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(c)
                    heads.pop(c, None)
                    c.close()
                    continue
                if c in heads:
                    heads[c] += data
                    if b"\r\n\r\n" in heads[c]:
                        rest = heads.pop(c).split(b"\r\n\r\n", 1)[1]
                        c.sendall(SWITCH + rest)
                else:
                    c.sendall(data)
        for key in list(sel.get_map().values()):
            key.fileobj.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return ls.getsockname()[1], t


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_port(port, deadline):
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def open_tunnels(port, n, deadline):
    """N upgraded connections, each past its 101 head."""
    socks = []
    pending = {}
    sel = selectors.DefaultSelector()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(REQUEST)
        s.setblocking(False)
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
        # Drain answers as they come, so no queue grows without bound.
        for key, _ in sel.select(0):
            read_head(key.fileobj, pending, sel)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} tunnels never got their 101")
        for key, _ in sel.select(0.5):
            read_head(key.fileobj, pending, sel)
    sel.close()
    return socks


def read_head(s, pending, sel):
    data = s.recv(4096)
    if not data:
        raise RuntimeError("a tunnel closed before its 101")
    pending[s] += data
    if b"\r\n\r\n" in pending[s]:
        if not pending[s].startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"not a 101: {pending[s][:80]!r}")
        del pending[s]
        sel.unregister(s)


def echoes(socks, deadline):
    sel = selectors.DefaultSelector()
    for s in socks:
        s.sendall(b"ping\n")
        sel.register(s, selectors.EVENT_READ)
    got = 0
    left = len(socks)
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            s = key.fileobj
            try:
                data = s.recv(64)
            except BlockingIOError:
                continue
            sel.unregister(s)
            left -= 1
            got += data == b"ping\n"
    sel.close()
    return got


def start_edgeshard(binary, dirpath, port, bport, cpu):
    cfg = os.path.join(dirpath, "edge.toml")
    with open(cfg, "w") as f:
        f.write(f"""[timeouts]
tunnel_idle = "1h"
[[listener]]
address = "127.0.0.1:{port}"
[[route]]
upstream = "ws"
[[upstream]]
name = "ws"
backends = [{{ address = "127.0.0.1:{bport}" }}]
""")
    cmd = [binary, "run", "--config", cfg, "--shards", "1"]
    if cpu is not None:
        cmd += ["--cpus", str(cpu)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, (lambda: p.pid)


def start_nginx(binary, dirpath, port, bport, cpu, conns):
    cfg = os.path.join(dirpath, "nginx.conf")
    affinity = f"worker_cpu_affinity {1 << cpu:b};" if cpu is not None else ""
    with open(cfg, "w") as f:
        f.write(f"""worker_processes 1;
{affinity}
worker_rlimit_nofile {2 * conns + 1024};
pid {dirpath}/nginx.pid;
error_log {dirpath}/error.log warn;
daemon off;
events {{ worker_connections {2 * conns + 512}; }}
http {{
    access_log off;
    client_body_temp_path {dirpath}/body;
    proxy_temp_path {dirpath}/proxy;
    fastcgi_temp_path {dirpath}/fastcgi;
    uwsgi_temp_path {dirpath}/uwsgi;
    scgi_temp_path {dirpath}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{bport};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
    }}
}}
""")
    p = subprocess.Popen([binary, "-c", cfg, "-p", dirpath], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)

    def worker():
        kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True)
        return int(kids.stdout.split()[0])
    return p, worker


def one(target, a, bport):
    d = tempfile.mkdtemp(prefix=f"idle-tunnels-{target}-")
    port = free_port()
    try:
        if target == "edgeshard":
            p, pid = start_edgeshard(a.edgeshard, d, port, bport, a.cpu)
        else:
            p, pid = start_nginx(a.nginx, d, port, bport, a.cpu, a.conns)
        deadline = time.monotonic() + 120
        wait_port(port, deadline)
        for s in open_tunnels(port, 16, deadline):
            s.close()
        time.sleep(a.settle)
        before = rss_kb(pid())
        socks = open_tunnels(port, a.conns, deadline)
        time.sleep(a.settle)
        after = rss_kb(pid())
        alive = echoes(socks, time.monotonic() + 60)
        time.sleep(a.settle)
        used = rss_kb(pid())
        for s in socks:
            s.close()
        return before, after, alive, used
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edgeshard", required=True)
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--targets", default="edgeshard,nginx")
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=2.0, help="idle seconds before each RSS read")
    ap.add_argument("--cpu", type=int, default=None, help="pin the proxy to this CPU")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * a.conns + 256
    if hard < need:
        sys.exit(f"idle_tunnels: RLIMIT_NOFILE hard limit {hard} < {need} for {a.conns} tunnels")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    stop = threading.Event()
    bport, bthread = backend(stop)
    rows = {}
    try:
        for rep in range(a.reps):
            for target in a.targets.split(","):
                before, after, alive, used = one(target, a, bport)
                per = (after - before) * 1024 / a.conns
                per_used = (used - before) * 1024 / a.conns
                rows.setdefault(target, []).append((before, after, alive, used, per, per_used))
                print(f"rep {rep + 1} {target}: RSS {before} -> {after} kB -> {used} kB after "
                      f"an echo, {per:.0f} / {per_used:.0f} B per tunnel, {alive}/{a.conns} "
                      f"echoed", flush=True)
    finally:
        stop.set()
        bthread.join(5)
    with open(a.out, "w") as f:
        f.write(f"# Memory per idle tunnel, {a.conns} upgraded connections\n\n")
        f.write(f"Command: `python3 loadtest/idle_tunnels.py --conns {a.conns} --reps {a.reps}"
                f" --settle {a.settle}{' --cpu ' + str(a.cpu) if a.cpu is not None else ''}`"
                f" (fresh process per repetition; RSS of edgeshard's process, nginx's worker)\n\n")
        f.write("| target | RSS before (kB) | tunnels open (kB) | after one echo each, idle "
                "again (kB) | echoed | bytes per tunnel: new / after traffic |\n")
        f.write("|---|---|---|---|---|---|\n")
        for target, rs in rows.items():
            for before, after, alive, used, per, per_used in rs:
                f.write(f"| {target} | {before} | {after} | {used} | {alive}/{a.conns} "
                        f"| {per:.0f} / {per_used:.0f} |\n")
        f.write("\n| target | median bytes per idle tunnel: new | after traffic |\n|---|---|---|\n")
        for target, rs in rows.items():
            f.write(f"| {target} | {statistics.median(r[4] for r in rs):.0f} "
                    f"| {statistics.median(r[5] for r in rs):.0f} |\n")
    print(open(a.out).read())


if __name__ == "__main__":
    main()
