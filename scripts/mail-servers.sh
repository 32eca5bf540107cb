#!/usr/bin/env bash
# mail-servers.sh - throw-away REAL mail servers (dovecot IMAP/LMTP + postfix SMTP
# + a fake OAuth2 token endpoint) on 127.0.0.1 for integration tests.
#
# Usage:
#   mail-servers.sh DIR                 same as "start DIR"
#   mail-servers.sh start DIR           DIR must be empty or absent; writes all config
#                                       under DIR, starts everything, waits until every
#                                       port answers, prints KEY=VALUE lines, exits 0.
#   mail-servers.sh stop DIR [NAME...]  kill the recorded PIDs (all, or only NAMEs:
#                                       oauth dovecot postfix watchdog) and their
#                                       descendants; waits until they are gone.
#   mail-servers.sh restart DIR NAME    stop NAME and start it again with the same
#                                       config/ports (e.g. "restart DIR dovecot").
#   mail-servers.sh status DIR          show recorded PIDs and whether they are alive.
#
# Environment (all optional):
#   IMAP_PORT IMAPS_PORT SMTP_PORT SUBMISSION_PORT SMTPS_PORT OAUTH_PORT
#                      fixed ports; unset ones are picked free on 127.0.0.1
#   TOKEN_SECONDS      access token lifetime of the fake OAuth server (default 3600)
#   OAUTH_CLIENT_ID / OAUTH_CLIENT_SECRET (default test-client / test-secret)
#   MAIL_USER          existing unprivileged user owning the Maildirs (default: mail)
#   MAIL_PASSWORD      password of every test user (default: secret)
#   WATCH_PID          if set: a watchdog stops everything when that PID exits
#                      (give it the test process' PID so a crashed test leaves nothing)
#   MAIL_DEBUG=1       verbose dovecot auth/mail logging
#   START_TIMEOUT      seconds to wait for readiness (default 20)
#   PYTHON             python3 interpreter (default /usr/bin/python3, else python3)
#
# Must run as root (postfix's master and dovecot's master need it).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3   # avoid slow shims (pyenv)
else PY=python3; fi
USERS=(assistant@nanoclaw.test alice@trusted.test mallory@forged.test)
DOMAINS=(nanoclaw.test trusted.test forged.test)

