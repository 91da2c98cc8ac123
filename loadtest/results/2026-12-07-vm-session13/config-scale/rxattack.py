# one request to every regex route of genconf's hosts mode (routes R, hosts H), path crafted to walk the regex's DFA
import socket, sys, random
port, R, H = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
junk = "".join(random.choice(["a","b","x","z","0","9","%2F","A","Z","~","-","_","."]) for _ in range(400))
s = socket.create_connection(("127.0.0.1", port)); s.settimeout(10)
ok = 0; buf = b""
batch = 50
for start in range(0, R, batch):
    out = b""
    for r in range(start, min(R, start + batch)):
        out += f"GET /p{r // H}/v{r}/abc{r}/{junk}%C3%A9%E2%82%AC HTTP/1.1\r\nHost: h{r % H}.example.com\r\n\r\n".encode()
    s.sendall(out)
    need = min(R, start + batch) - start
    while buf.count(b"HTTP/1.1 ") < need:
        d = s.recv(1 << 20)
        if not d: raise SystemExit("closed: " + buf[-300:].decode(errors="replace"))
        buf += d
        continue
        buf += s.recv(1 << 20)
    ok += buf.count(b"HTTP/1.1 200"); buf = b""
print("requests", R, "200s", ok)
