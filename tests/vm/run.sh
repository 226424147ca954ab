#!/usr/bin/env bash
# Run a command as root inside a throw-away qemu VM with a pure cgroup-v2 kernel.
#
#   tests/vm/run.sh [--] CMD [ARGS...]
#
# The guest boots Debian's stock kernel (see build-assets.sh; assets are built on first use),
# chroots into this host's / shared READ-ONLY over virtio-9p, and runs CMD there in the
# caller's working directory (so host-built binaries run unchanged). Inside the guest:
#   /sys/fs/cgroup   cgroup2 (nsdelegate), root subtree_control = cpuset cpu io memory pids
#   /tmp, /run, /dev/shm   guest tmpfs (the host's are not visible, except the caller's
#                    working directory when it lies under /tmp: that is bind-mounted back)
#   /dev/vda         fresh sparse virtio-blk disk (per boot), maj:min in $TENANTD_TEST_BLOCKDEV
#   /run/tenantd-vm  per-run scratch share (writable, deleted after the run; kernel-pkg in it)
#   HOME=/root (read-only), PATH includes /root/.cargo/bin; cgroup of CMD = the root cgroup
# Env passed through: TENANTD_*, RUST_BACKTRACE, RUST_LOG. Set in the guest:
#   TENANTD_IN_VM=1 TENANTD_TEST_CGROUP_ROOT=/sys/fs/cgroup TENANTD_TEST_BLOCKDEV=<maj:min>
# CMD's stdout and stderr are both streamed live to this script's stdout (one serial line).
# Exit status = CMD's exit status (parsed from the console marker TENANTD-VM-EXIT=<rc>);
# 124 on timeout, 125 if the guest failed to boot/set up or crashed without a status.
#
# Knobs (env):
#   TENANTD_VM_CACHE    asset cache dir (default /var/cache/tenantd-vm)
#   TENANTD_VM_TIMEOUT  seconds before qemu is killed (default 1200)
#   TENANTD_VM_CPUS     vCPUs (default 2)       TENANTD_VM_MEM  guest RAM (default 1G)
#   TENANTD_VM_DISK_SIZE  size of /dev/vda (default 1G, sparse)
#   TENANTD_VM_RW_DIR   absolute host dir (no spaces) shared WRITABLE at the same path in the
#                       guest, e.g. to collect results (everything else of / is read-only)
#   TENANTD_VM_KEEP=1   keep the run dir (console.log, cmd.sh) under $CACHE/runs/
#   TENANTD_VM_VERBOSE=1  show the kernel's boot messages (loglevel 7)
#   TENANTD_VM_REBUILD=1  run build-assets.sh (kernel version check) before booting
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${TENANTD_VM_CACHE:-/var/cache/tenantd-vm}"
TIMEOUT="${TENANTD_VM_TIMEOUT:-1200}"
CPUS="${TENANTD_VM_CPUS:-2}"
MEM="${TENANTD_VM_MEM:-1G}"
DISK_SIZE="${TENANTD_VM_DISK_SIZE:-1G}"
say() { printf '[vm] %s\n' "$*" >&2; }