die() { echo "mail-servers.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers
proc_stat_fields() { # pid -> fields of /proc/PID/stat after "(comm) ", i.e. from field 3 on
    local line
    read -r line 2>/dev/null < "/proc/$1/stat" || return 1
    echo "${line##*) }"
}

proc_start_time() { # pid -> starttime (field 22 of /proc/PID/stat), empty if gone
    local f
    f=$(proc_stat_fields "$1") || return 0
    # shellcheck disable=SC2206
    local a=($f)
    echo "${a[19]}"      # field 22 == index 19 when counting from field 3
}

pid_alive_same() { # name pid start -> 0 if that very process still exists (not a zombie)
    local pid=$2 start=$3 f
    f=$(proc_stat_fields "$pid") || return 1
    [[ "${f%% *}" != Z ]] || return 1
    # shellcheck disable=SC2206
    local a=($f)
    [[ "${a[19]}" == "$start" ]]
}

descendants() { # pid -> all descendant pids (recursive), one per line
    local parent=$1 kids k
    kids=$(ps -o pid= --ppid "$parent" 2>/dev/null || true)
    for k in $kids; do
        echo "$k"
        descendants "$k"
    done
}

record_pid() { # DIR name pid
    local d=$1 name=$2 pid=$3 st
    st=$(proc_start_time "$pid")
    touch "$d/pids"
    grep -v "^$name " "$d/pids" > "$d/pids.tmp" || true
    echo "$name $pid $st" >> "$d/pids.tmp"
    mv "$d/pids.tmp" "$d/pids"
}

pick_ports() { # n -> n distinct free loopback ports
    "$PY" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
EOF
}

wait_ready() { # DIR timeout pid-to-watch spec...   spec = kind:port  (kind: imap imaps smtp smtps http unix)
    local d=$1 timeout=$2 watch=$3; shift 3
    "$PY" - "$d" "$timeout" "$watch" "$@" <<'EOF'
import os, socket, ssl, sys, time
d, timeout, watch = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
specs = sys.argv[4:]
ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.pem"))
deadline = time.time() + timeout
def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False
def probe(kind, arg):
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect(arg); s.close(); return True
    port = int(arg)
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        if kind in ("imaps", "smtps"):
            s = ctx.wrap_socket(s, server_hostname="localhost")
        if kind == "http":
            s.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            data = s.recv(200)
            return data.startswith(b"HTTP/1.") and b" 200 " in data[:20]
        data = s.recv(200)
        if kind in ("imap", "imaps"):
            return data.startswith(b"* OK")
        return data.startswith(b"220 mx.nanoclaw.test")
    finally:
        s.close()
pending = list(specs)
while pending:
    if watch and not alive(watch):
        print("process %d died during startup" % watch, file=sys.stderr); sys.exit(2)
    for spec in list(pending):
        kind, arg = spec.split(":", 1)
        try:
            if probe(kind, arg):
                pending.remove(spec)
        except (OSError, ssl.SSLError):
            pass
    if not pending:
        break
    if time.time() > deadline:
        print("timeout waiting for: %s" % " ".join(pending), file=sys.stderr); sys.exit(1)
    time.sleep(0.05)
EOF
}

load_env() { # DIR -> sources DIR/env
    [[ -f "$1/env" ]] || die "$1/env missing (not started by this script?)"
    # shellcheck disable=SC1091
    source "$1/env"
}

# ---------------------------------------------------------------- config writers
write_tls() {
    local d=$1
    (
        cd "$d"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.pem -days 3650 -subj "/CN=nanoclaw test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -addext "subjectKeyIdentifier=hash" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
        cat > server.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:mx.nanoclaw.test
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out server.crt -days 3650 -extfile server.ext 2>/dev/null
        cat server.crt ca.pem > server.pem   # leaf + CA chain
        rm -f server.csr server.ext ca.srl
        chmod 600 ca.key server.key
        chmod 644 ca.pem server.crt server.pem
    )
}

write_dovecot() {
    local d=$1 uid gid u local dom debug=no
    uid=$(id -u "$MAIL_USER"); gid=$(id -g "$MAIL_USER")
    [[ "${MAIL_DEBUG:-0}" == 1 ]] && debug=yes
    mkdir -p "$d/dovecot/run" "$d/dovecot/state" "$d/mail"
    chown "$uid:$gid" "$d/mail"; chmod 700 "$d/mail"
    : > "$d/dovecot/users"
    for u in "${USERS[@]}"; do
        local=${u%@*}; dom=${u#*@}
        mkdir -p "$d/mail/$dom/$local"
        chown "$uid:$gid" "$d/mail/$dom" "$d/mail/$dom/$local"
        echo "$u:{PLAIN}$MAIL_PASSWORD:$uid:$gid::$d/mail/$dom/$local::" >> "$d/dovecot/users"
    done
    chown root:dovecot "$d/dovecot/users"; chmod 640 "$d/dovecot/users"

    cat > "$d/dovecot/oauth2.conf.ext" <<EOF
# dovecot 2.3 passdb oauth2 settings (read by the auth process)
introspection_url = http://127.0.0.1:$OAUTH_PORT/introspect
introspection_mode = post
# RFC 7662 introspection answer: {"active":true,"username":"user@domain",...}
username_attribute = username
active_attribute = active
active_value = true
# No tokeninfo_url: dovecot goes straight to introspection on every login
# (auth_cache_size is 0, so expired/revoked tokens fail immediately).
client_id = $OAUTH_CLIENT_ID
client_secret = $OAUTH_CLIENT_SECRET
timeout_msecs = 5000
debug = $debug
EOF
    chown root:dovecot "$d/dovecot/oauth2.conf.ext"; chmod 640 "$d/dovecot/oauth2.conf.ext"

    cat > "$d/dovecot.conf" <<EOF
# Generated by mail-servers.sh - self-contained, does not include /etc/dovecot.
instance_name = mailtest-dovecot
base_dir = $d/dovecot/run
state_dir = $d/dovecot/state
protocols = imap lmtp
listen = 127.0.0.1
log_path = $d/logs/dovecot.log
auth_verbose = yes
auth_debug = $debug
mail_debug = $debug
verbose_ssl = $debug

default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = $uid
last_valid_uid = $uid
first_valid_gid = $gid
last_valid_gid = $gid

ssl = yes
ssl_cert = <$d/server.pem
ssl_key = <$d/server.key
ssl_min_protocol = TLSv1.2

disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
auth_username_format = %Lu
auth_failure_delay = 0
login_trusted_networks =

mail_location = maildir:~/Maildir
mail_fsync = never
mailbox_idle_check_interval = 5 secs
namespace inbox {
  inbox = yes
  separator = /
  mailbox Drafts {
    special_use = \\Drafts
    auto = subscribe
  }
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
  mailbox Junk {
    special_use = \\Junk
    auto = subscribe
  }
  mailbox Archive {
    special_use = \\Archive
    auto = subscribe
  }
}

passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu $d/dovecot/users
  mechanisms = plain login
}
passdb {
  driver = oauth2
  args = $d/dovecot/oauth2.conf.ext
  mechanisms = xoauth2 oauthbearer
}
userdb {
  driver = passwd-file
  args = username_format=%Lu $d/dovecot/users
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $IMAPS_PORT
    ssl = yes
  }
}
protocol imap {
  mail_max_userip_connections = 1000
}

# LMTP for postfix: unix socket only
service lmtp {
  unix_listener lmtp {
    mode = 0660
    user = postfix
    group = postfix
  }
}
protocol lmtp {
  postmaster_address = postmaster@nanoclaw.test
}
# keep the receiving MX's Authentication-Results as the topmost header
# (only Return-Path is added above it)
lmtp_add_received_header = no
lmtp_hdr_delivery_address = none

# No auth penalty (anvil-auth-penalty unreachable => dovecot disables it): tests fail
# logins from 127.0.0.1 on purpose and must not be slowed down by up to 15 s.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}

# SASL for postfix smtpd
service auth {
  unix_listener auth-postfix {
    mode = 0660
    user = postfix
    group = postfix
  }
  unix_listener auth-userdb {
    mode = 0600
  }
}
EOF
    chmod 644 "$d/dovecot.conf"
}

