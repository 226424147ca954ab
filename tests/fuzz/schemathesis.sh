#!/usr/bin/env bash
# API fuzzing (issue 12): schemathesis against /v1/openapi.json of a running daemon, every check
# on, the stateful phase following the document's links (create -> attach -> delete).
#
#   - builds target/debug/tenantd (cargo build --bin tenantd) unless TENANTD_FUZZ_NO_BUILD=1
#   - installs tests/fuzz/requirements.txt (pinned schemathesis) into target/fuzz/venv once
#   - cgroup v1 or hybrid host only (CI is hybrid): creates `<own cgroup>/tenantd-fuzz-<pid>` in
#     each v1 hierarchy tenantd uses, below THIS script's own cgroup, and nothing else; refuses
#     to run when one exists already or the daemon's root would land anywhere else
#   - starts `tenantd serve` (v1 backend, its default root `<that directory>/tenantd`, temp
#     SQLite db, an admin token) as the child of PID 1 of a PID namespace of its own
#     (`unshare --pid --fork --mount-proc`), so generated PIDs never reach host processes;
#     the processes the fuzzer attaches are sleepers started in that namespace (hooks.py)
#   - waits for /readyz, runs schemathesis, stops the daemon (the namespace dies with it),
#     removes every directory it created and exits non-zero on any failure
#
# Env:
#   TENANTD_FUZZ_EXAMPLES   test cases per operation and phase (default 150: 1-3 min on 2 CPUs)
#   TENANTD_FUZZ_MAX_TIME   optional time budget in seconds (schemathesis --max-time)
#   TENANTD_FUZZ_SEED       optional seed, to repeat a run
#   TENANTD_FUZZ_VENV       where the venv lives (default target/fuzz/venv)
#   TENANTD_FUZZ_NO_BUILD=1 use target/debug/tenantd as it is
# Flags: --long          500 examples per operation and phase (tens of minutes)
#        --install-only  set up the venv and stop (.ci/run does this before the tests)
#        any other flag is passed on to `schemathesis run` (e.g. --include-path-regex procs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO="$PWD"
EXAMPLES="${TENANTD_FUZZ_EXAMPLES:-150}"
EXTRA=()
INSTALL_ONLY=0
for a in "$@"; do
    case "$a" in
    --long) EXAMPLES=500 ;;
    --install-only) INSTALL_ONLY=1 ;;
    *) EXTRA+=("$a") ;;
    esac
done
VENV="${TENANTD_FUZZ_VENV:-$REPO/target/fuzz/venv}"
OUT="$REPO/target/fuzz"
TAG="tenantd-fuzz-$$"
log() { printf '[fuzz] %s\n' "$*"; }
die() {
    printf '[fuzz] %s\n' "$*" >&2
    exit 2
}

command -v python3 >/dev/null || die "python3 is missing"
[[ "$EXAMPLES" =~ ^[1-9][0-9]*$ ]] || die "TENANTD_FUZZ_EXAMPLES must be a positive number, not '$EXAMPLES'"
mkdir -p "$OUT"

# ---------------------------------------------------------------- schemathesis
REQ="$REPO/tests/fuzz/requirements.txt"
if ! cmp -s "$REQ" "$VENV/.requirements.txt" 2>/dev/null; then
    log "installing schemathesis into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" ||
        die "python3 -m venv failed: install python3-venv (Debian) and run again"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
    cp "$REQ" "$VENV/.requirements.txt"
fi
"$VENV/bin/schemathesis" --version
[ "$INSTALL_ONLY" = 1 ] && exit 0
[ "$(id -u)" = 0 ] || die "must run as root: it creates cgroups and a PID namespace"
for c in unshare nsenter; do
    command -v "$c" >/dev/null || die "$c is missing (util-linux)"
done

