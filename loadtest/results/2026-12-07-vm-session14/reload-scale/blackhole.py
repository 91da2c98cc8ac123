# listen with backlog 0 and never accept: after the queue fills, SYNs are dropped (connect hangs)
import socket, sys, time, signal
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(0)
end = time.time() + float(sys.argv[2]) if len(sys.argv) > 2 else 7200
while time.time() < end: time.sleep(1)
