#!/usr/bin/env bash
# The running daemon's own CPU time with N idle tenants (issue 15, target 2 "Sampling"):
#   sudo bash benches/daemon_cpu.sh [--window S] [--repeat R] [--interval S] [--busy K]
#                                   [--10k] [--bin PATH] [--bare] [N...]  (default N: 300 1000)
# For each N it starts a release `tenantd serve` (sample_interval_s 1 unless --interval) with a
# governor root of its own, creates N tenants through the HTTP API (the first K run a busy
# loop with --busy K, to show the cost of active tenants), waits for the sampler to settle
# (SETTLE_S, default 15 s: more than the longest slow-figure cadence), then reads the daemon's
# utime+stime (/proc/PID/stat) over R windows of S seconds (default 1 x 60 s) and prints each
# as a share of one core, with the daemon's RSS, its open descriptors and its mean sweep time
# (`tenantd_sweep_seconds` from /metrics). Then the memory (VmRSS, VmHWM, anonymous vs
# file-backed from /proc/PID/smaps_rollup), what the kernel charges to the daemon's own cgroup
# (v1 memory.usage_in_bytes and memory.kmem.usage_in_bytes; v2 memory.current and memory.stat's
# kernel, slab, file, anon: a held cgroup file once read keeps a 4 KiB buffer) and the cost of one GET /metrics: the daemon's
# utime+stime around SCRAPES (default 20; 0 skips) sequential scrapes divided by SCRAPES, raw
# and net of the sampler's rate in the last window, with the wall time of each.
# INSPECT='CMD' runs CMD (bash, the daemon's pid in $DPID) against the live daemon after the
# measurement and prints VmRSS/VmHWM after it (e.g. gdb -p "$DPID" -batch -ex 'call malloc_stats()');
# WRAP='CMD' (v1 only) starts the daemon as `CMD tenantd serve ...` (WRAP='heaptrack -o FILE':
# then the CPU and memory figures are the wrapper's, not the daemon's; only the profile counts).
# NOFILE=N starts the daemon with an open-file limit of N (soft and hard), as the unit's
# `LimitNOFILE=524288` does (packaging/tenantd.service); unset, it inherits this shell's.
#
# --bare (cgroup v2): then stops the daemon, leaving its N tenant cgroups, and runs the bare
# `pread` reader (benches/bare_reader.c: the 11 stat files of every tenant held open and re-read
# every second, no parsing) over the same cgroups for the same window, and prints the daemon's
# CPU share divided by the reader's: the ratio issue 15 asks for, from one run.
#
# Where it writes:
# - cgroup v1 or hybrid host: `<own cgroup>/tenantd-bench-cpu-<pid>` in each v1 hierarchy
#   (from /proc/self/cgroup, refusing to run if one exists), the daemon started inside them
#   (its default root is `<that>/tenantd`), exactly as tests/it (support.rs `V1Dirs`) does.
# - pure cgroup v2 (the VM: `sudo bash tests/vm/run.sh -- bash benches/daemon_cpu.sh ...`):
#   `--cgroup-root <own cgroup2>/tenantd-bench-cpu-<pid>`, below the caller's cgroup2 directory.
# Everything it started is killed and every directory it created is removed at the end.
# Nothing outside its own directories is written. Needs root, python3 and curl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (cgroup directories)"; exit 1; }
source benches/v1_daemon.sh
WINDOW=60 REPEAT=1 INTERVAL=1 BUSY=0 BIN="" BARE="" COUNTS=()
SETTLE_S="${SETTLE_S:-15}"
NOFILE="${NOFILE:-}"
# Set here, before any directory is made, and fatal when refused (raising the hard limit
# needs CAP_SYS_RESOURCE): the daemon inherits it.
if [ -n "$NOFILE" ]; then
  { ulimit -Hn "$NOFILE" && ulimit -Sn "$NOFILE"; } 2>/dev/null ||
    { echo "cannot set the open-file limit to $NOFILE (raising the hard limit needs CAP_SYS_RESOURCE)"; exit 1; }
fi
while [ $# -gt 0 ]; do
  case "$1" in
    --window) WINDOW="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --interval) INTERVAL="$2"; shift 2 ;;
    --busy) BUSY="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --10k) COUNTS+=(10000); shift ;;
    --bare) BARE=1; shift ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    -*) echo "unknown option $1"; exit 2 ;;
    *) COUNTS+=("$1"); shift ;;
  esac
