#!/usr/bin/env python3
"""TLS soak for edgeshard: SNI, resumption, mTLS, bodies both ways, abusive handshakes, certificate
replacement and reloads under load, TLS upstream pool across backend restarts, metrics, leaks.

See README.md beside this file. One run = one engine:

  python3 loadtest/tlssoak/soak.py --binary BIN --engine uring|epoll --out DIR [--duration 50]

Only 127.0.0.1 is used, every wait is bounded, only processes started here are stopped.
Exit status 1 when an invariant broke (summary.json says which).
"""
import argparse
import collections
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

NAMES = {"a": "a.test", "b": "b.test", "w": "x.w.test"}
UNKNOWN = "unknown.test"
SUBJ = "X-Client-Subject"
HS_TIMEOUT = 2.0
LOCK = threading.Lock()


def gen(seed: str, n: int) -> bytes:
    unit = hashlib.sha256(seed.encode()).digest() * 64  # 2 KiB
    reps = n // len(unit) + 1
    return (unit * reps)[:n]


def now():
    return time.monotonic()


# --------------------------------------------------------------------------- certificates
def sh(args, cwd):
    r = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    if r.returncode:
        raise RuntimeError(" ".join(args) + "\n" + r.stdout.decode())


def mk_ca(d, name, cn):
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30", "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)


