#!/usr/bin/env python3
"""Upstream fault soak for edgeshard: replays, truncations, status classes, counters, leaks.

See README.md beside this file. One run = one engine: start 3 in-process backends (asyncio,
127.0.0.1:0), start edgeshard in front of them, then

  phase A "exact" (--exact-s): every fault is chosen per request (X-Fault header) and applied
          by every backend (or only by the first one it reaches: X-Fault-Once), so the status
          and the number of backend hits of every request are known in advance;
  phase B "chaos" (--chaos-s): the same per-request faults at a lower rate, plus per-backend
          faults over time (killed and restarted, blackholed, closing idle keep-alive
          connections at once, answering 503 Retry-After to everything);
  idle    (--idle-s): no traffic, then RSS / fd / gauges are compared with the baseline.

Every backend logs every request id it reads (X-Req-Id). Every response body is derived from
the id and its length, so a client can tell intact from corrupt or foreign. Results:
OUT/records.jsonl (one line per client request), OUT/hits.jsonl (one line per backend read),
OUT/summary.json, OUT/edgeshard.log, OUT/edgeshard.toml. Exit status 1 when an invariant broke.
Only 127.0.0.1 is used, every wait is bounded, and only processes started here are stopped.
"""
import argparse
import asyncio
import collections
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

IDEMPOTENT = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"}
FAULTS_DETERMINISTIC = [
    "hang", "reset_head", "reset_body", "reset_body_chunked", "short_cl_fin",
    "eof_body_reset", "garbage_cl", "garbage_clte", "garbage_dupcl", "garbage_lf",
    "slow_head", "e503", "stale", "stall_body", "interim_reset", "overrun",
    "hang_noread", "early_413", "early_200", "reset_reqbody", "close_resp", "http10_resp",
    "e204_junk",
]
ATTEMPTS = 3
PER_TRY = 1.0          # retry.per_try_timeout
SLOW_HEAD_S = 2.5      # past per_try_timeout
CLIENT_DEADLINE = 20.0  # a request not finished by then is a hang


