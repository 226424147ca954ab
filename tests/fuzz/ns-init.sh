#!/usr/bin/env bash
# PID 1 of the fuzz run's own PID namespace (started by tests/fuzz/schemathesis.sh through
# `unshare --pid --fork --mount-proc --kill-child`). It moves itself into the harness's cgroup
# directories (so the daemon's default v1 root, `<its own cgroup>/tenantd`, is below them),
# starts `tenantd serve` and reaps every process of the namespace until the daemon exits.
# SIGTERM is passed on to the daemon. When this shell exits the kernel kills whatever is left
# in the namespace: the daemon and the harness's sleepers, nothing else.
#
# Args: TENANTD_BIN PORT WORKDIR CGROUP_DIR...
set -u
bin="$1" port="$2" work="$3"
shift 3
for d in "$@"; do
    echo $$ >"$d/cgroup.procs" || { echo "ns-init: cannot join $d" >&2; exit 1; }
done
# The sleepers the fuzzer attaches live in this shell's cgroup, which is init's cgroup of the
# namespace and so protected by default. Nothing but the harness's own processes lives in the
# namespace, so the fuzz run lifts that protection (PID 1, the daemon and its threads stay
# refused whatever the configuration).
printf 'protected_cgroups = []\n' >"$work/tenantd.toml"
"$bin" serve --config "$work/tenantd.toml" --listen "127.0.0.1:$port" --db "$work/tenantd.db" \
    --token-file "$work/tokens" --cgroup-version v1 --reconcile-interval-s 3600 \
    </dev/null >>"$work/daemon.log" 2>&1 &
daemon=$!
trap 'kill -TERM "$daemon" 2>/dev/null' TERM INT
# `wait` returns early when a trapped signal arrives: wait again until the daemon is gone.
while kill -0 "$daemon" 2>/dev/null; do
    wait "$daemon"
    rc=$?
done
echo "ns-init: tenantd exited with status ${rc:-unknown}" >>"$work/daemon.log"
exit "${rc:-1}"
