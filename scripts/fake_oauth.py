#!/usr/bin/env python3
"""Tiny fake OAuth2 authorization server for mail integration tests.

Python 3 stdlib only.  Listens on 127.0.0.1 only.

Endpoints (all bodies application/x-www-form-urlencoded, answers JSON):

  POST /token        grant_type=refresh_token&client_id=..&client_secret=..&refresh_token=..
                     -> 200 {"access_token","expires_in","token_type":"Bearer"[,"refresh_token"]}
                     -> 400 {"error":"invalid_grant"} for unknown/revoked refresh token
                     -> 401 {"error":"invalid_client"} for wrong client_id/secret
                     -> 400 {"error":"unsupported_grant_type"} otherwise
  POST /introspect   token=..  (RFC 7662; what dovecot's introspection_mode=post sends)
                     -> {"active":true,"username":u,"email":u,"sub":u,"exp":..,...}
                        or {"active":false} for unknown / expired / revoked tokens
                     GET /introspect?token=.. and "Authorization: Bearer .." also accepted.
  POST /revoke       token=..  (RFC 7009).  Revoking a refresh token also revokes every
                     access token issued from it.  Always 200.
  POST /admin/refresh_token  username=..[&refresh_token=..]  -> {"refresh_token":..}
                     mint (or register a chosen) refresh token for a user.
  POST /admin/settings       token_seconds=N  -> change lifetime of tokens issued from now on.
  GET  /admin/state  -> counters (token/introspect requests) and live token counts.
  GET  /health       -> {"ok":true}

Environment:
  OAUTH_PORT      port on 127.0.0.1 (default 0 = pick one; printed as "listening PORT")
  TOKEN_SECONDS   access-token lifetime in seconds (default 3600); may be fractional
  CLIENT_ID / CLIENT_SECRET   accepted client credentials (default test-client / test-secret);
                  set CLIENT_SECRET="" to accept any secret.
  REFRESH_TOKENS  "rt1=user1,rt2=user2" pre-registered refresh tokens
  ROTATE_REFRESH_TOKENS=1     issue a new refresh token on every refresh and revoke the old one
  OAUTH_PORT_FILE if set, the bound port is written there once listening
"""
import json
import os
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {
    "token_seconds": float(os.environ.get("TOKEN_SECONDS", "3600")),
    "client_id": os.environ.get("CLIENT_ID", "test-client"),
    "client_secret": os.environ.get("CLIENT_SECRET", "test-secret"),
    "rotate": os.environ.get("ROTATE_REFRESH_TOKENS", "0") == "1",
    "refresh": {},   # refresh_token -> {"user":..., "revoked":bool}
    "access": {},    # access_token -> {"user":..., "exp":float, "refresh":rt, "revoked":bool}
    "counters": {"token": 0, "introspect": 0, "introspect_active": 0, "revoke": 0},
}

for item in filter(None, os.environ.get("REFRESH_TOKENS", "").split(",")):
    rt, _, user = item.partition("=")
    STATE["refresh"][rt.strip()] = {"user": user.strip(), "revoked": False}


