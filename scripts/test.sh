#!/usr/bin/env bash
# Sets up and runs every test of the workspace, including the ones that start real
# bubblewrap and podman sandboxes (the agent image is built first, once).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/test-tools.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
# Build exactly the binaries the tests use, then the image containing that agent.
cargo test --workspace --locked --no-run
image_root=$(mktemp -d)
trap 'rm -rf "$image_root"' EXIT
./target/debug/nanoclaw image build --runtime podman --root "$image_root"
cargo test --workspace --locked
# The WhatsApp wire test: its own workspace, so its certificate-skipping feature never
# reaches the binaries above (it shares their target directory, not their features).
cargo test --manifest-path tests/whatsapp-wire/Cargo.toml --locked --target-dir target -- --test-threads=2
