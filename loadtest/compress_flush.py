#!/usr/bin/env python3
"""What flushing the encoder when the backend pauses costs in ratio (compress::stream).

A Python origin on 127.0.0.1 sends the 1 MiB JSON body of edge.py three ways, chunked:
  burst   one write of the whole body (a backend that has it ready: the common case)
  pieces  4 KiB writes back to back (a framework that flushes per write)
  paced   4 KiB writes 1 ms apart (a body generated as it goes)
  rows    the body's first 300 rows of 90 bytes, one write each, 2 ms apart (a report streamed
          row by row: a flush at every pause would halve the ratio)
Each edgeshard binary given (e.g. the build before the flush and the one with it) fronts it with
one shard and `compress` on; each path is fetched REPS times per algorithm (gzip 6, zstd 3, br 4)
and the coded size (median) is reported with the ratio (input / coded bytes). Every body is
decoded and checked. Bounded: every socket wait has a timeout, the script kills what it started.

  python3 loadtest/compress_flush.py --bin A=path --bin B=path [--reps 5] [--port 19050]
"""
import argparse
import gzip
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import edge  # noqa: E402  (make_json)

PIECE = 4096
ROW, ROWS = 90, 300


def origin(port, body, stop):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    srv.settimeout(0.5)

    def serve(c):
        c.settimeout(10)
        with c:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1].decode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")
                if path == "/rows":
                    for i in range(0, ROWS * ROW, ROW):
                        p = body[i:i + ROW]
                        c.sendall(b"%x\r\n%s\r\n" % (len(p), p))
                        time.sleep(0.002)
                    c.sendall(b"0\r\n\r\n")
                    continue
                if path == "/burst":
                    c.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
                    continue
                for i in range(0, len(body), PIECE):
                    p = body[i:i + PIECE]
                    c.sendall(b"%x\r\n%s\r\n" % (len(p), p))
                    if path == "/paced":
                        time.sleep(0.001)
                c.sendall(b"0\r\n\r\n")

    while not stop.is_set():
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    srv.close()


def fetch(port, path, alg):
    """The coded body of one GET (chunked framing removed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\nAccept-Encoding: %s\r\nConnection: close\r\n\r\n"
                   % (path, alg)).encode())
        raw = b""
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            raw += d
    head, rest = raw.split(b"\r\n\r\n", 1)
    assert (b"content-encoding: " + alg.encode()) in head.lower(), head
    out = b""
    while True:
        line, rest = rest.split(b"\r\n", 1)
        n = int(line, 16)
        if n == 0:
            return out
        out += rest[:n]
        rest = rest[n + 2:]


def decode(alg, coded):
    if alg == "gzip":
        return gzip.decompress(coded)
    cmd = {"zstd": ["zstd", "-dc"], "br": ["brotli", "-dc"]}[alg]
    try:
        return subprocess.run(cmd, input=coded, capture_output=True, check=True, timeout=20).stdout
    except FileNotFoundError:
        return None  # no command-line decoder here: the size still counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True, help="NAME=path")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--port", type=int, default=19050)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="compress-flush-")
    size, _ = edge.make_json(os.path.join(tmp, "1m.json"))
    body = open(os.path.join(tmp, "1m.json"), "rb").read()
    stop = threading.Event()
    threading.Thread(target=origin, args=(a.port, body, stop), daemon=True).start()
    rows = {}
    for spec in a.bin:
        name, path = spec.split("=", 1)
        conf = os.path.join(tmp, name + ".toml")
        with open(conf, "w") as f:
            f.write('[[listener]]\naddress = "127.0.0.1:%d"\n[[route]]\nupstream = "o"\n'
                    'compress = { types = ["application/json"] }\n[[upstream]]\nname = "o"\n'
                    'backends = [{ address = "127.0.0.1:%d" }]\n' % (a.port + 1, a.port))
        p = subprocess.Popen([path, "run", "--config", conf, "--shards", "1"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", a.port + 1), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline or p.poll() is not None:
                        raise SystemExit("%s did not start" % name)
                    time.sleep(0.05)
            for shape in ("burst", "pieces", "paced", "rows"):
                for alg in ("gzip", "zstd", "br"):
                    sizes = []
                    for _ in range(a.reps):
                        coded = fetch(a.port + 1, "/" + shape, alg)
                        back = decode(alg, coded)
                        want = body[:ROW * ROWS] if shape == "rows" else body
                        assert back is None or back == want, "%s %s %s: decoded body differs" % (name, shape, alg)
                        sizes.append(len(coded))
                    rows.setdefault((shape, alg), {})[name] = (statistics.median(sizes), min(sizes), max(sizes))
        finally:
            p.terminate()
            p.wait(timeout=20)
    stop.set()
    names = [s.split("=", 1)[0] for s in a.bin]
    print("1 MiB JSON (%d bytes), %d fetches per cell, coded bytes median (min-max) and ratio\n" % (size, a.reps))
    print("| body | coding | " + " | ".join(names) + " | %s / %s size |" % (names[-1], names[0]))
    print("|---|---|" + "---|" * (len(names) + 1))
    for (shape, alg), got in rows.items():
        n_in = ROW * ROWS if shape == "rows" else size
        cells = ["%d (%d-%d), ratio %.2f" % (m, lo, hi, n_in / m) for m, lo, hi in (got[n] for n in names)]
        change = got[names[-1]][0] / got[names[0]][0]
        print("| %s | %s | %s | %.3f |" % (shape, alg, " | ".join(cells), change))


if __name__ == "__main__":
    main()
