#!/usr/bin/env bash
# The cgroup-v2 suite, run in ONE boot of the test VM (or on a cgroup-v2 host):
#   suite.sh LIST RESULTS
# LIST: one test binary per line, "label<TAB>path" or just "path" (written by tests/run.sh).
# Runs tests/vm/selftest.sh (unless TENANTD_SKIP_SELFTEST=1), then each binary with
# `--ignored --test-threads=1 --nocapture`, so only the #[ignore = "needs a cgroup v2 kernel ..."] tests run.
# Appends "<rc> <seconds> <name>" per step to RESULTS and exits non-zero if any step failed.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LIST="$1"
RESULTS="$2"
: >"$RESULTS"
failed=0

step() { # name cmd...
    local name="$1" t0 rc secs
    shift
    printf '\n===== [v2 suite] %s\n' "$name"
    t0=$(date +%s%N)
    "$@"
    rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e9}')
    printf '===== [v2 suite] %s: exit %s (%s s)\n' "$name" "$rc" "$secs"
    echo "$rc $secs $name" >>"$RESULTS"
    [ "$rc" = 0 ] || failed=1
}

echo "[v2 suite] kernel $(uname -r), TENANTD_TEST_CGROUP_ROOT=${TENANTD_TEST_CGROUP_ROOT:-} TENANTD_TEST_BLOCKDEV=${TENANTD_TEST_BLOCKDEV:-}"
if [ "${TENANTD_SKIP_SELFTEST:-0}" != 1 ]; then
    step selftest bash "$HERE/selftest.sh"
fi
while IFS=$'\t' read -r label bin; do
    [ -n "$label" ] || continue
    [ -n "$bin" ] || { bin="$label"; label="$(basename "$bin")"; }
    # --nocapture: what the tests print (the crash harness's counts, measured shares) goes
    # into the CI log with the verdicts.
    step "$label" "$bin" --ignored --test-threads=1 --nocapture
done <"$LIST"
exit "$failed"
