#!/usr/bin/env bash
# Latency of changes at scale (issue 15, target 1), measured against `tenantd serve` itself on
# a cgroup v1 or hybrid host, or on pure cgroup v2 (the VM:
# `bash tests/vm/run.sh -- bash benches/changes.sh 1000`, with a host-built release binary):
#   sudo bash benches/changes.sh [TENANTS...]      (default: 1000 10000)
# For each count and each shape (flat: every tenant at the top level; tree: count/100 parents
# with 99 children each, 100 x 100 at 10,000) it creates the directories of a governor root
# below this script's own cgroup in each v1 hierarchy (refusing to run if one exists), starts
# the daemon there (release build, default sampling) on a fresh database, creates the tenants
# through the API, then times over one keep-alive connection, one request after another:
# 200 PUTs and 200 PATCHes that change an existing tenant, 200 DELETEs of tenants created for
# them, and 200 `GET /v1/tenants/{name}`; it prints p50/p99 of each and, last, the ratio of the
# largest count to the smallest. TENANTD_SAMPLE_INTERVAL_S=3600 takes the sampler out of the
# figures (its cost is measured by benches/sampler.rs). Everything it started is killed and
# every directory it created is removed at the end. Nothing outside its own directories is
# written.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (cgroup directories)"; exit 1; }
# In the VM the tree is read-only: the host-built binary is used as it is.
[ -n "${TENANTD_IN_VM:-}" ] || cargo build --release --quiet
source benches/v1_daemon.sh
BIN="$PWD/target/release/tenantd"
COUNTS=("$@"); [ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 10000)
RESULTS=$(mktemp)
for n in "${COUNTS[@]}"; do
 for shape in flat tree; do
  gov_dirs "tenantd-bench-changes-$$"
  work=$(mktemp -d)
  trap v1_cleanup EXIT
  PORT=$(free_port)
  gov_serve "$BIN" "$PORT" "$work/db" "$work/daemon.log"
  if python3 - "$PORT" "$n" "$shape" "$RESULTS" "$MODE" <<'PY'
import http.client, json, sys, time
port, n, shape, results, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
def call(method, path, body=None, ctype="application/json"):
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"content-type": ctype})
    r = conn.getresponse(); data = r.read()
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status} {data[:300]!r}")
    return data
# Names and parents: flat, or n/100 parents with 99 children each.
if shape == "flat":
    tenants = [(f"t{i:05}", None) for i in range(n)]
else:
    tenants = []
    for p in range(n // 100):
        tenants.append((f"p{p:03}", None))
        tenants += [(f"p{p:03}-c{c:02}", f"p{p:03}") for c in range(99)]
def spec(parent, g=0.001):
    s = {"cpu": {"guarantee_pct": g}}
    if parent: s["parent"] = parent
    return s
t0 = time.time()
for name, parent in tenants:
    call("PUT", f"/v1/tenants/{name}", spec(parent))
print(f"{n} tenants ({shape}) created through the API in {time.time()-t0:.1f} s", flush=True)
leaves = [(t, p) for t, p in tenants if shape == "flat" or p]
K = 200
step = max(1, len(leaves) // K)
picked = leaves[::step][:K]
def measure(reqs):
    lat = []
    for method, path, body, ctype in reqs:
        t = time.perf_counter(); call(method, path, body, ctype); lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return lat[len(lat)//2], lat[int(len(lat)*0.99)-1]
out = {}
out["PUT"] = measure([("PUT", f"/v1/tenants/{t}", spec(p, 0.002), "application/json") for t, p in picked])
out["PATCH"] = measure([("PATCH", f"/v1/tenants/{t}", {"memory": {"high_bytes": 1 << 30}}, "application/merge-patch+json") for t, p in picked])
doomed = [(f"zz{i:03}", p) for i, (_, p) in enumerate(picked)]
for t, p in doomed:
    call("PUT", f"/v1/tenants/{t}", spec(p))
out["DELETE"] = measure([("DELETE", f"/v1/tenants/{t}", None, "application/json") for t, p in doomed])
out["GET"] = measure([("GET", f"/v1/tenants/{t}", None, "application/json") for t, p in picked])
print(f"load average {open('/proc/loadavg').read().split()[0]}", flush=True)
for op, (p50, p99) in out.items():
    print(f"[{mode}] {n} tenants ({shape}): {op:6} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms", flush=True)
with open(results, "a") as f:
    f.write(json.dumps({"n": n, "shape": shape, "ms": out}) + "\n")
PY
  then :; else echo "failed; the daemon's log ends:"; tail -20 "$work/daemon.log"; exit 1; fi
  ticks=$(awk '{print $14+$15}' "/proc/$daemon/stat" 2>/dev/null || echo 0)
  echo "daemon CPU time over the run: $((ticks * 10)) ms"
  v1_cleanup; trap - EXIT
 done
done
python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ns = sorted({r["n"] for r in rows})
if len(ns) >= 2:
    lo, hi = ns[0], ns[-1]
    for shape in ("flat", "tree"):
        a = next(r for r in rows if r["n"] == lo and r["shape"] == shape)["ms"]
        b = next(r for r in rows if r["n"] == hi and r["shape"] == shape)["ms"]
        for op in a:
            print(f"ratio {hi}/{lo} ({shape}) {op:6}: p50 {b[op][0]/a[op][0]:4.1f}x  p99 {b[op][1]/a[op][1]:4.1f}x")
PY
rm -f "$RESULTS"
