# usage: perf script -i DATA | python3 attrib.py -- the shard's switch samples attributed to the innermost
# named step (the functions a switch calls), as a share of the switch's samples.
import sys, re, collections
sw = re.compile(r"worker::switch|successor|drop_in_place<alloc::rc::RcInner<edgeshard::shard::ShardCtx>>|drop_in_place<edgeshard::shard::ShardCtx>")
steps = ["format_inner", "state::balancers", "state::outliers", "carried::\{closure", "Stats>::carried|stats::.*carried", "with_weights", "Levels::new", "members_of", "ShardBalancer>::new|picker::ShardBalancer::new|ShardBalancer as", "OutlierDetector::new|OutlierDetector>::new",
         "Breaker::new", "RetryBudget", "Loads::new", "Loads::hand_over", "Loads>::hand_over", "backend_map", "pool_map", "route_map",
         "Stats::carried", "Pool::hand_over", "Pool::new", "listener_sides|ListenerSide", "pool_limits", "OutlierDetector>::adopt|adopt",
         "Backends::build", "Backends::carried", "drop_in_place"]
total = hit = 0; c = collections.Counter(); stack = []
def flush():
    global total, hit
    if not stack: return
    total += 1
    if not any(sw.search(s) for s in stack): return
    hit += 1
    for s in stack:  # innermost first
        for st in steps:
            if re.search(st, s): c[st] += 1; return
    c["(other) " + stack[0][:80]] += 1
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.strip(): flush(); stack = []; continue
    if line.startswith(("\t", " ")):
        p = line.strip().split(None, 1)
        if len(p) == 2: stack.append(p[1].rsplit(" (", 1)[0])
    else: stack = []
flush()
print(f"samples {total}, in the switch {hit}")
for k, v in c.most_common(30): print(f"{100*v/max(hit,1):6.1f} %  {v:5d}  {k}")
