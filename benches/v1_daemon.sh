# Sourced by the benches that measure `tenantd serve` on a cgroup v1 or hybrid host (and, with
# gov_dirs/gov_serve, on pure cgroup v2)
# (api_reads_under_load.sh, changes.sh, daemon_cpu.sh): a governor root below the script's own cgroup in each
# v1 hierarchy, the daemon started inside it, and the cleanup that kills what runs there and
# removes every directory it created. Nothing outside its own directories is written.

# v1_dirs NAME: creates <own cgroup>/NAME in each v1 hierarchy (refusing if one exists) and
# lists them in the array `dirs`.
v1_dirs() {
  dirs=()
  for h in cpu cpuacct memory blkio pids; do
    own=$(awk -F: -v h="$h" '$2==h{print $3}' /proc/self/cgroup)
    [ -n "$own" ] || { echo "no v1 '$h' hierarchy in /proc/self/cgroup: this bench needs a v1 or hybrid host"; exit 1; }
    d="/sys/fs/cgroup/$h${own%/}/$1"
    [ ! -e "$d" ] || { echo "$d exists"; exit 1; }
    mkdir "$d"; dirs+=("$d")
  done
}

# v1_cleanup: kills the daemon and every process in `dirs`, removes them, and removes `work`.
v1_cleanup() {
  [ -z "${daemon:-}" ] || kill -9 "$daemon" 2>/dev/null || true
  for d in "${dirs[@]}"; do
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  sleep 1
  for d in "${dirs[@]}"; do find "$d" -depth -type d -delete 2>/dev/null || true; done
  for d in "${dirs[@]}"; do [ ! -e "$d" ] || echo "could not remove $d"; done
  rm -rf "$work"
}

# v1_serve BIN PORT DB LOG: starts `BIN serve` inside `dirs` (its default root is there; a move
# that fails stops it before it starts, so no daemon ever runs in the caller's own cgroups) with
# the v1 backend, sets `daemon` to its PID and waits for /healthz.
v1_serve() {
  sh -c 'for d in "$@"; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec '"$1"' serve --listen 127.0.0.1:'"$2"' --db '"$3"' --cgroup-version v1' \
    sh "${dirs[@]}" 2>"$4" &
  daemon=$!
  disown "$daemon"
  for _ in $(seq 100); do curl -sf "127.0.0.1:$2/healthz" >/dev/null && break; sleep 0.1; done
}

# gov_dirs NAME: the governor root of a bench on either kind of host. On a v1 or hybrid host
# as v1_dirs (MODE=v1); on a pure cgroup v2 host (the VM) `<own cgroup2 directory>/NAME`, not
# created here (the daemon creates it below the caller's own directory), in `dirs` (MODE=v2).
gov_dirs() {
  if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    MODE=v2
    own=$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup)
    d="/sys/fs/cgroup${own%/}/$1"
    [ ! -e "$d" ] || { echo "$d exists"; exit 1; }
    dirs=("$d")
  else
    MODE=v1
    v1_dirs "$1"
  fi
}

# gov_serve BIN PORT DB LOG: v1_serve on a v1 or hybrid host; on cgroup v2 the daemon with
# `--cgroup-root` at the directory gov_dirs named. Sets `daemon` and waits for /healthz.
gov_serve() {
  if [ "$MODE" = v1 ]; then
    v1_serve "$@"
    return
  fi
  "$1" serve --listen "127.0.0.1:$2" --db "$3" --cgroup-root "${dirs[0]}" \
    --cgroup-mount /sys/fs/cgroup 2>"$4" &
  daemon=$!
  disown "$daemon"
  for _ in $(seq 300); do curl -sf "127.0.0.1:$2/healthz" >/dev/null && break; sleep 0.1; done
}

# free_port: a TCP port nothing on this host uses now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
