#!/usr/bin/env bash
# Build (or reuse) the assets of the cgroup-v2 test VM:
#   $CACHE/vmlinux         ELF kernel extracted from Debian's stock bzImage (booted via PVH)
#   $CACHE/initramfs.cpio  busybox-static + the virtio/9p/ext4/nftables modules + tests/vm/guest-init as /init
#   $CACHE/kernel-release  e.g. 6.1.0-56-amd64
#   $CACHE/disk.img        1 GiB sparse template disk (run.sh gives every boot its own fresh copy)
# CACHE = ${TENANTD_VM_CACHE:-/var/cache/tenantd-vm}
#
# Idempotent: the kernel is re-fetched only when the kernel package (or its version) that
# linux-image-amd64 depends on changes; the initramfs is rebuilt when guest-init or this
# script change. Override the kernel package with TENANTD_VM_KERNEL_PKG=linux-image-...
# Needs root (apt-get). Does not install the kernel: the .deb is only unpacked (dpkg-deb -x).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${TENANTD_VM_CACHE:-/var/cache/tenantd-vm}"
log() { printf '[vm-assets] %s\n' "$*" >&2; }
die() { printf '[vm-assets] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9   # concurrent run.sh invocations build once

# ---------------------------------------------------------------- packages
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
}
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=(busybox-static)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v depmod >/dev/null || need_pkgs+=(kmod)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v flock >/dev/null || need_pkgs+=(util-linux)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "need root to install ${need_pkgs[*]}"
    apt_update_once
    # Bookworm's qemu-system-x86 may replace a newer qemu-utils from backports; the project
    # does not need qemu-utils, so we let apt remove it (--allow-remove-essential is NOT used).
    log "installing ${need_pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2 \
        || die "apt-get install ${need_pkgs[*]} failed"
fi

# ---------------------------------------------------------------- kernel
pick_kernel_pkg() {
    if [ -n "${TENANTD_VM_KERNEL_PKG:-}" ]; then echo "$TENANTD_VM_KERNEL_PKG"; return; fi
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'
}
KPKG="$(pick_kernel_pkg)"
if [ -z "$KPKG" ]; then apt_update_once; KPKG="$(pick_kernel_pkg)"; fi
[ -n "$KPKG" ] || die "cannot resolve the kernel package behind linux-image-amd64"
KVER_PKG="$(apt-cache policy "$KPKG" | awk '/Candidate:/{print $2}')"
if [ -z "$KVER_PKG" ] || [ "$KVER_PKG" = "(none)" ]; then
    apt_update_once
    KVER_PKG="$(apt-cache policy "$KPKG" | awk '/Candidate:/{print $2}')"
fi
[ -n "$KVER_PKG" ] && [ "$KVER_PKG" != "(none)" ] || die "no candidate version for $KPKG"
# ext4: the SLA memory-protection test puts a filesystem on the scratch disk (file pages are
# what memory.min protects; anonymous memory cannot be reclaimed without swap).
# nfnetlink .. nft_reject_inet: the egress policy's nftables table (tests/it/egress.rs): the
# inet family, `socket cgroupv2` (nft_socket with its v4/v6 lookups) and `reject`; counters
# are part of nf_tables itself in this kernel.
MODULES=(virtio_pci virtio_blk 9p 9pnet_virtio crc32c_generic ext4
    nfnetlink nf_tables nft_socket nf_socket_ipv4 nf_socket_ipv6 nft_reject_inet)
KSTAMP="$KPKG=$KVER_PKG modules=${MODULES[*]}"

