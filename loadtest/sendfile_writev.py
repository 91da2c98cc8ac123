#!/usr/bin/env python3
"""What a 64 KiB cache hit costs the sending CPU: a response head plus body written with one
vectored write from memory (edgeshard's hit of a body under 32 KiB, and every hit before the
body file) against the head with MSG_MORE then sendfile(2) from a memfd (a hit from the body
file, src/cache/body.rs). The sender runs pinned to one CPU; a separate process on another CPU
drains the loopback connection. CPU = this thread's utime+stime (RUSAGE_THREAD) per response,
which on loopback includes the receive-side TCP work done in the sender's context. Batches
alternate between the two ways, order flipping each repetition; medians reported.

  python3 loadtest/sendfile_writev.py [--reps 12] [--batch 3000] [--size 65536]
      [--sender-cpu 1] [--reader-cpu 0] [--out FILE.md]
"""
import argparse, os, platform, resource, socket, statistics, subprocess, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--reps", type=int, default=12)
ap.add_argument("--batch", type=int, default=3000)
ap.add_argument("--size", type=int, default=65536)
ap.add_argument("--sender-cpu", type=int, default=1)
ap.add_argument("--reader-cpu", type=int, default=0)
ap.add_argument("--out", default="")
a = ap.parse_args()

N = a.size
body = bytes((i * 7) % 251 for i in range(N))
head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nAge: 1\r\nX-Cache: HIT\r\nServer: edgeshard\r\n\r\n" % N
fd = os.memfd_create("sendfile-writev")
os.pwrite(fd, body, 0)
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
port = ls.getsockname()[1]
reader = subprocess.Popen(["taskset", "-c", str(a.reader_cpu), sys.executable, "-c", f"""
import socket
s = socket.create_connection(('127.0.0.1', {port}))
v = memoryview(bytearray(1 << 20))
while s.recv_into(v): pass
"""])
c, _ = ls.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
os.sched_setaffinity(0, {a.sender_cpu})


def cpu():
    ru = resource.getrusage(resource.RUSAGE_THREAD)
    return ru.ru_utime + ru.ru_stime


def writev(k):
    for _ in range(k):
        n = c.sendmsg([head, body])
        assert n == len(head) + N, n


def sendfile(k):
    for _ in range(k):
        c.send(head, socket.MSG_MORE)
        off = 0
        while off < N:
            off += os.sendfile(c.fileno(), fd, off, N - off)


res = {"writev": [], "sendfile": []}
ways = (("writev", writev), ("sendfile", sendfile))
for rep in range(a.reps):
    for name, f in (ways if rep % 2 == 0 else ways[::-1]):
        t0 = cpu()
        f(a.batch)
        res[name].append((cpu() - t0) / a.batch * 1e6)
c.close()
reader.wait()
med = {k: statistics.median(v) for k, v in res.items()}
lines = ["| way | CPU-µs per response, median | min–max | every batch |", "|---|---|---|---|"]
for k, v in res.items():
    lines.append("| %s | %.1f | %.1f–%.1f | %s |" % (k, med[k], min(v), max(v), " ".join("%.1f" % x for x in v)))
lines.append("")
lines.append("sendfile / writev: %.2f" % (med["sendfile"] / med["writev"]))
text = "\n".join(lines)
print(text)
if a.out:
    with open(a.out, "w") as f:
        f.write("# A %d-byte cache hit's sending cost: vectored write from memory vs sendfile from a memfd\n\n" % N)
        f.write("Command: `python3 loadtest/sendfile_writev.py %s`\n\n" % " ".join(sys.argv[1:]))
        f.write("Host: %s; %s; %d CPUs; %s\n\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), platform.platform(),
                                                   os.cpu_count(), open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t")))
        f.write("Sender pinned to CPU %d, reader process on CPU %d; %d batches of %d responses per way, alternating.\n\n"
                % (a.sender_cpu, a.reader_cpu, a.reps, a.batch))
        f.write(text + "\n")
