# opens N connections, each sends one request for HOST and holds it open for DUR s
import socket, sys, time
port, host, n, dur = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
cs = []
for i in range(n):
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=2)
        c.sendall(f"GET /slow{i} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()); cs.append(c)
    except OSError as e:
        print("connect", i, e); break
print("opened", len(cs), flush=True); time.sleep(dur)
