#!/usr/bin/env bash
# Sets up, builds (release) and runs the assistant. Extra arguments go to `nanoclaw run`,
# e.g. `./scripts/run.sh --root ~/nanoclaw`. Without --root the root is ./nanoclaw-data.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --locked -p nanoclaw
root_given=false
for arg in "$@"; do [ "$arg" = "--root" ] && root_given=true; done
if [ "$root_given" = false ] && [ -z "${NANOCLAW_ROOT:-}" ]; then
    set -- --root "$PWD/nanoclaw-data" "$@"
fi
exec ./target/release/nanoclaw run "$@"
