#!/usr/bin/env bash
# Capture real cgroup interface files as parser fixtures into tests/fixtures/cgroupfs/.
#
#   bash tests/vm/capture-fixtures.sh            (on the host, as root)
#
# 1. READS (never writes) this host's cgroup v1 files into v1-host-<uname -r>/
#    (skipped when the host has no v1 memory hierarchy).
# 2. Boots the test VM (tests/vm/run.sh) with the fixtures dir shared writable and re-runs
#    itself there with --guest: builds a small cgroup v2 tree, runs a workload (busy loop,
#    O_DIRECT IO on /dev/vda, one OOM kill, one pids.max hit, a cpu.max-throttled busy loop)
#    and copies the kernel's files into <guest kernel release>/.
# Existing files of the same kernel release are overwritten.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FIX="${TENANTD_FIXTURES_DIR:-$(cd "$HERE/../fixtures" 2>/dev/null && pwd || echo "$HERE/../fixtures")/cgroupfs}"
NOW="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# cp_file SRC DEST: copy one kernel file by reading it (cat; never opens SRC for writing).
# DEST's directory must exist (process spawns are slow under emulation: one per file).
cp_file() {
    local src="$1" dst="$2"
    if [ -r "$src" ] && cat "$src" >"$dst" 2>/dev/null; then
        return 0
    fi
    rm -f "$dst"
    echo "  (not present: $src)"
    MISSING+=("$src")
    return 1
}
MISSING=()

