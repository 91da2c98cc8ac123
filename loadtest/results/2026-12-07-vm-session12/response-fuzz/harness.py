#!/usr/bin/env python3
"""Differential fuzz of the response side: a scripted raw-socket backend answers the first
request of each case with crafted bytes; two raw clients (A, then B on a second connection,
then A again) go through each proxy, which shares one upstream connection pool.
Targets: edgeshard (epoll, uring), nginx, haproxy. Results: JSON lines + summary."""
import argparse, json, os, random, re, socket, struct, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases as casesmod

EDGESHARD = os.environ.get("EDGESHARD", "/tmp/review1-target/release/edgeshard")
READ_TIMEOUT = 5.0     # per response; proxies' upstream timeout is 2 s
PIPELINE = False
GRACE = 0.05           # wait for bytes after a complete response


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ----------------------------------------------------------------------------- backend
class Backend:
    def __init__(self, cases):
        self.cases = cases
        self.log = []          # (conn_id, step, case_id, t)
        self.lock = threading.Lock()
        self.n = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.n += 1
                cid = self.n
            threading.Thread(target=self.serve, args=(c, cid), daemon=True).start()

    @staticmethod
    def read_head(c, buf):
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                return buf[:i], buf[i + 4:]
            if len(buf) > 200000:
                raise ValueError("head too big")
            d = c.recv(65536)
            if not d:
                raise EOFError
            buf += d

    @staticmethod
    def read_body(c, head, buf):
        cl, te = 0, False
        for l in head.split(b"\r\n")[1:]:
            k, _, v = l.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                cl = int(v.strip())
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                te = True
        if te:
            while True:
                m = re.search(rb"(^|\r\n)0\r\n(.*?)\r\n", buf, re.S)  # crude: our tests never chunk requests
                if m and buf.find(b"\r\n\r\n", m.start()) >= 0:
                    e = buf.find(b"\r\n\r\n", m.start()) + 4
                    return buf[e:]
                d = c.recv(65536)
                if not d:
                    raise EOFError
                buf += d
        while len(buf) < cl:
            d = c.recv(65536)
            if not d:
                raise EOFError
            buf += d
        return buf[cl:]

    def play(self, c, case):
        de = case.get("delay_each")
        for item in case["script"]:
            if isinstance(item, (int, float)):
                time.sleep(item)
            else:
                c.sendall(item)
                if de:
                    time.sleep(de)

    def serve(self, c, cid):
        c.settimeout(20)
        buf = b""
        try:
            while True:
                head, buf = self.read_head(c, buf)
                line = head.split(b"\r\n", 1)[0]
                parts = line.split(b" ")
                path = parts[1].decode("latin1") if len(parts) > 1 else ""
                m = re.match(r"/t/(\d+)/(\w+)", path)
                case_id, step = (int(m.group(1)), m.group(2)) if m else (None, "")
                with self.lock:
                    self.log.append((cid, step, case_id, time.time(), parts[0].decode("latin1")))
                case = self.cases.get(case_id)
                if case is not None and step == "a1":
                    if case.get("early"):
                        self.play(c, case)
                        if case["after"] == "close":
                            c.shutdown(socket.SHUT_RDWR)
                            return
                        if case["after"] == "drain":
                            buf = self.read_body(c, head, buf)
                            continue
                        # keep_nodrain: never read the body; what comes next is read as a head
                        continue
                    if case.get("pre"):
                        # bytes sent before the request body is read (a streaming / echo backend)
                        c.sendall(case["pre"])
                    buf = self.read_body(c, head, buf)
                    self.play(c, case)
                    a = case["after"]
                    if a == "close":
                        c.shutdown(socket.SHUT_WR)
                        time.sleep(0.2)
                        return
                    if a == "reset":
                        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    if a == "hold":
                        time.sleep(6)
                        return
                    continue
                buf = self.read_body(c, head, buf)
                body = ("OK-%s-%s" % (step, case_id)).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except Exception:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def conns_for(self, case_id):
        with self.lock:
            return [(cid, step, meth) for cid, step, k, t, meth in self.log if k == case_id]


