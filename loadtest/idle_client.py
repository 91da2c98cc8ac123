#!/usr/bin/env python3
"""Open N keep-alive client connections to a proxy, send one GET on each, read the
response, then hold them idle.  Used by driver.py for the idle10k cell.

Protocol on stdout/stdin (driver reads/writes these):
  prints  "READY open=N ok=M failed=F"   when every connection has done its request
  waits for one line on stdin (or --hold seconds)
  prints  "ALIVE n"                       connections still open (not closed by the proxy)
then closes everything and exits.  Stdlib only.
"""
import argparse
import errno
import resource
import selectors
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=200, help="connections in flight at once")
    ap.add_argument("--path", default="/")
    ap.add_argument("--hold", type=float, default=120.0, help="max seconds to hold if stdin stays silent")
    ap.add_argument("--timeout", type=float, default=60.0, help="max seconds for the open phase")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, a.conns + 256)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if a.conns + 64 > want:
        print(f"idle_client: nofile hard limit {hard} too small for {a.conns} connections", file=sys.stderr)
        a.conns = max(0, want - 64)

    req = (f"GET {a.path} HTTP/1.1\r\nHost: idle.bench.test\r\nUser-Agent: edgeshard-idle\r\n\r\n").encode()
    deadline = time.monotonic() + a.timeout
    socks = []
    ok = failed = 0
    sel = selectors.DefaultSelector()
    i = 0
    while i < a.conns and time.monotonic() < deadline:
        batch = []
        for _ in range(min(a.batch, a.conns - i)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect((a.host, a.port))
            except BlockingIOError:
                pass
            except OSError:
                failed += 1
                s.close()
                continue
            st = {"sock": s, "state": "connect", "buf": b"", "need": None}
            sel.register(s, selectors.EVENT_WRITE, st)
            batch.append(st)
        i += a.batch
        pending = len(batch)
        while pending and time.monotonic() < deadline:
            for key, ev in sel.select(timeout=1.0):
                st = key.data
                s = st["sock"]
                try:
                    if st["state"] == "connect":
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise OSError(err, "connect")
                        s.send(req)  # tiny, fits the send buffer
                        st["state"] = "read"
                        sel.modify(s, selectors.EVENT_READ, st)
                        continue
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError(errno.ECONNRESET, "closed")
                    st["buf"] += chunk
                    b = st["buf"]
                    if st["need"] is None:
                        end = b.find(b"\r\n\r\n")
                        if end < 0:
                            continue
                        clen = 0
                        for line in b[:end].split(b"\r\n")[1:]:
                            k, _, v = line.partition(b":")
                            if k.strip().lower() == b"content-length":
                                clen = int(v.strip())
                        st["need"] = end + 4 + clen
                        st["status"] = b[9:12]
                    if len(b) >= st["need"]:
                        sel.unregister(s)
                        pending -= 1
                        if st["status"].startswith(b"2"):
                            ok += 1
                        else:
                            failed += 1
                        st["buf"] = b""
                        socks.append(s)
                except OSError:
                    sel.unregister(s)
                    s.close()
                    pending -= 1
                    failed += 1
        for st in batch:  # leftovers after the deadline
            if st["sock"].fileno() >= 0 and st["sock"] not in socks:
                try:
                    sel.unregister(st["sock"])
                except (KeyError, ValueError):
                    pass
                st["sock"].close()
    print(f"READY open={len(socks)} ok={ok} failed={failed}", flush=True)

    sel2 = selectors.DefaultSelector()
    sel2.register(sys.stdin, selectors.EVENT_READ)
    sel2.select(timeout=a.hold)

    alive = 0
    for s in socks:
        try:
            d = s.recv(1)
            if d:
                alive += 1  # unexpected data, but still open
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    print(f"ALIVE {alive}", flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
