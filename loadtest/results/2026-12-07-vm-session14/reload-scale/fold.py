# usage: perf script -i DATA | python3 fold.py [REGEX] -- samples whose stack has a frame matching REGEX
# (default: the shard's switch: worker::switch, ShardCtx::successor, drops of a replaced ShardCtx);
# prints their share, the top self symbols, and the top "edgeshard" frames inclusive.
import sys, re, collections
pat = re.compile(sys.argv[1] if len(sys.argv) > 1 else r"worker::switch|successor|drop_in_place<edgeshard::shard::ShardCtx>|drop_in_place<alloc::rc::RcInner<edgeshard::shard::ShardCtx>>")
total = 0; hit = 0; selfc = collections.Counter(); incl = collections.Counter()
stack = []
def flush():
    global total, hit
    if not stack: return
    total += 1
    syms = [re.sub(r"\+0x[0-9a-f]+$", "", s) for s in stack]
    if any(pat.search(s) for s in syms):
        hit += 1; selfc[syms[0]] += 1
        for s in set(syms):
            if "edgeshard" in s or "hash" in s.lower() or "alloc" in s or "drop" in s or "fmt" in s: incl[s] += 1
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.strip(): flush(); stack = []; continue
    if line.startswith(("\t", " ")) :
        parts = line.strip().split(None, 1)
        if len(parts) == 2: stack.append(parts[1].rsplit(" (", 1)[0])
    else:
        stack = []
flush()
print(f"samples {total}, in the switch {hit} ({100*hit/max(total,1):.1f} %)")
print("-- self, share of switch samples")
for s, c in selfc.most_common(25): print(f"{100*c/max(hit,1):6.1f} %  {s[:150]}")
print("-- inclusive (edgeshard/hash/alloc/drop/fmt frames), share of switch samples")
for s, c in incl.most_common(40): print(f"{100*c/max(hit,1):6.1f} %  {s[:150]}")