write_postfix() {
    local d=$1 u dom
    mkdir -p "$d/postfix" "$d/postfix-queue" "$d/postfix-data"
    chmod 755 "$d/postfix" "$d/postfix-queue"
    chown postfix "$d/postfix-data"; chmod 700 "$d/postfix-data"

    : > "$d/postfix/vmailbox"
    for u in "${USERS[@]}"; do echo "$u OK" >> "$d/postfix/vmailbox"; done

    # Receiving MX verdict, keyed on the envelope sender (MAIL FROM).
    cat > "$d/postfix/auth_results.regexp" <<'EOF'
# Evaluated once per message in smtpd_data_restrictions of the MX port.
# regexp tables see the whole address; matching is case-insensitive.
/^[^@]*@nanoclaw\.test$/ PREPEND Authentication-Results: mx.nanoclaw.test; spf=pass smtp.mailfrom=nanoclaw.test; dkim=pass header.d=nanoclaw.test header.s=test; dmarc=pass (p=reject) header.from=nanoclaw.test
/^[^@]*@trusted\.test$/  PREPEND Authentication-Results: mx.nanoclaw.test; spf=pass smtp.mailfrom=trusted.test; dkim=pass header.d=trusted.test header.s=test; dmarc=pass (p=reject) header.from=trusted.test
/^[^@]*@(.+)$/           PREPEND Authentication-Results: mx.nanoclaw.test; spf=fail smtp.mailfrom=$1; dkim=none; dmarc=fail (p=reject) header.from=$1
/^/                      PREPEND Authentication-Results: mx.nanoclaw.test; spf=none; dkim=none; dmarc=none
EOF

    cat > "$d/postfix/main.cf" <<EOF
# Generated by mail-servers.sh - test-only postfix instance, loopback only.
compatibility_level = 3.6
queue_directory = $d/postfix-queue
data_directory = $d/postfix-data
mail_owner = postfix
setgid_group = postdrop
multi_instance_directories =
maillog_file = $d/logs/postfix.log
maillog_file_prefixes = $d/logs
syslog_name = postfix-test

myhostname = mx.nanoclaw.test
mydomain = nanoclaw.test
myorigin = \$myhostname
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_banner = \$myhostname ESMTP (test)
biff = no
alias_maps =
alias_database =
local_recipient_maps =

# Never deliver anywhere except dovecot over LMTP; never use DNS.
virtual_mailbox_domains = ${DOMAINS[*]}
virtual_mailbox_maps = texthash:$d/postfix/vmailbox
virtual_transport = lmtp:unix:$d/dovecot/run/lmtp
local_transport = error:5.1.1 local delivery disabled
default_transport = error:5.7.1 outbound mail disabled in test setup
relay_transport = error:5.7.1 outbound mail disabled in test setup
relay_domains =
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
lmtp_connection_cache_on_demand = no

# Tests send a 20 MB attachment (the default limit is 10 MB).
message_size_limit = 104857600
mailbox_size_limit = 0
virtual_mailbox_limit = 0

# Fast retries (e.g. while dovecot is being restarted by a test).
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
delay_warning_time = 0h

smtpd_tls_cert_file = $d/server.pem
smtpd_tls_key_file = $d/server.key
smtpd_tls_security_level = may
smtpd_tls_auth_only = no
smtpd_tls_loglevel = 0
smtpd_tls_received_header = yes
smtp_tls_security_level = none

smtpd_sasl_type = dovecot
smtpd_sasl_path = $d/dovecot/run/auth-postfix
smtpd_sasl_auth_enable = no
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
smtpd_sasl_authenticated_header = yes
broken_sasl_auth_clients = no

disable_vrfy_command = yes
smtpd_helo_required = no
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = reject_unlisted_recipient
smtpd_data_restrictions =
EOF

    # One line per service; -o values must not contain spaces (DIR is checked).
    cat > "$d/postfix/master.cf" <<EOF
# Generated by mail-servers.sh. No chroot anywhere (chroot column = n).
# service type  private unpriv  chroot  wakeup  maxproc command + args
# MX-like inbound: no AUTH, accepts mail for the local domains from anyone,
# prepends the receiving server's Authentication-Results.
127.0.0.1:$SMTP_PORT inet n - n - - smtpd
  -o syslog_name=postfix-test/mx
  -o smtpd_sasl_auth_enable=no
  -o smtpd_relay_restrictions=reject_unauth_destination
  -o smtpd_recipient_restrictions=reject_unlisted_recipient
  -o smtpd_data_restrictions=check_sender_access,regexp:$d/postfix/auth_results.regexp
# Submission (587-like): STARTTLS offered, AUTH required, local domains only.
127.0.0.1:$SUBMISSION_PORT inet n - n - - smtpd
  -o syslog_name=postfix-test/submission
  -o smtpd_tls_security_level=may
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=no
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=reject_unauth_destination,reject_unlisted_recipient
# SMTPS (465-like): implicit TLS, same rules as submission.
127.0.0.1:$SMTPS_PORT inet n - n - - smtpd
  -o syslog_name=postfix-test/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=no
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=reject_unauth_destination,reject_unlisted_recipient
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    chmod 644 "$d/postfix/"*
}

