#!/usr/bin/env python3
"""Splice vs copy in upgraded tunnels: the proxy's CPU-us per MiB moved in bulk.

A raw backend answers each `Upgrade` request with `101 Switching Protocols` and then streams
bytes as fast as it can; N client connections upgrade through edgeshard and read. Two
edgeshard instances run side by side, one loaded at a time: `copy` (`[server] splice =
"off"`) and `splice` (the default: a tunnel direction that reads a full 16 KiB buffer
switches to splice(2)). Each measured run opens the N tunnels, lets them run `--warmup`
seconds, then takes the proxy's utime+stime (/proc/PID/stat, all threads) and the bytes
the clients received over `--duration` seconds. Variant order rotates per repetition;
medians go to OUT/tunnel.md, every run to OUT/tunnel.csv.

The proxy (1 shard by default) is pinned with taskset to --proxy-cpus; the backend and the
client threads (this process) to --client-cpus. Bytes flow backend -> client only (the
download direction of a WebSocket or any upgraded stream).

  python3 loadtest/tunnel.py --out DIR [--reps 3] [--duration 8] [--conns 1,8,64]
  python3 loadtest/tunnel.py backend --port P --chunk BYTES   (internal: the raw backend)
"""
import argparse
import csv
import os
import shutil
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import driver as d  # noqa: E402  (shared helpers: Proc, start_proxy, cpu_ticks, med, fmt)

REQUEST = (b"GET /stream HTTP/1.1\r\nHost: tunnel.bench.test\r\n"
           b"Connection: Upgrade\r\nUpgrade: bulk\r\n\r\n")
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: bulk\r\nConnection: Upgrade\r\n\r\n"
VARIANTS = {"copy": "splice-off", "splice": "default"}


# ----------------------------------------------------------------------------------------
# the backend (a separate process): 101, then stream until the peer goes away

def read_head(s):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            return None
        head += chunk
    return head


def serve_one(s, chunk):
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if read_head(s) is None:
            return
        s.sendall(SWITCH)
        buf = memoryview(bytes(chunk))
        while True:
            s.sendall(buf)
    except OSError:
        pass
    finally:
        s.close()


def cmd_backend(a):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", a.port))
    ls.listen(1024)
    print("backend: ready port=%d" % a.port, flush=True)
    while True:
        s, _ = ls.accept()
        threading.Thread(target=serve_one, args=(s, a.chunk), daemon=True).start()


# ----------------------------------------------------------------------------------------
# the clients (threads of this process): upgrade, then read and count

class Clients:
    def __init__(self, port, conns, bufsize, timeout):
        self.counts = [0] * conns
        self.errors = []
        self.stop = threading.Event()
        self.socks = []
        for _ in range(conns):
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            s.sendall(REQUEST)
            head = read_head(s)
            if head is None or not head.startswith(b"HTTP/1.1 101 "):
                raise RuntimeError("upgrade refused: %r" % (head or b"")[:200])
            # bytes after the head belong to the stream; not counted (before the window)
            self.socks.append(s)
        self.threads = [threading.Thread(target=self.read, args=(i, bufsize), daemon=True)
                        for i in range(conns)]
        for t in self.threads:
            t.start()

    def read(self, i, bufsize):
        s = self.socks[i]
        buf = bytearray(bufsize)
        try:
            while not self.stop.is_set():
                n = s.recv_into(buf)
                if n == 0:
                    self.errors.append("conn %d: EOF" % i)
                    return
                self.counts[i] += n
        except OSError as e:
            if not self.stop.is_set():
                self.errors.append("conn %d: %s" % (i, e))

    def total(self):
        return sum(self.counts)

    def close(self):
        self.stop.set()
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self.threads:
            t.join(timeout=5)


def measured_run(a, proxy, port, conns):
    cl = Clients(port, conns, a.read_buf, a.timeout)
    try:
        time.sleep(a.warmup)
        pids = proxy.pids()
        t0, c0, b0 = time.monotonic(), d.cpu_ticks(pids), cl.total()
        time.sleep(a.duration)
        t1, c1, b1 = time.monotonic(), d.cpu_ticks(pids), cl.total()
        errors = list(cl.errors)
    finally:
        cl.close()
    if not proxy.alive():
        raise RuntimeError("edgeshard died:\n" + proxy.output()[-3000:])
    mib = (b1 - b0) / float(1 << 20)
    cpu_us = (c1 - c0) * 1e6 / d.CLK_TCK
    secs = t1 - t0
    return dict(mib=round(mib, 1), secs=round(secs, 3), mib_s=round(mib / secs, 1),
                cpu_us=round(cpu_us), cpu_pct=round(100 * cpu_us / 1e6 / secs, 1),
                cpu_us_per_mib=round(cpu_us / mib, 2) if mib > 0 else None, errors=len(errors),
                first_error=errors[0] if errors else "")