def gen(tag: str, n: int) -> bytes:
    unit = hashlib.sha256(tag.encode()).hexdigest().encode()
    return (unit * (n // len(unit) + 1))[:n]


def now():
    return time.monotonic()


# --------------------------------------------------------------------------- backends
class Backend:
    def __init__(self, idx, hits, t0, seen):
        self.idx = idx
        self.seen = seen              # shared: id -> reads so far
        self.name = f"b{idx}"
        self.hits = hits              # shared: list of dicts
        self.t0 = t0
        self.port = 0
        self.server = None
        self.writers = set()
        self.mode = "normal"          # chaos: normal | blackhole | stale | e503 | dead
        self.conn_seq = 0
        self.served = collections.Counter()  # what this backend sent, by kind

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port,
                                                 reuse_address=True, backlog=512)
        self.port = self.server.sockets[0].getsockname()[1]

    async def kill(self):
        """A crash: listener gone, every connection reset."""
        self.mode = "dead"
        if self.server:
            self.server.close()
            self.server = None
        for w in list(self.writers):
            rst(w)
        self.writers.clear()

    async def restart(self):
        self.mode = "normal"
        for _ in range(50):
            try:
                await self.start()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name}: cannot rebind {self.port}")

    async def handle(self, reader, writer):
        self.conn_seq += 1
        conn = self.conn_seq
        self.writers.add(writer)
        nreq = 0
        try:
            while True:
                if self.mode == "stale" and nreq > 0:
                    # close an idle keep-alive connection very soon: races the proxy's reuse
                    try:
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                                      random.uniform(0.0, 0.02))
                    except asyncio.TimeoutError:
                        return
                else:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
                nreq += 1
                keep = await self.one(reader, writer, head, conn, nreq)
                if not keep:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError,
                asyncio.LimitOverrunError, OSError):
            pass
        finally:
            self.writers.discard(writer)
            try:
                writer.close()
            except Exception:
                pass

    async def one(self, reader, writer, head, conn, nreq):
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        hdr = {}
        for l in lines[1:]:
            if ":" in l:
                k, v = l.split(":", 1)
                hdr[k.strip().lower()] = v.strip()
        rid = hdr.get("x-req-id")
        if rid is None:
            # a health probe
            if self.mode in ("blackhole",):
                await asyncio.sleep(5)
                return False
            code = b"503 Busy" if self.mode == "e503" else b"200 OK"
            writer.write(b"HTTP/1.1 " + code + b"\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            await writer.drain()
            return False
        fault = hdr.get("x-fault", "none")
        once = hdr.get("x-fault-once") == "1"
        prior = self.seen[rid]
        self.seen[rid] += 1
        rec = {"id": rid, "b": self.name, "conn": conn, "nreq": nreq, "method": method,
               "t": round(now() - self.t0, 3), "fault": fault, "bmode": self.mode}
        self.hits.append(rec)
        if once and prior > 0:
            fault = "none"
        # stale: this connection's NEXT request is read and dropped (no answer): the
        # proxy sees a reused connection closed before any response byte.
        if getattr(writer, "_poisoned", False):
            rec["victim"] = True
            rst(writer) if random.random() < 0.5 else writer.close()
            self.served["stale_victim"] += 1
            return False
        if fault == "reset_head":
            self.served[fault] += 1
            rst(writer)
            return False
        if fault == "hang_noread":
            # reads the head, never the body, never answers: a large upload stalls
            self.served[fault] += 1
            await asyncio.sleep(10)
            return False
        if fault == "early_413" and hdr.get("x-req-len", "0") != "0":
            # refuses an upload before reading it, then closes politely (lingering)
            self.served[fault] += 1
            writer.write(b"HTTP/1.1 413 Content Too Large\r\nX-Req-Echo: " + rid.encode() +
                         b"\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig\n")
            await writer.drain()
            try:
                writer.write_eof()
                while await asyncio.wait_for(reader.read(65536), 5):
                    pass
            except Exception:
                pass
            return False
        if fault == "early_200" and hdr.get("x-req-len", "0") != "0":
            # answers in full before reading the body, keeps the connection, then reads
            # the body: a request head found inside the body's bytes is a desync
            self.served[fault] += 1
            n = int(hdr.get("x-len", "0"))
            payload = gen(rid, n) if method != "HEAD" else b""
            writer.write(b"HTTP/1.1 200 OK\r\nX-Req-Echo: " + rid.encode() + b"\r\nX-Backend: " +
                         self.name.encode() + b"\r\nContent-Length: %d\r\n\r\n" % n + payload)
            await writer.drain()
            rest = b""
            try:
                if "content-length" in hdr:
                    want = int(hdr["content-length"])
                    while len(rest) < want:
                        c = await asyncio.wait_for(reader.read(want - len(rest)), 5)
                        if not c:
                            break
                        rest += c
                else:
                    while b"\r\n0\r\n\r\n" not in rest[-16:]:
                        c = await asyncio.wait_for(reader.read(65536), 5)
                        if not c:
                            break
                        rest += c
            except asyncio.TimeoutError:
                pass
            if b"X-Req-Id" in rest:
                rec["desync"] = rest[rest.find(b"X-Req-Id"):][:40].decode("latin-1")
            return False
        if fault == "reset_reqbody" and int(hdr.get("content-length", "0") or 0) > 1:
            self.served[fault] += 1
            await asyncio.wait_for(reader.readexactly(int(hdr["content-length"]) // 2), 30)
            rst(writer)
            return False
        # read the request body
        ok = True
        body = b""
        if "content-length" in hdr:
            body = await asyncio.wait_for(reader.readexactly(int(hdr["content-length"])), 30)
        elif hdr.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                szl = await asyncio.wait_for(reader.readuntil(b"\r\n"), 30)
                sz = int(szl.split(b";")[0].strip(), 16)
                if sz == 0:
                    while (await asyncio.wait_for(reader.readuntil(b"\r\n"), 30)) != b"\r\n":
                        pass
                    break
                parts.append(await asyncio.wait_for(reader.readexactly(sz), 30))
                await asyncio.wait_for(reader.readexactly(2), 30)
            body = b"".join(parts)
        want = int(hdr.get("x-req-len", "0"))
        if body != gen(rid + "/req", want):
            ok = False
        rec["req_body_ok"] = ok
        if self.mode == "blackhole":
            fault = "hang"
        elif self.mode == "e503" and fault == "none":
            fault = "e503"
        n = int(hdr.get("x-len", "0"))
        frame = hdr.get("x-frame", "cl")
        payload = gen(rid, n) if method != "HEAD" else b""
        base = (f"X-Req-Echo: {rid}\r\nX-Backend: {self.name}\r\n").encode()
        self.served[fault] += 1
        if fault == "hang":
            try:
                await asyncio.wait_for(reader.read(1), 30)
            except Exception:
                pass
            return False
        if fault == "slow_head":
            await asyncio.sleep(SLOW_HEAD_S)
        if fault == "interim_reset":
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
            rst(writer)
            return False
        if fault == "overrun":
            # more bytes than Content-Length: a response nobody asked for, on a kept-alive
            # connection. It must never reach another request.
            body = gen(rid, n)
            writer.write(b"HTTP/1.1 200 OK\r\n" + base + b"Content-Length: %d\r\n\r\n" % n +
                         body + b"HTTP/1.1 200 OK\r\nX-Req-Echo: OVERRUN\r\nX-Backend: " +
                         self.name.encode() + b"\r\nContent-Length: 5\r\n\r\nevil\n")
            await writer.drain()
            return hdr.get("connection", "").lower() != "close"
        if fault in ("close_resp", "http10_resp", "e204_junk"):
            # close_resp: "Connection: close", http10_resp: an HTTP/1.0 answer without
            # keep-alive; both then keep the socket open: a request that still comes on it
            # means the proxy reused a connection it had been told not to.
            # e204_junk: a 204 followed by a forged response (must never be relayed).
            if fault == "e204_junk":
                writer.write(b"HTTP/1.1 204 No Content\r\n" + base + b"\r\n" +
                             b"HTTP/1.1 200 OK\r\nX-Req-Echo: JUNK204\r\nContent-Length: 5\r\n\r\nevil\n")
                await writer.drain()
                return hdr.get("connection", "").lower() != "close"
            ver = b"HTTP/1.0" if fault == "http10_resp" else b"HTTP/1.1"
            cc = b"Connection: close\r\n" if fault == "close_resp" else b""
            body = gen(rid, n) if method != "HEAD" else b""
            writer.write(ver + b" 200 OK\r\n" + base + cc + b"Content-Length: %d\r\n\r\n" % n + body)
            await writer.drain()
            try:
                more = await asyncio.wait_for(reader.read(65536), 2)
                if b"X-Req-Id" in more:
                    rec["reused_after_close"] = more[more.find(b"X-Req-Id"):][:40].decode("latin-1")
            except Exception:
                pass
            return False
        if fault == "stall_body":
            if len(payload) < 4000:
                payload = gen(rid, 4000)
            writer.write(b"HTTP/1.1 200 OK\r\n" + base + b"Content-Length: %d\r\n\r\n" % len(payload)
                         + payload[:len(payload) // 2])
            await writer.drain()
            try:
                await asyncio.wait_for(reader.read(1), 30)
            except Exception:
                pass
            return False
        if fault == "e503":
            b = b"busy\n"
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n" + base +
                         b"Content-Length: %d\r\n\r\n" % len(b) + (b if method != "HEAD" else b""))
            await writer.drain()
            return True
        if fault.startswith("garbage"):
            if fault == "garbage_cl":
                h = b"HTTP/1.1 200 OK\r\n" + base + b"Content-Length: 12abc\r\n\r\n"
            elif fault == "garbage_clte":
                h = (b"HTTP/1.1 200 OK\r\n" + base +
                     b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
            elif fault == "garbage_dupcl":
                h = b"HTTP/1.1 200 OK\r\n" + base + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n"
            else:  # bare LF line endings
                h = (b"HTTP/1.1 200 OK\n" + base.replace(b"\r\n", b"\n") +
                     b"Content-Length: %d\n\n" % len(payload))
            writer.write(h + payload)
            await writer.drain()
            return False
        # a real response, maybe cut
        cut = len(payload) // 2
        if fault in ("reset_body", "short_cl_fin", "eof_body_reset", "reset_body_chunked"):
            if len(payload) < 2:
                payload = gen(rid, 4000)
                cut = 2000
            if fault == "eof_body_reset":
                frame = "eof"
            elif fault == "reset_body_chunked":
                frame = "chunked"
            else:
                frame = "cl"
        if method == "HEAD":
            frame = "cl"
        if frame == "cl":
            h = b"HTTP/1.1 200 OK\r\n" + base + b"Content-Length: %d\r\n\r\n" % (
                n if method == "HEAD" else len(payload))
            data = payload
        elif frame == "chunked":
            h = b"HTTP/1.1 200 OK\r\n" + base + b"Transfer-Encoding: chunked\r\n\r\n"
            data = b""
            i = 0
            while i < len(payload):
                k = min(len(payload) - i, random.choice([1, 100, 4096, 30000]))
                data += b"%x\r\n" % k + payload[i:i + k] + b"\r\n"
                i += k
            full = data + b"0\r\n\r\n"
            cut = len(data) // 2
            data = full
        else:  # eof-delimited
            h = b"HTTP/1.1 200 OK\r\n" + base + b"Connection: close\r\n\r\n"
            data = payload
        if fault in ("reset_body", "short_cl_fin", "eof_body_reset", "reset_body_chunked"):
            writer.write(h + data[:cut])
            await writer.drain()
            await asyncio.sleep(0.02)
            if fault == "short_cl_fin":
                writer.close()
            else:
                rst(writer)
            return False
        writer.write(h)
        # body in a few writes
        step = max(1, len(data) // 3)
        for i in range(0, len(data), step):
            writer.write(data[i:i + step])
            await writer.drain()
        if frame == "eof":
            return False
        if fault == "stale":
            writer._poisoned = True
        return hdr.get("connection", "").lower() != "close"


def rst(writer):
    try:
        s = writer.get_extra_info("socket")
        if s is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    except Exception:
        pass


# --------------------------------------------------------------------------- client
class Conn:
    def __init__(self, port):
        self.port = port
        self.r = None
        self.w = None

    async def open(self):
        self.r, self.w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port, limit=1 << 22), 5)

    def drop(self):
        if self.w:
            rst(self.w)
        self.r = self.w = None


async def read_response(r, method, deadline):
    """(status, headers, body_state, body, closed_after). body_state: none | complete |
    truncated (EOF/reset before the framing's end) | eof (close-delimited, ended by EOF)."""
    def left():
        return max(0.01, deadline - now())
    while True:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), left())
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        if not (100 <= status < 200 and status != 101):
            break
    hdr = {}
    for l in lines[1:]:
        if ":" in l:
            k, v = l.split(":", 1)
            hdr.setdefault(k.strip().lower(), v.strip())
    closing = hdr.get("connection", "").lower() == "close"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return status, hdr, "none", b"", closing
    if hdr.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        try:
            while True:
                szl = await asyncio.wait_for(r.readuntil(b"\r\n"), left())
                sz = int(szl.split(b";")[0].strip(), 16)
                if sz == 0:
                    while (await asyncio.wait_for(r.readuntil(b"\r\n"), left())) != b"\r\n":
                        pass
                    break
                parts.append(await asyncio.wait_for(r.readexactly(sz), left()))
                crlf = await asyncio.wait_for(r.readexactly(2), left())
                if crlf != b"\r\n":
                    return status, hdr, "badframe", b"".join(parts), True
            return status, hdr, "complete", b"".join(parts), closing
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return status, hdr, "truncated", b"".join(parts), True
    if "content-length" in hdr:
        n = int(hdr["content-length"])
        try:
            body = await asyncio.wait_for(r.readexactly(n), left())
            return status, hdr, "complete", body, closing
        except asyncio.IncompleteReadError as e:
            return status, hdr, "truncated", e.partial, True
        except ConnectionError:
            return status, hdr, "truncated", b"", True
    # close-delimited
    chunks = []
    try:
        while True:
            c = await asyncio.wait_for(r.read(1 << 16), left())
            if not c:
                break
            chunks.append(c)
        return status, hdr, "eof", b"".join(chunks), True
    except ConnectionError:
        return status, hdr, "truncated", b"".join(chunks), True


class Client:
    def __init__(self, port, records, t0, rng):
        self.port = port
        self.records = records
        self.t0 = t0
        self.rng = rng
        self.seq = 0

    def plan(self, phase):
        rng = self.rng
        method = rng.choices(["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"],
                             [30, 10, 15, 28, 10, 7])[0]
        body = "none"
        if method in ("PUT", "POST", "PATCH"):
            body = rng.choices(["cl", "chunked", "none", "cl0"], [55, 30, 10, 5])[0]
        elif method == "DELETE":
            body = rng.choices(["none", "cl"], [80, 20])[0]
        rate = 0.5 if phase == "exact" else 0.2
        fault = "none"
        if rng.random() < rate:
            fault = rng.choice(FAULTS_DETERMINISTIC)
        once = fault != "none" and rng.random() < 0.4
        n = rng.choice([0, 100, 3000, 20000, 70000, 300000])
        frame = rng.choices(["cl", "chunked", "eof"], [60, 30, 10])[0]
        rlen = {"none": 0, "cl0": 0}.get(body) if body in ("none", "cl0") else rng.choice(
            [1, 1000, 20000, 150000])
        return dict(method=method, body=body, fault=fault, once=once, n=n, frame=frame,
                    rlen=rlen, idem_key=(method == "POST" and rng.random() < 0.5))

    def build(self, rid, p, close):
        h = [f"{p['method']} /soak/{rid} HTTP/1.1", "Host: soak.test", f"X-Req-Id: {rid}",
             f"X-Len: {p['n']}", f"X-Frame: {p['frame']}", f"X-Req-Len: {p['rlen']}"]
        if p["fault"] != "none":
            h.append(f"X-Fault: {p['fault']}")
            if p["once"]:
                h.append("X-Fault-Once: 1")
        if p["idem_key"]:
            h.append(f"Idempotency-Key: {rid}")
        if close:
            h.append("Connection: close")
        body = gen(rid + "/req", p["rlen"])
        if p["body"] == "cl" or p["body"] == "cl0":
            h.append(f"Content-Length: {len(body)}")
            raw = body
        elif p["body"] == "chunked":
            h.append("Transfer-Encoding: chunked")
            raw = b""
            i = 0
            while i < len(body):
                k = min(len(body) - i, self.rng.choice([7, 1000, 16384]))
                raw += b"%x\r\n" % k + body[i:i + k] + b"\r\n"
                i += k
            raw += b"0\r\n\r\n"
        else:
            raw = b""
        return ("\r\n".join(h) + "\r\n\r\n").encode() + raw

    async def worker(self, wid, close, phase, until):
        conn = Conn(self.port)
        while now() < until:
            self.seq += 1
            rid = f"{phase[0]}{wid:02d}-{self.seq:06d}-{self.rng.randrange(1 << 30):08x}"
            p = self.plan(phase)
            rec = dict(id=rid, phase=phase, close=close, t=round(now() - self.t0, 3), **p)
            start = now()
            deadline = start + CLIENT_DEADLINE
            reused = conn.w is not None
            rec["client_reused"] = reused
            try:
                if conn.w is None:
                    await conn.open()
                conn.w.write(self.build(rid, p, close))
                # the proxy may answer (and close) before taking the whole body
                try:
                    await asyncio.wait_for(conn.w.drain(), CLIENT_DEADLINE)
                except ConnectionError:
                    pass
                st, hdr, bstate, body, closed = await read_response(conn.r, p["method"], deadline)
                rec.update(status=st, body_state=bstate, got_len=len(body),
                           echo=hdr.get("x-req-echo"), backend=hdr.get("x-backend"),
                           retry_after=hdr.get("retry-after"), resp_conn=hdr.get("connection"))
                if hdr.get("x-req-echo") is not None:
                    if hdr["x-req-echo"] != rid:
                        rec["foreign"] = True
                    if st == 200 and p["method"] != "HEAD":
                        want = gen(rid, len(body)) if bstate != "complete" else None
                        if bstate in ("complete", "eof"):
                            rec["intact"] = body == gen(rid, p["n"])
                        else:
                            rec["prefix_ok"] = body == gen(rid, len(body))
                if closed or close:
                    conn.drop()
            except asyncio.TimeoutError:
                rec["status"] = None
                rec["error"] = "HANG"
                conn.drop()
            except asyncio.IncompleteReadError as e:
                rec["status"] = None
                rec["error"] = "eof_before_status" if not e.partial else "eof_in_head"
                conn.drop()
            except (ConnectionError, OSError) as e:
                rec["status"] = None
                rec["error"] = type(e).__name__
                conn.drop()
            rec["dur"] = round(now() - start, 3)
            self.records.append(rec)
        conn.drop()


# --------------------------------------------------------------------------- proxy
UPSTREAM_EXTRA = ""   # --upstream-extra: more keys for the [[upstream]] table
ACCESS_LOG = None     # OUT/access.log: every request's tries (backends, statuses)


def proxy_toml(ports, chaos=False):
    extra = UPSTREAM_EXTRA + "\n" + ("""
[upstream.breaker]
max_requests = 8

[upstream.outlier]
consecutive = 3
on = ["connect-failure", "reset", "timeout"]
base_ejection = "1s"
max_ejection = "3s"
max_ejection_percent = 34
""" if chaos else 'fail_timeout = "1s"\n')
    access = (f'access = "{ACCESS_LOG}"\naccess_format = '
              "'$request|$status|$upstream_addr|$upstream_status|$upstream_header_time'\n"
              if ACCESS_LOG else "")
    bl = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in ports)
    return f"""# generated by loadtest/faultsoak/soak.py
[server]
shutdown_timeout = "2s"

[[listener]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[log]
level = "info"
error_rate = 100000
{access}
[timeouts]
upstream_connect = "1s"
upstream_response = "3s"

[[route]]
upstream = "app"

[[upstream]]
name = "app"
backends = [{bl}]
idle_timeout = "5s"
{extra}
[upstream.health_check]
type = "http"
path = "/healthz"
interval = "500ms"
timeout = "300ms"
fall = 2
rise = 2

[upstream.retry]
attempts = {ATTEMPTS}
on = ["connect-failure", "reset", "timeout", "503"]
per_try_timeout = "{int(PER_TRY * 1000)}ms"
budget = 1.0
min_retries_per_sec = 1000
"""


class Proxy:
    def __init__(self, binary, engine, toml, out, shards=1):
        self.out = out
        path = os.path.join(out, "edgeshard.toml")
        with open(path, "w") as f:
            f.write(toml)
        self.log = open(os.path.join(out, "edgeshard.log"), "w")
        self.p = subprocess.Popen(["nice", "-n", "5", binary, "run", "--config", path,
                                   "--shards", str(shards), "--io-engine", engine],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        self.addr = self.admin = None
        self.ready = threading.Event()
        self.panics = []
        threading.Thread(target=self._pump, daemon=True).start()
        if not self.ready.wait(20):
            self.stop()
            raise RuntimeError("edgeshard not ready in 20 s, see edgeshard.log")
        # nice execs the binary: same PID

    def _pump(self):
        for raw in self.p.stdout:
            line = raw.decode("utf-8", "replace")
            self.log.write(line)
            self.log.flush()
            if "panicked" in line:
                self.panics.append(line.strip())
            m = re.match(r"edgeshard: listening on (\S+)", line)
            if m:
                self.addr = m.group(1)
            m = re.match(r"edgeshard: admin on (\S+)", line)
            if m:
                self.admin = m.group(1)
            if line.startswith("edgeshard: ready"):
                self.ready.set()

    def alive(self):
        return self.p.poll() is None

    def proc(self):
        pid = self.p.pid
        st = open(f"/proc/{pid}/status").read()
        rss = int(re.search(r"VmRSS:\s+(\d+)", st).group(1))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return {"rss_kb": rss, "fds": fds}

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def scrape(admin):
    host, port = admin.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), 3)
    s.settimeout(3)
    s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        data += c
    s.close()
    head, body = data.split(b"\r\n\r\n", 1)
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(f"/metrics: {head[:100]!r}")
    body = body.decode()
    m = {}
    for line in body.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        k, _, v = line.rpartition(" ")
        try:
            m[k] = float(v)
        except ValueError:
            pass
    return m


