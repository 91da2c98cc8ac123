import asyncio, sys, os, collections
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import soak
async def main(eng):
    hits=[]; seen=collections.Counter(); t0=soak.now()
    bs=[soak.Backend(i,hits,t0,seen) for i in range(3)]
    for b in bs: await b.start()
    out=os.environ.get("SOAK_OUT", "/tmp") + f"/int-{eng}"; os.makedirs(out,exist_ok=True)
    p=soak.Proxy(os.environ["SOAK_BIN"],eng,soak.proxy_toml([b.port for b in bs]),out)
    port=int(p.addr.rsplit(":",1)[1])
    try:
        r,w=await asyncio.open_connection("127.0.0.1",port)
        w.write(b"GET /a HTTP/1.1\r\nHost: a\r\nX-Req-Id: i1\r\nX-Fault: interim_reset\r\n\r\n"); await w.drain()
        data=b""
        while data.count(b"\r\n\r\n")<2:
            data+=await asyncio.wait_for(r.read(4096),5)
        print(eng, data.decode().replace("\r\n"," | ")[:400])
        w.write(b"GET /b HTTP/1.1\r\nHost: a\r\nX-Req-Id: i2\r\nX-Len: 5\r\n\r\n"); await w.drain()
        print(eng, "next on same conn:", (await asyncio.wait_for(r.read(4096),5))[:40])
    finally:
        p.stop()
        for b in bs: await b.kill()
    print(eng,"hits",[ (h['id'],h['b']) for h in hits])
asyncio.run(main(sys.argv[1]))
