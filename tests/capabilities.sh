#!/usr/bin/env bash
# The unit's CapabilityBoundingSet= is what the daemon needs, checked on this host's kernel:
# `tenantd serve` runs as root with exactly those capabilities (setpriv --bounding-set), on
# the cgroup v1 backend in cgroups this script makes below its own (the CI host is a hybrid
# host; on a host without v1 hierarchies it says so and stops), and must create a tenant, attach a process of another
# user (uid 65534) and delete the tenant with kill=true, killing that process. Then each
# capability of the set is taken away in turn, and a moved-back process check shows why
# CAP_DAC_OVERRIDE is there. Prints one line per check; exit 1 on a failure.
# Usage: tests/capabilities.sh [BINARY] [UNIT]
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="$(realpath "${1:-target/debug/tenantd}")"
UNIT="${2:-packaging/tenantd.service}"
[ "$(id -u)" = 0 ] || { echo "FAIL tests/capabilities.sh must run as root"; exit 1; }
WORK="$(mktemp -d /tmp/tenantd-caps.XXXXXX)"
FAILS=0
ok() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; FAILS=$((FAILS + 1)); }

# CapabilityBoundingSet=CAP_KILL CAP_DAC_OVERRIDE -> "kill dac_override"
CAPS="$(sed -n 's/^CapabilityBoundingSet=//p' "$UNIT" | tr 'A-Z' 'a-z' | sed 's/cap_//g')"
[ -n "$CAPS" ] || { echo "FAIL no CapabilityBoundingSet= in $UNIT"; exit 1; }
echo "the unit's capabilities: $CAPS"
# This models root with a bounding set and nothing else: a unit that changes how root gets its
# capabilities (SecureBits=noroot gives it none), or runs as another user, needs a new model.
if grep -qE '^(SecureBits|User|DynamicUser|AmbientCapabilities)=.' "$UNIT"; then
    echo "FAIL $UNIT sets $(grep -oE '^(SecureBits|User|DynamicUser|AmbientCapabilities)=.+' "$UNIT" | tr '\n' ' '): tests/capabilities.sh models only root with CapabilityBoundingSet="
    exit 1
fi

# Our own cgroups, one per hierarchy the daemon drives, below the cgroups we are in.
NAME="tenantd-caps-$$"
DIRS=()
while IFS=: read -r _ ctrls path; do
    case ",$ctrls," in
    *,cpu,* | *,cpuacct,* | *,memory,* | *,blkio,* | *,pids,*) mnt="/sys/fs/cgroup/$ctrls" ;;
    *) continue ;;
    esac
    [ -d "$mnt" ] || continue
    d="$mnt${path%/}/$NAME"
    mkdir "$d" && DIRS+=("$d")
done </proc/self/cgroup
if [ "${#DIRS[@]}" = 0 ]; then
    echo "SKIPPED tests/capabilities.sh: no cgroup v1 hierarchy here (it drives the v1 backend of a hybrid host)"
    exit 0
