#!/usr/bin/env bash
# Builds the Debian package: target/debian/sse-relay_<version>-1_<arch>.deb.
#
# Installs what it needs when missing (cargo-deb from crates.io; dpkg-dev,
# which computes Depends from the binary, when run as root with apt-get),
# builds the release binary, generates the man page and completions from the
# binary's own clap definitions, and writes the unit with the packaged path
# (/usr/bin/sse-relay). Prints the package's path last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v dpkg-shlibdeps >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "build-deb.sh: installing dpkg-dev (for Depends)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev >/dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb.sh: installing cargo-deb" >&2
    cargo install --locked cargo-deb
fi

cargo build --release --locked
bin=target/release/sse-relay
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets"
"$bin" man | gzip -9n >"$assets/sse-relay.1.gz"
"$bin" completions bash >"$assets/sse-relay.bash"
"$bin" completions zsh >"$assets/_sse-relay"
"$bin" completions fish >"$assets/sse-relay.fish"
sed 's|/usr/local/bin/sse-relay|/usr/bin/sse-relay|g' systemd/sse-relay.service >"$assets/sse-relay.service"

# --strip: the release profile keeps line tables for profiling (debug = 1);
# the package ships the lean binary.
cargo deb --no-build --locked --strip --output target/debian/ >&2
ls -1t target/debian/sse-relay_*.deb | head -n 1
