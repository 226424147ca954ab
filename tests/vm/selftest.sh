#!/usr/bin/env bash
# Proves that the machine we run on is the cgroup-v2 kernel the tests assume.
# Runs INSIDE the test VM:   tests/vm/run.sh tests/vm/selftest.sh
# (or on any host with a delegated cgroup2 root: TENANTD_TEST_CGROUP_ROOT=/sys/fs/cgroup/x ...)
# Exits non-zero, naming the failed check, if the guest is not what we think.
#
# Knobs: TENANTD_SELFTEST_CPU_SECONDS (10)  measuring window of the cpu.weight check
#        TENANTD_SELFTEST_CPU_EXPECT (75)   expected % share of the weight-300 group, ±
#        TENANTD_SELFTEST_CPU_TOL (5)       percentage points
set -uo pipefail

ROOT="${TENANTD_TEST_CGROUP_ROOT:-/sys/fs/cgroup}"
SECS="${TENANTD_SELFTEST_CPU_SECONDS:-10}"
EXPECT="${TENANTD_SELFTEST_CPU_EXPECT:-75}"
TOL="${TENANTD_SELFTEST_CPU_TOL:-5}"
BASE="$ROOT/tenantd-selftest.$$"
FAILS=()
PIDS=()

pass() { printf 'selftest: PASS %s\n' "$*"; }
fail() { printf 'selftest: FAIL %s\n' "$*"; FAILS+=("$*"); }
info() { printf 'selftest:      %s\n' "$*"; }

cleanup() {
    local p d
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ -d "$BASE" ]; then
        # children first
        for d in $(find "$BASE" -mindepth 1 -type d | sort -r); do rmdir "$d" 2>/dev/null; done
        rmdir "$BASE" 2>/dev/null
    fi
}
trap cleanup EXIT

# usage: spawn_in CGROUP CMD...  -> starts CMD inside CGROUP (moved before exec), sets $SPAWNED
spawn_in() {
    local cg="$1"; shift
    bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$@" &
    SPAWNED=$!
    PIDS+=("$SPAWNED")
}
usage_usec() { awk '$1 == "usage_usec" {print $2}' "$1/cpu.stat"; }
event() { awk -v k="$2" '$1 == k {print $2}' "$1"; }

echo "selftest: kernel $(uname -r), cgroup root $ROOT, $(nproc) CPUs, $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) MiB RAM"

# ---------------------------------------------------------------- (a) preamble
fstype="$(stat -fc %T "$ROOT" 2>/dev/null)"
if [ "$fstype" = cgroup2fs ]; then pass "(a) $ROOT is cgroup2 ($fstype)"; else
    fail "(a) $ROOT is not a cgroup2 mount (fs type '${fstype:-missing}')"
fi
ctrls="$(cat "$ROOT/cgroup.controllers" 2>/dev/null)"
subtree="$(cat "$ROOT/cgroup.subtree_control" 2>/dev/null)"
info "cgroup.controllers: $ctrls"
info "cgroup.subtree_control: $subtree"
for c in cpu memory io pids; do
    if ! grep -qw "$c" <<<"$ctrls"; then fail "(a) controller $c not available in $ROOT/cgroup.controllers"
    elif ! grep -qw "$c" <<<"$subtree"; then fail "(a) controller $c not enabled in $ROOT/cgroup.subtree_control"
    else pass "(a) controller $c available and enabled"; fi
done
if [ "${#FAILS[@]}" -gt 0 ]; then
    echo "selftest: preamble failed, not running the measurements"
    exit 1
fi

mkdir "$BASE" || { echo "selftest: FAIL cannot create $BASE"; exit 1; }
echo "+cpu +memory +io +pids" >"$BASE/cgroup.subtree_control" || fail "cannot enable controllers in $BASE"

# ---------------------------------------------------------------- (b) cpu.weight
mkdir "$BASE/heavy" "$BASE/light"
echo 300 >"$BASE/heavy/cpu.weight"
echo 100 >"$BASE/light/cpu.weight"
info "cpu.weight heavy=$(cat "$BASE/heavy/cpu.weight") light=$(cat "$BASE/light/cpu.weight"), 2 busy loops each, ${SECS} s"
loops=()
for g in heavy heavy light light; do
    spawn_in "$BASE/$g" /bin/sh -c 'while :; do :; done'
    loops+=("$SPAWNED")
done
sleep 1 # let the loops settle into their groups
h0=$(usage_usec "$BASE/heavy"); l0=$(usage_usec "$BASE/light"); t0=$(date +%s%N)
sleep "$SECS"
h1=$(usage_usec "$BASE/heavy"); l1=$(usage_usec "$BASE/light"); t1=$(date +%s%N)
kill -9 "${loops[@]}" 2>/dev/null; wait "${loops[@]}" 2>/dev/null
dh=$((h1 - h0)); dl=$((l1 - l0)); wall_us=$(((t1 - t0) / 1000))
if [ $((dh + dl)) -le 0 ]; then
    fail "(b) no CPU time accounted in cpu.stat usage_usec"