fi
cleanup() {
    for d in "${DIRS[@]}"; do
        find "$d" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null
        rmdir "$d" 2>/dev/null || echo "warning: cannot remove $d"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# A port no socket holds now, chosen by the kernel: a random one collided with a socket of
# something else on the host once (the daemon could not listen, and the check failed as if
# the capability were at fault).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# serve CAPS-SPEC PORT: starts the daemon in our cgroups with that bounding set, logging to
# $WORK/log-PORT, and waits until it answers; its PID is in $daemon.
serve() {
    local spec="$1" port="$2"
    (
        for d in "${DIRS[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
        exec setpriv --bounding-set="$spec" --inh-caps=-all "$BIN" serve --listen "127.0.0.1:$port" \
            --db "$WORK/db-$port" --reconcile-interval-s 3600 2>"$WORK/log-$port"
    ) &
    daemon=$!
    for _ in $(seq 100); do "$BIN" host --addr "http://127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
}

# events CAPS-SPEC: starts the daemon with that bounding set, gives it a placement rule (the
# daemon subscribes to the kernel's process events only while a rule is in force; this one
# names an exe no process runs, so it moves nothing) and prints what its log says of them.
events() {
    local port daemon said=none
    port="$(free_port)"
    local log="$WORK/log-$port"
    serve "$1" "$port"
    printf 'name = "probe"\nplacement = { exe = ["/nonexistent/tenantd-caps-probe-%s"] }\n' "$$" >"$WORK/rule.toml"
    "$BIN" tenant apply --addr "http://127.0.0.1:$port" -f "$WORK/rule.toml" >/dev/null 2>&1 ||
        echo "warning: the probe rule was refused" >&2
    for _ in $(seq 50); do
        grep -q "placement: listening to the kernel's process events (" "$log" && { said=listening; break; }
        grep -q "placement: the kernel's process events are unavailable (" "$log" && { said=unavailable; break; }
        sleep 0.1
    done
    if ! kill "$daemon" 2>/dev/null; then
        echo "the daemon had exited; its log:" >&2
        tail -5 "$log" >&2
    fi
    wait "$daemon" 2>/dev/null
    echo "events=$said"
}

# run CAPS-SPEC: starts the daemon with that bounding set, attaches a uid-65534 sleep,
# deletes with --kill; prints "attach=OK|FAIL delete=OK|FAIL killed=yes|no".
run() {
    local port daemon sleeper attach=FAIL del=FAIL killed=no
    port="$(free_port)"
    local addr="http://127.0.0.1:$port"
    serve "$1" "$port"
    printf 'name = "caps"\ncpu = { guarantee_pct = "10%%" }\n' >"$WORK/t.toml"
    "$BIN" tenant apply --addr "$addr" -f "$WORK/t.toml" >/dev/null 2>&1
    setpriv --reuid=65534 --regid=65534 --clear-groups sleep 120 &
    sleeper=$!
    sleep 0.2
    "$BIN" procs add --addr "$addr" caps "$sleeper" >/dev/null 2>&1 && attach=OK
    "$BIN" tenant delete --addr "$addr" --kill caps >/dev/null 2>&1 && del=OK
    sleep 0.3
    kill -0 "$sleeper" 2>/dev/null || killed=yes
    kill -9 "$sleeper" 2>/dev/null
    wait "$sleeper" 2>/dev/null
    kill "$daemon"
    wait "$daemon" 2>/dev/null
    echo "attach=$attach delete=$del killed=$killed"
}

spec="-all$(for c in $CAPS; do printf ',+%s' "$c"; done)"
got="$(run "$spec")"
[ "$got" = "attach=OK delete=OK killed=yes" ] && ok "with $CAPS: $got" || fail "with $CAPS: $got"
got="$(run "${spec/,+kill/}")"
case "$got" in
*delete=FAIL*killed=no) ok "without kill: $got (a SIGKILL to another user's process needs CAP_KILL)" ;;
*) fail "without kill: $got (expected the delete with kill to fail)" ;;
esac

# CAP_NET_ADMIN: the subscription to the kernel's process events (placement at exec).
got="$(events "$spec")"
[ "$got" = "events=listening" ] && ok "with $CAPS: $got" || fail "with $CAPS: $got (expected the daemon to subscribe)"
got="$(events "${spec/,+net_admin/}")"
[ "$got" = "events=unavailable" ] && ok "without net_admin: $got (the proc connector needs CAP_NET_ADMIN)" ||
    fail "without net_admin: $got (expected the log to say the events are unavailable)"

# CAP_DAC_OVERRIDE: undoing an attach writes the process back into the cgroup it came from,
# which may belong to another user (a user manager's delegated subtree).
d="${DIRS[0]}/owned-by-65534"
mkdir "$d" && chown -R 65534:65534 "$d"
sleep 60 &
s=$!
if setpriv --bounding-set="$spec" --inh-caps=-all sh -c "echo $s >'$d/cgroup.procs'" 2>/dev/null &&
    ! setpriv --bounding-set="${spec/,+dac_override/}" --inh-caps=-all sh -c "echo $s >'$d/cgroup.procs'" 2>/dev/null; then
    ok "with dac_override root moves a process into a cgroup uid 65534 owns; without, it cannot"
else
    fail "moving a process into a cgroup another user owns does not need CAP_DAC_OVERRIDE here"
fi
echo "$s" >"${DIRS[0]}/cgroup.procs"
kill "$s"
wait "$s" 2>/dev/null

[ "$FAILS" = 0 ] && echo "capabilities: all checks passed" || { echo "capabilities: $FAILS checks failed"; exit 1; }
