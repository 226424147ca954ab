#!/usr/bin/env bash
# What the egress table costs nft: load (`nft -f -`, one transaction), the full listing a
# reconcile pass reads back (`nft -j list table inet tenantd`, which walks /sys/fs/cgroup to
# name each map element's cgroup), and the terse listing a /metrics scrape reads (`-t`: no
# elements, no walk), for N tenant cgroups of which K have a policy of their own (each with
# two deny entries and a default, as domain::nft::Table::script writes them).
#
#   bash tests/vm/run.sh -- bash benches/egress_nft.sh "100:10 1000:10 1000:100"
#
# Needs a cgroup v2 tree at /sys/fs/cgroup and nft with the nftables modules (the test VM has
# both). Makes /sys/fs/cgroup/egress-bench and table inet tenantd, and removes both.
set -euo pipefail
B=/sys/fs/cgroup/egress-bench
ms() { local s=$1 e; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
cleanup() {
    nft delete table inet tenantd 2>/dev/null || true
    [ -d "$B" ] && find "$B" -depth -type d -print0 | xargs -0 rmdir 2>/dev/null || true
}
trap cleanup EXIT
printf '%8s %6s %10s %14s %15s\n' tenants policies "load ms" "full list ms" "terse list ms"
for nk in ${1:-100:10 1000:10 1000:100}; do
    n=${nk%%:*}; k=${nk##*:}
    cleanup
    mkdir -p "$B"
    eval "mkdir -p $B/t{1..$n}/_procs"
    {
        echo "table inet tenantd"; echo "delete table inet tenantd"; echo "table inet tenantd {"
        printf '\tmap level2 {\n\t\ttype cgroupsv2 : verdict\n\t\telements = { '
        for i in $(seq 1 "$k"); do printf '"egress-bench/t%d" : goto t_t%d' "$i" "$i"; [ "$i" -lt "$k" ] && printf ', '; done
        printf ' }\n\t}\n'
        for i in $(seq 1 "$k"); do
            printf '\tchain t_t%d {\n' "$i"
            printf '\t\tip daddr 127.0.0.2 meta l4proto { tcp, udp } th dport 5432 counter packets 0 bytes 0 reject with icmpx type admin-prohibited comment "deny[0] 127.0.0.2:5432"\n'
            printf '\t\tip6 daddr ::1 meta l4proto { tcp, udp } th dport 5432 counter packets 0 bytes 0 reject with icmpx type admin-prohibited comment "deny[1] [::1]:5432"\n'
            printf '\t\tcounter packets 0 bytes 0 accept comment "default"\n\t}\n'
        done
        printf '\tchain egress {\n\t\ttype filter hook output priority 0; policy accept;\n\t\tsocket cgroupv2 level 2 vmap @level2\n\t}\n}\n'
    } >/tmp/egress-bench.nft
    t=$(date +%s%N); nft -f /tmp/egress-bench.nft; load=$(ms "$t")
    t=$(date +%s%N); nft -j list table inet tenantd >/dev/null; full=$(ms "$t")
    t=$(date +%s%N); nft -j -t list table inet tenantd >/dev/null; terse=$(ms "$t")
    printf '%8s %6s %10s %14s %15s\n' "$n" "$k" "$load" "$full" "$terse"
done
