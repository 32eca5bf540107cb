#!/usr/bin/env bash
# Sets up, builds (release) and runs the assistant. Extra arguments go to `nanoclaw run`,
# e.g. `./scripts/run.sh --root ~/nanoclaw`. Without --root the root is ./nanoclaw-data.
# The first time, in a terminal, `nanoclaw setup` asks for the model credential and the
# channels before the assistant starts.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --locked -p nanoclaw
root="${NANOCLAW_ROOT:-}"
root_given=false
previous=""
for arg in "$@"; do
    if [ "$previous" = "--root" ]; then root="$arg"; fi
    case "$arg" in
        --root) root_given=true ;;
        --root=*) root_given=true; root="${arg#--root=}" ;;
    esac
    previous="$arg"
done
if [ "$root_given" = false ] && [ -z "${NANOCLAW_ROOT:-}" ]; then
    root="$PWD/nanoclaw-data"
    set -- --root "$root" "$@"
fi
if [ -n "$root" ] && [ ! -f "$root/.env" ] && [ -t 0 ] && [ -t 1 ]; then
    ./target/release/nanoclaw setup --root "$root"
fi
exec ./target/release/nanoclaw run "$@"
