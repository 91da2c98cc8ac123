# HTTP/1.0 client, upstream body cut: can the client tell the body is short?
import asyncio, sys, os, collections, socket
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import soak
from soak import gen
async def main(eng):
    hits=[]; seen=collections.Counter(); t0=soak.now()
    bs=[soak.Backend(i,hits,t0,seen) for i in range(3)]
    for b in bs: await b.start()
    out=os.environ.get("SOAK_OUT", "/tmp") + f"/h10-{eng}"; os.makedirs(out,exist_ok=True)
    p=soak.Proxy(os.environ["SOAK_BIN"],eng,soak.proxy_toml([b.port for b in bs]),out)
    port=int(p.addr.rsplit(":",1)[1])
    res=collections.Counter()
    try:
        for fault in ["reset_body_chunked","eof_body_reset","reset_body","stall_body","none"]:
            for frame in ["chunked","eof","cl"]:
                for i in range(3):
                    rid=f"h10-{fault}-{frame}-{i}"
                    r,w=await asyncio.open_connection("127.0.0.1",port,limit=1<<22)
                    w.write(f"GET /x HTTP/1.0\r\nHost: a\r\nX-Req-Id: {rid}\r\nX-Len: 70000\r\nX-Frame: {frame}\r\nX-Fault: {fault}\r\n\r\n".encode())
                    await w.drain()
                    data=b""; how="eof"
                    try:
                        while True:
                            c=await asyncio.wait_for(r.read(65536),10)
                            if not c: break
                            data+=c
                    except ConnectionResetError: how="RST"
                    except asyncio.TimeoutError: how="HANG"
                    head,_,body=data.partition(b"\r\n\r\n")
                    fields=[l.split(":",1)[0].strip().lower()+":"+l.split(":",1)[1].strip().lower() for l in head.decode().split("\r\n")[1:] if ":" in l]
                    fr="cl" if any(f.startswith("content-length:") for f in fields) else ("chunked" if "transfer-encoding:chunked" in fields else "eof")
                    complete = body==gen(rid,70000) if fr=="eof" else None
                    res[(fault,frame,"->",fr,how,"body_ok" if complete else ("short" if fr=="eof" else "-"))]+=1
                    soak.rst(w)
    finally:
        p.stop()
        for b in bs: await b.kill()
    for k,v in sorted(res.items()): print(eng,k,v)
asyncio.run(main(sys.argv[1]))
