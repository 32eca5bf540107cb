#!/usr/bin/env bash
# Installs the third-party programs the tests drive, into .tools/ (ignored by git): the
# official `anthropic` Python SDK in a virtualenv and the Claude Code CLI (clients of the
# credential proxy), and the telegram-test-api Bot API emulator. Idempotent; needs only
# the package registries (PyPI, npm).
set -euo pipefail
cd "$(dirname "$0")/.."
CLAUDE_CODE_VERSION=2.1.197

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "test-tools: installing ${need_apt[*]}" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

mkdir -p .tools
if ! .tools/venv/bin/python -c 'import anthropic' >/dev/null 2>&1; then
    echo "test-tools: installing the anthropic Python SDK into .tools/venv" >&2
    python3 -m venv .tools/venv
    .tools/venv/bin/pip install -q --disable-pip-version-check anthropic
fi
installed=$(node -e "try{console.log(require('./.tools/node/node_modules/@anthropic-ai/claude-code/package.json').version)}catch(e){}" 2>/dev/null || true)
if [ "$installed" != "$CLAUDE_CODE_VERSION" ]; then
    echo "test-tools: installing Claude Code $CLAUDE_CODE_VERSION into .tools/node" >&2
    npm install --silent --no-audit --no-fund --prefix .tools/node "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION"
fi
TELEGRAM_TEST_API_VERSION=4.2.1
installed=$(node -e "try{console.log(require('./.tools/node/node_modules/telegram-test-api/package.json').version)}catch(e){}" 2>/dev/null || true)
if [ "$installed" != "$TELEGRAM_TEST_API_VERSION" ]; then
    echo "test-tools: installing telegram-test-api $TELEGRAM_TEST_API_VERSION into .tools/node" >&2
    npm install --silent --no-audit --no-fund --prefix .tools/node "telegram-test-api@$TELEGRAM_TEST_API_VERSION"
fi
