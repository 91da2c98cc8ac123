#!/usr/bin/env python3
"""Response cache and compression (issue 18): 1 edgeshard shard vs 1 nginx worker on the same CPU.

Both proxies front the harness's nginx origin (nginx-origin.conf.tmpl) and run at once; the cells run
one at a time, every cell `--reps` times with the target order rotating per repetition (medians and
paired ratios in edge.md):

  hit1k, hit64k   GET of a 1 KiB / 64 KiB object the origin sends with `Cache-Control: max-age=3600`,
                  served from the proxy's cache (warmed first, HIT checked before and after each run):
                  wrk -c 50 keep-alive on one URL: requests/s and proxy CPU-us/request.
                  edgeshard: `cache = { size = "64MiB", max_object = "8MiB" }` (memory, per shard);
                  nginx: proxy_cache (files in a tmpfs directory when /dev/shm exists, read through
                  the page cache), proxy_cache_lock, sendfile, open_file_cache.
  id1m            the 1 MiB JSON body without Accept-Encoding (relayed as it is: the baseline)
  gzip1m          the same with `Accept-Encoding: gzip`: gzip level 6 on both (edgeshard zlib-rs,
                  nginx zlib): proxy CPU-us per MiB of input, and the ratio (bytes in / bytes out)
  gzip1m-1, gzip1m-9  the same at level 1 / 9 (both; not in the default cells)
  zstd1m, br1m    edgeshard only: zstd level 3, brotli quality 4 (its defaults)

Proxy CPU = utime+stime from /proc/PID/stat (nginx: master + worker), as in driver.py; `others` is
the busy time of the proxy CPU that was not the proxy (/proc/stat), i.e. what else ran there. When
the proxy was not saturated (busy < 0.9) requests/s was client-bound (wrk and the origin have the
other CPU): then CPU-us per request is the robust figure and its inverse gives the capacity ratio.

  python3 loadtest/edge.py --out DIR [--reps 5] [--duration 4] [--cells hit1k,hit64k,id1m,gzip1m,zstd1m,br1m]
"""
import argparse
import csv
import datetime
import gzip
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import driver as d  # noqa: E402
import tls  # noqa: E402  (cpu_busy_s, children_cpu_s, parse_result, run_client)

MiB = 1024 * 1024
# cell: path on the proxies, Accept-Encoding sent, targets, kind, object file
CELLS = {
    "hit1k": dict(path="/cacheable/1k.bin", ae=None, targets=("edgeshard", "nginx"), kind="hit"),
    "hit64k": dict(path="/cacheable/64k.bin", ae=None, targets=("edgeshard", "nginx"), kind="hit"),
    "id1m": dict(path="/json/1m.json", ae=None, targets=("edgeshard", "nginx"), kind="comp", coding="identity"),
    "gzip1m": dict(path="/json/1m.json", ae="gzip", targets=("edgeshard", "nginx"), kind="comp", coding="gzip 6"),
    "gzip1m-1": dict(path="/json-g1/1m.json", ae="gzip", targets=("edgeshard", "nginx"), kind="comp", coding="gzip 1"),
    "gzip1m-9": dict(path="/json-g9/1m.json", ae="gzip", targets=("edgeshard", "nginx"), kind="comp", coding="gzip 9"),
    "zstd1m": dict(path="/json/1m.json", ae="zstd", targets=("edgeshard",), kind="comp", coding="zstd 3"),
    "br1m": dict(path="/json/1m.json", ae="br", targets=("edgeshard",), kind="comp", coding="br 4"),
}
DEFAULT_CELLS = "hit1k,hit64k,id1m,gzip1m,zstd1m,br1m"
TARGETS = ("edgeshard", "nginx")
FIELDS = ["time", "cell", "target", "rep", "conns", "duration_s", "requests", "per_s", "errors", "lat_p50_us",
          "lat_p99_us", "proxy_cpu_s", "proxy_busy", "others_on_proxy_cpu", "cpu_us_per_req", "body_bytes",
          "cpu_us_per_mib", "origin_cpu_us_per_req", "client_cpu_s", "bytes_out", "ratio", "hit_before",
          "hit_after", "engine", "note"]


# ----------------------------------------------------------------------------------------
# content

