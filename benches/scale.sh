#!/usr/bin/env bash
# Issue 15's targets 1, 2, 4 and 5 in one command, on this host's backend or in the cgroup v2 VM:
#   sudo bash benches/scale.sh [--quick] [--vm] [--skip-bench]
# 1. changes:  benches/changes.sh      PUT/PATCH/DELETE/GET p50/p99 at 1,000 and 10,000 tenants,
#                                       flat and 100 x 100, and the ratio 10,000 / 1,000
# 2. sampling: benches/daemon_cpu.sh   the running daemon's own CPU at 1,000 and 10,000 tenants
#                                       created through the API, sample_interval_s 1
# 4. memory:   benches/daemon_cpu.sh   VmRSS / VmHWM of the same daemons
# 5. /metrics: benches/daemon_cpu.sh   CPU of one GET /metrics at 10,000 tenants
# and first `cargo bench --bench sampler -- 1000 10000` (the sweep function on ordinary files,
# with the bare readers' floor in the same run; --skip-bench leaves it out).
#
# --vm runs the same in the qemu cgroup v2 VM (tests/vm/run.sh: a real 6.1 kernel, emulated, so
# only shares and ratios mean anything) at 1,000 tenants on real cgroups, and adds the bare
# `pread` reader of the same 1,000 tenants' files in the same boot (daemon_cpu.sh --bare) for
# the ratio; 10,000 tenants are left out there (creating them alone takes most of an hour under
# emulation). The descriptor limits are systemd's defaults for a service (soft 1,024, hard
# 524,288: the daemon raises its soft limit to the hard one, as `tenantd serve` does under the
# unit) on both.
# --quick: 1,000 tenants only, 30 s windows (a look, not the README's figures).
# The numbers and the commands behind them are in README "Usage history and metrics" and
# docs/usage-numbers.md. Every daemon runs below this script's own cgroup; everything it
# creates is removed at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (cgroup directories)"; exit 1; }
QUICK="" VM="" SKIP_BENCH=""
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --vm) VM=1 ;;
    --skip-bench) SKIP_BENCH=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument $a (see --help)"; exit 2 ;;
  esac
done
# systemd's default for a service, what packaging/tenantd.service's LimitNOFILE keeps as hard.
ulimit -Hn 524288 2>/dev/null ||
  echo "note: the hard open-file limit stays at $(ulimit -Hn) here (raising it to 524288 was refused)"
ulimit -Sn 1024
if [ -n "$VM" ]; then
  # Built here, run unchanged in the guest (its tree is read-only and it has no toolchain).
  cargo build --release --quiet --bin tenantd
  cc -O2 -o target/bare_reader benches/bare_reader.c
  exec flock /tmp/tenantd-vm.lock env TENANTD_VM_TIMEOUT="${TENANTD_VM_TIMEOUT:-5400}" TENANTD_VM_MEM="${TENANTD_VM_MEM:-3G}" \
    bash tests/vm/run.sh -- bash benches/scale.sh ${QUICK:+--quick} 2>&1
fi
if [ -n "${TENANTD_IN_VM:-}" ]; then
  # In the guest: 1,000 tenants, the ratio to the bare reader, changes at 1,000.
  window=60; [ -z "$QUICK" ] || window=30
  echo "== targets 2, 4 (cgroup v2, VM): daemon_cpu.sh --bare 1000"
  MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 bash benches/daemon_cpu.sh --bare --window "$window" 1000
  echo "== target 1 (cgroup v2, VM): changes.sh 1000"
  bash benches/changes.sh 1000
  exit 0
fi
counts=(1000 10000) window=60
[ -z "$QUICK" ] || { counts=(1000); window=30; }
if [ -z "$SKIP_BENCH" ]; then
  echo "== the sweep function on ordinary files: cargo bench --bench sampler -- ${counts[*]}"
  cargo bench --bench sampler -- "${counts[@]}"
fi
cargo build --release --quiet --bin tenantd
echo "== targets 2, 4, 5 (the running daemon): daemon_cpu.sh --window $window ${counts[*]}"
MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 bash benches/daemon_cpu.sh --window "$window" "${counts[@]}"
echo "== target 1 (changes): changes.sh ${counts[*]}"
bash benches/changes.sh "${counts[@]}"