def log(msg):
    sys.stdout.write("%.3f fake_oauth: %s\n" % (time.time(), msg))
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-oauth/1"
    protocol_version = "HTTP/1.1"   # keep-alive: dovecot's http client reuses connections

    def log_message(self, fmt, *args):  # route to our logger
        log("%s %s" % (self.address_string(), fmt % args))

    def _form(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("utf-8", "replace") if n else ""
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}
        q = urllib.parse.urlsplit(self.path).query
        for k, v in urllib.parse.parse_qs(q, keep_blank_values=True).items():
            form.setdefault(k, v[-1])
        return form

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _client_ok(self, form):
        cid, csec = form.get("client_id"), form.get("client_secret")
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            import base64
            try:
                cid, _, csec = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                return False
        if cid != STATE["client_id"]:
            return False
        return STATE["client_secret"] == "" or csec == STATE["client_secret"]

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/health":
            return self._send(200, {"ok": True})
        if path == "/admin/state":
            with LOCK:
                now = time.time()
                live = sum(1 for a in STATE["access"].values() if not a["revoked"] and a["exp"] > now)
                return self._send(200, {"counters": dict(STATE["counters"]),
                                        "token_seconds": STATE["token_seconds"],
                                        "live_access_tokens": live,
                                        "refresh_tokens": {k: v for k, v in STATE["refresh"].items()}})
        if path == "/introspect":
            return self._introspect(self._form())
        return self._send(404, {"error": "not_found"})

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        form = self._form()
        if path == "/token":
            return self._token(form)
        if path == "/introspect":
            return self._introspect(form)
        if path == "/revoke":
            return self._revoke(form)
        if path == "/admin/refresh_token":
            user = form.get("username", "")
            if not user:
                return self._send(400, {"error": "invalid_request"})
            rt = form.get("refresh_token") or ("rt-" + secrets.token_urlsafe(16))
            with LOCK:
                STATE["refresh"][rt] = {"user": user, "revoked": False}
            return self._send(200, {"refresh_token": rt, "username": user})
        if path == "/admin/settings":
            with LOCK:
                if "token_seconds" in form:
                    STATE["token_seconds"] = float(form["token_seconds"])
                if "rotate" in form:
                    STATE["rotate"] = form["rotate"] == "1"
            return self._send(200, {"token_seconds": STATE["token_seconds"], "rotate": STATE["rotate"]})
        return self._send(404, {"error": "not_found"})

    def _token(self, form):
        with LOCK:
            STATE["counters"]["token"] += 1
        if not self._client_ok(form):
            return self._send(401, {"error": "invalid_client"})
        if form.get("grant_type") != "refresh_token":
            return self._send(400, {"error": "unsupported_grant_type"})
        rt = form.get("refresh_token", "")
        with LOCK:
            ent = STATE["refresh"].get(rt)
            if ent is None or ent["revoked"]:
                log("token: invalid_grant for refresh token %r" % rt)
                return self._send(400, {"error": "invalid_grant",
                                        "error_description": "refresh token revoked or unknown"})
            secs = STATE["token_seconds"]
            at = "at-" + secrets.token_urlsafe(24)
            STATE["access"][at] = {"user": ent["user"], "exp": time.time() + secs,
                                   "refresh": rt, "revoked": False}
            resp = {"access_token": at, "expires_in": int(secs) if secs == int(secs) else secs,
                    "token_type": "Bearer", "scope": "https://mail.test/"}
            if STATE["rotate"]:
                new_rt = "rt-" + secrets.token_urlsafe(16)
                STATE["refresh"][new_rt] = {"user": ent["user"], "revoked": False}
                ent["revoked"] = True
                resp["refresh_token"] = new_rt
        log("token: issued %s for %s (%ss)" % (at[:10], ent["user"], secs))
        return self._send(200, resp)

    def _introspect(self, form):
        tok = form.get("token", "")
        auth = self.headers.get("Authorization", "")
        if not tok and auth.lower().startswith("bearer "):
            tok = auth[7:].strip()
        now = time.time()
        with LOCK:
            STATE["counters"]["introspect"] += 1
            ent = STATE["access"].get(tok)
            ok = ent is not None and not ent["revoked"] and ent["exp"] > now
            if ok:
                STATE["counters"]["introspect_active"] += 1
        if not ok:
            why = "unknown" if ent is None else ("revoked" if ent["revoked"] else "expired")
            log("introspect: inactive (%s) %r" % (why, tok[:10]))
            return self._send(200, {"active": False})
        log("introspect: active %s for %s" % (tok[:10], ent["user"]))
        return self._send(200, {"active": True, "username": ent["user"], "email": ent["user"],
                                "sub": ent["user"], "client_id": STATE["client_id"],
                                "token_type": "Bearer", "scope": "https://mail.test/",
                                "exp": int(ent["exp"]), "iat": int(now)})

    def _revoke(self, form):
        tok = form.get("token", "")
        with LOCK:
            STATE["counters"]["revoke"] += 1
            if tok in STATE["refresh"]:
                STATE["refresh"][tok]["revoked"] = True
                for a in STATE["access"].values():
                    if a["refresh"] == tok:
                        a["revoked"] = True
                log("revoke: refresh token %r (and its access tokens)" % tok)
            elif tok in STATE["access"]:
                STATE["access"][tok]["revoked"] = True
                log("revoke: access token %r" % tok[:10])
        return self._send(200, {})


def main():
    port = int(os.environ.get("OAUTH_PORT", "0"))
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    bound = srv.server_address[1]
    pf = os.environ.get("OAUTH_PORT_FILE")
    if pf:
        with open(pf + ".tmp", "w") as f:
            f.write("%d\n" % bound)
        os.rename(pf + ".tmp", pf)
    log("listening 127.0.0.1:%d token_seconds=%s" % (bound, STATE["token_seconds"]))
    import signal

    def _term(*_a):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _term)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    srv.server_close()
    log("stopped")


if __name__ == "__main__":
    main()