def make_json(path, size=MiB, seed=18):
    """A deterministic ~1 MiB JSON array of records: repeated keys, varied values (ids, names, emails,
    timestamps, floats, tags, nested objects, short free text), as an API would return."""
    rnd = random.Random(seed)
    first = ["ana", "ben", "chen", "dana", "emil", "fatima", "goran", "hana", "ivan", "julia", "kofi", "lena",
             "marco", "nadia", "oskar", "priya", "quinn", "rosa", "sven", "tariq", "uma", "victor", "wei", "yara"]
    last = ["smith", "garcia", "muller", "rossi", "kowalski", "nguyen", "silva", "tanaka", "okafor", "novak",
            "jensen", "dubois", "haddad", "ivanova", "larsen", "moreau", "patel", "schmidt", "weber", "zhang"]
    cities = ["Lisbon", "Oslo", "Nairobi", "Osaka", "Lima", "Porto", "Krakow", "Austin", "Lyon", "Pune",
              "Leeds", "Graz", "Cork", "Turin", "Quito", "Perth"]
    words = ("order shipped delayed refund pending priority customer warehouse invoice partial express "
             "returned damaged replacement confirmed cancelled address updated payment retry note gift").split()
    tags = ["new", "vip", "b2b", "promo", "mobile", "web", "eu", "us", "apac", "beta", "churn-risk", "trial"]
    out, n, i = [], 2, 0
    while True:
        fn, ln = rnd.choice(first), rnd.choice(last)
        rec = {
            "id": 100000 + i,
            "uuid": "%08x-%04x-4%03x-%04x-%012x" % (rnd.getrandbits(32), rnd.getrandbits(16), rnd.getrandbits(12),
                                                     0x8000 | rnd.getrandbits(14), rnd.getrandbits(48)),
            "name": "%s %s" % (fn.title(), ln.title()),
            "email": "%s.%s%d@example.%s" % (fn, ln, rnd.randint(1, 999), rnd.choice(["com", "org", "net"])),
            "active": rnd.random() < 0.8,
            "created": "2026-%02d-%02dT%02d:%02d:%02dZ" % (rnd.randint(1, 12), rnd.randint(1, 28), rnd.randint(0, 23),
                                                           rnd.randint(0, 59), rnd.randint(0, 59)),
            "balance": round(rnd.uniform(-500, 25000), 2),
            "score": round(rnd.random(), 4),
            "tags": rnd.sample(tags, rnd.randint(0, 4)),
            "address": {"city": rnd.choice(cities), "zip": "%05d" % rnd.randint(1000, 99999),
                        "street": "%d %s Street" % (rnd.randint(1, 400), rnd.choice(last).title())},
            "orders": rnd.randint(0, 250),
            "note": " ".join(rnd.choice(words) for _ in range(rnd.randint(3, 12))),
        }
        s = json.dumps(rec, separators=(",", ":"))
        if n + len(s) + 1 > size:
            break
        out.append(s)
        n += len(s) + 1
        i += 1
    body = ("[" + ",".join(out) + "]").encode()
    with open(path, "wb") as f:
        f.write(body)
    return len(body), i


def make_content(docroot):
    rnd = random.Random(1)
    with open(os.path.join(docroot, "1k.bin"), "wb") as f:
        f.write(bytes(rnd.getrandbits(8) for _ in range(1024)))
    # 64k.bin (random bytes) is written by driver.start_origin
    return make_json(os.path.join(docroot, "1m.json"))


# ----------------------------------------------------------------------------------------
# proxies

def nginx_servers(cfg):
    comp = ""
    for loc, level in (("/json/", 6), ("/json-g1/", 1), ("/json-g9/", 9)):
        comp += ("        location %s {\n            proxy_pass http://origin;\n            gzip on;\n"
                 "            gzip_types application/json;\n            gzip_comp_level %d;\n"
                 "            gzip_proxied any;\n            gzip_vary on;\n        }\n" % (loc, level))
    return """    # response cache: files under a tmpfs directory when /dev/shm exists (nginx reads hits through
    # the page cache); metadata and keys in shared memory (keys_zone)
    proxy_cache_path %(cache)s levels=1:2 keys_zone=edge:16m max_size=64m inactive=1h use_temp_path=off;

    server {
        listen 127.0.0.1:%(port)d default_server backlog=4096;
        server_name _;
        sendfile %(sendfile)s;
        tcp_nopush %(nopush)s;                  # on (TCP_CORK) stalls 64 KiB keep-alive hits ~40 ms on loopback
        open_file_cache max=1000 inactive=60s;   # keeps the cache files' descriptors open

        location /cacheable/ {
            proxy_pass http://origin;
            proxy_cache edge;
            proxy_cache_valid 200 1h;            # the origin's max-age=3600 takes precedence anyway
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }
%(comp)s        location / { proxy_pass http://origin; }
    }""" % dict(cache=cfg.nginx_cache, port=cfg.ports["nginx"], comp=comp, sendfile=cfg.nginx_sendfile,
                nopush=cfg.nginx_nopush)