# ----------------------------------------------------------------------------- client side
def parse_one(data, method, eof):
    """Lenient parse of one final response (skipping interim ones) at the start of data.
    Returns (dict, end) or (None, None) when incomplete."""
    pos, interims = 0, []
    while True:
        i = data.find(b"\r\n\r\n", pos)
        if i < 0:
            return None, None
        head = data[pos:i]
        lines = head.split(b"\r\n")
        sl = lines[0].split(b" ", 2)
        try:
            code = int(sl[1])
        except Exception:
            code = -1
        hdrs = []
        for l in lines[1:]:
            k, _, v = l.partition(b":")
            hdrs.append((k.strip().lower(), v.strip()))
        start = i + 4
        if 100 <= code < 200 and code != 101:
            interims.append(code)
            pos = start
            continue
        hd = dict(hdrs)
        r = dict(status=code, interims=interims, statusline=lines[0].decode("latin1"),
                 headers=[(k.decode("latin1"), v.decode("latin1")) for k, v in hdrs])
        if method == "HEAD" or code in (204, 304) or 100 <= code < 200:
            r.update(framing="none", body=b"")
            return r, start
        if b"chunked" in hd.get(b"transfer-encoding", b"").lower():
            p, body = start, b""
            while True:
                j = data.find(b"\r\n", p)
                if j < 0:
                    return (None, None) if not eof else (dict(r, framing="chunked-truncated", body=body), len(data))
                try:
                    n = int(data[p:j].split(b";")[0], 16)
                except ValueError:
                    return dict(r, framing="chunked-bad", body=body), len(data)
                if n == 0:
                    k = data.find(b"\r\n\r\n", j)
                    if k < 0 and data[j:j + 4] != b"\r\n\r\n":
                        if data[j + 2:j + 4] == b"\r\n":
                            k = j
                        else:
                            return (None, None) if not eof else (dict(r, framing="chunked-truncated", body=body), len(data))
                    r.update(framing="chunked", body=body, trailers=data[j + 2:k + 2].decode("latin1"))
                    return r, k + 4
                if len(data) < j + 2 + n + 2:
                    return (None, None) if not eof else (dict(r, framing="chunked-truncated", body=body + data[j + 2:]), len(data))
                body += data[j + 2:j + 2 + n]
                p = j + 2 + n + 2
        if b"content-length" in hd:
            try:
                n = int(hd[b"content-length"])
            except ValueError:
                n = 0
            if len(data) - start < n:
                return (None, None) if not eof else (dict(r, framing="cl-truncated", body=data[start:]), len(data))
            r.update(framing="cl", body=data[start:start + n])
            return r, start + n
        if not eof:
            return None, None
        r.update(framing="close", body=data[start:])
        return r, len(data)


def exchange(sock, req, method, timeout=READ_TIMEOUT, send_parts=None):
    t0 = time.time()
    out = dict(raw=b"", eof=False, timeout=False, sent=True)
    try:
        sock.sendall(req)
        if send_parts:
            for delay, part in send_parts:
                time.sleep(delay)
                try:
                    sock.sendall(part)
                except OSError:
                    break
    except OSError as e:
        out["sent"] = False
        out["err"] = str(e)
    data = b""
    deadline = t0 + timeout
    parsed, end, done_at = None, None, None
    while True:
        now = time.time()
        limit = (done_at + GRACE) if done_at else deadline
        if now >= limit:
            if not done_at:
                out["timeout"] = True
            break
        sock.settimeout(max(0.001, limit - now))
        try:
            d = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError as e:
            out["err"] = str(e)
            out["eof"] = True
            break
        if not d:
            out["eof"] = True
            break
        data += d
        if not done_at:
            parsed, end = parse_one(data, method, False)
            if parsed is not None:
                done_at = time.time()
    if parsed is None and data:
        parsed, end = parse_one(data, method, True)
    out["raw"] = data
    out["resp"] = parsed
    out["extra"] = data[end:] if parsed is not None and end is not None else b""
    out["elapsed"] = round(time.time() - t0, 3)
    return out


def request(method, path, extra=b"", body=b""):
    h = b"%s %s HTTP/1.1\r\nHost: t.example\r\n" % (method.encode(), path.encode()) + extra
    if method == "POST":
        h += b"Content-Length: %d\r\n" % len(body)
    return h + b"\r\n"


def summarize(ex):
    r = ex.get("resp")
    if not ex["raw"]:
        return "EOF-empty" if ex["eof"] else ("TIMEOUT-empty" if ex["timeout"] else "nothing")
    if r is None:
        return "unparsed:" + repr(ex["raw"][:60])
    s = "%d%s/%s/%r" % (r["status"], ("[" + ",".join(map(str, r["interims"])) + "]") if r["interims"] else "",
                        r["framing"], r["body"][:40])
    if ex["extra"]:
        s += " +extra%r" % ex["extra"][:30]
    return s


MARKERS = [b"POISON", b"X-Poison", b"A1BODY", b"A1B", b"garbage"]


