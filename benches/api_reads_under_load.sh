#!/usr/bin/env bash
# Read latency of the admin API while tenants saturate every CPU (issue 13, "reads stay fast
# under load"), measured against `tenantd serve` itself on a cgroup v1 or hybrid host:
#   sudo bash benches/api_reads_under_load.sh [TENANTS...]      (default: 100 1000)
# For each count it creates the directories of a governor root below this script's own cgroup
# in each v1 hierarchy (refusing to run if one exists), starts the daemon there (release build,
# 1 s sampling), creates the tenants through the API, starts one busy loop per CPU in a tenant
# with `tenantd run`, then times 200 `GET /v1/tenants` and 200 `GET /v1/tenants/t1` one after
# another and prints p50/p99. Everything it started is killed and every directory it created
# is removed at the end. Nothing outside its own directories is written.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (cgroup directories, tenantd run)"; exit 1; }
cargo build --release --quiet
source benches/v1_daemon.sh
BIN="$PWD/target/release/tenantd"
COUNTS=("$@"); [ ${#COUNTS[@]} -gt 0 ] || COUNTS=(100 1000)
for n in "${COUNTS[@]}"; do
  v1_dirs "tenantd-bench-reads-$$"
  work=$(mktemp -d)
  trap v1_cleanup EXIT
  PORT=$(free_port)
  v1_serve "$BIN" "$PORT" "$work/db" "$work/daemon.log"
  python3 - "$PORT" "$n" "$BIN" <<'PY'
import json, os, subprocess, sys, time, urllib.request
port, n, bin_ = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
base = f"http://127.0.0.1:{port}"
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"})
    return urllib.request.urlopen(req, timeout=120).read()
t0 = time.time()
for i in range(1, n + 1):
    call("PUT", f"/v1/tenants/t{i}", {"cpu": {"guarantee_pct": 0.05}} if i <= 1000 else {})
print(f"{n} tenants created through the API in {time.time()-t0:.1f} s", flush=True)
cpus = os.cpu_count()
busy = []
for _ in range(cpus):
    busy.append(subprocess.Popen([bin_, "run", "--addr", base, "--tenant", "t1", "--", "sh", "-c", "while :; do :; done"]))
time.sleep(3)
def measure(path, k=200):
    lat = []
    for _ in range(k):
        t = time.perf_counter(); call("GET", path); lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return lat[len(lat)//2], lat[int(len(lat)*0.99)-1]
for path in ["/v1/tenants", "/v1/tenants/t1", "/healthz"]:
    p50, p99 = measure(path)
    print(f"{n} tenants, {cpus} busy loops: GET {path}: p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
load = open("/proc/loadavg").read().split()[0]
print(f"load average {load}")
for b in busy: b.kill()
PY
  v1_cleanup; trap - EXIT
done