def start_nginx(cfg):
    conf = os.path.join(cfg.tmp, "nginx-edge.conf")
    text = d.render("nginx-proxy.conf.tmpl", dict(
        WORKERS=1, AFFINITY=d.nginx_affinity(cfg.proxy_cpus, 1), NOFILE=cfg.nofile,
        WORKER_CONNECTIONS=max(1024, cfg.nofile - 64), PREFIX=cfg.tmp, ORIGIN_PORT=cfg.ports["origin"],
        KEEPALIVE=cfg.keepalive, SERVERS=nginx_servers(cfg)))
    with open(conf, "w") as f:
        f.write(text)
    argv = ["taskset", "-c", d.cpus_str(cfg.proxy_cpus), cfg.nginx, "-p", cfg.tmp,
            "-e", os.path.join(cfg.tmp, "proxy-error.log"), "-c", conf, "-g", "daemon off;"]
    p = d.Proc("nginx", argv, os.path.join(cfg.tmp, "nginx.out"), kind="nginx")
    if not d.wait_port(cfg.ports["nginx"], p, cfg.ready_timeout):
        out = p.output() + d.read(os.path.join(cfg.tmp, "proxy-error.log"))
        p.stop(timeout=5)
        raise RuntimeError("nginx did not start\n" + out[-3000:])
    t = time.monotonic() + 10
    while len(d.children(p.pid)) < 1 and time.monotonic() < t:  # the worker (cache manager/loader come too)
        time.sleep(0.05)
    return p, "epoll"


EDGE_ROUTES = """[[route]]
path_prefix = "/cacheable/"
upstream = "origin"
cache = { size = "64MiB", max_object = "8MiB" }

[[route]]
path_prefix = "/json/"
upstream = "origin"
compress = { algorithms = ["gzip", "zstd", "br"], gzip_level = 6, zstd_level = 3, br_quality = 4, types = ["application/json"] }

[[route]]
path_prefix = "/json-g1/"
upstream = "origin"
compress = { algorithms = ["gzip"], gzip_level = 1, types = ["application/json"] }

[[route]]
path_prefix = "/json-g9/"
upstream = "origin"
compress = { algorithms = ["gzip"], gzip_level = 9, types = ["application/json"] }

[[route]]
path_prefix = "/"
upstream = "origin"
"""


def edgeshard_edge_conf(cfg):
    text = d.edgeshard_conf(cfg, "default")
    i = text.find("[[route]]")
    if i < 0:
        raise SystemExit("driver.edgeshard_conf changed: no [[route]]")
    return text[:i] + EDGE_ROUTES


def start_edgeshard(cfg):
    conf = os.path.join(cfg.tmp, "edgeshard-edge.toml")
    with open(conf, "w") as f:
        f.write(edgeshard_edge_conf(cfg))
    chk = d.run_cmd([cfg.edgeshard, "check", "--config", conf], timeout=30)
    argv = ["taskset", "-c", d.cpus_str(cfg.proxy_cpus), cfg.edgeshard, "run", "--config", conf,
            "--cpus", d.cpus_str(cfg.proxy_cpus), "--shards", "1", "--io-engine", cfg.io_engine]
    p = d.Proc("edgeshard", argv, os.path.join(cfg.tmp, "edgeshard.out"))
    m = d.wait_line(p, r"^edgeshard: ready shards=(\d+) engine=(\w+)", cfg.ready_timeout)
    if not m or not d.wait_port(cfg.ports["edgeshard"], p, 10):
        out = p.output()
        p.stop(timeout=5)
        raise RuntimeError("edgeshard did not become ready (check said: %s)\n%s" % (chk, out[-3000:]))
    return p, m.group(2)


def start(cfg, target):
    return (start_edgeshard if target == "edgeshard" else start_nginx)(cfg)


# ----------------------------------------------------------------------------------------
# probes