extract_vmlinux() { # $1 = bzImage, $2 = output ELF
    local img="$1" out="$2" off
    # xz stream magic: FD 37 7A 58 5A 00. Try every occurrence until one decompresses to an ELF.
    for off in $(LC_ALL=C grep -obUaP '\xFD7zXZ\x00' "$img" | cut -d: -f1); do
        # (--single-stream stops at the end of the stream, so tail may die of SIGPIPE: only
        # xz's status counts.)
        if xz -dc --single-stream < <(tail -c "+$((off + 1))" "$img") >"$out.tmp" 2>/dev/null \
            && [ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
            mv "$out.tmp" "$out"
            return 0
        fi
    done
    rm -f "$out.tmp"
    return 1
}


if [ "$(cat "$CACHE/kernel.stamp" 2>/dev/null)" != "$KSTAMP" ] || [ ! -s "$CACHE/vmlinux" ] \
    || [ ! -d "$CACHE/modules" ]; then
    log "fetching kernel $KSTAMP"
    [ "$(id -u)" = 0 ] || die "need root to fetch the kernel"
    work="$(mktemp -d "$CACHE/.kernel.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download -q "$KPKG=$KVER_PKG" >&2 2>/dev/null) \
        || { apt_update_once; (cd "$work" && apt-get download -q "$KPKG=$KVER_PKG" >&2); } \
        || die "apt-get download $KPKG failed"
    log "unpacking $(basename "$work"/*.deb)"
    dpkg-deb -x "$work"/*.deb "$work/root"
    krel="$(basename "$(ls -d "$work"/root/lib/modules/*/ | head -1)")"
    [ -n "$krel" ] || die "no /lib/modules/<release> in $KPKG"
    log "extracting ELF vmlinux from vmlinuz-$krel"
    extract_vmlinux "$work/root/boot/vmlinuz-$krel" "$work/vmlinux" || die "could not extract vmlinux"
    log "resolving module dependencies (depmod on the unpacked tree)"
    depmod -b "$work/root" "$krel"
    dep="$work/root/lib/modules/$krel/modules.dep"
    # modules.dep lines: "kernel/x/y.ko: kernel/a.ko kernel/b.ko"; deps are listed so that the
    # last one must be loaded first. Build a load order: deps (reversed) then the module.
    order=()
    add_mod() { # $1 = relative path
        local m="$1" d line
        for d in "${order[@]}"; do [ "$d" = "$m" ] && return 0; done
        line="$(grep -E "^$m:" "$dep" | cut -d: -f2-)"
        local deps=($line) i
        for ((i = ${#deps[@]} - 1; i >= 0; i--)); do add_mod "${deps[$i]}"; done
        order+=("$m")
    }
    for name in "${MODULES[@]}"; do
        rel="$(grep -E "(^|/)${name}\.ko(\.[a-z]+)?:" "$dep" | head -1 | cut -d: -f1)"
        if [ -z "$rel" ]; then
            # built into this kernel?
            grep -qE "/${name}\.ko" "$work/root/lib/modules/$krel/modules.builtin" 2>/dev/null \
                && { log "  $name is built in"; continue; }
            die "module $name not found in $KPKG"
        fi
        add_mod "$rel"
    done
    rm -rf "$CACHE/modules.new"
    mkdir -p "$CACHE/modules.new"
    : >"$CACHE/modules.new/load-order"
    for rel in "${order[@]}"; do
        base="$(basename "$rel")"
        src="$work/root/lib/modules/$krel/$rel"
        case "$base" in
            *.ko.xz) xz -dc "$src" >"$CACHE/modules.new/${base%.xz}"; base="${base%.xz}" ;;
            *.ko.zst) zstd -qdc "$src" >"$CACHE/modules.new/${base%.zst}"; base="${base%.zst}" ;;
            *.ko.gz) gzip -dc "$src" >"$CACHE/modules.new/${base%.gz}"; base="${base%.gz}" ;;
            *) cp "$src" "$CACHE/modules.new/$base" ;;
        esac
        echo "$base" >>"$CACHE/modules.new/load-order"
        log "  module $base"
    done
    rm -rf "$CACHE/modules"
    mv "$CACHE/modules.new" "$CACHE/modules"
    mv "$work/vmlinux" "$CACHE/vmlinux"
    echo "$krel" >"$CACHE/kernel-release"
    echo "$KSTAMP" >"$CACHE/kernel.stamp"
    rm -f "$CACHE/initramfs.stamp"
    rm -rf "$work"
    trap - EXIT
    log "kernel $krel ready ($(du -h "$CACHE/vmlinux" | cut -f1) vmlinux)"
else
    log "kernel $(cat "$CACHE/kernel-release") cached ($KSTAMP)"
fi

# ---------------------------------------------------------------- initramfs
ISTAMP="$KSTAMP $(cat "$HERE/guest-init" "$0" | sha256sum | cut -c1-16)"
if [ "$(cat "$CACHE/initramfs.stamp" 2>/dev/null)" != "$ISTAMP" ] || [ ! -s "$CACHE/initramfs.cpio" ]; then
    log "building initramfs"
    ir="$(mktemp -d "$CACHE/.initramfs.XXXXXX")"
    trap 'rm -rf "$ir"' EXIT
    mkdir -p "$ir"/{bin,sbin,dev,proc,sys,newroot,lib/modules,run,tmp}
    cp /bin/busybox "$ir/bin/busybox"
    ln -s busybox "$ir/bin/sh"
    cp "$CACHE"/modules/* "$ir/lib/modules/"
    install -m 0755 "$HERE/guest-init" "$ir/init"
    (cd "$ir" && find . -print0 | cpio --null -o -H newc --quiet) >"$CACHE/initramfs.cpio.new"
    mv "$CACHE/initramfs.cpio.new" "$CACHE/initramfs.cpio"
    echo "$ISTAMP" >"$CACHE/initramfs.stamp"
    rm -rf "$ir"
    trap - EXIT
    log "initramfs ready ($(du -h "$CACHE/initramfs.cpio" | cut -f1))"
fi

# ---------------------------------------------------------------- disk template
if [ ! -e "$CACHE/disk.img" ]; then
    truncate -s "${TENANTD_VM_DISK_SIZE:-1G}" "$CACHE/disk.img"
    log "sparse disk template $CACHE/disk.img ready"
fi
log "assets ready in $CACHE"