# ===================================================================== host (v1, read-only)
capture_v1_host() {
    local rel out mempath f
    rel="$(uname -r)"
    out="$FIX/v1-host-$rel"
    mempath="$(awk -F: '$2 == "memory" {print $3}' /proc/self/cgroup)"
    if [ -z "$mempath" ] || [ ! -d /sys/fs/cgroup/memory ]; then
        echo "host has no cgroup v1 memory hierarchy; skipping the v1 capture"
        return 0
    fi
    echo "capturing v1 files of this host (read-only) into $out"
    rm -rf "$out"
    mkdir -p "$out"/{memory,cpu,cpuacct,blkio,pids,proc}
    MISSING=()
    for f in memory.usage_in_bytes memory.limit_in_bytes memory.stat memory.oom_control \
        memory.failcnt memory.soft_limit_in_bytes; do
        cp_file "/sys/fs/cgroup/memory$mempath/$f" "$out/memory/$f" || true
    done
    for f in cpu.shares cpu.cfs_quota_us cpu.cfs_period_us cpu.stat; do
        cp_file "/sys/fs/cgroup/cpu/$f" "$out/cpu/$f" || true
    done
    for f in cpuacct.usage cpuacct.stat; do
        cp_file "/sys/fs/cgroup/cpuacct/$f" "$out/cpuacct/$f" || true
    done
    for f in blkio.throttle.io_service_bytes blkio.throttle.io_serviced blkio.weight; do
        cp_file "/sys/fs/cgroup/blkio/$f" "$out/blkio/$f" || true
    done
    cp_file /sys/fs/cgroup/pids/pids.current "$out/pids/pids.current" || true
    cp_file /proc/self/cgroup "$out/proc/self-cgroup"
    cp_file /proc/self/mountinfo "$out/proc/self-mountinfo"
    local missing_txt="none"
    [ "${#MISSING[@]}" -gt 0 ] && missing_txt="$(printf '`%s` ' "${MISSING[@]}")"
    find "$out" -type d -empty -delete
    cat >"$out/PROVENANCE.md" <<EOF
# cgroup v1 files of a hybrid-mode host

- Kernel: \`$rel\` (\`$(uname -v)\`), cgroup *hybrid* mode: v1 controllers under
  \`/sys/fs/cgroup/<controller>\`, an empty v2 hierarchy at \`/sys/fs/cgroup/unified\`.
- Captured: $NOW by \`tests/vm/capture-fixtures.sh\` (host part), as root, **read-only**
  (\`cat\` of each file; nothing was written to the host's cgroups).
- Workload: none started for the capture; whatever the host (a CI/dev VM building tenantd) was doing.
- \`memory/\`: the capturing shell's own v1 memory cgroup, \`/sys/fs/cgroup/memory$mempath\`.
- \`cpu/\`, \`cpuacct/\`, \`blkio/\`, \`pids/\`: the root of each hierarchy (separate \`cpu\` and
  \`cpuacct\` hierarchies on this host).
- \`proc/self-cgroup\`, \`proc/self-mountinfo\`: \`/proc/self/{cgroup,mountinfo}\` of \`cat\`.
- Not present on this host: $missing_txt
EOF
}

# ===================================================================== guest (v2)
capture_v2_guest() {
    local root="${TENANTD_TEST_CGROUP_ROOT:-/sys/fs/cgroup}" dev="${TENANTD_TEST_BLOCKDEV:-}"
    local rel out f g name
    rel="$(uname -r)"
    out="$FIX/$rel"
    [ -n "$dev" ] || { echo "no TENANTD_TEST_BLOCKDEV"; exit 1; }
    name="$(basename "$(readlink -f "/sys/dev/block/$dev")")"
    echo "capturing cgroup v2 files of $rel into $out"
    rm -rf "$out"
    mkdir -p "$out"/root "$out"/fixture/{work,throttled,empty}
    MISSING=()
    P="$root/fixture" # global: the EXIT trap uses it
    trap 'for d in "$P"/*/; do rmdir "$d" 2>/dev/null; done; rmdir "$P" 2>/dev/null' EXIT

    cp_file "$root/io.cost.qos" "$out/root/io.cost.qos.before-enable"
    # enable iocost on the disk so io.weight / io.stat cost.* are live (user-controlled QoS)
    echo "$dev enable=1 ctrl=user rpct=95.00 rlat=5000 wpct=95.00 wlat=5000 min=50.00 max=150.00" \
        >"$root/io.cost.qos"

    mkdir "$P"
    echo "+cpu +memory +io +pids" >"$P/cgroup.subtree_control"
    mkdir "$P/work" "$P/throttled" "$P/empty"

    # --- work: non-default limits, then busy loop, direct IO, one OOM kill, one pids.max hit
    echo 200 >"$P/work/cpu.weight"
    echo 4M >"$P/work/memory.min"
    echo 8M >"$P/work/memory.low"
    echo 96M >"$P/work/memory.high"
    echo 64M >"$P/work/memory.max"
    echo 0 >"$P/work/memory.swap.max"
    echo 16 >"$P/work/pids.max"
    echo "$dev wbps=52428800 riops=2000" >"$P/work/io.max"
    echo "$dev 200" >"$P/work/io.weight"
    run_in() { bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$@"; }
    SECONDS=0
    echo "  [${SECONDS}s] workload: busy loop 3 s"
    run_in "$P/work" timeout 3 /bin/sh -c 'while :; do :; done' || true
    echo "  [${SECONDS}s] workload: dd 16 MiB write + 8 MiB read, O_DIRECT, /dev/$name"
    run_in "$P/work" dd if=/dev/zero of="/dev/$name" bs=1M count=16 oflag=direct status=none
    run_in "$P/work" dd if="/dev/$name" of=/dev/null bs=1M count=8 iflag=direct status=none
    echo "  [${SECONDS}s] workload: python3 allocating 200 MiB under memory.max 64M (expect SIGKILL)"
    { run_in "$P/work" python3 -c 'b = b"x" * (200 << 20)'; } 2>/dev/null && echo "  !! not killed"
    echo "  [${SECONDS}s] workload: 24 background sleeps under pids.max 16"
    run_in "$P/work" /bin/sh -c 'for i in $(seq 24); do sleep 1 & done 2>/dev/null; wait' 2>/dev/null || true
    sleep 0.5
    # --- throttled: cpu.max 20 ms per 100 ms, busy loop 3 s
    echo "20000 100000" >"$P/throttled/cpu.max"
    echo "  [${SECONDS}s] workload: busy loop 3 s under cpu.max 20000 100000"
    run_in "$P/throttled" timeout 3 /bin/sh -c 'while :; do :; done' || true
    # /proc/self/cgroup of a process inside a child
    bash -c 'echo $$ >"$0/cgroup.procs" && exec cat /proc/self/cgroup' "$P/empty" >"$out/proc-self-cgroup.in-child" 2>/dev/null \
        || true
    sleep 1

    for f in cgroup.controllers cgroup.subtree_control cgroup.procs cgroup.events cgroup.type \
        cpu.stat cpu.weight cpu.weight.nice cpu.max \
        memory.current memory.peak memory.stat memory.events memory.events.local memory.min \
        memory.low memory.high memory.max memory.swap.current memory.swap.max memory.swap.events \
        io.stat io.max io.weight io.bfq.weight cpu.pressure memory.pressure io.pressure \
        pids.current pids.max pids.events; do
        cp_file "$P/work/$f" "$out/fixture/work/$f" || true
    done
    ls "$P/work" >"$out/fixture/work/FILES.txt"
    for f in cgroup.procs cgroup.events cpu.stat cpu.max cpu.weight; do
        cp_file "$P/throttled/$f" "$out/fixture/throttled/$f" || true
    done
    for f in cgroup.procs cgroup.events cpu.stat; do
        cp_file "$P/empty/$f" "$out/fixture/empty/$f" || true
    done
    for f in cgroup.controllers cgroup.subtree_control; do
        cp_file "$P/$f" "$out/fixture/$f" || true
    done
    for f in io.cost.qos io.cost.model cgroup.controllers cgroup.subtree_control cpu.stat \
        cpu.pressure memory.pressure io.pressure io.stat memory.stat; do
        cp_file "$root/$f" "$out/root/$f" || true
    done
    ls "$root" >"$out/root/FILES.txt"
    cp_file /proc/self/cgroup "$out/proc-self-cgroup"
    cp_file /proc/self/mountinfo "$out/proc-self-mountinfo"
    echo "$dev" >"$out/blockdev"

    local missing_txt="none"
    [ "${#MISSING[@]}" -gt 0 ] && missing_txt="$(printf '`%s` ' "${MISSING[@]}")"
    find "$out" -type d -empty -delete
    cat >"$out/PROVENANCE.md" <<EOF
# cgroup v2 files of Debian's stock kernel $rel

- Kernel: \`$rel\` (\`$(uname -v)\`), Debian's \`$(cat /run/tenantd-vm/kernel-pkg 2>/dev/null || echo linux-image-$rel)\`,
  unmodified, booted in the tenantd test VM (\`tests/vm/run.sh\`: qemu TCG, q35, $(nproc) vCPUs,
  $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) MiB RAM, no swap, virtio-blk \`/dev/$name\` ($dev) = a sparse file on the host).
- Pure cgroup v2: cgroup2 mounted with \`nsdelegate\` at \`/sys/fs/cgroup\`, root
  \`cgroup.subtree_control\` = \`$(cat "$root/cgroup.subtree_control")\`.
- Captured: $NOW with \`bash tests/vm/capture-fixtures.sh\` (the \`--guest\` part), each file read with \`cat\`.
- Emulated CPU: all times and rates are several times slower than real hardware; use these
  files for *formats*, not for numbers.

## Layout
- \`root/\`: files of the root cgroup. \`io.cost.qos.before-enable\` is the root's io.cost.qos at
  boot (empty); then iocost was enabled on $dev with
  \`$dev enable=1 ctrl=user rpct=95.00 rlat=5000 wpct=95.00 wlat=5000 min=50.00 max=150.00\`,
  so \`root/io.cost.qos\`, \`root/io.cost.model\` and the \`cost.*\` keys of io.stat are live.
- \`fixture/\`: \`/sys/fs/cgroup/fixture\` (subtree_control \`+cpu +memory +io +pids\`).
- \`fixture/work/\`: limits set first: cpu.weight 200, memory.min 4M, memory.low 8M,
  memory.high 96M, memory.max 64M, memory.swap.max 0, pids.max 16,
  io.max \`$dev wbps=52428800 riops=2000\`, io.weight \`$dev 200\`. Workload, one process at a time:
  \`timeout 3 sh -c 'while :; do :; done'\`; \`dd\` 16 MiB write (\`oflag=direct\`) and 8 MiB read
  (\`iflag=direct\`) on /dev/$name; python3 allocating 200 MiB (OOM-killed once: see
  memory.events); bash forking 24 \`sleep 1\` (pids.max hit: see pids.events). Captured after
  all of it exited, so \`cgroup.procs\` is empty and \`cgroup.events\` says populated 0.
  \`FILES.txt\` lists every interface file of that cgroup on this kernel.
- \`fixture/throttled/\`: cpu.max \`20000 100000\`, a 3 s busy loop: cpu.stat with nr_throttled > 0.
- \`fixture/empty/\`: a cgroup that only ever held the \`cat\` of \`proc-self-cgroup.in-child\`.
- \`proc-self-cgroup\` (a process in the root cgroup), \`proc-self-cgroup.in-child\`
  (a process in \`/fixture/empty\`), \`proc-self-mountinfo\` (guest view: 9p host root, tmpfs, cgroup2).
- \`blockdev\`: the MAJ:MIN of the virtio disk.
- Not captured (absent): $missing_txt (io.bfq.weight only exists when BFQ is the device's scheduler; /dev/$name uses $(cat /sys/block/$name/queue/scheduler 2>/dev/null))
EOF
    echo "done: $out"
}

if [ "${1:-}" = --guest ]; then
    [ "${TENANTD_IN_VM:-0}" = 1 ] || { echo "--guest only runs inside the test VM" >&2; exit 2; }
    FIX="$2"
    capture_v2_guest
    exit 0
fi

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
mkdir -p "$FIX"
FIX="$(cd "$FIX" && pwd)"
capture_v1_host
echo "booting the test VM for the v2 capture"
TENANTD_VM_RW_DIR="$FIX" bash "$HERE/run.sh" bash "$HERE/capture-fixtures.sh" --guest "$FIX"