def mdelta(a, b, prefix):
    return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)
            if k.startswith(prefix) and b.get(k, 0) != a.get(k, 0)}


# --------------------------------------------------------------------------- checks
def expected(rec, victim_ids):
    """Phase A only: (status set, hits set) for a request whose backends all behave alike."""
    m, f = rec["method"], rec["fault"]
    retryable = m in IDEMPOTENT and rec["body"] in ("none", "cl0")
    ok = {200}
    if f in ("none", "stale", "reset_body", "reset_body_chunked", "short_cl_fin", "eof_body_reset",
             "stall_body", "overrun"):
        st, hits = ok, {1}
    elif f == "interim_reset":
        st, hits = {502}, {1}
    elif f in ("close_resp", "http10_resp"):
        st, hits = ok, {1}
    elif f == "e204_junk":
        st, hits = {204}, {1}
    elif f == "reset_reqbody":
        if rec["body"] == "cl" and rec["rlen"] > 1:
            st, hits = {502}, {1}
        elif rec["body"] == "chunked":
            # with buffer_request_body a chunked body goes out with a Content-Length
            st, hits = {200, 502}, {1}
        else:
            st, hits = ok, {1}
    elif f in ("early_413", "early_200"):
        if rec["rlen"] == 0:
            st, hits = ok, {1}
        else:
            st, hits = ({413} if f == "early_413" else ok), {1}
    elif f == "hang_noread":
        st = {504}
        hits = {ATTEMPTS} if retryable else {1}
    elif f in ("hang", "slow_head"):
        st = {504}
        hits = {ATTEMPTS} if retryable else {1}
    elif f == "e503":
        st = {503}
        hits = {ATTEMPTS} if retryable else {1}
    elif f == "garbage_lf":
        st = {200, 502}
        hits = {1, ATTEMPTS} if retryable else {1}
    else:  # reset_head, garbage_*
        st = {502}
        hits = {ATTEMPTS} if retryable else {1}
    if rec["once"] and f not in ("none", "stale", "reset_body", "reset_body_chunked",
                                 "short_cl_fin", "eof_body_reset", "stall_body", "overrun",
                                 "interim_reset", "early_413", "early_200",
                                 "close_resp", "http10_resp", "e204_junk", "reset_reqbody"):
        if retryable:
            st, hits = ok, {2}
    if f == "garbage_lf" and rec["once"]:
        hits = {1, 2}
    # A reset (or close) before any response byte on a REUSED pooled connection is a
    # possible keep-alive race: an idempotent bodiless request is resent once on a fresh
    # connection (HEALTH.md, retries kind 2), so each try may count twice.
    if retryable and (f == "reset_head" or rec["id"] in victim_ids):
        hits = set(range(min(hits), 2 * max(hits) + 2))
    if rec["id"] in victim_ids:
        # a stale victim: read, then dropped with no answer on a reused connection; the
        # victim's read also uses up an X-Fault-Once
        if retryable:
            st = st | {200}
        else:
            st, hits = {502}, {1}
    return st, hits