def fetch(port, path, ae=None):
    """One GET; returns (status, headers dict lower-cased, body as sent: chunked framing removed,
    Content-Encoding kept)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        h = {"Accept-Encoding": ae} if ae else {}
        c.request("GET", path, headers=h)
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


def hit_status(target, headers):
    return headers.get("x-cache" if target == "edgeshard" else "x-cache-status", "-")


def check_body(cell, headers, body, original):
    """'' if the body decodes to the original (or cannot be checked here), else what is wrong."""
    enc = headers.get("content-encoding", "identity")
    want = CELLS[cell]["ae"] or "identity"
    if enc != want:
        return "Content-Encoding %s, wanted %s" % (enc, want)
    try:
        if enc == "gzip":
            dec = gzip.decompress(body)
        elif enc == "identity":
            dec = body
        elif enc == "br":
            import brotli  # noqa
            dec = brotli.decompress(body)
        elif enc == "zstd":
            import zstandard  # noqa
            dec = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        else:
            return "unknown coding " + enc
    except ImportError:
        magic = {"zstd": b"\x28\xb5\x2f\xfd"}.get(enc)
        return "" if magic is None or body.startswith(magic) else "%s body without the %s magic" % (enc, enc)
    except Exception as e:  # noqa
        return "%s body does not decode: %s" % (enc, e)
    return "" if dec == original else "decoded body differs from the origin's (%d vs %d bytes)" % (len(dec), len(original))


# ----------------------------------------------------------------------------------------
# one measured run

def wrk_run(cfg, port, path, conns, ae, duration):
    argv = ["taskset", "-c", d.cpus_str(cfg.client_cpus), cfg.wrk, "-t", str(max(1, min(len(cfg.client_cpus), conns))),
            "-c", str(conns), "-d", "%ds" % duration, "--timeout", "5s", "--latency",
            "-s", os.path.join(HERE, "bench.lua")]
    if ae:
        argv += ["-H", "Accept-Encoding: %s" % ae]
    argv.append("http://127.0.0.1:%d%s" % (port, path))
    cfg.wrk_cmds.add(" ".join(["wrk"] + argv[4:]).replace(str(port), "PORT"))
    out = tls.run_client(argv, duration + 30)
    res = tls.parse_result(out)
    if res:
        res["errors"] = sum(res[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    return res, out


def measured(cfg, cell, target, rep, proc, origin, engine, duration):
    c = CELLS[cell]
    port = cfg.ports[target]
    conns = cfg.wrk_conns if c["kind"] == "hit" else cfg.comp_conns
    row = {k: "" for k in FIELDS}
    row.update(time=datetime.datetime.now().isoformat(timespec="seconds"), cell=cell, target=target, rep=rep,
               conns=conns, engine=engine)
    notes = []
    if c["kind"] == "hit":
        _, h, _ = fetch(port, c["path"])
        row["hit_before"] = hit_status(target, h)
    c0 = tls.children_cpu_s()
    ppids, opids = proc.pids(), origin.pids()
    p0, o0, t0, b0 = d.cpu_ticks(ppids), d.cpu_ticks(opids), time.monotonic(), tls.cpu_busy_s(cfg.proxy_cpus)
    res, out = wrk_run(cfg, port, c["path"], conns, c["ae"], duration)
    p1, o1, t1, b1 = d.cpu_ticks(proc.pids()), d.cpu_ticks(origin.pids()), time.monotonic(), tls.cpu_busy_s(cfg.proxy_cpus)
    row["client_cpu_s"] = "%.2f" % (tls.children_cpu_s() - c0)
    if c["kind"] == "hit":
        _, h, _ = fetch(port, c["path"])
        row["hit_after"] = hit_status(target, h)
        if row["hit_before"] != "HIT" or row["hit_after"] != "HIT":
            notes.append("not a hit (before %s, after %s)" % (row["hit_before"], row["hit_after"]))
    if res is None:
        row["note"] = "; ".join(notes + ["wrk failed: " + out.strip().replace("\n", " | ")[-300:]])
        d.log("  %s/%s rep %d: wrk failed: %s" % (cell, target, rep, out[-500:]))
        return row
    n = res["requests"]
    dur = res["duration_us"] / 1e6
    wall = t1 - t0
    cpu_s = (p1 - p0) / d.CLK_TCK
    row.update(duration_s="%.3f" % dur, requests=int(n), per_s="%.1f" % (n / dur if dur else 0),
               errors=int(res["errors"]), lat_p50_us=int(res["lat_p50_us"]), lat_p99_us=int(res["lat_p99_us"]),
               proxy_cpu_s="%.2f" % cpu_s, proxy_busy="%.2f" % (cpu_s / wall if wall else 0),
               others_on_proxy_cpu="%.2f" % max(0.0, ((b1 - b0) - cpu_s) / wall if wall else 0))
    if n > 0:
        row["cpu_us_per_req"] = "%.2f" % (cpu_s * 1e6 / n)
        row["origin_cpu_us_per_req"] = "%.2f" % ((o1 - o0) / d.CLK_TCK * 1e6 / n)
        if c["kind"] == "comp":
            row["body_bytes"] = cfg.json_bytes
            row["cpu_us_per_mib"] = "%.1f" % (cpu_s * 1e6 / (n * cfg.json_bytes / MiB))
            r = cfg.sizes.get((cell, target))
            if r:
                row["bytes_out"], row["ratio"] = r, "%.3f" % (cfg.json_bytes / r)
    if res["errors"]:
        notes.append("%d errors" % res["errors"])
    if not proc.alive():
        notes.append("proxy exited during run")
    row["note"] = "; ".join(notes)
    d.log("  %-8s %-9s rep %2d: %9.0f req/s  cpu %8s us/req %s busy %s others %s  p99 %6dus  origin %s us/req  %s"
          % (cell, target, rep, n / dur if dur else 0, row["cpu_us_per_req"] or "-",
             ("(%s us/MiB)" % row["cpu_us_per_mib"]) if row["cpu_us_per_mib"] else "", row["proxy_busy"],
             row["others_on_proxy_cpu"], row["lat_p99_us"], row["origin_cpu_us_per_req"] or "-",
             row["note"] or ("hit %s/%s" % (row["hit_before"], row["hit_after"]) if c["kind"] == "hit" else "")))
    return row


# ----------------------------------------------------------------------------------------
# the run

def run(a):
    cfg = d.base_cfg(a)
    cfg.keepalive = 1024
    cfg.wrk, cfg.wrk_conns, cfg.comp_conns = a.wrk, a.wrk_conns, a.comp_conns
    cfg.wrk_cmds = set()
    cfg.nginx_sendfile, cfg.nginx_nopush = a.nginx_sendfile, a.nginx_nopush
    cfg.duration, cfg.reps, cfg.warmup = a.duration, a.reps, a.warmup
    cells = [c for c in a.cells.split(",") if c]
    for c in cells:
        if c not in CELLS:
            raise SystemExit("unknown cell %r (known: %s)" % (c, ", ".join(CELLS)))
    targets = [t for t in a.targets.split(",") if t]
    if "edgeshard" in targets and not os.access(cfg.edgeshard, os.X_OK):
        raise SystemExit("edgeshard not built: %s" % cfg.edgeshard)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else cfg.tmp
    cfg.cache_root = d_tmp = __import__("tempfile").mkdtemp(prefix="edgebench-cache-", dir=shm)
    os.chmod(d_tmp, 0o777)  # the nginx worker (user nobody when run as root) writes the cache files
    cfg.nginx_cache = os.path.join(d_tmp, "nginx")
    cfg.cache_fs = "tmpfs (/dev/shm)" if shm == "/dev/shm" else "the temp dir's filesystem"
    stem = os.path.join(a.out, a.name)
    rows, engines, procs = [], {}, {}
    t_start = time.monotonic()
    csv_path = stem + ".csv"
    new = a.fresh or not os.path.exists(csv_path)
    csvf = open(csv_path, "w" if new else "a", newline="")
    w = csv.DictWriter(csvf, fieldnames=FIELDS, extrasaction="ignore")
    if new:
        w.writeheader()
    cfg.sizes, probes = {}, []
    try:
        origin = d.start_origin(cfg)
        docroot = os.path.join(cfg.tmp, "docroot")
        cfg.json_bytes, nrec = make_content(docroot)
        with open(os.path.join(docroot, "1m.json"), "rb") as f:
            original = f.read()
        d.log("1m.json: %d bytes, %d records" % (cfg.json_bytes, nrec))
        for t in targets:
            procs[t], engines[t] = start(cfg, t)
        # output sizes and decode checks for every compression cell, once per target (deterministic)
        for cell in cells:
            c = CELLS[cell]
            for t in targets:
                if t not in c["targets"]:
                    continue
                if c["kind"] == "comp":
                    st, h, body = fetch(cfg.ports[t], c["path"], c["ae"])
                    bad = check_body(cell, h, body, original) if st == 200 else "status %d" % st
                    cfg.sizes[(cell, t)] = len(body)
                    probes.append((cell, t, st, h.get("content-encoding", "-"), len(body), bad))
                    d.log("  %s %s: %d %s %d bytes -> ratio %.3f %s" % (cell, t, st, h.get("content-encoding", "-"),
                                                                      len(body), cfg.json_bytes / max(1, len(body)), bad))
                else:  # warm the cache: a miss stores, the next request must hit
                    seen = []
                    for _ in range(3):
                        st, h, body = fetch(cfg.ports[t], c["path"])
                        seen.append(hit_status(t, h))
                    probes.append((cell, t, st, "/".join(seen), len(body), "" if seen[-1] == "HIT" else "no HIT"))
                    d.log("  %s %s: %d, X-Cache %s, %d bytes" % (cell, t, st, "/".join(seen), len(body)))
        for cell in cells:
            ts = [t for t in targets if t in CELLS[cell]["targets"]]
            if a.warmup > 0:
                for t in ts:
                    measured(cfg, cell, t, -1, procs[t], origin, engines[t], a.warmup)
            for rep in range(a.reps):
                k = rep % len(ts)
                for t in ts[k:] + ts[:k]:
                    if not procs[t].alive():
                        d.log("  %s died (exit %s); restarting:\n%s" % (t, procs[t].p.returncode, procs[t].output()[-2000:]))
                        procs[t].stop()
                        procs[t], engines[t] = start(cfg, t)
                    row = measured(cfg, cell, t, rep, procs[t], origin, engines[t], a.duration)
                    w.writerow(row)
                    csvf.flush()
                    rows.append(row)
        for t in list(procs):
            procs.pop(t).stop()
        origin.stop()
    finally:
        d.stop_all()
        csvf.close()
        for src, dst in (("nginx-edge.conf", a.name + "-nginx.conf"), ("edgeshard-edge.toml", a.name + "-edgeshard.toml")):
            if os.path.exists(os.path.join(cfg.tmp, src)):
                shutil.copy(os.path.join(cfg.tmp, src), os.path.join(a.out, dst))
        for lf in ("proxy-error.log", "edgeshard.out"):
            txt = d.read(os.path.join(cfg.tmp, lf))
            if lf == "edgeshard.out":
                txt = "\n".join(l for l in txt.splitlines() if not l.startswith("edgeshard: ready"))
            if txt.strip():
                with open(os.path.join(a.out, "%s-%s" % (a.name, lf)), "w") as f:
                    f.write(txt[-20000:])
        if a.keep_tmp:
            d.log("temp dirs kept: %s %s" % (cfg.tmp, cfg.cache_root))
        else:
            shutil.rmtree(cfg.tmp, ignore_errors=True)
            shutil.rmtree(cfg.cache_root, ignore_errors=True)
    d.write_env(cfg, stem + "-env.txt", engines)
    with open(stem + "-env.txt", "a") as f:
        f.write("\nedge.py options: %s\nnginx cache directory on: %s\n1m.json: %d bytes, %d records (seed 18)\n"
                "wrk commands:\n%s\nprobes (cell target status coding/X-Cache bytes problem):\n%s\nwall time: %.0f s\n"
                % (" ".join(sys.argv[1:]), cfg.cache_fs, cfg.json_bytes, nrec,
                   "\n".join("  " + x for x in sorted(cfg.wrk_cmds)),
                   "\n".join("  %s %s %s %s %s %s" % p for p in probes), time.monotonic() - t_start))
    summarize(a.out, a.name, " ".join(sys.argv[1:]), cfg)
    d.log("done in %.0f s: %s.md" % (time.monotonic() - t_start, stem))


# ----------------------------------------------------------------------------------------
# summary

def paired(rows, cell, field, invert=False):
    by = {}
    for r in rows:
        if r["cell"] == cell and not r["note"]:
            v = d.fnum(r[field])
            if v is not None:
                by.setdefault(r["rep"], {})[r["target"]] = v
    return [(p["nginx"] / p["edgeshard"]) if invert else (p["edgeshard"] / p["nginx"])
            for p in by.values() if p.get("edgeshard") and p.get("nginx")]


def summarize(out, name, cmdline="", cfg=None):
    with open(os.path.join(out, name + ".csv"), newline="") as f:
        rows = [dict({k: "" for k in FIELDS}, **r) for r in csv.DictReader(f) if r["rep"] != "-1"]
    env = d.read(os.path.join(out, name + "-env.txt"))
    g = lambda sel, t, fld, nd=0: d.fmt_range([d.fnum(r[fld]) for r in sel if r["target"] == t], nd)
    ok = [r for r in rows if not r["note"]]
    L = ["# Response cache and compression: 1 edgeshard shard vs 1 nginx worker", ""]
    if cfg is not None:
        L += ["Proxy CPU %s (both proxies, one loaded at a time), wrk and the origin (nginx, 1 worker) on CPU %s. "
              "%s; order of the two proxies rotating per repetition; medians (min–max). Ratios are edgeshard/nginx "
              "**paired by repetition** (adjacent in time), then the median. Proxy CPU = utime+stime of the "
              "whole process (/proc/PID/stat; nginx: master + worker + cache manager)."
              % (d.cpus_str(cfg.proxy_cpus), d.cpus_str(cfg.client_cpus),
                 "%d s per run (wrk), %d repetitions after a %d s warm-up run per cell and proxy" % (
                     cfg.duration, cfg.reps, cfg.warmup)), ""]
    if cmdline:
        L += ["Command: `loadtest/edge.sh` → `edge.py %s`" % cmdline, ""]
    hosts = [l for l in env.splitlines() if l.split(":")[0] in ("date", "cpu model", "cpus (/proc/cpuinfo processors)",
                                                                 "kernel", "nginx", "edgeshard git", "nginx cache directory on")]
    if hosts:
        L += ["Host: " + "; ".join(hosts), ""]
    L += ["## Targets (issue 18)", "",
          "| cell | figure | edgeshard | nginx | ratio e/n (paired) | target | met |", "|---|---|---|---|---|---|---|"]
    for cell in ("hit1k", "hit64k"):
        cs = [r for r in ok if r["cell"] == cell]
        if not cs:
            continue
        busy = [d.fnum(r["proxy_busy"]) or 0 for r in cs if r["target"] == "edgeshard"]
        others = [d.fnum(r["others_on_proxy_cpu"]) or 0 for r in cs]
        why = ""
        if busy and min(busy) < 0.9:
            why = " (edgeshard not saturated, busy %s: %s)" % (
                d.fmt_range(busy, 2), "proxy CPU shared, others up to %.2f" % max(others) if max(others) > 0.1
                else "client-bound: wrk and the origin share one CPU")
        rr = paired(rows, cell, "per_s")
        cap = paired(rows, cell, "cpu_us_per_req", invert=True)
        cpu = paired(rows, cell, "cpu_us_per_req")
        L.append("| %s | requests/s | %s | %s | %s | ≥ 1.5 | %s%s |" % (
            cell, g(cs, "edgeshard", "per_s"), g(cs, "nginx", "per_s"), d.fmt_range(rr, 2),
            tls.verdict(rr, ">=", 1.5), why))
        L.append("| %s | capacity (nginx CPU-µs / edgeshard CPU-µs per request) | | | %s | ≥ 1.5 | %s |" % (
            cell, d.fmt_range(cap, 2), tls.verdict(cap, ">=", 1.5)))
        L.append("| %s | proxy CPU-µs/request | %s | %s | %s | ≤ 0.6 | %s |" % (
            cell, g(cs, "edgeshard", "cpu_us_per_req", 1), g(cs, "nginx", "cpu_us_per_req", 1), d.fmt_range(cpu, 2),
            tls.verdict(cpu, "<=", 0.6)))
    for cell in [c for c in CELLS if CELLS[c]["kind"] == "comp"]:
        cs = [r for r in ok if r["cell"] == cell]
        if not cs:
            continue
        rr = paired(rows, cell, "cpu_us_per_mib")
        ratio = lambda t: (next((r["ratio"] for r in cs if r["target"] == t and r["ratio"]), "") or "-")
        both = any(r["target"] == "nginx" for r in cs)
        L.append("| %s (%s) | proxy CPU-µs per MiB in; ratio in/out %s | %s | %s | %s | report | - |" % (
            cell, CELLS[cell]["coding"], "e %s / n %s" % (ratio("edgeshard"), ratio("nginx")) if both else
            "e %s" % ratio("edgeshard"), g(cs, "edgeshard", "cpu_us_per_mib", 0), g(cs, "nginx", "cpu_us_per_mib", 0),
            d.fmt_range(rr, 2) if both else "-"))
    # compression CPU above the identity relay
    base = {t: d.med([d.fnum(r["cpu_us_per_mib"]) for r in ok if r["cell"] == "id1m" and r["target"] == t])
            for t in TARGETS}
    if any(base.values()):
        L += ["", "Compression alone (the cell's proxy CPU-µs per MiB minus `id1m`'s, the same body relayed "
              "uncompressed; edgeshard splices that relay, nginx copies it through its buffers):", "",
              "| cell | edgeshard µs/MiB | nginx µs/MiB | ratio e/n |", "|---|---|---|---|"]
        for cell in [c for c in CELLS if CELLS[c]["kind"] == "comp" and c != "id1m"]:
            v = {t: d.med([d.fnum(r["cpu_us_per_mib"]) for r in ok if r["cell"] == cell and r["target"] == t])
                 for t in TARGETS}
            if v["edgeshard"] is None and v["nginx"] is None:
                continue
            dl = {t: (v[t] - base[t]) if v[t] is not None and base[t] is not None else None for t in TARGETS}
            L.append("| %s (%s) | %s | %s | %s |" % (cell, CELLS[cell]["coding"], d.fmt(dl["edgeshard"]), d.fmt(dl["nginx"]),
                                                  d.fmt(dl["edgeshard"] / dl["nginx"], 2)
                                                  if dl["edgeshard"] and dl["nginx"] else "-"))
    L += ["", "## Every cell (medians, min–max)", "",
          "| cell | target | conns | requests/s | proxy CPU-µs/request | CPU-µs/MiB | proxy busy | others on the proxy CPU | "
          "origin CPU-µs/request | p50 µs | p99 µs | bytes out | ratio | errors | runs with a note |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in CELLS:
        for t in TARGETS:
            sel = [r for r in rows if r["cell"] == cell and r["target"] == t]
            if not sel:
                continue
            good = [r for r in sel if not r["note"]]
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |" % (
                cell, t, sel[0]["conns"], g(good, t, "per_s"), g(good, t, "cpu_us_per_req", 1),
                g(good, t, "cpu_us_per_mib") if CELLS[cell]["kind"] == "comp" else "-",
                g(good, t, "proxy_busy", 2), g(good, t, "others_on_proxy_cpu", 2), g(good, t, "origin_cpu_us_per_req", 1),
                g(good, t, "lat_p50_us"), g(good, t, "lat_p99_us"), sel[0]["bytes_out"] or "-", sel[0]["ratio"] or "-",
                d.fmt(sum(d.fnum(r["errors"]) or 0 for r in sel)), len(sel) - len(good)))
    notes = [r for r in rows if r["note"]]
    if notes:
        L += ["", "## Runs with a note (left out of the medians)", ""]
        L += ["- %s/%s rep %s: %s" % (r["cell"], r["target"], r["rep"], r["note"]) for r in notes]
    with open(os.path.join(out, name + ".md"), "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="edge", help="output file stem (edge.md, edge.csv, edge-env.txt)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cells", default=DEFAULT_CELLS)
    ap.add_argument("--targets", default="edgeshard,nginx")
    ap.add_argument("--wrk-conns", type=int, default=50, help="connections for the cache-hit cells")
    ap.add_argument("--comp-conns", type=int, default=8, help="connections for the 1 MiB JSON cells")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--proxy-cpus", default="")
    ap.add_argument("--client-cpus", default="")
    ap.add_argument("--io-engine", default="auto")
    ap.add_argument("--base-port", type=int, default=18600)
    ap.add_argument("--edgeshard", default=os.path.join(d.REPO, "target/release/edgeshard"))
    ap.add_argument("--floor", default="")
    ap.add_argument("--nginx-bin", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    ap.add_argument("--nginx-sendfile", default="on", choices=("on", "off"))
    ap.add_argument("--nginx-nopush", default="off", choices=("on", "off"))
    ap.add_argument("--ready-timeout", type=float, default=30)
    ap.add_argument("--fresh", action="store_true", help="overwrite NAME.csv instead of appending")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--summarize", action="store_true", help="only rebuild NAME.md from NAME.csv")
    a = ap.parse_args()
    if a.summarize:
        summarize(a.out, a.name)
        return
    if a.shards != 1:
        raise SystemExit("edge.py compares 1 shard with 1 worker")
    import signal
    signal.signal(signal.SIGTERM, d._on_signal)
    try:
        run(a)
    except KeyboardInterrupt:
        d.log("interrupted; processes stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()