# ---------------------------------------------------------------- starters
start_oauth() {
    local d=$1 pid
    OAUTH_PORT=$OAUTH_PORT TOKEN_SECONDS="${TOKEN_SECONDS:-3600}" \
    CLIENT_ID="$OAUTH_CLIENT_ID" CLIENT_SECRET="$OAUTH_CLIENT_SECRET" \
    REFRESH_TOKENS="$REFRESH_TOKENS" \
        "$PY" -u "$HERE/fake_oauth.py" </dev/null >>"$d/logs/oauth.log" 2>&1 &
    pid=$!
    record_pid "$d" oauth "$pid"
    wait_ready "$d" "$START_TIMEOUT" "$pid" "http:$OAUTH_PORT" \
        || { tail -20 "$d/logs/oauth.log" >&2; return 1; }
}

start_dovecot() {
    local d=$1 pid
    dovecot -F -c "$d/dovecot.conf" </dev/null >>"$d/logs/dovecot.stderr" 2>&1 &
    pid=$!
    record_pid "$d" dovecot "$pid"
    wait_ready "$d" "$START_TIMEOUT" "$pid" "imap:$IMAP_PORT" "imaps:$IMAPS_PORT" \
        "unix:$d/dovecot/run/lmtp" "unix:$d/dovecot/run/auth-postfix" \
        || { tail -20 "$d/logs/dovecot.stderr" "$d/logs/dovecot.log" >&2 2>/dev/null; return 1; }
}

