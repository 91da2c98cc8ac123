"""A client that leaves while its request waits on a backend that never answers: the
exchange must end (backend connection closed, counted in client_aborts_total) and the
request must not be sent anywhere else, idempotent or not."""
import asyncio, collections, os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import soak


async def main(eng):
    hits = []
    seen = collections.Counter()
    t0 = soak.now()
    bs = [soak.Backend(i, hits, t0, seen) for i in range(3)]
    for b in bs:
        await b.start()
    out = os.environ.get("SOAK_OUT", "/tmp") + f"/abort-{eng}"
    os.makedirs(out, exist_ok=True)
    toml = soak.proxy_toml([b.port for b in bs]).replace('per_try_timeout = "1000ms"\n', "")
    toml = toml.replace('upstream_response = "3s"', 'upstream_response = "6s"')
    p = soak.Proxy(os.environ["SOAK_BIN"], eng, toml, out)
    port = int(p.addr.rsplit(":", 1)[1])
    m0 = await asyncio.to_thread(soak.scrape, p.admin)
    ids = []
    try:
        for i, (meth, body, how) in enumerate([("GET", b"", "fin"), ("GET", b"", "rst"),
                                               ("POST", b"abc", "fin"), ("PUT", b"", "rst"),
                                               ("DELETE", b"", "fin")]):
            rid = f"abort-{i}"
            ids.append(rid)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            cl = f"Content-Length: {len(body)}\r\n" if body else ""
            w.write(f"{meth} /x HTTP/1.1\r\nHost: a\r\nX-Req-Id: {rid}\r\nX-Fault: hang\r\n"
                    f"X-Req-Len: 0\r\n{cl}\r\n".encode() + body)
            await w.drain()
            await asyncio.sleep(1.5)   # a client's patience: the event under test
            if how == "rst":
                soak.rst(w)
            else:
                w.close()
        await asyncio.sleep(3)         # the proxy looks at waiting clients once a second
        m1 = await asyncio.to_thread(soak.scrape, p.admin)
    finally:
        p.stop()
        for b in bs:
            await b.kill()
    per = collections.Counter(h["id"] for h in hits)
    d = lambda k: m1.get(k, 0) - m0.get(k, 0)
    print(eng, "hits per id", dict(per), "client_aborts", d("edgeshard_client_aborts_total"),
          "retries", d("edgeshard_retries_total"),
          "in_flight", sum(v for k, v in m1.items() if "requests_in_flight" in k),
          "bad" if any(v != 1 for v in per.values()) else "ok")

asyncio.run(main(sys.argv[1]))
