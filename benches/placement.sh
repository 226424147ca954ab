#!/usr/bin/env bash
# Placement at exec, end to end on the running release daemon (issue 17, "Performance"):
#   sudo bash benches/placement.sh [--rate R] [--seconds S] [--tenants T] [--rules N]
#                                  [--life S] [--no-match] [--bin PATH]
#                                  (defaults: 1000/s, 10 s, 100 tenants, 300 rules, 0.05 s)
# Starts `tenantd serve` (v1 backend, --placement-rescan-s 3600) in the host's initial PID
# namespace, so it subscribes to the kernel's process events once the rules exist (it must log
# "listening to the kernel's process events", or the bench stops), creates T tenants whose rules the
# generator's processes match and N-T more whose rules match nothing (N rules in force in
# all, one per tenant: a spec has one `placement`), then runs benches/placement_gen.c: R
# execs a second for S seconds of `sleep LIFE` (default 0.05), spread round-robin over the T
# tenants, each polled from the generator (/proc/PID/cgroup, every 50 us) until it is in its
# tenant's cgroup in every v1 hierarchy or has exited. Prints one summary line:
#   placement latency (exec -> in the tenant's cgroups) p50/p90/p99/max, measured from the
#   return of posix_spawn (the child has exec'd) and, more pessimistically, from before it;
#   the fraction placed before they exited; the daemon's utime+stime (/proc/PID/stat) per
#   1,000 execs over the run (and its idle rate just before); the daemon's
#   tenantd_processes_placed_total and its CPU per placement; events lost (the daemon's
#   "process events lost" log lines); KEEP_LOG=FILE keeps the daemon's log there. --no-match
#   is the control: the same rules, but the
#   rules' markers and exe directories differ from the generator's (nothing matches), to
#   see what the generator reaches and what the daemon spends on the events alone.
#
# The rules: tenants 1..10 (at most T) by exe glob `<tmp>/bin/e<K>/*` (a copy of sleep that only
# this bench runs, priority 1), the others by cmdline regex `^tenantd-pbench-<pid>-t<K>\x00`
# (argv[0] of /bin/sleep set to that marker): no rule names a uid, a group or an exe that a
# host process has, so the daemon moves nothing but the bench's own children.
#
# Where it writes: `<own cgroup>/tenantd-pbench-<pid>` in each v1 hierarchy (v1_dirs of
# benches/v1_daemon.sh, refusing if one exists); the daemon and the generator run inside them,
# the daemon's governor root is `<that>/tenantd`. At the end it kills the daemon and the
# generator by their PIDs (the generator's children exit by themselves after LIFE), waits for
# the directories to empty and removes them. Needs root, a v1/hybrid host, cc, python3, curl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (cgroup directories, process events)"; exit 1; }
[ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] || { echo "this bench needs a v1 or hybrid host"; exit 1; }
source benches/v1_daemon.sh
# Options with a value set OPT_<NAME>; the defaults follow.
NOMATCH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rate|--seconds|--tenants|--rules|--life|--bin)
      [ $# -ge 2 ] || { echo "$1 needs a value"; exit 2; }
      o="${1#--}"; printf -v "OPT_${o^^}" '%s' "$2"; shift 2 ;;
    --no-match) NOMATCH=1; shift ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
