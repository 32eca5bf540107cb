#!/usr/bin/env bash
# Installs the third-party programs the tests drive, into .tools/ (ignored by git): the
# official `anthropic` Python SDK in a virtualenv and the Claude Code CLI (clients of the
# credential proxy), the telegram-test-api Bot API emulator, the Discord and Slack
# client libraries, the MCP SDK and its reference server, Chromium with its WebDriver, and dovecot/postfix. Idempotent; needs only the package registries (PyPI, npm).
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

# A real headless browser for the web app's tests (tests/web_ui.rs, over WebDriver).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "test-tools: installing chromium and chromium-driver (for the web app's tests)" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# Real mail servers for the email channel's tests (tests/email.rs, started per test by
# scripts/mail-servers.sh): Debian's dovecot and postfix, without letting the packages
# start system-wide instances (policy-rc.d forbids it while they install).
mail_packages=(dovecot-imapd dovecot-lmtpd postfix openssl procps)
if [ "$(id -u)" -eq 0 ] && ! dpkg-query -W -f='${Status}\n' "${mail_packages[@]}" 2>/dev/null \
    | awk '$3 != "installed" {bad=1} END {exit bad || NR != '"${#mail_packages[@]}"'}'; then
    echo "test-tools: installing ${mail_packages[*]} (for the email tests)" >&2
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${mail_packages[@]}" >/dev/null
    if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    # Should a package have started one anyway, stop it by its own pid file.
    if ! /usr/lib/postfix/sbin/master -t 2>/dev/null; then postfix stop >/dev/null 2>&1 || true; fi
    if [ -s /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
        kill "$(cat /run/dovecot/master.pid)" || true
    fi
fi

mkdir -p .tools
if ! .tools/venv/bin/python -c 'import anthropic' >/dev/null 2>&1; then
    echo "test-tools: installing the anthropic Python SDK into .tools/venv" >&2
    python3 -m venv .tools/venv
    .tools/venv/bin/pip install -q --disable-pip-version-check anthropic
fi
# The official OpenAI client judges the fake transcription endpoint (tests/transcription.rs).
if ! .tools/venv/bin/python -c 'import openai' >/dev/null 2>&1; then
    echo "test-tools: installing the openai Python SDK into .tools/venv" >&2
    .tools/venv/bin/pip install -q --disable-pip-version-check openai==3.57.0
fi
installed=$(node -e "try{console.log(require('./.tools/node/node_modules/@anthropic-ai/claude-code/package.json').version)}catch(e){}" 2>/dev/null || true)
if [ "$installed" != "$CLAUDE_CODE_VERSION" ]; then
    echo "test-tools: installing Claude Code $CLAUDE_CODE_VERSION into .tools/node" >&2
    npm install --silent --no-audit --no-fund --prefix .tools/node "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION"
fi
# The platforms' own client libraries, the judges of our fakes (tests/discord.rs,
# tests/slack.rs), and the telegram-test-api emulator.
# The MCP SDK's client judges our MCP server, and its reference server our client.
for package in telegram-test-api@4.2.1 @discordjs/ws@2.0.4 @discordjs/rest@2.6.3 \
    @slack/socket-mode@3.1.0 @slack/web-api@8.2.0 \
    @modelcontextprotocol/sdk@1.32.2 @modelcontextprotocol/server-everything@2026.8.31; do
    name=${package%@*}
    version=${package##*@}
    installed=$(node -e "try{console.log(require('./.tools/node/node_modules/$name/package.json').version)}catch(e){}" 2>/dev/null || true)
    if [ "$installed" != "$version" ]; then
        echo "test-tools: installing $name $version into .tools/node" >&2
        npm install --silent --no-audit --no-fund --prefix .tools/node "$package"
    fi
done

# An ordinary account for the rootless podman tests (tests/group_isolation.rs), with
# subordinate ids for its containers' user namespaces. Only root can make it.
ROOTLESS_USER=nanoclaw-rootless
if [ "$(id -u)" -eq 0 ] && ! id "$ROOTLESS_USER" >/dev/null 2>&1; then
    echo "test-tools: creating the account $ROOTLESS_USER for rootless podman tests" >&2
    useradd --create-home --shell /usr/sbin/nologin "$ROOTLESS_USER"
fi
if [ "$(id -u)" -eq 0 ] && ! grep -q "^$ROOTLESS_USER:" /etc/subuid 2>/dev/null; then
    usermod --add-subuids 300000-365535 --add-subgids 300000-365535 "$ROOTLESS_USER"
fi
# Its podman on the kernel's own overlay: without fuse-overlayfs podman falls back to
# vfs, which copies the whole image for every container (about 10 s each here).
if [ "$(id -u)" -eq 0 ]; then
    rootless_home=$(getent passwd "$ROOTLESS_USER" | cut -d: -f6)
    if [ ! -f "$rootless_home/.config/containers/storage.conf" ]; then
        install -d -o "$ROOTLESS_USER" -g "$ROOTLESS_USER" "$rootless_home/.config" "$rootless_home/.config/containers"
        printf '[storage]\ndriver = "overlay"\n' > "$rootless_home/.config/containers/storage.conf"
        chown "$ROOTLESS_USER:" "$rootless_home/.config/containers/storage.conf"
    fi
fi