else
    share=$(awk -v h="$dh" -v l="$dl" 'BEGIN{printf "%.1f", 100*h/(h+l)}')
    info "heavy usage $(awk -v x="$dh" 'BEGIN{printf "%.2f", x/1e6}') s, light usage $(awk -v x="$dl" 'BEGIN{printf "%.2f", x/1e6}') s in $(awk -v x="$wall_us" 'BEGIN{printf "%.2f", x/1e6}') s wall ($(awk -v a="$dh" -v b="$dl" -v w="$wall_us" 'BEGIN{printf "%.2f", (a+b)/w}') CPUs busy)"
    if awk -v s="$share" -v e="$EXPECT" -v t="$TOL" 'BEGIN{exit !(s >= e - t && s <= e + t)}'; then
        pass "(b) weight-300 group got $share % of the CPU time (expected $EXPECT ± $TOL %)"
    else
        fail "(b) weight-300 group got $share % of the CPU time, expected $EXPECT ± $TOL %"
    fi
fi

# ---------------------------------------------------------------- (c) memory.max -> OOM kill
mkdir "$BASE/mem"
echo 50M >"$BASE/mem/memory.max"
if [ -e "$BASE/mem/memory.swap.max" ]; then echo 0 >"$BASE/mem/memory.swap.max"; fi
info "memory.max $(cat "$BASE/mem/memory.max") bytes, memory.swap.max $(cat "$BASE/mem/memory.swap.max" 2>/dev/null || echo n/a); allocating 200 MiB with python3"
spawn_in "$BASE/mem" python3 -c 'b = b"x" * (200 << 20); print("selftest: allocation of", len(b) >> 20, "MiB SURVIVED")'
{ wait "$SPAWNED"; } 2>/dev/null; st=$?
oomk="$(event "$BASE/mem/memory.events" oom_kill)"
info "allocator exit status $st$([ "$st" -gt 128 ] && echo " (signal $((st - 128)))"); memory.events: $(tr '\n' ' ' <"$BASE/mem/memory.events")"
if [ "$st" = 137 ] && [ "${oomk:-0}" -ge 1 ]; then
    pass "(c) over-allocating process SIGKILLed, memory.events oom_kill=$oomk"
else
    fail "(c) expected SIGKILL (status 137) and oom_kill >= 1, got status $st, oom_kill=${oomk:-missing}"
fi

# ---------------------------------------------------------------- (d) PSI files
miss=""
for f in cpu.pressure memory.pressure io.pressure; do
    if [ -r "$BASE/mem/$f" ]; then info "$f: $(head -1 "$BASE/mem/$f")"; else miss="$miss $f"; fi
done
if [ -z "$miss" ]; then pass "(d) cpu.pressure, memory.pressure, io.pressure present in a child cgroup"
else fail "(d) missing in a child cgroup:$miss"; fi

# ---------------------------------------------------------------- (e) block device + io.max
dev="${TENANTD_TEST_BLOCKDEV:-}"
if [ -z "$dev" ] || [ ! -e "/sys/dev/block/$dev" ]; then
    fail "(e) no block device (TENANTD_TEST_BLOCKDEV='$dev')"
else
    name="$(basename "$(readlink -f "/sys/dev/block/$dev")")"
    mkdir "$BASE/io"
    if echo "$dev wbps=1048576 riops=1000" >"$BASE/io/io.max" 2>/dev/null \
        && grep -q "^$dev .*wbps=1048576" "$BASE/io/io.max"; then
        info "block device /dev/$name ($dev), $(($(cat "/sys/dev/block/$dev/size") / 2048)) MiB; io.max: $(cat "$BASE/io/io.max")"
        # 3 MiB of O_DIRECT writes under wbps=1 MiB/s should take about 2-3 s.
        s0=$(date +%s%N)
        spawn_in "$BASE/io" dd if=/dev/zero of="/dev/$name" bs=64k count=48 oflag=direct status=none
        wait "$SPAWNED"; st=$?
        ms=$((($(date +%s%N) - s0) / 1000000))
        info "dd 3 MiB oflag=direct under wbps=1 MiB/s: status $st, $ms ms; io.stat: $(cat "$BASE/io/io.stat")"
        if [ "$st" = 0 ] && [ "$ms" -ge 1500 ]; then
            pass "(e) io.max accepted for /dev/$name ($dev) and throttles writes (${ms} ms for 3 MiB)"
        else
            fail "(e) io.max accepted but dd took ${ms} ms (status $st), expected >= 1500 ms"
        fi
    else
        fail "(e) io.max rejected a line for $dev"
    fi
fi

# ---------------------------------------------------------------- (f) pids.max
mkdir "$BASE/pids"
echo 5 >"$BASE/pids/pids.max"
spawn_in "$BASE/pids" /bin/sh -c 'for i in 1 2 3 4 5 6 7 8; do sleep 2 & done 2>/dev/null; wait' 2>/dev/null
wait "$SPAWNED"
pmax="$(event "$BASE/pids/pids.events" max)"
info "pids.max 5, forked 8 sleepers: pids.events max=$pmax"
if [ "${pmax:-0}" -ge 1 ]; then pass "(f) pids.max refuses forks (pids.events max=$pmax)"
else fail "(f) pids.max 5 did not refuse a fork (pids.events max=${pmax:-missing})"; fi

echo
if [ "${#FAILS[@]}" -eq 0 ]; then
    echo "selftest: ALL CHECKS PASSED"
    exit 0
fi
echo "selftest: ${#FAILS[@]} CHECK(S) FAILED:"
printf 'selftest:   %s\n' "${FAILS[@]}"
exit 1
