#!/bin/sh
# Checks a built sixgate .deb without installing it on this machine: lintian (no errors or
# warnings beyond packaging/lintian-overrides), the files and their modes in a scratch root
# (dpkg-deb -x), the conffile, that the installed config passes `sixgate check-config` with the
# packaged binary, the maintainer scripts' config check, and `systemd-analyze verify` of the unit
# where systemd-analyze exists (said when it does not).
set -eu
deb=${1:?usage: packaging/check-deb.sh PACKAGE.deb}
fail() { echo "check-deb: $*" >&2; exit 1; }

echo "== lintian"
lintian --fail-on error,warning --info "$deb"

root=$(mktemp -d /tmp/sixgate-deb.XXXXXX)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
dpkg-deb -e "$deb" "$root/DEBIAN"

echo "== files and modes"
check_mode() {  # check_mode PATH MODE
    [ -e "$root/$1" ] || fail "missing: /$1"
    m=$(stat -c %a "$root/$1")
    [ "$m" = "$2" ] || fail "/$1 has mode $m, want $2"
    echo "ok /$1 $m"
}
check_mode usr/bin/sixgate 755
check_mode etc/sixgate/sixgate.toml 600
check_mode usr/lib/systemd/system/sixgate.service 644
check_mode usr/share/man/man8/sixgate.8.gz 644
check_mode usr/share/doc/sixgate/copyright 644
check_mode usr/share/doc/sixgate/README.md 644
grep -qx /etc/sixgate/sixgate.toml "$root/DEBIAN/conffiles" || fail "/etc/sixgate/sixgate.toml is not a conffile"
echo "ok conffile /etc/sixgate/sixgate.toml"
owner=$(dpkg-deb -c "$deb" | awk '{ print $2 }' | sort -u)
[ "$owner" = "0/0" ] || fail "files not owned by root: $owner"

echo "== the packaged binary and config"
"$root/usr/bin/sixgate" version
"$root/usr/bin/sixgate" check-config "$root/etc/sixgate/sixgate.toml"
grep -q 'sixgate check-config /etc/sixgate/sixgate.toml' "$root/DEBIAN/postinst" || fail "postinst does not check the config"
grep -q 'deb-systemd-invoke' "$root/DEBIAN/postinst" || fail "postinst does not (re)start the unit"
if grep -qE 'useradd|adduser|mkdir' "$root/DEBIAN/postinst"; then
    fail "postinst creates users or directories by hand (systemd's DynamicUser/StateDirectory do that)"
fi

echo "== systemd unit"
if command -v systemd-analyze >/dev/null 2>&1; then
    # Verified against the packaged binary (the unit names /usr/bin/sixgate, not installed here).
    sed "s#/usr/bin/sixgate#$root/usr/bin/sixgate#g" "$root/usr/lib/systemd/system/sixgate.service" > "$root/sixgate.service"
    systemd-analyze verify --man=no "$root/sixgate.service"
    echo "ok systemd-analyze verify"
else
    echo "systemd-analyze not available: the unit was NOT verified"
fi
echo "check-deb: $deb is fine"
