# accepts and holds connections, never answers (a slow backend); ends after DUR s
import socket, sys, time, select
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096); s.setblocking(False)
held = []; end = time.time() + float(sys.argv[2])
while time.time() < end:
    r, _, _ = select.select([s], [], [], 0.5)
    if r:
        try:
            while True: held.append(s.accept()[0])
        except BlockingIOError: pass
