#!/usr/bin/env bash
# Checks the Debian package the way an operator meets it (CI runs this as root
# on a throw-away machine: it installs and removes the package for real).
#
#  1. contents and metadata (dpkg-deb --contents / --info);
#  2. install; the packaged unit verified against the packaged paths
#     (systemd-analyze verify), the packaged binary checks the packaged config;
#  3. upgrade to the same version with the conffile edited: the edit is kept;
#  4. remove: no unit enabled, the edited config untouched; then purge.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

deb=${1:-$(tools/build-deb.sh | tail -n 1)}
echo "package: $deb ($(du -k "$deb" | cut -f1) KiB)"

fail() {
    echo "check-deb: $*" >&2
    exit 1
}

info=$(dpkg-deb --info "$deb")
echo "$info"
grep -q '^ Package: sse-relay$' <<<"$info" || fail "no Package: sse-relay"
grep -q '^ Depends: .*libc6' <<<"$info" || fail "Depends was not computed from the binary"
for script in postinst prerm postrm; do
    grep -q " $script" <<<"$info" || fail "no $script"
done
grep -q 'conffiles' <<<"$info" || fail "no conffiles"

contents=$(dpkg-deb --contents "$deb" | awk '{print $NF}')
echo "$contents"
for path in \
    ./usr/bin/sse-relay \
    ./lib/systemd/system/sse-relay.service \
    ./etc/sse-relay/sse-relay.toml \
    ./etc/logrotate.d/sse-relay \
    ./usr/share/doc/sse-relay/README.md \
    ./usr/share/doc/sse-relay/copyright \
    ./usr/share/doc/sse-relay/LICENSE-APACHE \
    ./usr/share/man/man1/sse-relay.1.gz \
    ./usr/share/bash-completion/completions/sse-relay \
    ./usr/share/zsh/vendor-completions/_sse-relay \
    ./usr/share/fish/vendor_completions.d/sse-relay.fish; do
    grep -qx "$path" <<<"$contents" || fail "$path is not in the package"
done
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
grep -qx /etc/sse-relay/sse-relay.toml <<<"$conffiles" || fail "the config is not a conffile"

if dpkg -s sse-relay >/dev/null 2>&1; then
    dpkg --purge sse-relay >/dev/null
fi
dpkg -i "$deb"
command -v systemd-analyze >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
}
grep -q '^ExecStart=/usr/bin/sse-relay run --config /etc/sse-relay/sse-relay.toml$' \
    /lib/systemd/system/sse-relay.service || fail "ExecStart does not name /usr/bin/sse-relay"
grep -q '^ExecStartPre=/usr/bin/sse-relay check' /lib/systemd/system/sse-relay.service || fail "ExecStartPre"
grep -q '^ExecReload=/usr/bin/sse-relay check' /lib/systemd/system/sse-relay.service || fail "ExecReload"
systemd-analyze verify /lib/systemd/system/sse-relay.service
env -i PATH=/usr/bin:/bin /usr/bin/sse-relay check --config /etc/sse-relay/sse-relay.toml >/dev/null
/usr/bin/sse-relay --version
man -w sse-relay >/dev/null 2>&1 || zcat /usr/share/man/man1/sse-relay.1.gz | grep -q '^\.TH sse-relay 1' \
    || fail "no man page"
[[ ! -e /etc/systemd/system/multi-user.target.wants/sse-relay.service ]] || fail "the install enabled the unit"

# Upgrade (the same version again) with the conffile edited by the operator.
echo '# edited by the operator' >>/etc/sse-relay/sse-relay.toml
dpkg -i "$deb"
tail -n 1 /etc/sse-relay/sse-relay.toml | grep -qx '# edited by the operator' \
    || fail "the upgrade overwrote the edited config"

dpkg -r sse-relay
[[ ! -e /usr/bin/sse-relay ]] || fail "the binary is still there after remove"
[[ ! -e /etc/systemd/system/multi-user.target.wants/sse-relay.service ]] || fail "a unit is enabled after remove"
tail -n 1 /etc/sse-relay/sse-relay.toml | grep -qx '# edited by the operator' \
    || fail "remove touched the edited config"
dpkg --purge sse-relay >/dev/null
[[ ! -e /etc/sse-relay/sse-relay.toml ]] || fail "purge left the config"
echo "check-deb: ok"