def analyse(records, hits, phase_metrics, proc_marks, panics, alive):
    per_id = collections.defaultdict(list)
    for h in hits:
        per_id[h["id"]].append(h)
    victims = {h["id"] for h in hits if h.get("victim")}
    find = collections.defaultdict(list)
    counts = collections.Counter()
    for r in records:
        counts[(r["phase"], r["method"], r["fault"])] += 1
        hs = per_id.get(r["id"], [])
        r["hits"] = len(hs)
        r["backends"] = [h["b"] for h in hs]
        retryable = r["method"] in IDEMPOTENT and r["body"] in ("none", "cl0")
        if r.get("error") == "HANG":
            find["hang"].append(r)
        if r.get("foreign"):
            find["foreign_response"].append(r)
        if not retryable and len(hs) > 1:
            find["replay_non_idempotent"].append(r)
        if len(hs) > 2 * ATTEMPTS:
            find["too_many_hits"].append(r)
        if any(h.get("req_body_ok") is False for h in hs):
            find["request_body_corrupt"].append(r)
        if r.get("status") == 200 and r["method"] != "HEAD" and r.get("echo"):
            if r["body_state"] == "complete" and not r.get("intact"):
                find["short_or_corrupt_body_complete_framing"].append(r)
            if r["body_state"] == "eof" and not r.get("intact"):
                find["short_body_eof_delimited"].append(r)
            if r["body_state"] == "truncated" and r.get("prefix_ok") is False:
                find["corrupt_prefix"].append(r)
            if r["body_state"] == "badframe":
                find["bad_chunk_framing_to_client"].append(r)
        st = r.get("status")
        if st in (502, 503, 504) and not r.get("echo") and r["rlen"] > 0 and not r["close"] \
                and (r.get("resp_conn") or "").lower() != "close":
            # CONFIG.md: the proxy's own error to a request with a body closes the connection
            find["error_with_body_kept_alive"].append(r)
        if any(h.get("reused_after_close") for h in hs):
            find["pooled_after_close"].append(r)
        if any(h.get("desync") for h in hs):
            find["upstream_desync"].append(r)
        # (an early answer may keep the client connection when the proxy had the whole body
        # already: a desync there shows up as the next request's 400)
        if st is not None and st not in (200, 204, 413, 502, 503, 504):
            find["unexpected_status"].append(r)
        if st is None and r.get("error") != "HANG":
            # no status at all: fine only when a truncated response could not be told apart
            find["no_status"].append(r)
        if r["phase"] == "exact":
            est, ehits = expected(r, victims)
            if st not in est:
                find["exact_wrong_status"].append(dict(r, want=sorted(est)))
            elif len(hs) not in ehits:
                find["exact_wrong_hits"].append(dict(r, want_hits=sorted(ehits)))
            if r["fault"] in ("reset_body", "reset_body_chunked", "short_cl_fin", "eof_body_reset",
                              "stall_body") \
                    and st == 200 and r["method"] != "HEAD" and r["id"] not in victims \
                    and r["body_state"] in ("complete", "eof"):
                find["truncation_seen_as_complete"].append(r)
            if r["fault"] == "e503" and st == 503 and r.get("echo") and not r.get("retry_after"):
                find["retry_after_dropped"].append(r)
    return find, counts, victims