def run_case(port, be, cid, case):
    res = dict(case=case["name"], id=cid)
    A = socket.create_connection(("127.0.0.1", port), timeout=3)
    B = None
    try:
        m = case["method"]
        if case.get("early") or case.get("pre"):
            body = b"x" * 300000
            req = request("POST", "/t/%d/a1" % cid, body=body) + body[:1000]
            a1 = exchange(A, req, "POST", send_parts=[(0.3, body[1000:])])
        elif case.get("req"):
            req = case["req"].replace(b"{path}", b"/t/%d/a1" % cid)
            a1 = exchange(A, req, m)
        elif PIPELINE:
            a1 = exchange(A, request(m, "/t/%d/a1" % cid) + request("GET", "/t/%d/a3" % cid), m)
            # the pipelined a3's answer follows a1's: read on until it is complete too
            a3 = dict(raw=a1["extra"], eof=a1["eof"], timeout=False, sent=True)
            t0 = time.time()
            while not a3["eof"]:
                r, e = parse_one(a3["raw"], "GET", False)
                if r is not None or time.time() - t0 > READ_TIMEOUT:
                    a3["timeout"] = r is None
                    break
                A.settimeout(0.2)
                try:
                    d = A.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    d = b""
                if not d:
                    a3["eof"] = True
                a3["raw"] += d
            r, e = parse_one(a3["raw"], "GET", a3["eof"])
            a3["resp"], a3["extra"] = r, (a3["raw"][e:] if r is not None else b"")
            res["a3"] = a3
        else:
            a1 = exchange(A, request(m, "/t/%d/a1" % cid), m)
        res["a1"] = a1
        B = socket.create_connection(("127.0.0.1", port), timeout=3)
        res["b2"] = exchange(B, request("GET", "/t/%d/b2" % cid), "GET")
        if not a1["eof"] and not PIPELINE:
            res["a3"] = exchange(A, request("GET", "/t/%d/a3" % cid), "GET")
        if not res["b2"]["eof"]:
            time.sleep(0.35)
            res["b4"] = exchange(B, request("GET", "/t/%d/b4" % cid), "GET")
    finally:
        A.close()
        if B:
            B.close()
    time.sleep(0.05)
    log = be.conns_for(cid)
    res["backend"] = log
    conn = {step: c for c, step, _ in log}
    res["reused_b2"] = "b2" in conn and "a1" in conn and conn["b2"] == conn["a1"]
    res["reused_a3"] = "a3" in conn and "a1" in conn and conn["a3"] == conn["a1"]
    # contamination: a follow-up that is not exactly its own OK body
    flags = []
    for step in ("b2", "a3", "b4"):
        ex = res.get(step)
        if not ex:
            continue
        want = ("OK-%s-%d" % (step, cid)).encode()
        r = ex.get("resp")
        ok = r is not None and r["status"] == 200 and r["body"] == want and not ex["extra"]
        if not ok:
            raw = ex["raw"]
            bad = [mk.decode() for mk in MARKERS if mk in raw]
            others = [s for s in ("a1", "b2", "a3", "b4") if s != step and ("OK-%s-%d" % (s, cid)).encode() in raw]
            if bad or others:
                flags.append("CONTAMINATION:%s:%s" % (step, ",".join(bad + others)))
            elif ex["timeout"]:
                flags.append("HANG:%s" % step)
            else:
                flags.append("anomaly:%s:%s" % (step, summarize(ex)))
    if a1.get("timeout"):
        flags.append("HANG:a1")
    # any step the backend saw twice (a replay)
    steps = [s for _, s, _ in log]
    for s in set(steps):
        if steps.count(s) > 1:
            flags.append("REPLAYED:%s:%d" % (s, steps.count(s)))
    res["flags"] = flags
    return res


