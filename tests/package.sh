#!/usr/bin/env bash
# The service and the package, checked on the binary the host phase built (tests/run.sh):
#   1. the unit verifies: systemd-analyze verify on packaging/tenantd.service as installed,
#      its ExecStart pointed at the packaged binary and man: links at the packaged man pages
#   2. systemd-analyze security --offline=yes scores it; fails above $TENANTD_SECURITY_MAX
#   3. packaging/build-deb.sh builds the .deb; its contents (dpkg-deb -c) hold every expected
#      path, its man pages and completions equal what the binary generates, the config file is
#      a conffile, the packaged binary runs
#   4. lintian finds no error in it
#   5. tests/capabilities.sh: the daemon works with exactly the unit's CapabilityBoundingSet=
# Usage: tests/package.sh [BINARY]   (default target/debug/tenantd, built if missing)
# Needs: systemd (systemd-analyze), dpkg-dev (dpkg-shlibdeps), lintian, man-db, binutils.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"
export PATH="$HOME/.cargo/bin:$PATH"
BIN="${1:-$REPO/target/debug/tenantd}"
[ -x "$BIN" ] || cargo build --bin tenantd
SECURITY_MAX="${TENANTD_SECURITY_MAX:-3.0}"
WORK="$REPO/target/package-test"
rm -rf "$WORK"
mkdir -p "$WORK"
FAILS=0
ok() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; FAILS=$((FAILS + 1)); }
for tool in systemd-analyze dpkg-deb dpkg-shlibdeps lintian man strip; do
    command -v "$tool" >/dev/null || { fail "$tool is not installed"; exit 1; }
done

echo "== building the .deb from $BIN"
DEB="$(bash packaging/build-deb.sh --binary "$BIN" --out "$WORK/deb" | tail -1)"
[ -f "$DEB" ] || { fail "packaging/build-deb.sh made no .deb"; exit 1; }
ok "built $(basename "$DEB") ($(du -k "$DEB" | cut -f1) KiB)"
ROOT="$WORK/root"
dpkg-deb -x "$DEB" "$ROOT"
dpkg-deb -e "$DEB" "$WORK/control"

echo "== 1. systemd-analyze verify"
UNIT="$WORK/tenantd.service"
sed "s#^ExecStart=/usr/bin/tenantd #ExecStart=$ROOT/usr/bin/tenantd #" \
    "$ROOT/lib/systemd/system/tenantd.service" >"$UNIT"
grep -q "^ExecStart=$ROOT/usr/bin/tenantd serve" "$UNIT" || fail "the unit's ExecStart is not /usr/bin/tenantd serve ..."
# DelegateSubgroup= came with systemd 254; an older systemd-analyze names it as unknown and
# ignores it. That one line, and only on such a systemd, is not a complaint.
sd_version="$(systemd-analyze --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')"
known_unknown() {
    if [ "${sd_version:-0}" -lt 254 ]; then
        grep -v "^$UNIT:[0-9]*: Unknown key 'DelegateSubgroup' in section \[Service\], ignoring\.\$" || true
    else
        cat
    fi
}
if out="$(MANPATH="$ROOT/usr/share/man" systemd-analyze verify "$UNIT" 2>&1)" \
    && out="$(printf '%s\n' "$out" | known_unknown)" && [ -z "$out" ]; then
    ok "systemd-analyze verify: no complaint"
else
    printf '%s\n' "$out"
    fail "systemd-analyze verify complained about the unit"
fi
# Without the packaged man pages the Documentation= links must fail: the check above is real.
if MANPATH="$WORK/nowhere" systemd-analyze verify "$UNIT" >/dev/null 2>&1; then
    fail "systemd-analyze verify passed with the man pages missing"
fi

echo "== 2. systemd-analyze security --offline=yes"
systemd-analyze security --offline=yes --no-pager "$UNIT" >"$WORK/security.txt" 2>&1 || true
SCORE="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\) .*/\1/p' "$WORK/security.txt")"
grep '✗' "$WORK/security.txt" | sed 's/  */ /g' || true
if [ -z "$SCORE" ]; then
    cat "$WORK/security.txt"
    fail "systemd-analyze security printed no score"
elif awk -v s="$SCORE" -v m="$SECURITY_MAX" 'BEGIN { exit !(s <= m) }'; then
    ok "exposure level $SCORE (at most $SECURITY_MAX; 0 is best, 10 worst)"
else
    fail "exposure level $SCORE is above $SECURITY_MAX"
fi