def reconcile(records, hits, m0, m1, phase):
    """Counters against what the client and backends saw, for one phase's window."""
    rs = [r for r in records if r["phase"] == phase]
    ids = {r["id"] for r in rs}
    hs = [h for h in hits if h["id"] in ids]
    d = lambda k: m1.get(k, 0) - m0.get(k, 0)
    sums = collections.Counter()
    for k in set(m0) | set(m1):
        base = k.split("{")[0]
        sums[base] += d(k)
        if "responses_generated_total" in k:
            sums[k] += d(k)
    client = collections.Counter(r.get("status") for r in rs)
    gen502 = sum(d(k) for k in set(m0) | set(m1)
                 if k.startswith("edgeshard_responses_generated_total") and 'status="502"' in k)
    gen504 = sum(d(k) for k in set(m0) | set(m1)
                 if k.startswith("edgeshard_responses_generated_total") and 'status="504"' in k)
    gen503 = sum(d(k) for k in set(m0) | set(m1)
                 if k.startswith("edgeshard_responses_generated_total") and 'status="503"' in k)
    backend503 = sum(1 for r in rs if r.get("status") == 503 and r.get("echo"))
    proxy503 = sum(1 for r in rs if r.get("status") == 503 and not r.get("echo"))
    proxy502 = sum(1 for r in rs if r.get("status") == 502)
    proxy504 = sum(1 for r in rs if r.get("status") == 504)
    extra = sum(max(0, sum(1 for h in hs if h["id"] == r["id"]) - 1) for r in rs) if len(rs) < 20000 else None
    return {
        "requests_client": len(rs), "requests_total": d("edgeshard_requests_total"),
        "backend_reads": len(hs), "extra_reads(hits-1 summed)": extra,
        "retries_total": d("edgeshard_retries_total"),
        "client_502": proxy502, "generated_502": gen502,
        "client_504": proxy504, "generated_504": gen504,
        "client_503_proxy": proxy503, "generated_503": gen503, "client_503_backend": backend503,
        "upstream_responses_total": sums["edgeshard_upstream_responses_total"],
        "client_with_backend_head": sum(1 for r in rs if r.get("echo")),
        "upstream_aborts_total": d("edgeshard_upstream_aborts_total"),
        "client_aborts_total": d("edgeshard_client_aborts_total"),
        "upstream_connect_errors_total": sums["edgeshard_upstream_connect_errors_total"],
        "retry_budget": {k: d(k) for k in set(m1) if k.startswith("edgeshard_retry_budget_total")},
        "client_status": {str(k): v for k, v in sorted(client.items(), key=lambda x: str(x[0]))},
    }