def mk_leaf(d, name, ca, sans, kind="ec", client=False, cn=None):
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ec" else ["-newkey", "rsa:2048"]
    sh(["openssl", "req", "-new", *newkey, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN={cn or sans[0]}/O=Soak"], d)
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w") as f:
        if client:
            f.write("extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n")
        else:
            alt = ",".join(("IP:" + s) if s[0].isdigit() else ("DNS:" + s) for s in sans)
            ku = "digitalSignature" if kind == "ec" else "digitalSignature,keyEncipherment"
            f.write(f"subjectAltName={alt}\nextendedKeyUsage=serverAuth\nkeyUsage={ku}\n")
    sh(["openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "20", "-extfile", ext], d)
    return der_of(os.path.join(d, f"{name}.pem"))


def der_of(pem_path):
    return ssl.PEM_cert_to_DER_cert(open(pem_path).read())


def make_certs(d):
    os.makedirs(d, exist_ok=True)
    mk_ca(d, "ca", "Soak CA")
    mk_ca(d, "cca", "Soak Client CA")
    fp = {}
    fp["a1"] = mk_leaf(d, "a1", "ca", ["a.test"])
    fp["a2"] = mk_leaf(d, "a2", "ca", ["a.test"])
    fp["a3"] = mk_leaf(d, "a3", "ca", ["a.test"])
    fp["b"] = mk_leaf(d, "b", "ca", ["b.test"], kind="rsa")
    fp["w"] = mk_leaf(d, "w", "ca", ["*.w.test"])
    mk_leaf(d, "backend", "ca", ["backend.test"])
    mk_leaf(d, "alice", "cca", [], client=True, cn="alice")
    mk_leaf(d, "mallory", "ca", [], client=True, cn="mallory")  # signed by the wrong CA
    # live files the proxy reads (a.* are replaced during the soak)
    for n in ("a", "b", "w"):
        src = "a1" if n == "a" else n
        shutil.copy(os.path.join(d, f"{src}.pem"), os.path.join(d, f"live-{n}.pem"))
        shutil.copy(os.path.join(d, f"{src}.key"), os.path.join(d, f"live-{n}.key"))
    return fp


def put(d, dst, data):
    tmp = os.path.join(d, f".{dst}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(d, dst))


# --------------------------------------------------------------------------- backends
class Backend:
    """HTTP/1.1 keep-alive origin (threads). GET /dl?n=N&seed=S: N bytes of gen(S, N).
    POST/PUT anything: reads the body (Content-Length or chunked) and answers its SHA-256.
    Every response carries X-Seen-Subject (the subject header as received, '-' if none) and
    X-Backend. A spoofed subject header (value contains SPOOF) is counted as a violation."""

    def __init__(self, name, ctx=None, port=0):
        self.name, self.ctx, self.port = name, ctx, port
        self.conns = set()
        self.lsock = None
        self.stats = collections.Counter()
        self.spoofed = []
        self.running = False

    def start(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):
            try:
                s.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.1)
        s.listen(256)
        self.port = s.getsockname()[1]
        self.lsock = s
        self.running = True
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def stop(self):
        """Closes the listener and every connection (pooled ones go stale)."""
        self.running = False
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        with LOCK:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.stats["restarts"] += 1

    def _accept(self, ls):
        while self.running:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, raw):
        with LOCK:
            self.conns.add(raw)
        c = raw
        try:
            raw.settimeout(30)
            if self.ctx:
                c = self.ctx.wrap_socket(raw, server_side=True)
            rf = c.makefile("rb", buffering=65536)
            while True:
                line = rf.readline(65536)
                if not line:
                    return
                method, target, _ = line.decode("latin1").split(" ", 2)
                hdrs = []
                while True:
                    h = rf.readline(65536)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, v = h.decode("latin1").split(":", 1)
                    hdrs.append((k.strip().lower(), v.strip()))
                hd = dict(hdrs)
                for k, v in hdrs:
                    if k.replace("_", "-") == SUBJ.lower() and "SPOOF" in v:
                        self.spoofed.append((k, v))
                subj = [v for k, v in hdrs if k == SUBJ.lower()]
                body = b""
                if "content-length" in hd:
                    body = rf.read(int(hd["content-length"]))
                elif hd.get("transfer-encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        sz = int(rf.readline().split(b";")[0], 16)
                        if sz == 0:
                            while rf.readline() not in (b"\r\n", b""):
                                pass
                            break
                        parts.append(rf.read(sz))
                        rf.readline()
                    body = b"".join(parts)
                u = urllib.parse.urlsplit(target)
                q = dict(urllib.parse.parse_qsl(u.query))
                self.stats["requests"] += 1
                extra = f"X-Seen-Subject: {subj[0] if subj else '-'}\r\nX-Backend: {self.name}\r\n"
                if method in ("POST", "PUT"):
                    out = hashlib.sha256(body).hexdigest().encode()
                elif u.path.endswith("/dl"):
                    out = gen(q.get("seed", "x"), int(q.get("n", "0")))
                else:
                    out = b"ok"
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(out)}\r\n{extra}\r\n".encode()
                c.sendall(head + out if len(out) < 65536 else head)
                if len(out) >= 65536:
                    mv = memoryview(out)
                    for i in range(0, len(out), 256 * 1024):
                        c.sendall(mv[i:i + 256 * 1024])
                if hd.get("connection", "").lower() == "close":
                    return
        except (OSError, ValueError, ssl.SSLError):
            return
        finally:
            with LOCK:
                self.conns.discard(raw)
            try:
                c.close()
            except OSError:
                pass


# --------------------------------------------------------------------------- proxy
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proxy_toml(d, ports, plain_ports, tls_port, tls12=True, hs_timeout=HS_TIMEOUT):
    versions = '["1.2", "1.3"]' if tls12 else '["1.3"]'
    certs = ", ".join(f'{{ cert = "{d}/live-{n}.pem", key = "{d}/live-{n}.key"{", default = true" if n == "a" else ""} }}'
                      for n in ("a", "b", "w"))
    pl = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in plain_ports)
    return f"""# generated by loadtest/tlssoak/soak.py
[server]
shutdown_timeout = "2s"

[[listener]]
address = "127.0.0.1:{ports[0]}"
tls = {{ certificates = [{certs}], versions = {versions}, handshake_timeout = "{int(hs_timeout * 1000)}ms" }}

[[listener]]
address = "127.0.0.1:{ports[1]}"
tls = {{ certificates = [{{ cert = "{d}/live-a.pem", key = "{d}/live-a.key" }}], handshake_timeout = "{int(HS_TIMEOUT * 1000)}ms", client_auth = {{ ca = "{d}/cca.pem", required = true, subject_header = "{SUBJ}" }} }}

[[listener]]
address = "127.0.0.1:{ports[2]}"
tls = {{ certificates = [{{ cert = "{d}/live-a.pem", key = "{d}/live-a.key" }}], handshake_timeout = "{int(HS_TIMEOUT * 1000)}ms", client_auth = {{ ca = "{d}/cca.pem", required = false, subject_header = "{SUBJ}" }} }}

[[listener]]
address = "127.0.0.1:{ports[3]}"

[admin]
address = "127.0.0.1:{ports[4]}"

[log]
level = "info"
error_rate = 100000

[timeouts]
upstream_connect = "1s"
upstream_response = "10s"

[[route]]
path_prefix = "/tls/"
upstream = "tlsup"

[[route]]
upstream = "plain"

[[upstream]]
name = "plain"
backends = [{pl}]
idle_timeout = "20s"

[[upstream]]
name = "tlsup"
backends = [{{ address = "127.0.0.1:{tls_port}" }}]
idle_timeout = "20s"
tls = {{ sni = "backend.test", ca = "{d}/ca.pem" }}
"""


class Proxy:
    def __init__(self, binary, engine, out, toml):
        self.path = os.path.join(out, "edgeshard.toml")
        with open(self.path, "w") as f:
            f.write(toml)
        self.log = open(os.path.join(out, "edgeshard.log"), "w")
        self.lines = []
        self.panics = []
        self.p = subprocess.Popen(["nice", "-n", "5", binary, "run", "--config", self.path, "--shards", "2",
                                   "--io-engine", engine], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        if not self.ready.wait(20):
            self.stop()
            raise RuntimeError("edgeshard not ready, see edgeshard.log")

    def _pump(self):
        for raw in self.p.stdout:
            line = raw.decode("utf-8", "replace")
            self.log.write(f"{now():.3f} {line}")
            self.log.flush()
            with LOCK:
                self.lines.append((now(), line))
            if "panicked" in line:
                self.panics.append(line.strip())
            if line.startswith("edgeshard: ready"):
                self.ready.set()

    def count(self, pat):
        with LOCK:
            return sum(1 for _, l in self.lines if pat in l)

    def rewrite(self, toml):
        with open(self.path + ".tmp", "w") as f:
            f.write(toml)
        os.rename(self.path + ".tmp", self.path)

    def hup(self):
        self.p.send_signal(signal.SIGHUP)

    def proc(self):
        st = open(f"/proc/{self.p.pid}/status").read()
        return {"rss_kb": int(re.search(r"VmRSS:\s+(\d+)", st).group(1)),
                "fds": len(os.listdir(f"/proc/{self.p.pid}/fd"))}

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(8)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def scrape(port):
    s = socket.create_connection(("127.0.0.1", port), 5)
    s.settimeout(5)
    s.sendall(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    m = {}
    head, body = data.decode().split("\r\n\r\n", 1)
    if not head.startswith("HTTP/1.1 200"):
        raise RuntimeError("metrics: " + head.splitlines()[0])
    for line in body.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        try:
            k, v = line.rsplit(" ", 1)
            m[k] = float(v)
        except ValueError:
            continue
    return m


def msum(m, prefix):
    return sum(v for k, v in m.items() if k.startswith(prefix))


# --------------------------------------------------------------------------- clients
class Results:
    def __init__(self):
        self.c = collections.Counter()
        self.violations = collections.defaultdict(list)
        self.hs_seen = []  # (start, end, sni, fp-name)

    def bump(self, k, n=1):
        with LOCK:
            self.c[k] += n

    def bad(self, kind, detail):
        with LOCK:
            self.violations[kind].append(detail)
            self.c["violation:" + kind] += 1


class Http:
    """A minimal HTTP/1.1 client over an (ssl) socket: exact framing, so a short body is seen."""

    def __init__(self, sock):
        self.s = sock
        self.buf = b""

    def _fill(self):
        b = self.s.recv(262144)
        if not b:
            raise EOFError("closed")
        self.buf += b

    def read_response(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin1").split("\r\n")
        status = int(lines[0].split()[1])
        hd = {}
        for l in lines[1:]:
            k, v = l.split(":", 1)
            hd[k.strip().lower()] = v.strip()
        if "content-length" in hd:
            n = int(hd["content-length"])
            while len(self.buf) < n:
                try:
                    self._fill()
                except EOFError:
                    raise EOFError(f"cut at {len(self.buf)}/{n}")
            body, self.buf = self.buf[:n], self.buf[n:]
        elif hd.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                ln, self.buf = self.buf.split(b"\r\n", 1)
                sz = int(ln.split(b";")[0], 16)
                while len(self.buf) < sz + 2:
                    self._fill()
                parts.append(self.buf[:sz])
                self.buf = self.buf[sz + 2:]
                if sz == 0:
                    break
            body = b"".join(parts)
        else:
            parts = [self.buf]
            self.buf = b""
            while True:
                try:
                    b = self.s.recv(262144)
                except ssl.SSLEOFError:
                    raise EOFError("close-delimited body without close_notify")
                if not b:
                    break
                parts.append(b)
            body = b"".join(parts)
        return status, hd, body


class Soak:
    def __init__(self, a):
        self.a = a
        self.r = Results()
        self.stop = threading.Event()
        self.d = os.path.join(a.out, "certs")
        self.fp = make_certs(self.d)
        # what a.test's handshakes must get now: (since, allowed fp-names)
        self.a_state = [(0.0, {"a1"})]
        self.tls12 = True
        self.tls12_since = 0.0
        self.events = []

    # ---- TLS contexts
    def ctx(self, ver=None, cert=None, tickets=True):
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.load_verify_locations(os.path.join(self.d, "ca.pem"))
        c.check_hostname = False
        if ver == "1.2":
            c.maximum_version = ssl.TLSVersion.TLSv1_2
        elif ver == "1.3":
            c.minimum_version = ssl.TLSVersion.TLSv1_3
        if cert:
            c.load_cert_chain(os.path.join(self.d, f"{cert}.pem"), os.path.join(self.d, f"{cert}.key"))
        if not tickets:
            c.options |= ssl.OP_NO_TICKET
        return c

    def expected(self, sni, t0, t1):
        """The fp-names a handshake between t0 and t1 may see for `sni`."""
        host = sni if sni in NAMES.values() else "a.test"
        if host == "b.test":
            return {"b"}
        if host == "x.w.test":
            return {"w"}
        ok = set()
        st = self.a_state
        for i, (since, names) in enumerate(st):
            until = st[i + 1][0] if i + 1 < len(st) else 1e18
            if since <= t1 and until >= t0:
                ok |= names
        return ok

    def fp_name(self, der):
        for k, v in self.fp.items():
            if v == der:
                return k
        return "?"

    def connect(self, port, sni, ver=None, cert=None, session=None, tickets=True, timeout=15, ctx=None):
        ctx = ctx or self.ctx(ver, cert, tickets)
        raw = socket.create_connection(("127.0.0.1", port), 5)
        raw.settimeout(timeout)
        t0 = now()
        s = ctx.wrap_socket(raw, server_hostname=sni, session=session)
        t1 = now()
        return s, t0, t1, ctx

    # ---- workers
    def worker_main(self, wid):
        rnd = random.Random(self.a.seed * 1000 + wid)
        while not self.stop.is_set():
            kind = rnd.choices(["ka", "one", "resume", "pipe", "big", "tlsup", "slow", "mtls", "plainspoof"],
                               [5, 4, 3, 2, 2, 3, 1, 2, 1])[0]
            try:
                getattr(self, "c_" + kind)(rnd)
            except Exception as e:  # noqa: BLE001 (classified below)
                self.classify(kind, e)

    def classify(self, kind, e):
        msg = f"{type(e).__name__}: {e}"
        if isinstance(e, ssl.SSLError) and "WRONG_VERSION" not in msg and "UNSUPPORTED_PROTOCOL" in msg:
            self.r.bump(f"err:{kind}:tls12-refused")
            return
        self.r.bump(f"err:{kind}:{type(e).__name__}")
        with LOCK:
            if len(self.r.violations["errors_sample"]) < 40:
                self.r.violations["errors_sample"].append(f"{time.strftime('%H:%M:%S')} {kind}: {msg}")

    def pick_sni(self, rnd):
        return rnd.choice(["a.test", "b.test", "x.w.test", None, UNKNOWN])

    def pick_ver(self, rnd):
        return rnd.choice(["1.2", "1.3", None])

    def check_cert(self, s, sni, t0, t1):
        name = self.fp_name(s.getpeercert(binary_form=True))
        exp = self.expected(sni, t0, t1)
        if name not in exp:
            self.r.bad("wrong_cert", f"sni={sni} got={name} expected={sorted(exp)} t0={t0 - self.t0:.2f}")
        self.r.bump("hs_ok")
        if sni == UNKNOWN:
            self.r.bump("hs_unknown_sni")
        if s.version() == "TLSv1.2":
            self.r.bump("hs_tls12")
        else:
            self.r.bump("hs_tls13")

    def get(self, h, s, path, host="a.test", extra=""):
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        return h.read_response()

    def dl(self, h, s, n, rnd, prefix="", close=False):
        seed = f"{rnd.random()}"
        extra = f"{SUBJ}: SPOOF-1\r\nX_Client_Subject: SPOOF-2\r\n" + ("Connection: close\r\n" if close else "")
        st, hd, body = self.get(h, s, f"{prefix}/dl?n={n}&seed={seed}", extra=extra)
        self.check_body(st, body, gen(seed, n), "dl")
        if hd.get("x-seen-subject", "-") != "-" and "alice" not in hd.get("x-seen-subject"):
            self.r.bad("subject_leak", hd.get("x-seen-subject"))
        return hd

    def up(self, h, s, n, rnd, prefix="", chunked=False):
        body = gen(f"{rnd.random()}", n)
        if chunked:
            parts = []
            for i in range(0, n, 300000):
                c = body[i:i + 300000]
                parts.append(f"{len(c):x}\r\n".encode() + c + b"\r\n")
            payload = b"".join(parts) + b"0\r\n\r\n"
            hdr = "Transfer-Encoding: chunked"
        else:
            payload, hdr = body, f"Content-Length: {n}"
        s.sendall(f"POST {prefix}/up HTTP/1.1\r\nHost: a.test\r\n{hdr}\r\n{SUBJ}: SPOOF-3\r\n\r\n".encode())
        mv = memoryview(payload)
        for i in range(0, len(payload), 65536):
            s.sendall(mv[i:i + 65536])
        st, hd, rb = h.read_response()
        self.check_body(st, rb, hashlib.sha256(body).hexdigest().encode(), "up")

    def check_body(self, st, body, want, what):
        if st != 200:
            self.r.bump(f"status:{st}")
            if st not in (502, 503, 504):
                self.r.bad("status", f"{what} {st}")
            return
        if body != want:
            self.r.bad("body_corrupt", f"{what} len={len(body)} want={len(want)}")
        else:
            self.r.bump(f"ok:{what}")
            self.r.bump("bytes", len(body))

    def c_ka(self, rnd):
        sni = self.pick_sni(rnd)
        s, t0, t1, _ = self.connect(self.port, sni, self.pick_ver(rnd))
        self.check_cert(s, sni, t0, t1)
        h = Http(s)
        for _ in range(rnd.randint(2, 12)):
            if self.stop.is_set():
                break
            if rnd.random() < 0.3:
                self.up(h, s, rnd.randint(1, 200000), rnd, chunked=rnd.random() < 0.3)
            else:
                self.dl(h, s, rnd.randint(0, 100000), rnd)
            self.r.bump("ka_req")
        s.close()

    def c_one(self, rnd):
        sni = self.pick_sni(rnd)
        s, t0, t1, _ = self.connect(self.port, sni, self.pick_ver(rnd))
        self.check_cert(s, sni, t0, t1)
        h = Http(s)
        self.dl(h, s, rnd.randint(0, 50000), rnd, close=True)
        # after Connection: close, the proxy ends with close_notify: a clean EOF
        try:
            b = s.recv(1)
            if b:
                self.r.bad("after_close", "bytes after Connection: close")
        except ssl.SSLEOFError:
            self.r.bad("no_close_notify", "response with Connection: close ended without close_notify")
        if rnd.random() < 0.5:  # half-close variant on a fresh connection
            s2, t0, t1, _ = self.connect(self.port, sni, self.pick_ver(rnd))
            self.check_cert(s2, sni, t0, t1)
            s2.sendall(b"GET /dl?n=5000&seed=hc HTTP/1.1\r\nHost: a.test\r\n\r\n")
            dup = socket.fromfd(s2.fileno(), socket.AF_INET, socket.SOCK_STREAM)
            dup.shutdown(socket.SHUT_WR)
            dup.close()
            h2 = Http(s2)
            try:
                st, _, body = h2.read_response()
                self.check_body(st, body, gen("hc", 5000), "halfclose")
            except (EOFError, ConnectionError, ssl.SSLError) as e:
                self.r.bump("halfclose_cut")  # allowed: a TCP FIN may read as the client leaving
                self.classify("halfclose", e)
            s2.close()
        s.close()

    def c_resume(self, rnd):
        sni = rnd.choice(["a.test", "b.test", "x.w.test", None])
        ver = rnd.choice(["1.2", "1.3"])
        tickets = not (ver == "1.2" and rnd.random() < 0.3)  # TLS 1.2 session ids only
        ctx = self.ctx(ver, tickets=tickets)
        s, t0, t1, _ = self.connect(self.port, sni, ctx=ctx)
        self.check_cert(s, sni, t0, t1)
        h = Http(s)
        self.dl(h, s, 100, rnd)
        sess = s.session
        s.close()
        for _ in range(rnd.randint(1, 4)):
            s, t0, t1, _ = self.connect(self.port, sni, ctx=ctx, session=sess)
            if s.session_reused:
                self.r.bump("hs_resumed")
                if not tickets:
                    self.r.bump("resumed_by_session_id")
            else:
                self.r.bump("resume_refused_" + ("noticket" if not tickets else ver))
                self.check_cert(s, sni, t0, t1)
            if s.session_reused:
                self.r.bump("hs_ok")
                self.r.bump("hs_tls12" if s.version() == "TLSv1.2" else "hs_tls13")
            h = Http(s)
            self.dl(h, s, rnd.randint(0, 20000), rnd)
            sess = s.session
            s.close()

    def c_pipe(self, rnd):
        sni = self.pick_sni(rnd)
        s, t0, t1, _ = self.connect(self.port, sni, self.pick_ver(rnd))
        self.check_cert(s, sni, t0, t1)
        h = Http(s)
        seeds = [(f"p{rnd.random()}", rnd.randint(0, 70000)) for _ in range(rnd.randint(2, 6))]
        pre = rnd.choice(["", "/tls"])
        s.sendall(b"".join(f"GET {pre}/dl?n={n}&seed={sd} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode() for sd, n in seeds))
        for sd, n in seeds:
            st, _, body = h.read_response()
            self.check_body(st, body, gen(sd, n), "pipe")
        s.close()

    def c_big(self, rnd):
        sni = rnd.choice(["a.test", "b.test", "x.w.test"])
        s, t0, t1, _ = self.connect(self.port, sni, self.pick_ver(rnd), timeout=30)
        self.check_cert(s, sni, t0, t1)
        h = Http(s)
        pre = rnd.choice(["", "", "/tls"])
        n = rnd.randint(1 << 20, 8 << 20)
        if rnd.random() < 0.5:
            self.dl(h, s, n, rnd, prefix=pre)
            self.r.bump("big_dl")
        else:
            self.up(h, s, n, rnd, prefix=pre, chunked=rnd.random() < 0.3)
            self.r.bump("big_up")
        s.close()

    def c_tlsup(self, rnd):
        s, t0, t1, _ = self.connect(self.port, "a.test", self.pick_ver(rnd))
        self.check_cert(s, "a.test", t0, t1)
        h = Http(s)
        for _ in range(rnd.randint(1, 8)):
            if rnd.random() < 0.3:
                self.up(h, s, rnd.randint(1, 300000), rnd, prefix="/tls")
            else:
                self.dl(h, s, rnd.randint(0, 300000), rnd, prefix="/tls")
            self.r.bump("tlsup_req")
        s.close()

    def c_slow(self, rnd):
        s, t0, t1, _ = self.connect(self.port, "a.test", self.pick_ver(rnd), timeout=30)
        self.check_cert(s, "a.test", t0, t1)
        n = rnd.randint(1 << 20, 4 << 20)
        sd = f"slow{rnd.random()}"
        pre = rnd.choice(["", "/tls"])
        s.sendall(f"GET {pre}/dl?n={n}&seed={sd} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        h = Http(s)
        # slow: 8 KiB every 20 ms for ~2 s, then fast
        end = now() + 2
        while now() < end and b"\r\n\r\n" not in h.buf:
            h.buf += s.recv(8192)
            time.sleep(0.02)
        while now() < end:
            h.buf += s.recv(8192)
            time.sleep(0.02)
        st, _, body = h.read_response()
        self.check_body(st, body, gen(sd, n), "slow")
        s.close()

    def c_mtls(self, rnd):
        which = rnd.choice(["req_cert", "req_nocert", "req_badcert", "opt_cert", "opt_nocert"])
        port = self.mport if which.startswith("req") else self.oport
        cert = {"req_cert": "alice", "opt_cert": "alice", "req_badcert": "mallory"}.get(which)
        try:
            s, t0, t1, _ = self.connect(port, "a.test", rnd.choice(["1.2", "1.3"]), cert=cert)
            h = Http(s)
            hd = self.dl(h, s, rnd.randint(0, 5000), rnd)
            seen = hd.get("x-seen-subject", "-")
            if cert == "alice" and "CN=alice" not in seen:
                self.r.bad("subject_missing", f"{which}: {seen}")
            if cert is None and seen != "-":
                self.r.bad("subject_leak", f"{which}: {seen}")
            if which in ("req_nocert", "req_badcert"):
                self.r.bad("mtls_bypass", f"{which} got an answer")
            self.r.bump(f"mtls:{which}:ok")
            s.close()
        except (ssl.SSLError, EOFError, ConnectionError) as e:
            if which in ("req_nocert", "req_badcert"):
                self.r.bump(f"mtls:{which}:refused")
            else:
                raise e

    def c_plainspoof(self, rnd):
        s = socket.create_connection(("127.0.0.1", self.pport), 5)
        s.settimeout(10)
        h = Http(s)
        hd = self.dl(h, s, 1000, rnd)
        if hd.get("x-seen-subject", "-") != "-":
            self.r.bad("subject_leak", "plain listener")
        s.close()

    # ---- abusers: each must be closed within the handshake timeout
    def abuser(self, wid):
        rnd = random.Random(self.a.seed * 7 + wid)
        hello = self.client_hello()
        while not self.stop.is_set():
            kind = rnd.choice(["silent", "partial_hello", "hello_close", "garbage", "mid_record", "stall_after_hello"])
            try:
                s = socket.create_connection(("127.0.0.1", self.port), 5)
                s.settimeout(HS_TIMEOUT + 6)
                t = now()
                if kind == "partial_hello":
                    s.sendall(hello[:40])
                elif kind == "hello_close":
                    s.sendall(hello)
                    s.close()
                    self.r.bump("abuse:hello_close")
                    continue
                elif kind == "garbage":
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" if rnd.random() < 0.5 else os.urandom(300))
                elif kind == "stall_after_hello":
                    s.sendall(hello)
                elif kind == "mid_record":
                    # a full handshake, a request cut in the middle of its record
                    c = self.ctx("1.3")
                    ob_in, ob_out = ssl.MemoryBIO(), ssl.MemoryBIO()
                    o = c.wrap_bio(ob_in, ob_out, server_hostname="a.test")
                    while True:
                        try:
                            o.do_handshake()
                            break
                        except ssl.SSLWantReadError:
                            s.sendall(ob_out.read())
                            d = s.recv(65536)
                            if not d:
                                raise EOFError("closed in handshake")
                            ob_in.write(d)
                    s.sendall(ob_out.read())
                    o.write(b"GET /dl?n=10 HTTP/1.1\r\nHost: a.test\r\n\r\n")
                    rec = ob_out.read()
                    s.sendall(rec[: len(rec) // 2])
                    s.close()
                    self.r.bump("abuse:mid_record")
                    continue
                # read until closed: must be within the handshake timeout (+ slack)
                try:
                    while s.recv(65536):
                        pass
                except (ConnectionError, socket.timeout) as e:
                    if isinstance(e, socket.timeout):
                        self.r.bad("handshake_hang", f"{kind} still open after {now() - t:.1f}s")
                dt = now() - t
                if kind in ("silent", "partial_hello", "stall_after_hello") and dt > HS_TIMEOUT + 1.5:
                    self.r.bad("handshake_hang", f"{kind} closed after {dt:.2f}s")
                self.r.bump(f"abuse:{kind}")
                s.close()
            except Exception as e:  # noqa: BLE001
                self.classify("abuse_" + kind, e)

    def client_hello(self):
        c = self.ctx()
        o = c.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="a.test")
        try:
            o.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return out.read()

    # ---- the SNI prober: a fresh handshake for a.test every 150 ms, recorded
    def prober(self):
        while not self.stop.is_set():
            try:
                s, t0, t1, _ = self.connect(self.port, "a.test", None)
                name = self.fp_name(s.getpeercert(binary_form=True))
                with LOCK:
                    self.r.hs_seen.append((t0 - self.t0, t1 - self.t0, name))
                self.check_cert(s, "a.test", t0, t1)
                s.close()
            except Exception as e:  # noqa: BLE001
                self.classify("prober", e)
            time.sleep(0.15)

    # ---- the open connections that must survive every reload
    def keeper(self, i):
        sni = ["a.test", "b.test", "x.w.test"][i % 3]
        port = [self.port, self.mport, self.oport][i % 3]
        cert = "alice" if port != self.port else None
        s, t0, t1, _ = self.connect(port, sni, "1.2" if i % 2 else "1.3", cert=cert)
        if port != self.port and sni != "a.test":
            self.r.bump("hs_unknown_sni")  # the mTLS listeners serve a.test only: a miss
        h = Http(s)
        rnd = random.Random(i)
        n = 0
        while not self.stop.is_set():
            try:
                self.dl(h, s, rnd.randint(0, 3000), rnd, prefix=rnd.choice(["", "/tls"]))
                n += 1
            except Exception as e:  # noqa: BLE001
                self.r.bad("open_conn_lost", f"keeper {i} after {n} requests: {type(e).__name__}: {e}")
                return
            self.stop.wait(0.3)
        self.r.bump("keeper_requests", n)
        s.close()

    # ---- chaos
    def event(self, what):
        t = now() - self.t0
        self.events.append((round(t, 2), what))

    def set_a(self, names):
        with LOCK:
            self.a_state.append((now(), names))

    def chaos(self):
        d = self.d
        rd = lambda n: open(os.path.join(d, n), "rb").read()  # noqa: E731
        D = self.a.duration
        plan = [
            (0.10, "replace_valid_a2"), (0.15, "hup"), (0.20, "restart_tls_backend"),
            (0.25, "replace_broken_cert"), (0.30, "hup_broken"), (0.35, "restart_plain_backend"),
            (0.40, "replace_mismatched_key"), (0.45, "hup_broken"), (0.50, "replace_valid_a3"),
            (0.55, "hup"), (0.60, "reload_tls13_only"), (0.65, "restart_tls_backend"),
            (0.75, "reload_tls12_back"), (0.80, "hup"), (0.85, "restart_tls_backend"),
        ]
        for frac, what in plan:
            if self.stop.wait(max(0, self.t0 + frac * D - now())):
                return
            self.event(what)
            if what == "replace_valid_a2":
                self.set_a({"a1", "a2"})  # transition window
                put(d, "live-a.key", rd("a2.key"))
                put(d, "live-a.pem", rd("a2.pem"))
                self.expect_after(2.5, {"a2"})
                self.r.bump("expect_cert_ok")
            elif what == "replace_valid_a3":
                self.set_a({"a2", "a3"})
                put(d, "live-a.key", rd("a3.key"))
                put(d, "live-a.pem", rd("a3.pem"))
                self.expect_after(2.5, {"a3"})
                self.r.bump("expect_cert_ok")
            elif what == "replace_broken_cert":
                put(d, "live-a.pem", b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
                self.r.bump("expect_cert_failed")
            elif what == "replace_mismatched_key":
                put(d, "live-a.pem", rd("a3.pem"))  # a3's cert with a2's key still in place
                self.r.bump("expect_cert_failed")
            elif what in ("hup", "hup_broken"):
                self.proxy.hup()
                self.r.bump("expect_" + what)
            elif what == "restart_tls_backend":
                self.tlsb.stop()
                time.sleep(0.5)
                self.tlsb.start()
            elif what == "restart_plain_backend":
                self.plain[0].stop()
                time.sleep(0.5)
                self.plain[0].start()
            elif what == "reload_tls13_only":
                self.proxy.rewrite(self.toml(tls12=False))
                self.proxy.hup()
                self.r.bump("expect_hup")
                self.tls12_change(False)
            elif what == "reload_tls12_back":
                self.proxy.rewrite(self.toml(tls12=True))
                self.proxy.hup()
                self.r.bump("expect_hup")
                self.tls12_change(True)

    def expect_after(self, delay, names):
        def later():
            if not self.stop.wait(delay):
                self.set_a(names)
        threading.Thread(target=later, daemon=True).start()

    def tls12_change(self, on):
        # probe: a TLS 1.2-only handshake 2 s after the reload must succeed iff on
        def later():
            if self.stop.wait(2):
                return
            try:
                s, *_ = self.connect(self.port, "a.test", "1.2")
                ok = True
                s.close()
            except (ssl.SSLError, ConnectionError):
                ok = False
            self.r.bump(f"tls12_probe_{'on' if on else 'off'}_{'ok' if ok else 'refused'}")
            if ok != on:
                self.r.bad("reload_tls_settings", f"TLS 1.2 {'refused' if on else 'accepted'} after the reload")
        threading.Thread(target=later, daemon=True).start()

    def toml(self, tls12=True):
        return proxy_toml(self.d, self.ports, [b.port for b in self.plain], self.tlsb.port, tls12=tls12)

    # ---- run
    def run(self):
        a = self.a
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(os.path.join(self.d, "backend.pem"), os.path.join(self.d, "backend.key"))
        self.plain = [Backend("p0"), Backend("p1")]
        self.tlsb = Backend("t0", sctx)
        for b in self.plain + [self.tlsb]:
            b.start()
        self.ports = [free_port() for _ in range(5)]
        self.port, self.mport, self.oport, self.pport, self.aport = self.ports
        self.proxy = Proxy(a.binary, a.engine, a.out, self.toml())
        summary = {"engine": a.engine, "duration": a.duration}
        try:
            time.sleep(1)
            base = self.proxy.proc()
            m0 = scrape(self.aport)
            self.t0 = now()
            self.a_state = [(0.0, {"a1"})]
            threads = [threading.Thread(target=self.worker_main, args=(i,), daemon=True) for i in range(a.workers)]
            threads += [threading.Thread(target=self.abuser, args=(i,), daemon=True) for i in range(a.abusers)]
            threads += [threading.Thread(target=self.keeper, args=(i,), daemon=True) for i in range(6)]
            threads += [threading.Thread(target=self.prober, daemon=True), threading.Thread(target=self.chaos, daemon=True)]
            for t in threads:
                t.start()
            peak = dict(base)
            while now() - self.t0 < a.duration:
                time.sleep(1)
                p = self.proxy.proc()
                peak = {k: max(peak[k], p[k]) for k in p}
            self.stop.set()
            for t in threads:
                t.join(40)
            hung = [t.name for t in threads if t.is_alive()]
            m1 = scrape(self.aport)
            # idle period: pooled/idle connections expire
            time.sleep(a.idle)
            after = self.proxy.proc()
            m2 = scrape(self.aport)
            summary.update(self.reconcile(m0, m1, m2))
            summary.update({"base": base, "peak": peak, "after_idle": after, "hung_threads": hung,
                            "events": self.events, "panics": self.proxy.panics, "alive": self.proxy.p.poll() is None})
            if after["fds"] > base["fds"] + 8:
                self.r.bad("fd_leak", f"{base['fds']} -> {after['fds']}")
            if after["rss_kb"] > base["rss_kb"] + max(30000, base["rss_kb"] // 2):
                self.r.bad("rss_growth", f"{base['rss_kb']} -> {after['rss_kb']} kB")
            if self.proxy.panics:
                self.r.bad("panic", self.proxy.panics[:3])
        finally:
            self.proxy.stop()
            for b in self.plain + [self.tlsb]:
                b.running = False
        summary["backend_spoofed"] = sum(len(b.spoofed) for b in self.plain + [self.tlsb])
        if summary["backend_spoofed"]:
            self.r.bad("spoof_reached_backend", [b.spoofed[:3] for b in self.plain + [self.tlsb]])
        summary["backend_stats"] = {b.name: dict(b.stats) for b in self.plain + [self.tlsb]}
        summary["counts"] = dict(sorted(self.r.c.items()))
        summary["violations"] = {k: v[:8] for k, v in self.r.violations.items()}
        summary["cert_timeline"] = self.timeline()
        with open(os.path.join(a.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1, default=str)
        bad = {k: len(v) for k, v in self.r.violations.items() if k != "errors_sample"}
        print(json.dumps({"engine": a.engine, "violations": bad, "reconcile": summary.get("reconcile")}, indent=1))
        return 1 if bad else 0

    def timeline(self):
        out, last = [], None
        for t0, t1, name in self.r.hs_seen:
            if name != last:
                out.append((round(t0, 2), name))
                last = name
        return out

    def reconcile(self, m0, m1, m2):
        d = lambda k: m1.get(k, 0) - m0.get(k, 0)  # noqa: E731
        c = self.r.c
        rec = {
            "handshakes_full": d('edgeshard_tls_handshakes_total{kind="full"}'),
            "handshakes_resumed": d('edgeshard_tls_handshakes_total{kind="resumed"}'),
            "client_resumed": c["hs_resumed"],
            "client_hs_ok": c["hs_ok"],
            "sni_misses": d("edgeshard_tls_sni_misses_total"),
            "client_unknown_sni": c["hs_unknown_sni"],
            "failures": {k.split('"')[1]: m1[k] - m0.get(k, 0) for k in m1 if k.startswith("edgeshard_tls_handshake_failures_total")},
            "cert_reloads": {k: v for k, v in m1.items() if k.startswith("edgeshard_tls_certificate_reloads_total")},
            "config_reloads": {k: v for k, v in m1.items() if k.startswith("edgeshard_config_reloads_total")},
            "expiry": {k: v for k, v in m1.items() if k.startswith("edgeshard_tls_certificate_expiry_seconds")},
            "in_progress_after_idle": m2.get("edgeshard_tls_handshakes_in_progress"),
            "versions": {k: m1[k] - m0.get(k, 0) for k in m1 if k.startswith("edgeshard_tls_versions_total")},
            "client_tls12": c["hs_tls12"], "client_tls13": c["hs_tls13"],
            "log_cert_reload_failed": self.proxy.count("certificate reload failed"),
            "log_reload_refused": self.proxy.count("reload failed, keeping the configuration"),
            "log_certificates_reloaded": self.proxy.count("certificates reloaded"),
            "gauges_after_idle": {k: v for k, v in m2.items() if re.match(r"edgeshard_(connections_open|connections_active|pool_idle|tls_handshakes_in_progress)", k)},
        }
        if rec["handshakes_resumed"] != rec["client_resumed"]:
            self.r.bad("metric_resumed", f"metric {rec['handshakes_resumed']} vs clients {rec['client_resumed']}")
        if rec["sni_misses"] != rec["client_unknown_sni"]:
            self.r.bad("metric_sni_miss", f"metric {rec['sni_misses']} vs clients {rec['client_unknown_sni']}")
        tot = rec["handshakes_full"] + rec["handshakes_resumed"]
        if tot < rec["client_hs_ok"]:
            self.r.bad("metric_handshakes", f"metric {tot} < clients {rec['client_hs_ok']}")
        # every listener reads live-a.*: each broken replacement is one failure on each
        for k, v in rec["cert_reloads"].items():
            if 'result="failed"' in k and v != c["expect_cert_failed"]:
                self.r.bad("metric_cert_reload_failed", f"{k} = {v}, broken replacements: {c['expect_cert_failed']}")
        if rec["in_progress_after_idle"]:
            self.r.bad("metric_in_progress", rec["in_progress_after_idle"])
        return {"reconcile": rec}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--engine", choices=["uring", "epoll"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--duration", type=float, default=50)
    ap.add_argument("--idle", type=float, default=25)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--abusers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    sys.exit(Soak(a).run())


if __name__ == "__main__":
    main()