[ "${1:-}" = "--" ] && shift
if [ $# -eq 0 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi

export TENANTD_VM_CACHE="$CACHE"
# Fast path: assets present and built from the current guest-init/build script -> boot right
# away. (build-assets.sh itself also checks for a new kernel package; tests/run.sh calls it.)
want="$(cat "$HERE/guest-init" "$HERE/build-assets.sh" | sha256sum | cut -c1-16)"
have="$(cat "$CACHE/initramfs.stamp" 2>/dev/null || true)"
if [ ! -s "$CACHE/vmlinux" ] || [ ! -s "$CACHE/initramfs.cpio" ] || [ ! -e "$CACHE/disk.img" ] \
    || [ "${have##* }" != "$want" ] || [ "${TENANTD_VM_REBUILD:-0}" = 1 ]; then
    bash "$HERE/build-assets.sh"
fi

mkdir -p "$CACHE/runs"
RUNDIR="$(mktemp -d "$CACHE/runs/run.XXXXXX")"
cleanup() {
    if [ -s "$RUNDIR/qemu.pid" ] && [ ! -e "$RUNDIR/qemu.rc" ]; then
        kill "$(cat "$RUNDIR/qemu.pid")" 2>/dev/null && say "killed qemu"
        sleep 1
    fi
    if [ "${TENANTD_VM_KEEP:-0}" = 1 ]; then say "run dir kept: $RUNDIR"; else rm -rf "$RUNDIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$RUNDIR/share"
cp "$CACHE/kernel.stamp" "$RUNDIR/share/kernel-pkg" 2>/dev/null || true

# ---- the script the guest runs (with the host's /bin/bash, inside the chroot)
{
    echo '#!/bin/bash'
    echo 'export PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    echo 'export HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM=dumb'
    while IFS= read -r name; do
        case "$name" in
            TENANTD_IN_VM | TENANTD_TEST_CGROUP_ROOT | TENANTD_TEST_BLOCKDEV) continue ;;
        esac
        printf 'export %s=%q\n' "$name" "${!name}"
    done < <(compgen -e | grep -E '^(TENANTD_[A-Za-z0-9_]*|RUST_BACKTRACE|RUST_LOG)$' || true)
    echo 'export TENANTD_IN_VM=1 TENANTD_TEST_CGROUP_ROOT=/sys/fs/cgroup'
    echo 'export TENANTD_TEST_BLOCKDEV="$(cat /sys/block/vda/dev 2>/dev/null)"'
    printf 'cd -- %q 2>/dev/null || { echo "tenantd-vm: working directory %q is not visible in the guest (/tmp, /run, /dev/shm are guest tmpfs)" >&2; exit 126; }\n' "$PWD" "$PWD"
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$RUNDIR/share/cmd.sh"

cp --sparse=always "$CACHE/disk.img" "$RUNDIR/disk.img" 2>/dev/null || truncate -s "$DISK_SIZE" "$RUNDIR/disk.img"
[ "$DISK_SIZE" = 1G ] || truncate -s "$DISK_SIZE" "$RUNDIR/disk.img"

if [ "${TENANTD_VM_VERBOSE:-0}" = 1 ]; then KLOG="loglevel=7"; else KLOG="quiet loglevel=3"; fi
APPEND="console=ttyS0 $KLOG panic=-1 rdinit=/init random.trust_cpu=on mitigations=off"
QARGS=(
    -nodefaults -no-user-config -no-reboot -display none
    -accel tcg,thread=multi -M q35,sata=off,smbus=off -cpu max -smp "$CPUS" -m "$MEM"
    -kernel "$CACHE/vmlinux" -initrd "$CACHE/initramfs.cpio"
    -chardev stdio,id=con,signal=off -serial chardev:con
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
    -virtfs "local,path=$RUNDIR/share,mount_tag=tenantdrun,security_model=none,multidevs=remap"
    -drive "file=$RUNDIR/disk.img,if=virtio,format=raw"
    -nic none
)
if [ -n "${TENANTD_VM_RW_DIR:-}" ]; then
    case "$TENANTD_VM_RW_DIR" in
        /*) ;; *) say "TENANTD_VM_RW_DIR must be absolute"; exit 2 ;;
    esac
    case "$TENANTD_VM_RW_DIR" in *[[:space:],]*) say "TENANTD_VM_RW_DIR must not contain spaces or commas"; exit 2 ;; esac
    mkdir -p "$TENANTD_VM_RW_DIR"
    QARGS+=(-virtfs "local,path=$TENANTD_VM_RW_DIR,mount_tag=tenantdrw,security_model=none,multidevs=remap")
    APPEND="$APPEND tenantd.rw=$TENANTD_VM_RW_DIR"
fi

# The guest mounts its own tmpfs on /tmp; a checkout there (CI may clone into /tmp) is
# bind-mounted back from the host's read-only root, so the caller's directory stays visible.
case "$PWD" in
    /tmp/*)
        case "$PWD" in *[[:space:],]*) say "the working directory must not contain spaces or commas: $PWD"; exit 2 ;; esac
        APPEND="$APPEND tenantd.cwd=$PWD" ;;
esac

say "booting $(cat "$CACHE/kernel-release") (cpus=$CPUS mem=$MEM timeout=${TIMEOUT}s): $*"
START=$(date +%s.%N)
# Console: strip the serial line's \r, keep a full log, hide the status marker from the caller.
# The pipeline runs in the background and we `wait` for it, so INT/TERM reach our trap at once
# (cleanup then kills qemu through its pidfile).
{
    qrc=0
    timeout -k 10 "$TIMEOUT" qemu-system-x86_64 "${QARGS[@]}" -append "$APPEND" \
        -pidfile "$RUNDIR/qemu.pid" </dev/null 2>"$RUNDIR/qemu.stderr" || qrc=$?
    echo "$qrc" >"$RUNDIR/qemu.rc"
} | sed -u 's/\r$//' | tee "$RUNDIR/console.log" \
    | sed -u -e '/^TENANTD-VM-EXIT=[0-9]*$/d' -e '/^\[ *[0-9.]*\] reboot: Power down$/d' &
wait $! || true
QRC="$(cat "$RUNDIR/qemu.rc" 2>/dev/null || echo 255)"
ELAPSED=$(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')

if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
    say "TIMEOUT: the guest did not finish within ${TIMEOUT}s; qemu was killed (set TENANTD_VM_TIMEOUT)"
    exit 124
fi
RC="$(grep -a -E '^TENANTD-VM-EXIT=[0-9]+$' "$RUNDIR/console.log" | tail -1 | cut -d= -f2 || true)"
if [ -z "$RC" ]; then
    say "FAILED: the guest crashed or powered off without reporting a status (qemu rc=$QRC, ${ELAPSED}s)"
    [ -s "$RUNDIR/qemu.stderr" ] && sed 's/^/[vm] qemu: /' "$RUNDIR/qemu.stderr" >&2
    tail -n 20 "$RUNDIR/console.log" | sed 's/^/[vm] console: /' >&2
    exit 125
fi
if grep -q '^TENANTD-VM-ERROR:' "$RUNDIR/console.log"; then
    say "guest setup failed: $(grep '^TENANTD-VM-ERROR:' "$RUNDIR/console.log" | head -1)"
fi
say "guest exited with status $RC after ${ELAPSED}s"
exit "$RC"
