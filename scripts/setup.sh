#!/usr/bin/env bash
# Installs what building, running and testing nanoclaw needs on a Debian/Ubuntu machine:
# a C compiler (SQLite is built in), the sandbox backends (bubblewrap; podman with runc,
# and debootstrap to build the agent image without a registry), and the Rust toolchain.
# Idempotent: installs only what is missing. Needs root (or sudo) for apt packages.
set -euo pipefail

need_apt=()
want() { command -v "$1" >/dev/null 2>&1 || need_apt+=("$2"); }
want cc build-essential
want git git
want curl curl
want update-ca-certificates ca-certificates
want bwrap bubblewrap
want podman podman
want runc runc
want debootstrap debootstrap
want setpriv util-linux
want pgrep procps
want tar tar
want newuidmap uidmap
want slirp4netns slirp4netns
want chattr e2fsprogs
# The isolation tests make network namespaces with a "public" host in them.
want ip iproute2
[ -e /usr/share/zoneinfo/Europe/Berlin ] || need_apt+=(tzdata)
# The Browser tool of bwrap agents uses the host's Chromium (the agent image has its own).
[ -x /usr/lib/chromium/chromium ] || need_apt+=(chromium)

if [ ${#need_apt[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: please install: ${need_apt[*]} (no apt-get on this machine)" >&2
        exit 1
    fi
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${need_apt[*]}" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: installing the Rust toolchain with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
    . "$HOME/.cargo/env"
fi