# --------------------------------------------------------------------------- main
async def chaos(backends, until, rng, events, t0):
    while now() < until:
        await asyncio.sleep(rng.uniform(1.5, 3.0))
        b = rng.choice(backends)
        action = rng.choice(["kill", "blackhole", "stale", "e503", "normal"])
        events.append({"t": round(now() - t0, 2), "b": b.name, "action": action})
        if action == "kill":
            await b.kill()
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            await b.restart()
            events.append({"t": round(now() - t0, 2), "b": b.name, "action": "restart"})
        elif b.mode != "dead":
            b.mode = action
            if action == "blackhole":
                pass
    for b in backends:
        if b.mode == "dead":
            await b.restart()
        b.mode = "normal"


async def main_async(a):
    os.makedirs(a.out, exist_ok=True)
    rng = random.Random(a.seed)
    t0 = now()
    hits = []
    seen = collections.Counter()
    backends = [Backend(i, hits, t0, seen) for i in range(3)]
    for b in backends:
        await b.start()
    proxy = Proxy(a.binary, a.engine, proxy_toml([b.port for b in backends]), a.out, a.shards)
    port = int(proxy.addr.rsplit(":", 1)[1])
    records = []
    events = []
    client = Client(port, records, t0, rng)
    marks = {}
    try:
        # warm-up: a few plain requests so pools and buffers exist
        warm_until = now() + 2
        await asyncio.gather(*[client.worker(90 + i, False, "warm", warm_until) for i in range(4)])
        await asyncio.sleep(a.idle_s / 2)
        marks["base"] = proxy.proc()
        m_base = await asyncio.to_thread(scrape, proxy.admin)
        # phase A
        mA0 = m_base
        until = now() + a.exact_s
        await asyncio.gather(*[client.worker(i, i >= a.keepalive, "exact", until)
                               for i in range(a.keepalive + a.close)])
        mA1 = await asyncio.to_thread(scrape, proxy.admin)
        marks["after_exact"] = proxy.proc()
        # phase B: an operator adds a breaker and outlier detection (reload, SIGHUP)
        with open(os.path.join(a.out, "edgeshard.toml"), "w") as f:
            f.write(proxy_toml([b.port for b in backends], chaos=True))
        proxy.p.send_signal(signal.SIGHUP)
        for _ in range(100):
            m = await asyncio.to_thread(scrape, proxy.admin)
            if m.get('edgeshard_config_reloads_total{result="ok"}', 0) >= 1:
                break
            if m.get('edgeshard_config_reloads_total{result="failed"}', 0) >= 1:
                raise RuntimeError("reload failed, see edgeshard.log")
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("reload not seen")
        mA1 = m
        until = now() + a.chaos_s
        await asyncio.gather(chaos(backends, until, rng, events, t0),
                             *[client.worker(i, i >= a.keepalive, "chaos", until)
                               for i in range(a.keepalive + a.close)])
        mB1 = await asyncio.to_thread(scrape, proxy.admin)
        marks["after_chaos"] = proxy.proc()
        await asyncio.sleep(a.idle_s)
        marks["after_idle"] = proxy.proc()
        m_idle = await asyncio.to_thread(scrape, proxy.admin)
        # one more identical warm-up and idle: growth that keeps growing is a leak
        warm_until = now() + 2
        await asyncio.gather(*[client.worker(80 + i, False, "warm", warm_until) for i in range(4)])
        await asyncio.sleep(a.idle_s)
        marks["after_idle2"] = proxy.proc()
        m_end = await asyncio.to_thread(scrape, proxy.admin)
    finally:
        alive = proxy.alive()
        proxy.stop()
        for b in backends:
            await b.kill()
    recs = [r for r in records if r["phase"] != "warm"]
    find, counts, victims = analyse(recs, hits, None, marks, proxy.panics, alive)
    gauges = {k: v for k, v in m_end.items() if any(g in k for g in (
        "connections_active", "in_flight", "upstream_connections_active",
        "upstream_connections_idle", "connections_closing", "breaker_waiting"))}
    summary = {
        "engine": a.engine, "seed": a.seed, "shards": a.shards, "alive_at_end": alive, "panics": proxy.panics,
        "requests": len(recs),
        "by_phase_method": collections.Counter(f"{r['phase']}/{r['method']}" for r in recs),
        "by_fault": collections.Counter(f"{r['phase']}/{r['fault']}{'(once)' if r['once'] else ''}" for r in recs),
        "by_status": collections.Counter(f"{r['phase']}/{r.get('status') or r.get('error')}" for r in recs),
        "stale_victims": len(victims),
        "chaos_events": collections.Counter(e["action"] for e in events),
        "proc": marks,
        "gauges_at_end": gauges,
        "reconcile_exact": reconcile(recs, hits, mA0, mA1, "exact"),
        "reconcile_chaos": reconcile(recs, hits, mA1, mB1, "chaos"),
        "idle_metric_deltas": mdelta(m_idle, m_end, "edgeshard_upstream_connect"),
        "findings": {k: len(v) for k, v in find.items()},
        "examples": {k: v[:5] for k, v in find.items()},
    }
    with open(os.path.join(a.out, "records.jsonl"), "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(a.out, "hits.jsonl"), "w") as f:
        for h in hits:
            f.write(json.dumps(h) + "\n")
    with open(os.path.join(a.out, "events.json"), "w") as f:
        json.dump(events, f)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--engine", choices=["uring", "epoll"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--exact-s", type=float, default=40)
    ap.add_argument("--chaos-s", type=float, default=45)
    ap.add_argument("--idle-s", type=float, default=8)
    ap.add_argument("--keepalive", type=int, default=8, help="keep-alive client connections")
    ap.add_argument("--close", type=int, default=4, help="Connection: close clients")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--upstream-extra", default="",
                    help='TOML lines added to the upstream, e.g. buffer_request_body = "256KiB"')
    a = ap.parse_args()
    global UPSTREAM_EXTRA
    UPSTREAM_EXTRA = a.upstream_extra.replace("\\n", "\n")
    global ACCESS_LOG
    ACCESS_LOG = os.path.join(os.path.abspath(a.out), "access.log")
    s = asyncio.run(main_async(a))
    keys = ["engine", "alive_at_end", "panics", "requests", "by_phase_method", "by_fault",
            "by_status", "stale_victims", "chaos_events", "proc", "gauges_at_end",
            "reconcile_exact", "reconcile_chaos", "findings"]
    print(json.dumps({k: s[k] for k in keys}, indent=1, default=str))
    bad = {k for k in s["findings"]} - {"no_status"}
    sys.exit(1 if bad or s["panics"] or not s["alive_at_end"] else 0)


if __name__ == "__main__":
    main()
