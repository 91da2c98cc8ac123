# Minimal UDP DNS server on 127.0.0.1:PORT for DUR s. A queries for NAME get 127.0.0.1, and on
# every other query of that name also 127.0.0.3 (an answer that changes every TTL); TTL 1.
# AAAA and others: NOERROR, no answer. Counts queries in $W/fakedns.count (W default /tmp/rsw)
import socket, struct, sys, time
port, dur = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", port)); s.settimeout(0.5)
seen = {}; n = 0; end = time.time() + dur; last = 0
while time.time() < end:
    try: q, peer = s.recvfrom(4096)
    except socket.timeout: continue
    n += 1
    qid, flags = struct.unpack(">HH", q[:4]); i = 12; labels = []
    while q[i]: labels.append(q[i+1:i+1+q[i]]); i += 1 + q[i]
    qtype = struct.unpack(">H", q[i+1:i+3])[0]; qend = i + 5
    name = b".".join(labels).lower(); question = q[12:qend]
    ans = b""
    if qtype == 1:
        k = seen.get(name, 0); seen[name] = k + 1
        ips = ["127.0.0.1"] + (["127.0.0.3"] if k % 2 else [])
        for ip in ips: ans += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 1, 4) + socket.inet_aton(ip)
        cnt = len(ips)
    else: cnt = 0
    hdr = struct.pack(">HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, cnt, 0, 0)
    s.sendto(hdr + question + ans, peer)
    if time.time() - last > 1: open("" + __import__("os").environ.get("W", "/tmp/rsw") + "/fakedns.count", "w").write(str(n)); last = time.time()