start_postfix() {
    local d=$1 pid mpid i
    rm -f "$d/postfix-queue/pid/master.pid"
    postfix -c "$d/postfix" start-fg </dev/null >>"$d/logs/postfix.stderr" 2>&1 &
    pid=$!
    record_pid "$d" postfix-wrapper "$pid"
    # postfix-script runs "master -s" as a child unless it is PID 1: the process to
    # stop is the master, whose PID postfix writes to queue_directory/pid/master.pid.
    for ((i = 0; i < START_TIMEOUT * 20; i++)); do
        if [[ -s "$d/postfix-queue/pid/master.pid" ]]; then
            mpid=$(tr -d ' \n' < "$d/postfix-queue/pid/master.pid")
            [[ -n "$mpid" && -d /proc/$mpid ]] && break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    [[ -n "${mpid:-}" ]] || { tail -30 "$d/logs/postfix.stderr" "$d/logs/postfix.log" >&2 2>/dev/null; return 1; }
    record_pid "$d" postfix "$mpid"
    wait_ready "$d" "$START_TIMEOUT" "$mpid" "smtp:$SMTP_PORT" "smtp:$SUBMISSION_PORT" "smtps:$SMTPS_PORT" \
        || { tail -30 "$d/logs/postfix.stderr" "$d/logs/postfix.log" >&2 2>/dev/null; return 1; }
}

start_watchdog() {
    local d=$1 watch=$2 pid
    (
        trap '' HUP INT
        while kill -0 "$watch" 2>/dev/null; do sleep 1; done
        "$HERE/mail-servers.sh" stop "$d" postfix dovecot oauth >>"$d/logs/watchdog.log" 2>&1
    ) </dev/null >/dev/null 2>&1 &
    pid=$!
    record_pid "$d" watchdog "$pid"
}

print_env() {
    cat "$1/env"
}