# ----------------------------------------------------------------------------- proxies
class Proxy:
    def __init__(self, kind, be_port, workdir):
        self.kind, self.port = kind, free_port()
        d = os.path.join(workdir, kind)
        os.makedirs(d, exist_ok=True)
        self.dir = d
        self.log = open(os.path.join(d, "stderr.log"), "wb")
        if kind.startswith("edgeshard"):
            engine = kind.split("-")[1]
            cfg = os.path.join(d, "edge.toml")
            open(cfg, "w").write(f"""
[server]
io_engine = "{engine}"
shutdown_timeout = "1s"
[[listener]]
address = "127.0.0.1:{self.port}"
[[route]]
upstream = "b"
[[upstream]]
name = "b"
backends = [{{ address = "127.0.0.1:{be_port}" }}]
[timeouts]
upstream_connect = "2s"
upstream_response = "2s"
client_idle = "10s"
""")
            self.p = subprocess.Popen([EDGESHARD, "run", "--config", cfg, "--shards", "1"],
                                      stdout=subprocess.PIPE, stderr=self.log)
            line = b""
            t = time.time()
            while b"ready" not in line and time.time() - t < 20:
                line = self.p.stdout.readline()
                if not line:
                    break
            if b"ready" not in line:
                raise RuntimeError("edgeshard did not start: see " + d)
        elif kind == "nginx":
            for sub in ("cb", "pt", "ft", "ut", "st", "logs"):
                os.makedirs(os.path.join(d, sub), exist_ok=True)
            cfg = os.path.join(d, "nginx.conf")
            open(cfg, "w").write(f"""
worker_processes 1;
master_process off;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;
  uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;
  upstream b {{ server 127.0.0.1:{be_port}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://b;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout 2s; proxy_read_timeout 2s; proxy_send_timeout 2s;
    }}
  }}
}}
""")
            self.p = subprocess.Popen(["nginx", "-p", d, "-c", cfg, "-g", "daemon off;"],
                                      stdout=self.log, stderr=self.log)
        elif kind.startswith("haproxy"):
            reuse = kind.split("-")[1] if "-" in kind else "always"
            cfg = os.path.join(d, "haproxy.cfg")
            open(cfg, "w").write(f"""
global
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 2s
  timeout http-keep-alive 10s
  http-reuse {reuse}
frontend f
  bind 127.0.0.1:{self.port}
  default_backend b
backend b
  server s1 127.0.0.1:{be_port}
""")
            self.p = subprocess.Popen(["haproxy", "-f", cfg, "-db"], stdout=self.log, stderr=self.log)
        # wait for the port
        t = time.time()
        while time.time() - t < 15:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)

    def alive(self):
        return self.p.poll() is None

    def close(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def run_target(kind, case_list, workdir, results):
    cases = {i: c for i, c in case_list}
    be = Backend(cases)
    px = Proxy(kind, be.port, workdir)
    out = []
    try:
        for cid, c in case_list:
            if not px.alive():
                out.append(dict(case=c["name"], id=cid, flags=["PROXY-DIED"]))
                px = Proxy(kind, be.port, workdir)  # restart, keep going
            try:
                r = run_case(px.port, be, cid, c)
            except Exception as e:
                r = dict(case=c["name"], id=cid, flags=["HARNESS-ERROR:%s" % e])
            out.append(r)
    finally:
        died = not px.alive()
        px.close()
        be.stop = True
        be.sock.close()
    results[kind] = dict(results=out, died=died)


def jsonable(o):
    if isinstance(o, bytes):
        return o.decode("latin1")
    if isinstance(o, dict):
        return {k: jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    return o


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["gadgets", "mutate", "splits", "extra"], default="gadgets")
    ap.add_argument("--targets", default="edgeshard-epoll,edgeshard-uring,nginx,haproxy-always")
    ap.add_argument("-n", type=int, default=200, help="mutations")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="", help="regex on case names")
    ap.add_argument("--out", default="/tmp/review1-harness/out")
    ap.add_argument("--pipeline", action="store_true", help="A sends a1 and a3 in one write")
    args = ap.parse_args()
    global PIPELINE
    PIPELINE = args.pipeline
    if args.mode == "gadgets":
        cl = casesmod.gadgets()
    elif args.mode == "extra":
        cl = casesmod.extra_cases()
    elif args.mode == "splits":
        cl = casesmod.split_cases()
    else:
        cl = casesmod.mutations(args.n, args.seed)
    if args.only:
        cl = [c for c in cl if re.search(args.only, c["name"])]
    base = {"gadgets": 1000, "splits": 5000, "mutate": 10000, "extra": 20000}[args.mode]
    case_list = [(base + i, c) for i, c in enumerate(cl)]
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="rv1-")
    results = {}
    threads = [threading.Thread(target=run_target, args=(k, case_list, workdir, results))
               for k in args.targets.split(",")]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tag = "%s%s-%s" % (args.mode, "-pipe" if PIPELINE else "", time.strftime("%H%M%S"))
    with open(os.path.join(args.out, tag + ".json"), "w") as f:
        json.dump(jsonable(dict(cases=[(i, c["name"]) for i, c in case_list], results=results)), f)
    # table
    kinds = args.targets.split(",")
    lines = []
    for idx, (cid, c) in enumerate(case_list):
        row = [c["name"]]
        for k in kinds:
            rs = results.get(k, {}).get("results", [])
            r = rs[idx] if idx < len(rs) else {}
            a1 = r.get("a1")
            s = summarize(a1) if a1 else "-"
            s += " reuse=%s" % ("Y" if r.get("reused_b2") else "n")
            if r.get("flags"):
                s += " FLAGS=" + ";".join(r["flags"])
            row.append("%s: %s" % (k, s))
        lines.append(" | ".join(row))
    with open(os.path.join(args.out, tag + ".txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.join(args.out, tag + ".txt"), "in %.0fs; workdir %s" % (time.time() - t0, workdir))
    for k in kinds:
        rs = results.get(k, {}).get("results", [])
        fl = [r for r in rs if any(not f.startswith("anomaly") for f in r.get("flags", []))]
        print("%-18s runs=%d flagged=%d died=%s" % (k, len(rs), len(fl), results.get(k, {}).get("died")))
        for r in fl:
            print("   ", r["case"], [f for f in r["flags"] if not f.startswith("anomaly")])


if __name__ == "__main__":
    main()