done
RATE="${OPT_RATE:-1000}" SECONDS_="${OPT_SECONDS:-10}" TENANTS="${OPT_TENANTS:-100}"
RULES="${OPT_RULES:-300}" LIFE="${OPT_LIFE:-0.05}" BIN="${OPT_BIN:-}"
for v in "$RATE" "$SECONDS_" "$TENANTS" "$RULES" "$LIFE"; do
  [[ "$v" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "not a number: $v"; exit 2; }
done
[ "$RULES" -ge "$TENANTS" ] || { echo "--rules must be at least --tenants"; exit 2; }
if [ -z "$BIN" ]; then
  BIN="$PWD/target/release/tenantd"
  [ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
fi
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release first)"; exit 1; }
HZ=$(getconf CLK_TCK)
PORT="${PORT:-$(free_port)}"
NAME="tenantd-pbench-$$"
PREFIX="tenantd-pbench-$$"
N_EXE=$(( TENANTS < 10 ? TENANTS : 10 ))

work=$(mktemp -d /tmp/tenantd-pbench.XXXXXX)
chmod 755 "$work"
dirs=()
daemon="" gen=""
cleanup() {
  set +e
  if [ -n "$daemon" ] && ! kill -0 "$daemon" 2>/dev/null; then
    echo "the daemon exited early; the end of its log:"; tail -20 "$work/daemon.log"
  fi
  # Only the PIDs this script started; the generator's children exit after LIFE.
  [ -z "$gen" ] || kill -9 "$gen" 2>/dev/null
  [ -z "$daemon" ] || kill -9 "$daemon" 2>/dev/null
  wait 2>/dev/null
  for _ in $(seq 50); do
    [ -z "$(find "${dirs[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] && break
    sleep 0.2
  done
  for d in "${dirs[@]}"; do [ ! -e "$d" ] || find "$d" -depth -type d -delete 2>/dev/null; done
  for d in "${dirs[@]}"; do [ ! -e "$d" ] || echo "could not remove $d (still holds: $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' '))"; done
  [ -z "${KEEP_LOG:-}" ] || cp "$work/daemon.log" "$KEEP_LOG"
  rm -rf "$work"
}
trap cleanup EXIT
v1_dirs "$NAME"

cc -O2 -Wall -o "$work/gen" benches/placement_gen.c
for k in $(seq 1 "$N_EXE"); do mkdir -p "$work/bin/e$k"; cp /bin/sleep "$work/bin/e$k/sleep"; done
chmod -R a+rX "$work/bin"

# The daemon, moved into the bench's directories before it execs (its default root is
# `<them>/tenantd`); the debug level of serve.rs logs every loss of process events.
TENANTD_LOG="${TENANTD_LOG:-info,tenantd::cli::serve=debug}" \
  sh -c 'for d in "$@"; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec '"$BIN"' serve --listen 127.0.0.1:'"$PORT"' --db '"$work"'/db --cgroup-version v1 --placement-rescan-s 3600 --reconcile-interval-s 3600' \
  sh "${dirs[@]}" 2>"$work/daemon.log" &
daemon=$!
for _ in $(seq 150); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
curl -sf "127.0.0.1:$PORT/healthz" >/dev/null || { echo "the daemon did not start:"; cat "$work/daemon.log"; exit 1; }

# The tenants and their rules, through the API.
RULE_PREFIX="$PREFIX${NOMATCH:+-nomatch}"
python3 - "$PORT" "$TENANTS" "$RULES" "$N_EXE" "$RULE_PREFIX" "$work/bin" "${NOMATCH:+-nomatch}" <<'PY'
import json, sys, time, urllib.request, urllib.error
port, tenants, rules, n_exe = (int(x) for x in sys.argv[1:5])
prefix, bindir, suffix = sys.argv[5], sys.argv[6], sys.argv[7]
def put(name, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/tenants/{name}", method="PUT",
        data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=600).read()
    except urllib.error.HTTPError as e:
        sys.exit(f"PUT /v1/tenants/{name}: {e.code} {e.read().decode()}")
t0 = time.time()
for k in range(1, rules + 1):
    if k <= n_exe:
        rule = {"exe": [f"{bindir}/e{k}{suffix}/*"], "priority": 1}
    elif k <= tenants:
        rule = {"cmdline": f"^{prefix}-t{k}\\x00"}
    else:  # in force, matching nothing the generator (or anything else) runs
        rule = {"cmdline": f"^{prefix}-idle{k}\\x00"}
    put(f"t{k}", {"placement": rule})
print(f"{rules} tenants with a rule each ({n_exe} by exe glob) created through the API in {time.time()-t0:.1f} s", flush=True)
PY
# The daemon listens to process events only while a rule is in force (since the first rule).
for _ in $(seq 50); do grep -q "listening to the kernel's process events" "$work/daemon.log" && break; sleep 0.1; done
grep -q "listening to the kernel's process events" "$work/daemon.log" || {
  echo "the daemon does not listen to the kernel's process events:"; grep -i "process events" "$work/daemon.log"; exit 1; }
ROOT="$NAME/tenantd"
[ -d "${dirs[0]}/tenantd/t1" ] || { echo "no ${dirs[0]}/tenantd/t1: the tenants' cgroups are not where this bench looks"; exit 1; }

ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$daemon/stat"; }
placed_total() {
  curl -sf "127.0.0.1:$PORT/metrics" | awk '/^tenantd_processes_placed_total/ { s += $NF } END { print s + 0 }'
}
# The daemon's idle rate (host events from other work included) just before the run.
i0=$(ticks); sleep 3; i1=$(ticks)
p0=$(placed_total)
curl -sf "127.0.0.1:$PORT/metrics" >"$work/metrics0"
lost0=$(grep -c "process events lost" "$work/daemon.log" || true)
load=$(cut -d' ' -f1 /proc/loadavg)
a=$(ticks); w0=$(date +%s.%N)
sh -c 'for d in "$@"; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec "$0" '"$RATE $SECONDS_ $LIFE $TENANTS $PREFIX $work/bin $N_EXE $ROOT ${#dirs[@]} $work/samples" \
  "$work/gen" "${dirs[@]}" &
gen=$!
wait "$gen" || { echo "the generator failed"; exit 1; }
gen=""
b=$(ticks); w1=$(date +%s.%N)
sleep 1
p1=$(placed_total)
curl -sf "127.0.0.1:$PORT/metrics" >"$work/metrics1"
lost1=$(grep -c "process events lost" "$work/daemon.log" || true)
python3 - "$work/samples" "$RATE" "$SECONDS_" "$TENANTS" "$RULES" "$HZ" "$a" "$b" "$w0" "$w1" "$i0" "$i1" \
  "$((p1 - p0))" "$((lost1 - lost0))" "$load" "$work/metrics0" "$work/metrics1" <<'PY'
import sys
f, rate, secs, tenants, rules, hz = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
a, b, w0, w1, i0, i1 = int(sys.argv[7]), int(sys.argv[8]), float(sys.argv[9]), float(sys.argv[10]), int(sys.argv[11]), int(sys.argv[12])
placed_metric, lost, load = int(sys.argv[13]), int(sys.argv[14]), sys.argv[15]
rows = [l.split() for l in open(f)]
n = len(rows)
ok = [r for r in rows if r[3] == "1"]
ex = sorted(int(r[2]) for r in ok)
sp = sorted(int(r[1]) for r in ok)
def q(v, p):
    return v[min(len(v) - 1, int(p * len(v)))] / 1000 if v else float("nan")
cpu_ms = (b - a) / hz * 1000
idle = (i1 - i0) / hz / 3 * 100
per_placement = "%.1f ms" % (cpu_ms / placed_metric) if placed_metric else "n/a"
verdict = ("met" if q(ex, .99) < 10 else "NOT met") if ex else "n/a (nothing placed)"
print(f"placement: {n} execs ({n/(w1-w0):.0f}/s over {w1-w0:.1f} s), {tenants} tenants, {rules} rules: "
      f"exec->placed p50 {q(ex,.5):.2f} ms, p90 {q(ex,.9):.2f} ms, p99 {q(ex,.99):.2f} ms, max {q(ex,1):.1f} ms "
      f"(from before the spawn: p50 {q(sp,.5):.2f}, p99 {q(sp,.99):.2f} ms); "
      f"placed before exit {len(ok)}/{n} = {len(ok)/n*100:.2f}% (after exit, as zombies: {sum(r[3] == '2' for r in rows)}); "
      f"daemon CPU {cpu_ms/n*1000:.0f} ms per 1,000 execs ({b-a} ticks, {(b-a)/hz/(w1-w0)*100:.0f}% of a core; idle before {idle:.1f}%); "
      f"daemon placed {placed_metric} ({per_placement} CPU per placement); events lost {lost}; load {load}; "
      f"p99 < 10 ms: {verdict}")
# The daemon's own view: tenantd_placement_latency_seconds, from the kernel's stamp on the
# exec event to the end of the batch's moves, over the run (the two scrapes' difference).
def buckets(path):
    out = {}
    for l in open(path):
        if l.startswith('tenantd_placement_latency_seconds_bucket{le="'):
            le = l.split('"')[1]
            out[float("inf") if le == "+Inf" else float(le)] = float(l.split()[-1])
    return out
h0, h1 = buckets(sys.argv[16]), buckets(sys.argv[17])
d = sorted((le, h1[le] - h0.get(le, 0)) for le in h1)
total = d[-1][1] if d else 0
if total:
    def bound(p):
        return next(le for le, c in d if c >= p * total) * 1000
    within = next(c for le, c in d if le == 0.01) / total * 100
    print(f"daemon-side (tenantd_placement_latency_seconds: kernel's exec stamp -> moved): {total:.0f} placements, "
          f"{within:.2f}% within 10 ms, p50 <= {bound(.5):g} ms, p99 <= {bound(.99):g} ms (bucket bounds)")
else:
    print("daemon-side: no placement in tenantd_placement_latency_seconds")
PY