# ---------------------------------------------------------------- tenantd
if [ "${TENANTD_FUZZ_NO_BUILD:-0}" != 1 ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
    cargo build --quiet --bin tenantd
fi
BIN="$REPO/target/debug/tenantd"
[ -x "$BIN" ] || die "$BIN is missing: run cargo build"

# ---------------------------------------------------------------- cgroup directories
# `<mount>\t<own cgroup dir>` of each v1 hierarchy tenantd uses, from this shell's own
# /proc/self/mountinfo and /proc/self/cgroup (as tenantd's V1Hierarchies::detect reads them).
HIER=$(python3 - <<'PY'
import os, sys
mounts = []
for line in open("/proc/self/mountinfo"):
    pre, post = line.split(" - ", 1)
    pre, post = pre.split(), post.split()
    if post[0] == "cgroup":
        mounts.append((pre[4], pre[3], set(post[2].split(","))))
cg = {}
for line in open("/proc/self/cgroup"):
    hid, ctrls, path = line.rstrip("\n").split(":", 2)
    if hid != "0":
        for c in ctrls.split(","):
            cg[c] = path
seen = set()
for c in ["cpu", "cpuacct", "memory", "blkio", "pids"]:
    m = next((m for m in mounts if c in m[2]), None)
    if m is None or c not in cg:
        sys.exit(f"the cgroup v1 hierarchy '{c}' is not mounted: this harness needs a cgroup v1 or hybrid host (CI is one)")
    point, root, _ = m
    path = cg[c]
    if root != "/":
        if not (path == root or path.startswith(root + "/")):
            sys.exit(f"own '{c}' cgroup {path} is outside its mount {point} (root {root})")
        path = path[len(root):]
    own = os.path.normpath(point + "/" + path.lstrip("/"))
    if own not in seen:
        seen.add(own)
        print(f"{point}\t{own}")
PY
) || die "cannot find the cgroup v1 hierarchies"
MOUNTS=()
DIRS=()
while IFS=$'\t' read -r mnt own; do
    d="$own/$TAG"
    case "$d" in "$mnt"/*) ;; *) die "refusing: $d is not below the cgroup mount $mnt" ;; esac
    [ "$(stat -fc %T "$own")" = cgroupfs ] || die "refusing: $own is not in a cgroup v1 hierarchy"
    [ ! -e "$d" ] || die "refusing: $d exists already (a previous run did not clean up?)"
    MOUNTS+=("$mnt")
    DIRS+=("$d")
done <<<"$HIER"

CREATED=()
WORK=""
UNSHARE_PID=""
NS_PID=""
cleanup() {
    local rc=$? d left=0
    set +e
    if [ -n "$NS_PID" ] && kill -0 "$NS_PID" 2>/dev/null; then
        kill -TERM "$NS_PID" # ns-init passes it on to the daemon
        for _ in $(seq 100); do kill -0 "$NS_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    # --kill-child: killing unshare SIGKILLs the namespace's PID 1, and with it every process
    # of the namespace (the daemon, the sleepers).
    [ -n "$UNSHARE_PID" ] && kill -KILL "$UNSHARE_PID" 2>/dev/null
    [ -n "$UNSHARE_PID" ] && wait "$UNSHARE_PID" 2>/dev/null
    for d in "${CREATED[@]}"; do
        for _ in $(seq 100); do
            find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
            [ -e "$d" ] || break
            sleep 0.1
        done
        if [ -e "$d" ]; then
            echo "[fuzz] cannot remove $d: $(cat "$d/cgroup.procs" 2>/dev/null | wc -l) processes left" >&2
            left=1
        fi
    done
    if [ -n "$WORK" ]; then
        [ -f "$WORK/daemon.log" ] && cp "$WORK/daemon.log" "$OUT/daemon.log"
        rm -rf "$WORK"
    fi
    [ "$left" = 0 ] || rc=1
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for d in "${DIRS[@]}"; do
    mkdir "$d"
    CREATED+=("$d")
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/$TAG.XXXXXX")
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf 'fuzz admin %s\n' "$TOKEN" >"$WORK/tokens"
chmod 600 "$WORK/tokens"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADDR="http://127.0.0.1:$PORT"

# ---------------------------------------------------------------- the daemon, in its namespace
log "tenantd serve on $ADDR in a PID namespace of its own; cgroup directories:"
printf '         %s\n' "${DIRS[@]}"
unshare --pid --fork --mount-proc --kill-child -- \
    bash "$REPO/tests/fuzz/ns-init.sh" "$BIN" "$PORT" "$WORK" "${DIRS[@]}" &
UNSHARE_PID=$!
for _ in $(seq 50); do
    NS_PID=$(cat "/proc/$UNSHARE_PID/task/$UNSHARE_PID/children" 2>/dev/null | awk '{print $1}')
    [ -n "$NS_PID" ] && break
    sleep 0.1
done
[ -n "$NS_PID" ] || die "unshare did not start the namespace"
ready=0
for _ in $(seq 600); do
    kill -0 "$NS_PID" 2>/dev/null || break
    if python3 - "$ADDR/readyz" 2>/dev/null <<'PY'; then
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
PY
        ready=1
        break
    fi
    sleep 0.1
done
if [ "$ready" != 1 ]; then
    cat "$WORK/daemon.log" >&2
    die "tenantd did not become ready within 60 s (its log is above)"
fi
# The daemon must govern below our directories and nowhere else.
ROOT=$(python3 - "$ADDR/v1/host" "$TOKEN" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
print(json.load(urllib.request.urlopen(req, timeout=10))["cgroup"]["root"])
PY
)
case "$ROOT" in
"${DIRS[0]}"/*) log "daemon root: $ROOT" ;;
*) die "refusing: the daemon's cgroup root $ROOT is not below ${DIRS[0]}" ;;
esac

# ---------------------------------------------------------------- schemathesis
ARGS=(--config-file "$REPO/tests/fuzz/schemathesis.toml" run "$ADDR/v1/openapi.json"
    --checks all
    --phases examples,coverage,fuzzing,stateful
    --max-examples "$EXAMPLES"
    --header "Authorization: Bearer $TOKEN"
    --request-timeout 30
    --continue-on-failure
    --generation-database none
    --report junit --report-dir "$OUT/report"
    --no-color)
[ -n "${TENANTD_FUZZ_MAX_TIME:-}" ] && ARGS+=(--max-time "$TENANTD_FUZZ_MAX_TIME")
[ -n "${TENANTD_FUZZ_SEED:-}" ] && ARGS+=(--seed "$TENANTD_FUZZ_SEED")
log "schemathesis ${ARGS[*]/$TOKEN/***} ${EXTRA[*]}"
t0=$(date +%s)
set +e
env PYTHONPATH="$REPO/tests/fuzz" SCHEMATHESIS_HOOKS=hooks \
    TENANTD_FUZZ_NS_PID="$NS_PID" TENANTD_FUZZ_CGROUP_DIRS="$(IFS=:; echo "${DIRS[*]}")" \
    "$VENV/bin/schemathesis" "${ARGS[@]}" "${EXTRA[@]}"
rc=$?
set -e
log "schemathesis exited with status $rc after $(($(date +%s) - t0)) s (junit: $OUT/report, daemon log: $OUT/daemon.log)"
if ! kill -0 "$NS_PID" 2>/dev/null; then
    log "the daemon's namespace died during the run"
    rc=1
fi
exit "$rc"
