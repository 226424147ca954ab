#!/usr/bin/env bash
# tenantd's test pipeline:
#   1. host: cargo fmt --check, cargo build --all-targets, cargo clippy --all-targets -D warnings,
#      then cargo nextest run --workspace (or cargo test), then
#      tests/fuzz/schemathesis.sh (API fuzzing; TENANTD_FUZZ_EXAMPLES sets its size), then
#      tests/package.sh (the systemd unit verified and scored, the .deb built, listed, linted)
#   2. build the test binaries and list them (cargo test --no-run --message-format=json)
#   3. cgroup v2 suite in ONE boot of the test VM (tests/vm/run.sh): tests/vm/selftest.sh,
#      then every test binary with `--ignored --test-threads=1` (the kernel tests are marked
#      #[ignore = "needs a cgroup v2 kernel ..."] and read TENANTD_TEST_CGROUP_ROOT)
#
# Env:
#   TENANTD_KERNEL=vm     (default) step 3 in the qemu VM (needs root, see tests/vm/)
#   TENANTD_KERNEL=host   step 3 directly on this host, which must be pure cgroup v2 with the
#                         cpu/memory/io/pids controllers (TENANTD_TEST_CGROUP_ROOT defaults to
#                         /sys/fs/cgroup; point it at a delegated subtree if you prefer)
#   TENANTD_KERNEL=none   skip step 3
#   TENANTD_SKIP_SELFTEST=1  don't run tests/vm/selftest.sh in step 3
#   TENANTD_VM_*          see tests/vm/run.sh
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"
mkdir -p "$REPO/target"
LOG="$REPO/target/tenantd-test-run.log"
exec > >(tee "$LOG") 2>&1
MODE="${TENANTD_KERNEL:-vm}"
case "$MODE" in vm | host | none) ;; *) echo "TENANTD_KERNEL must be vm, host or none" >&2; exit 2 ;; esac
export PATH="$HOME/.cargo/bin:$PATH"
SUMMARY=()
FAILED=0
T_START=$(date +%s)
banner() { printf '\n######## %s\n' "$*"; }
record() { # name rc seconds
    local verdict=PASS
    [ "$2" = 0 ] || { verdict="FAIL (exit $2)"; FAILED=1; }
    SUMMARY+=("$(printf '%-44s %-14s %6ss' "$1" "$verdict" "$3")")
}
timed() { # name cmd... ; runs cmd, records result, returns its rc
    local name="$1" t0 rc
    shift
    t0=$(date +%s)
    "$@"
    rc=$?
    record "$name" "$rc" "$(($(date +%s) - t0))"
    return "$rc"
}
summary() {
    banner "SUMMARY (TENANTD_KERNEL=$MODE, $(($(date +%s) - T_START)) s total)"
    printf '%s\n' "${SUMMARY[@]}"
    if [ "$FAILED" = 0 ]; then echo "RESULT: PASS"; else echo "RESULT: FAIL"; fi
    # One closing line with the test counts of every runner above (host and VM).
    python3 - "$LOG" <<'PY'
import re, sys
text = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[1], errors="replace").read())
passed = failed = 0
for m in re.finditer(r"\d+ tests? run: (\d+) passed(?:[^\n]*?(\d+) failed)?", text):
    passed += int(m.group(1)); failed += int(m.group(2) or 0)
for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed", text):
    passed += int(m.group(1)); failed += int(m.group(2))
print(f"tests: {passed} passed, {failed} failed")
PY
}

# ---------------------------------------------------------------- 1. host
banner "1. host: cargo fmt --check"
timed "host: cargo fmt --check" cargo fmt --all --check
banner "1. host: cargo build --all-targets"
if ! timed "host: cargo build --all-targets" cargo build --workspace --all-targets; then
    summary
    exit 1
fi
banner "1. host: cargo clippy --all-targets -- -D warnings"
timed "host: cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
banner "1. host: unit + host integration tests"
if cargo nextest --version >/dev/null 2>&1; then
    timed "host: cargo nextest run --workspace" cargo nextest run --workspace --no-tests=pass
else
    timed "host: cargo test --workspace" cargo test --workspace
fi
banner "1. host: API fuzzing (schemathesis against a daemon in its own PID namespace)"
timed "host: schemathesis (PID namespace)" bash tests/fuzz/schemathesis.sh
banner "1. host: systemd unit and .deb (tests/package.sh)"
timed "host: unit + package (tests/package.sh)" bash tests/package.sh

# ---------------------------------------------------------------- 2. test binaries
[ "$MODE" = none ] && { summary; exit "$FAILED"; }
banner "2. building the test binaries for the cgroup v2 suite"
OUT="$REPO/target/tenantd-v2-suite"
mkdir -p "$OUT"
if ! cargo test --workspace --no-run --message-format=json >"$OUT/cargo.json"; then
    record "cargo test --no-run" 1 0
    summary
    exit 1
fi
python3 - "$OUT/cargo.json" >"$OUT/binaries" <<'EOF'
import json, sys
seen = []
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        t = m["target"]
        line = "%s:%s\t%s" % (t["kind"][0], t["name"], m["executable"])
        if line not in seen:
            seen.append(line)
print("\n".join(seen))
EOF
echo "test binaries:"
sed 's/^/  /' "$OUT/binaries"

# ---------------------------------------------------------------- 3. cgroup v2 suite
RESULTS="$OUT/results"
rm -f "$RESULTS"
if [ "$MODE" = vm ]; then
    banner "3. cgroup v2 suite in the test VM (one boot)"
    timed "vm: assets (tests/vm/build-assets.sh)" bash tests/vm/build-assets.sh
    t0=$(date +%s)
    mkdir -p "$OUT/rw"
    TENANTD_VM_RW_DIR="$OUT/rw" bash tests/vm/run.sh bash tests/vm/suite.sh "$OUT/binaries" "$OUT/rw/results"
    rc=$?
    [ -f "$OUT/rw/results" ] && cp "$OUT/rw/results" "$RESULTS"
    record "vm: boot + suite" "$rc" "$(($(date +%s) - t0))"
else
    banner "3. cgroup v2 suite on this host"
    export TENANTD_TEST_CGROUP_ROOT="${TENANTD_TEST_CGROUP_ROOT:-/sys/fs/cgroup}"
    if [ "$(stat -fc %T "$TENANTD_TEST_CGROUP_ROOT" 2>/dev/null)" != cgroup2fs ]; then
        echo "TENANTD_KERNEL=host but $TENANTD_TEST_CGROUP_ROOT is not cgroup2 (hybrid/v1 host?); use TENANTD_KERNEL=vm"
        record "host: cgroup v2 suite" 1 0
        summary
        exit 1
    fi
    t0=$(date +%s)
    bash tests/vm/suite.sh "$OUT/binaries" "$RESULTS"
    record "host: cgroup v2 suite" "$?" "$(($(date +%s) - t0))"
fi
if [ -f "$RESULTS" ]; then
    while read -r rc secs name; do
        record "  v2: $name" "$rc" "$secs"
    done <"$RESULTS"
fi
summary
exit "$FAILED"