done
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(300 1000)
if [ -z "$BIN" ]; then
  BIN="$PWD/target/release/tenantd"
  # In the VM the tree is read-only: the host-built binary is used as it is.
  if [ -z "${TENANTD_IN_VM:-}" ] && command -v cargo >/dev/null; then cargo build --release --quiet; fi
fi
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release first)"; exit 1; }
HZ=$(getconf CLK_TCK)
# A free port of its own: another daemon on a fixed port would receive these requests (or
# send its clients' requests here).
PORT="${PORT:-$(free_port)}"

if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
  MODE=v2
else
  MODE=v1
fi
READER="$PWD/target/bare_reader"
if [ -n "$BARE" ]; then
  [ "$MODE" = v2 ] || { echo "--bare reads cgroup v2 files: run it in the VM (tests/vm/run.sh)"; exit 2; }
  # Built on the host before the VM boots (the guest has no compiler and a read-only tree).
  if [ -z "${TENANTD_IN_VM:-}" ]; then cc -O2 -o "$READER" benches/bare_reader.c; fi
  [ -x "$READER" ] || { echo "no $READER: cc -O2 -o target/bare_reader benches/bare_reader.c on the host first"; exit 1; }
fi

for n in "${COUNTS[@]}"; do
  dirs=() args=()
  name="tenantd-bench-cpu-$$"
  if [ "$MODE" = v1 ]; then
    v1_dirs "$name"
    args=(--cgroup-version v1)
  else
    own=$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup)
    d="/sys/fs/cgroup${own%/}/$name"
    [ ! -e "$d" ] || { echo "$d exists"; exit 1; }
    dirs=("$d")
    args=(--cgroup-root "$d" --cgroup-mount /sys/fs/cgroup)
  fi
  work=$(mktemp -d)
  cleanup() {
    if [ -n "${DPID:-}" ] && ! kill -0 "$DPID" 2>/dev/null; then
      echo "the daemon exited; the end of its log:"; tail -20 "$work/daemon.log"
    fi
    # What the daemon logged as errors (an HTTP 500 is logged once, with its cause).
    grep -E " (ERROR|WARN) " "$work/daemon.log" 2>/dev/null | grep -v "slow statement" | tail -5 || true
    [ -z "${DPID:-}" ] || kill -9 "$DPID" 2>/dev/null || true
    wait 2>/dev/null || true
    for d in "${dirs[@]}"; do
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    done
    sleep 1
    for d in "${dirs[@]}"; do [ ! -e "$d" ] || find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
    for d in "${dirs[@]}"; do [ ! -e "$d" ] || echo "could not remove $d"; done
    rm -rf "$work"
  }
  trap cleanup EXIT
  if [ "$MODE" = v1 ]; then
    # A shell that moves itself into the directories, then becomes the daemon.
    sh -c 'for d in "$@"; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec ${WRAP:-} "$0" serve --sample-interval-s '"$INTERVAL"' --listen 127.0.0.1:'"$PORT"' --db '"$work"'/db --reconcile-interval-s 3600 --cgroup-version v1' \
      "$BIN" "${dirs[@]}" 2>"$work/daemon.log" &
  else
    "$BIN" serve --sample-interval-s "$INTERVAL" --listen "127.0.0.1:$PORT" --db "$work/db" \
      --reconcile-interval-s 3600 "${args[@]}" 2>"$work/daemon.log" &
  fi
  DPID=$!
  for _ in $(seq 300); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
  curl -sf "127.0.0.1:$PORT/healthz" >/dev/null || { echo "daemon did not start:"; cat "$work/daemon.log"; exit 1; }
  SHARE_FILE="$work/share" python3 - "$PORT" "$n" "$DPID" "$HZ" "$WINDOW" "$REPEAT" "$SETTLE_S" "$BUSY" "$BIN" "$MODE" "$INTERVAL" <<'PY'
import json, os, subprocess, sys, time, urllib.request
port, n, pid, hz, window, repeat, settle, busy = (int(float(x)) for x in sys.argv[1:9])
bin_, mode, interval = sys.argv[9], sys.argv[10], sys.argv[11]
base = f"http://127.0.0.1:{port}"
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"})
    return urllib.request.urlopen(req, timeout=600).read()
t0 = time.time()
for i in range(1, n + 1):
    call("PUT", f"/v1/tenants/t{i}", {})