def cmd_measure(a):
    a.nginx_bin, a.floor = "nginx", ""
    cfg = d.base_cfg(a)
    os.sched_setaffinity(0, cfg.client_cpus)
    conns_list = [int(c) for c in a.conns.split(",") if c]
    variants = [v for v in a.variants.split(",") if v]
    rows = []
    try:
        backend = d.Proc("backend", ["taskset", "-c", d.cpus_str(cfg.client_cpus), sys.executable,
                                     os.path.abspath(__file__), "backend", "--port",
                                     str(cfg.ports["origin"]), "--chunk", str(a.chunk)],
                         os.path.join(cfg.tmp, "backend.out"))
        if not d.wait_line(backend, r"^backend: ready", 15):
            raise SystemExit("backend did not start:\n" + backend.output())
        procs = {}
        base = cfg.ports["edgeshard"]
        for k, v in enumerate(variants):
            cfg.ports["edgeshard"] = base + 10 + k
            p, engine = d.start_proxy(cfg, "edgeshard", VARIANTS[v])
            procs[v] = (p, cfg.ports["edgeshard"], engine)
        for conns in conns_list:
            for rep in range(a.reps):
                k = rep % len(variants)
                for v in variants[k:] + variants[:k]:
                    p, port, engine = procs[v]
                    row = measured_run(a, p, port, conns)
                    row.update(variant=v, conns=conns, rep=rep, engine=engine)
                    d.log("%s conns=%d rep=%d: %s MiB/s, %s CPU-us/MiB, CPU %s%%%s" % (
                        v, conns, rep, row["mib_s"], row["cpu_us_per_mib"], row["cpu_pct"],
                        (", errors: %s" % row["first_error"]) if row["errors"] else ""))
                    rows.append(row)
        engines = sorted({e for _, _, e in procs.values()})
    finally:
        d.stop_all()
        shutil.rmtree(cfg.tmp, ignore_errors=True)
    fields = ["conns", "variant", "rep", "engine", "mib", "secs", "mib_s", "cpu_us", "cpu_pct",
              "cpu_us_per_mib", "errors", "first_error"]
    with open(os.path.join(a.out, "tunnel.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    out = ["# splice vs copy in upgraded tunnels (bulk, backend -> client)", "",
           "edgeshard %s, %d shard(s) on CPUs %s (engine %s); backend and clients on CPUs %s; "
           "%d x %g s per variant and connection count after %g s of warm-up, order rotating; "
           "medians (min-max). `copy` = `splice = \"off\"`, `splice` = the default. "
           "Backend writes %d bytes per send, clients read %d bytes per recv." % (
               d.git_rev(), cfg.shards, d.cpus_str(cfg.proxy_cpus), ",".join(engines),
               d.cpus_str(cfg.client_cpus), a.reps, a.duration, a.warmup, a.chunk, a.read_buf), "",
           "| conns | variant | MiB/s | proxy CPU % | CPU-us/MiB | vs copy | errors |",
           "|---|---|---|---|---|---|---|"]
    for conns in conns_list:
        sel = lambda v, key: [d.fnum(r[key]) for r in rows if r["conns"] == conns and r["variant"] == v]
        copy = d.med(sel("copy", "cpu_us_per_mib")) if "copy" in variants else None
        for v in variants:
            cpu = d.med(sel(v, "cpu_us_per_mib"))
            errs = sum(r["errors"] for r in rows if r["conns"] == conns and r["variant"] == v)
            out.append("| %d | %s | %s | %s | %s | %s | %d |" % (
                conns, v, d.fmt_range(sel(v, "mib_s")), d.fmt(d.med(sel(v, "cpu_pct")), 1),
                d.fmt_range(sel(v, "cpu_us_per_mib"), 1),
                d.fmt(cpu / copy, 3) if cpu and copy else "-", errs))
    with open(os.path.join(a.out, "tunnel.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "backend":
        ap = argparse.ArgumentParser(prog="tunnel.py backend")
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--chunk", type=int, default=1 << 20)
        cmd_backend(ap.parse_args(sys.argv[2:]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--proxy-cpus", default="")
    ap.add_argument("--client-cpus", default="")
    ap.add_argument("--io-engine", default="auto")
    ap.add_argument("--base-port", type=int, default=18300)
    ap.add_argument("--edgeshard", default=os.path.join(d.REPO, "target/release/edgeshard"))
    ap.add_argument("--ready-timeout", type=float, default=30)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--conns", default="1,8,64", help="comma list of client connection counts")
    ap.add_argument("--variants", default="copy,splice")
    ap.add_argument("--chunk", type=int, default=1 << 20, help="backend bytes per send")
    ap.add_argument("--read-buf", type=int, default=1 << 20, help="client bytes per recv")
    ap.add_argument("--timeout", type=float, default=10, help="connect / upgrade timeout")
    a = ap.parse_args()
    for v in a.variants.split(","):
        if v and v not in VARIANTS:
            raise SystemExit("unknown variant %r (known: %s)" % (v, ", ".join(VARIANTS)))
    import signal
    signal.signal(signal.SIGTERM, d._on_signal)
    signal.signal(signal.SIGHUP, d._on_signal)
    try:
        cmd_measure(a)
    except KeyboardInterrupt as e:
        d.log("interrupted (%s); stopping everything" % e)
        d.stop_all()
        sys.exit(130)
    finally:
        d.stop_all()


if __name__ == "__main__":
    main()
