# pipelined requests across faults and retries: answers must come in order, each its own
import asyncio, sys, os, random, collections, json
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import soak
from soak import gen

async def main(eng):
    hits=[]; seen=collections.Counter(); t0=soak.now()
    bs=[soak.Backend(i,hits,t0,seen) for i in range(3)]
    for b in bs: await b.start()
    out=os.environ.get("SOAK_OUT", "/tmp") + f"/pipe-{eng}"; os.makedirs(out,exist_ok=True)
    p=soak.Proxy(os.environ["SOAK_BIN"],eng,soak.proxy_toml([b.port for b in bs]),out)
    port=int(p.addr.rsplit(":",1)[1])
    rng=random.Random(3)
    cl=soak.Client(port,[],t0,rng)
    bad=[]; n=0
    try:
        for round_ in range(150):
            r,w=await asyncio.open_connection("127.0.0.1",port,limit=1<<22)
            batch=[]
            raw=b""
            for k in range(rng.randint(2,5)):
                pl=cl.plan("exact")
                if pl["fault"] in ("hang","slow_head","hang_noread","stall_body","early_413","early_200"): pl["fault"]="none"
                rid=f"p{round_:03d}-{k}-{rng.randrange(1<<30):x}"
                batch.append((rid,pl)); raw+=cl.build(rid,pl,False)
            w.write(raw); await w.drain()
            for rid,pl in batch:
                n+=1
                try:
                    st,hdr,bs_,body,closed=await soak.read_response(r,pl["method"],soak.now()+10)
                except Exception as e:
                    bad.append(("noanswer",rid,pl["method"],pl["fault"],type(e).__name__)); break
                echo=hdr.get("x-req-echo")
                if echo is not None and echo!=rid: bad.append(("FOREIGN",rid,echo,pl))
                if st==200 and pl["method"]!="HEAD" and bs_=="complete" and body!=gen(rid,pl["n"]): bad.append(("CORRUPT",rid,pl))
                if st not in (200,204,413,502,503,504): bad.append(("status",st,rid,pl))
                if closed: break
            soak.rst(w)
    finally:
        p.stop()
        for b in bs: await b.kill()
    per=collections.Counter(h["id"] for h in hits)
    print(eng,"requests",n,"problems",len(bad)); [print(" ",x) for x in bad[:10]]
    print(" desync", [h for h in hits if h.get("desync")][:3])
asyncio.run(main(sys.argv[1]))
