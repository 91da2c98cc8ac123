# sequential keep-alive GETs for DUR seconds; prints max latency, count over thresholds, and the worst 5
# with timestamps. With OUT set (4th+1 arg), writes every "start_epoch latency_s" line there.
import socket, sys, time
port, host, path, dur = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
out = sys.argv[5] if len(sys.argv) > 5 else None
req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
lat = []; t_end = time.time() + dur; bad = 0
while time.time() < t_end:
    ts = time.time(); t0 = time.perf_counter(); s.sendall(req); buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d: raise SystemExit("closed")
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    cl = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < cl: body += s.recv(65536)
    if not head.startswith(b"HTTP/1.1 200"): bad += 1
    lat.append((time.perf_counter() - t0, ts))
ls = sorted(l for l, _ in lat)
print(f"n={len(ls)} non200={bad} p50={ls[len(ls)//2]*1e3:.2f}ms p99={ls[int(len(ls)*.99)]*1e3:.2f}ms p999={ls[int(len(ls)*.999)]*1e3:.2f}ms max={ls[-1]*1e3:.1f}ms >10ms={sum(1 for l in ls if l>.01)} >50ms={sum(1 for l in ls if l>.05)}")
for l, t in sorted(lat, reverse=True)[:5]: print(f"  {l*1e3:.1f}ms at {time.strftime('%H:%M:%S', time.localtime(t))}.{int(t%1*1000):03d}")
if out:
    with open(out, "w") as f:
        for l, t in lat: f.write(f"{t:.6f} {l:.6f}\n")