print(f"[{mode}] {n} tenants created through the API in {time.time()-t0:.1f} s", flush=True)
procs = [subprocess.Popen([bin_, "run", "--addr", base, "--tenant", f"t{i}", "--", "sh", "-c", "while :; do :; done"])
         for i in range(1, busy + 1)]
time.sleep(settle)
def ticks():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
def status(key):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith(key + ":"):
            return int(l.split()[1])
def sweep_sum_count():
    # (read phase seconds, database write seconds, sweeps) so far.
    m = {}
    for l in call("GET", "/metrics").decode().splitlines():
        if l.startswith("tenantd_") and not l.startswith("#"):
            k, _, v = l.rpartition(" ")
            m[k] = float(v)
    return (m.get("tenantd_sweep_duration_seconds_sum", 0.0),
            m.get("tenantd_db_write_duration_seconds_sum", 0.0),
            m.get("tenantd_sweep_duration_seconds_count", 0.0))
def threads():
    # utime+stime per thread name (the sampler's tokio workers, sqlx's SQLite thread, the
    # process-event reader), summed over the threads of each name.
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            s = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError:
            continue
        f = s.rsplit(")", 1)[1].split()
        out[t] = (s[s.index("(") + 1:s.rindex(")")], int(f[11]) + int(f[12]))
    return out
shares = []
for r in range(repeat):
    a, (s0, d0, c0), w0, ta = ticks(), sweep_sum_count(), time.monotonic(), threads()
    time.sleep(window)
    b, (s1, d1, c1), w1, tb = ticks(), sweep_sum_count(), time.monotonic(), threads()
    by = {}
    for t, (comm, v) in tb.items():
        by[comm] = by.get(comm, 0) + v - ta.get(t, (comm, 0))[1]
    share = (b - a) / hz / (w1 - w0) * 100
    shares.append(share)
    sweep_ms = (s1 - s0) / (c1 - c0) * 1000 if c1 > c0 else float("nan")
    db_ms = (d1 - d0) / (c1 - c0) * 1000 if c1 > c0 else float("nan")
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    print(f"[{mode}] {n} tenants ({busy} busy), sample_interval_s {interval}, window {w1-w0:.0f} s: "
          f"daemon CPU {share:.2f}% of one core ({b-a} ticks), RSS {status('VmRSS')/1024:.1f} MiB, "
          f"{fds} fds, per sweep (wall): read {sweep_ms:.2f} ms, db write {db_ms:.2f} ms, load {open('/proc/loadavg').read().split()[0]}",
          flush=True)
    print(f"[{mode}]   by thread: " + ", ".join(f"{c} {v / hz / (w1 - w0) * 100:.2f}%"
          for c, v in sorted(by.items(), key=lambda x: -x[1]) if v > 0), flush=True)
# Memory: the resident set now and its peak, and how it splits (smaps_rollup: anonymous =
# the heap and stacks; file = the mapped binary and libraries).
roll = {}
for l in open(f"/proc/{pid}/smaps_rollup"):
    p = l.split()
    if len(p) >= 3 and p[0].endswith(":"):
        roll[p[0][:-1]] = int(p[1])
print(f"[{mode}] {n} tenants: VmRSS {status('VmRSS')/1024:.1f} MiB, VmHWM {status('VmHWM')/1024:.1f} MiB "
      f"(anonymous {roll.get('Anonymous', 0)/1024:.1f} MiB, file-backed {(roll.get('Rss', 0)-roll.get('Anonymous', 0))/1024:.1f} MiB), "
      f"{status('Threads')} threads", flush=True)
# What the kernel charges to the daemon's own cgroup besides its resident set: each cgroup file
# it holds open and has read keeps a page-sized seq_file buffer there (kernel memory).
cg = {l.split(":", 2)[1]: l.split(":", 2)[2].strip() for l in open(f"/proc/{pid}/cgroup")}
def cg_read(path):
    try:
        return open(path).read()
    except OSError:
        return None
if mode == "v1" and "memory" in cg:
    d = f"/sys/fs/cgroup/memory{cg['memory']}"
    use, kmem = cg_read(f"{d}/memory.usage_in_bytes"), cg_read(f"{d}/memory.kmem.usage_in_bytes")
    if use and kmem:
        print(f"[{mode}] {n} tenants: the daemon's memory cgroup: {int(use)/2**20:.1f} MiB charged, "
              f"of which kernel {int(kmem)/2**20:.1f} MiB (memory.kmem.usage_in_bytes)", flush=True)
