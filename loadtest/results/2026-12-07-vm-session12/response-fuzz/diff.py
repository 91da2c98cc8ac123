#!/usr/bin/env python3
"""Prints the cases where edgeshard differs from both nginx and haproxy, or its two engines
differ from each other (status, interim statuses, body, follow-ups' flags)."""
import json, sys
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from harness import summarize

d = json.load(open(sys.argv[1]))
R = d["results"]
def key(r):
    a1 = r.get("a1")
    if not a1:
        return ("none",)
    p = a1.get("resp")
    if p is None:
        return ("unparsed", bool(a1["raw"]))
    body = p["body"] if p["status"] not in (502, 504) else ""
    return (p["status"], tuple(p["interims"]), body)
for i, (cid, name) in enumerate(d["cases"]):
    g = {k: R[k]["results"][i] for k in R}
    e1, e2 = g.get("edgeshard-epoll"), g.get("edgeshard-uring")
    ng, hp = g.get("nginx"), g.get("haproxy-always")
    notes = []
    if e1 and e2 and (key(e1) != key(e2) or sorted(e1["flags"]) != sorted(e2["flags"])):
        notes.append("ENGINES-DIFFER")
    if e1 and ng and hp and key(e1) != key(ng) and key(e1) != key(hp):
        notes.append("EDGE-DIFFERS-FROM-BOTH")
    if notes:
        print("%-40s %s" % (name, " ".join(notes)))
        for k, r in g.items():
            s = summarize(r["a1"]) if r.get("a1") else "-"
            print("     %-16s %s reuse=%s %s" % (k, s[:110], "Y" if r.get("reused_b2") else "n", r.get("flags")))
