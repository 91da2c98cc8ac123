# connect timeout: a listener whose accept queue is full and never accepted
import os, socket, subprocess, sys, time, re, threading
eng = sys.argv[1]
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(0)
port = ls.getsockname()[1]
fill = []
for i in range(4):
    s = socket.socket(); s.setblocking(False)
    try: s.connect(("127.0.0.1", port))
    except BlockingIOError: pass
    fill.append(s)
toml = f'''[server]
shutdown_timeout = "1s"
[[listener]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[timeouts]
upstream_connect = "500ms"
[[route]]
upstream = "app"
[[upstream]]
name = "app"
backends = [{{ address = "127.0.0.1:{port}" }}]
'''
open(os.environ.get("SOAK_OUT", "/tmp") + "/c.toml","w").write(toml)
p = subprocess.Popen([os.environ["SOAK_BIN"],"run","--config",os.environ.get("SOAK_OUT", "/tmp") + "/c.toml","--shards","1","--io-engine",eng],stdout=subprocess.PIPE,stderr=subprocess.STDOUT)
addr=None
for line in p.stdout:
    line=line.decode()
    m=re.match(r"edgeshard: listening on (\S+)",line)
    if m: addr=m.group(1)
    if line.startswith("edgeshard: ready"): break
h,pt=addr.rsplit(":",1)
for meth in ["GET","POST"]:
    c=socket.create_connection((h,int(pt))); c.settimeout(10)
    body=b"x"*10 if meth=="POST" else b""
    t=time.time()
    c.sendall(f"{meth} / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()+body)
    print(eng, meth, c.recv(200).split(b"\r\n")[0], round(time.time()-t,2))
p.terminate(); p.wait(5)