elif mode == "v2" and "" in cg:
    d = f"/sys/fs/cgroup{cg['']}"
    use, st = cg_read(f"{d}/memory.current"), cg_read(f"{d}/memory.stat")
    if use and st:
        kv = dict((l.split()[0], int(l.split()[1])) for l in st.splitlines() if len(l.split()) == 2)
        print(f"[{mode}] {n} tenants: the daemon's cgroup: {int(use)/2**20:.1f} MiB charged, of which "
              f"kernel {kv.get('kernel', 0)/2**20:.1f} MiB (slab {kv.get('slab', 0)/2**20:.1f} MiB), "
              f"file {kv.get('file', 0)/2**20:.1f} MiB, anon {kv.get('anon', 0)/2**20:.1f} MiB (memory.stat)", flush=True)
else:
    print(f"[{mode}] {n} tenants: the daemon's memory cgroup charge: not readable here", flush=True)
# One GET /metrics: the daemon's utime+stime over SCRAPES sequential scrapes, divided by
# SCRAPES, raw and net of the sampler's own rate in the last window (the sweeps run meanwhile).
scrapes = int(os.environ.get("SCRAPES", "20"))
if scrapes > 0:
    base_rate = shares[-1] / 100 * hz  # ticks per second the daemon spends without scrapes
    walls, size = [], 0
    a, w0 = ticks(), time.monotonic()
    for _ in range(scrapes):
        t = time.monotonic()
        size = len(call("GET", "/metrics"))
        walls.append(time.monotonic() - t)
    b, w1 = ticks(), time.monotonic()
    raw_ms = (b - a) / hz / scrapes * 1000
    net_ms = max(0.0, (b - a) - base_rate * (w1 - w0)) / hz / scrapes * 1000
    walls.sort()
    print(f"[{mode}] {n} tenants: GET /metrics ({size/1e6:.1f} MB) x{scrapes}: daemon CPU {raw_ms:.1f} ms per scrape "
          f"({b-a} ticks; {net_ms:.1f} ms net of the sampler's {shares[-1]:.1f}%), wall median {walls[len(walls)//2]*1000:.1f} ms, "
          f"max {walls[-1]*1000:.1f} ms; VmRSS after {status('VmRSS')/1024:.1f} MiB, VmHWM {status('VmHWM')/1024:.1f} MiB",
          flush=True)
    t = time.monotonic()
    for _ in range(20):
        call("GET", "/readyz")
    print(f"[{mode}] {n} tenants: GET /readyz wall {(time.monotonic()-t)/20*1000:.2f} ms mean of 20", flush=True)
listed = json.loads(call("GET", "/v1/tenants"))
have = len(listed) if isinstance(listed, list) else len(listed.get("tenants", listed.get("items", [])))
if have != n:
    print(f"[{mode}] WARNING: the daemon holds {have} tenants, not {n}: something else talks to port {port}", flush=True)
open(os.environ["SHARE_FILE"], "w").write(f"{shares[-1]:.4f}")
if repeat > 1:
    print(f"[{mode}] {n} tenants: {min(shares):.2f}-{max(shares):.2f}% over {repeat} windows of {window} s", flush=True)
for p in procs: p.kill()
PY
  grep -i "open-file\|hold" "$work/daemon.log" | head -3 || true
  if [ -n "${INSPECT:-}" ]; then
    # A command of the caller's run against the live daemon (its pid in $DPID), e.g. gdb's
    # `call malloc_trim(0)` or `call malloc_stats()`; the resident set is printed after it.
    DPID="$DPID" bash -c "$INSPECT" || true
    echo "[$MODE] $n tenants: after INSPECT: $(grep -E '^Vm(RSS|HWM)' /proc/$DPID/status | tr -s ' \t\n' ' ')"
  fi
  if [ -n "$BARE" ]; then
    # The daemon's share of its last window, then the reader over the same cgroups alone.
    kill -9 "$DPID"; wait "$DPID" 2>/dev/null || true; DPID=""
    out=$("$READER" "${dirs[0]}" "$WINDOW")
    echo "[$MODE] $n tenants: $out"
    python3 - "$work/share" "$out" <<'PY'
import re, sys
daemon = float(open(sys.argv[1]).read())
bare = float(re.search(r"CPU ([0-9.]+)% of one core", sys.argv[2]).group(1))
print(f"ratio daemon / bare pread reader: {daemon:.2f}% / {bare:.2f}% = {daemon / bare:.2f}x", flush=True)
PY
  fi
  cleanup; DPID=""; trap - EXIT
done
