# usage: stalls.py LATFILE RELOADFILE -- per reload (lines "t0 t1" epoch of the POST), the worst latency of a
# request that started between t0-0.2 and t1+0.2 (the shard's stall for that reload); then the median.
import sys, statistics
lat = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
rel = [tuple(map(float, l.split())) for l in open(sys.argv[2])]
st = []
for a, b in rel:
    w = [l for t, l in lat if a - 0.2 <= t <= b + 0.2]
    st.append(max(w) * 1e3 if w else float('nan'))
print("per-reload stall ms: " + " ".join(f"{x:.1f}" for x in st) + f"  median {statistics.median(st):.1f}")