echo "== 3. the package's contents"
dpkg-deb -c "$DEB" | awk '{print $1, $2, $6}' >"$WORK/contents.txt"
cat "$WORK/contents.txt"
expect() { # mode path
    if grep -qxF -- "$1 root/root ./$2" "$WORK/contents.txt"; then ok "$1 $2"; else fail "no $1 root/root ./$2 in the package"; fi
}
expect -rwxr-xr-x usr/bin/tenantd
expect -rw-r--r-- lib/systemd/system/tenantd.service
expect -rw-r--r-- etc/tenantd/tenantd.toml
expect drwxr-xr-x var/lib/tenantd/
expect -rw-r--r-- usr/share/man/man1/tenantd.1.gz
expect -rw-r--r-- usr/share/man/man1/tenantd-serve.1.gz
expect -rw-r--r-- usr/share/bash-completion/completions/tenantd
expect -rw-r--r-- usr/share/zsh/vendor-completions/_tenantd
expect -rw-r--r-- usr/share/fish/vendor_completions.d/tenantd.fish
expect -rw-r--r-- usr/share/doc/tenantd/copyright
expect -rw-r--r-- usr/share/doc/tenantd/changelog.gz
# A man page for every visible subcommand, and nothing else in man1.
"$BIN" man --out-dir "$WORK/man"
for page in "$WORK"/man/*.1; do
    name="$(basename "$page")"
    if zcat "$ROOT/usr/share/man/man1/$name.gz" 2>/dev/null | cmp -s - "$page"; then :; else fail "man page $name differs from 'tenantd man' or is missing"; fi
done
[ "$(ls "$ROOT/usr/share/man/man1" | wc -l)" = "$(ls "$WORK/man" | wc -l)" ] &&
    ok "$(ls "$WORK/man" | wc -l) man pages, each what 'tenantd man' generates" ||
    fail "the package's man1 holds other pages than 'tenantd man' generates"
for page in "$ROOT"/usr/share/man/man1/*.gz; do
    warn="$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null || true)"
    [ -z "$warn" ] || fail "$(basename "$page"): $warn"
done
for shell_file in bash:usr/share/bash-completion/completions/tenantd \
    zsh:usr/share/zsh/vendor-completions/_tenantd fish:usr/share/fish/vendor_completions.d/tenantd.fish; do
    shell="${shell_file%%:*}"
    if "$BIN" completions "$shell" | cmp -s - "$ROOT/${shell_file#*:}"; then
        ok "$shell completions are 'tenantd completions $shell'"
    else
        fail "$shell completions differ from 'tenantd completions $shell'"
    fi
done
bash -n "$ROOT/usr/share/bash-completion/completions/tenantd" || fail "the bash completions do not parse"
# shellcheck disable=SC1091
if out="$(bash -c 'source "$1" && complete -p tenantd' _ "$ROOT/usr/share/bash-completion/completions/tenantd" 2>&1)"; then
    ok "bash: $out"
else
    fail "bash cannot load the completions: $out"
fi
[ "$(cat "$WORK/control/conffiles")" = /etc/tenantd/tenantd.toml ] &&
    ok "conffiles: /etc/tenantd/tenantd.toml" || fail "conffiles is not /etc/tenantd/tenantd.toml"
cmp -s packaging/tenantd.toml "$ROOT/etc/tenantd/tenantd.toml" || fail "the packaged config is not packaging/tenantd.toml"
cmp -s packaging/tenantd.service "$ROOT/lib/systemd/system/tenantd.service" || fail "the packaged unit is not packaging/tenantd.service"
if v="$("$ROOT/usr/bin/tenantd" --version)" && [ "$v" = "$("$BIN" --version)" ]; then
    ok "the packaged binary runs: $v"
else
    fail "the packaged binary does not run"
fi
dpkg-deb -f "$DEB" Depends | grep -q 'libc6' && ok "Depends: $(dpkg-deb -f "$DEB" Depends)" || fail "no libc6 in Depends"

echo "== 4. lintian"
set +e
lintian --fail-on error --display-info "$DEB" >"$WORK/lintian.txt" 2>&1
rc=$?
set -e
grep -v 'running with root privileges' "$WORK/lintian.txt" || true
if [ "$rc" = 0 ] && ! grep -q '^E:' "$WORK/lintian.txt"; then
    ok "lintian: no errors ($(grep -c '^W:' "$WORK/lintian.txt" || true) warnings)"
else
    fail "lintian found errors (exit $rc)"
fi

echo "== 5. the unit's capabilities (tests/capabilities.sh)"
bash tests/capabilities.sh "$BIN" "$ROOT/lib/systemd/system/tenantd.service" || fail "tests/capabilities.sh"

if [ "$FAILS" = 0 ]; then
    echo "package: all checks passed"
else
    echo "package: $FAILS checks failed"
    exit 1
fi