# ---------------------------------------------------------------- commands
cmd_start() {
    local d=$1
    [[ $EUID -eq 0 ]] || die "must run as root (postfix master and dovecot master need it)"
    command -v dovecot >/dev/null || die "dovecot not installed"
    command -v postfix >/dev/null || die "postfix not installed"
    mkdir -p "$d"
    d=$(cd "$d" && pwd -P)
    [[ -z "$(ls -A "$d")" ]] || die "$d is not empty"
    [[ "$d" =~ ^[A-Za-z0-9_./+-]+$ ]] || die "DIR path may only contain [A-Za-z0-9_./+-] (postfix/dovecot config quoting)"
    (( ${#d} <= 70 )) || die "DIR path too long (${#d} > 70): unix socket paths are limited to 107 bytes"
    # Unprivileged daemons (dovecot, dovenull, postfix, mail) must traverse DIR.
    chmod 755 "$d"
    local p=$d
    while [[ "$p" != / ]]; do
        p=$(dirname "$p")
        [[ $(( $(stat -c '%a' "$p" | sed 's/^.*\(.\)$/\1/') & 1 )) -eq 1 ]] \
            || die "$p is not world-searchable (o+x); postfix/dovecot users cannot reach $d"
    done
    mkdir -p "$d/logs"; chmod 755 "$d/logs"

    MAIL_USER=${MAIL_USER:-mail}
    MAIL_PASSWORD=${MAIL_PASSWORD:-secret}
    OAUTH_CLIENT_ID=${OAUTH_CLIENT_ID:-test-client}
    OAUTH_CLIENT_SECRET=${OAUTH_CLIENT_SECRET:-test-secret}
    START_TIMEOUT=${START_TIMEOUT:-20}
    id "$MAIL_USER" >/dev/null 2>&1 || die "user $MAIL_USER does not exist"
    [[ $(id -u "$MAIL_USER") -ne 0 ]] || die "MAIL_USER must not be root"

    local need=0 v ports
    for v in IMAP_PORT IMAPS_PORT SMTP_PORT SUBMISSION_PORT SMTPS_PORT OAUTH_PORT; do
        [[ -n "${!v:-}" ]] || need=$((need + 1))
    done
    if (( need > 0 )); then
        read -r -a ports <<<"$(pick_ports "$need")"
        for v in IMAP_PORT IMAPS_PORT SMTP_PORT SUBMISSION_PORT SMTPS_PORT OAUTH_PORT; do
            if [[ -z "${!v:-}" ]]; then printf -v "$v" '%s' "${ports[0]}"; ports=("${ports[@]:1}"); fi
        done
    fi
    REFRESH_TOKENS=""
    local u
    for u in "${USERS[@]}"; do REFRESH_TOKENS+="${REFRESH_TOKENS:+,}rt-${u%@*}=$u"; done

    cat > "$d/env" <<EOF
MAIL_DIR=$d
MAIL_HOST=127.0.0.1
IMAP_PORT=$IMAP_PORT
IMAPS_PORT=$IMAPS_PORT
SMTP_PORT=$SMTP_PORT
SUBMISSION_PORT=$SUBMISSION_PORT
SMTPS_PORT=$SMTPS_PORT
OAUTH_PORT=$OAUTH_PORT
OAUTH_TOKEN_URL=http://127.0.0.1:$OAUTH_PORT/token
OAUTH_REVOKE_URL=http://127.0.0.1:$OAUTH_PORT/revoke
OAUTH_CLIENT_ID=$OAUTH_CLIENT_ID
OAUTH_CLIENT_SECRET=$OAUTH_CLIENT_SECRET
REFRESH_TOKENS=$REFRESH_TOKENS
MAIL_PASSWORD=$MAIL_PASSWORD
MAIL_USER=$MAIL_USER
MAIL_CA=$d/ca.pem
START_TIMEOUT=$START_TIMEOUT
TOKEN_SECONDS=${TOKEN_SECONDS:-3600}
EOF
    : > "$d/pids"

    write_tls "$d"
    write_dovecot "$d"
    write_postfix "$d"

    if [[ -n "${WATCH_PID:-}" ]]; then start_watchdog "$d" "$WATCH_PID"; fi
    # (set -e is off inside an if-condition: each starter returns non-zero itself)
    if ! { start_oauth "$d" && start_dovecot "$d" && start_postfix "$d"; }; then
        echo "mail-servers.sh: start failed, stopping what was started (logs: $d/logs)" >&2
        cmd_stop "$d" >&2 || true
        exit 1
    fi
    print_env "$d"
}

live_of() { # pids... -> those still alive and not zombies
    local k f
    for k in "$@"; do
        f=$(proc_stat_fields "$k") || continue
        [[ "${f%% *}" == Z ]] && continue
        echo "$k"
    done
}

stop_one() { # DIR name pid start
    # SIGTERM the recorded PID; once it is gone, SIGTERM whatever of its (previously
    # collected) descendants is still there; SIGKILL after a timeout. Never touches
    # any other process.
    local d=$1 name=$2 pid=$3 start=$4 all left i
    pid_alive_same "$name" "$pid" "$start" || return 0
    all=$(descendants "$pid" | tr '\n' ' ')
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do          # main process: up to 5 s
        [[ -z "$(live_of "$pid")" ]] && break
        sleep 0.05
    done
    # dovecot's master exits without waiting for children that still have clients
    # (auth/stats/log while postfix smtpd holds a SASL connection): TERM them too.
    for ((i = 0; i < 60; i++)); do           # descendants: up to 3 s
        # shellcheck disable=SC2086
        left=$(live_of $pid $all | tr '\n' ' ')
        [[ -z "${left// /}" ]] && return 0
        (( i == 4 )) && kill -TERM $left 2>/dev/null
        sleep 0.05
    done
    echo "mail-servers.sh: $name: SIGKILL to $left" >&2
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
}

cmd_stop() {
    local d=$1; shift
    local want=("$@") name pid start
    [[ -f "$d/pids" ]] || return 0
    (( ${#want[@]} )) || want=(watchdog postfix postfix-wrapper dovecot oauth)
    local n
    for n in "${want[@]}"; do
        [[ "$n" == postfix ]] && want+=(postfix-wrapper)
    done
    for n in "${want[@]}"; do
        while read -r name pid start; do
            [[ "$name" == "$n" ]] || continue
            [[ "$name" == watchdog && "${BASHPID}" == "$pid" ]] && continue
            stop_one "$d" "$name" "$pid" "$start"
        done < "$d/pids"
    done
}

cmd_status() {
    local d=$1 name pid start
    while read -r name pid start; do
        if pid_alive_same "$name" "$pid" "$start"; then echo "$name $pid running"; else echo "$name $pid gone"; fi
    done < "$d/pids"
}

cmd_restart() {
    local d=$1 name=$2
    d=$(cd "$d" && pwd -P)
    load_env "$d"
    cmd_stop "$d" "$name"
    case "$name" in
        oauth) start_oauth "$d" ;;
        dovecot) start_dovecot "$d" ;;
        postfix) start_postfix "$d" ;;
        *) die "unknown service $name (oauth|dovecot|postfix)" ;;
    esac
    echo "$name restarted: $(grep "^$name " "$d/pids")"
}

case "${1:-}" in
    start) [[ $# -eq 2 ]] || die "usage: $0 start DIR"; cmd_start "$2" ;;
    stop) [[ $# -ge 2 ]] || die "usage: $0 stop DIR [NAME...]"; d=$2; shift 2; cmd_stop "$d" "$@" ;;
    restart) [[ $# -eq 3 ]] || die "usage: $0 restart DIR NAME"; cmd_restart "$2" "$3" ;;
    status) [[ $# -eq 2 ]] || die "usage: $0 status DIR"; cmd_status "$2" ;;
    ""|-h|--help) sed -n '2,32p' "$0"; exit 2 ;;
    *) [[ $# -eq 1 ]] || die "usage: $0 DIR | start DIR | stop DIR | restart DIR NAME | status DIR"; cmd_start "$1" ;;
esac
