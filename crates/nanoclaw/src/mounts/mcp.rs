//! `container_config.mcpServers` (SPEC §9.1): the MCP servers a group's agent may use,
//! shaped like Claude Code's `.mcp.json`. Checked when a group is registered or changed,
//! so a mistake is a clear error then instead of a tool that silently never appears.
//!
//! stdio servers run inside the sandbox, so nothing secret can be handed to them: a
//! `${NAME}` value is refused. Streamable-HTTP servers are reached through the
//! credential proxy (`/mcp/{name}` on the run's socket), which adds their headers outside
//! the sandbox, a `${NAME}` in a header value taken from `.env` when the run starts; the
//! sandbox never learns the URL's credentials or the headers.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// Servers one group may configure.
pub const MAX_SERVERS: usize = 16;
/// Largest `mcpServers` as JSON (Linux refuses an environment string over 128 KiB).
const MAX_CONFIG_BYTES: usize = 32 << 10;
/// Longest command, argument or environment value.
const MAX_VALUE: usize = 4_096;
/// Arguments or environment variables per server.
const MAX_ITEMS: usize = 64;

/// One configured server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpServer {
    Stdio(McpStdio),
    Http(McpHttp),
}

/// A streamable-HTTP server, reached by the host for the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpHttp {
    pub url: String,
    /// Header values as configured: literal text with `${NAME}` references.
    pub headers: BTreeMap<String, String>,
}

impl McpHttp {
    /// The headers with every `${NAME}` replaced by `lookup(NAME)`; the first name
    /// `lookup` does not know is the error.
    pub fn resolved_headers(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, String> {
        self.headers
            .iter()
            .map(|(name, value)| {
                let mut out = String::new();
                for piece in pieces(value).unwrap_or_default() {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Secret(secret) => out.push_str(&lookup(secret).ok_or_else(|| {
                            format!(
                                "header {name} names the secret {secret}, which .env does not hold; add {secret}=… to .env"
                            )
                        })?),
                    }
                }
                Ok((name.clone(), out))
            })
            .collect()
    }
}

enum Piece<'a> {
    Text(&'a str),
    Secret(&'a str),
}

/// `value` split into literal text and `${NAME}` references.
fn pieces(value: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("a `${` is not closed by `}`".into());
        };
        let name = &after[..end];
        if !crate::config::dotenv::is_valid_key(name) {
            return Err(format!(
                "${{{name}}} does not name a variable (letters, digits and `_`, not starting with a digit)"
            ));
        }
        if !name.starts_with(SECRET_PREFIX) || name.len() == SECRET_PREFIX.len() {
            return Err(format!(
                "${{{name}}}: the secrets MCP servers may use are the .env variables named {SECRET_PREFIX}… \
                 (e.g. {SECRET_PREFIX}{name}), so that nanoclaw's own credentials can never be sent to a server"
            ));
        }
        out.push(Piece::Secret(name));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// The `.env` variables a `${NAME}` may name: only these, never nanoclaw's own
/// credentials (the model key, bot tokens, mail passwords).
pub const SECRET_PREFIX: &str = "MCP_";

/// Headers the proxy sets itself, or that belong to one connection.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "accept",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// A stdio server: started inside the sandbox, in the group's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpStdio {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Parses and checks `mcpServers`.
pub fn parse(raw: &Value) -> Result<BTreeMap<String, McpServer>, String> {
    let Some(servers) = raw.as_object() else {
        return Err(
            "container_config.mcpServers must be an object of servers by name, like Claude Code's .mcp.json: \
             {\"name\": {\"command\": \"...\", \"args\": [...]}}"
                .into(),
        );
    };
    if servers.len() > MAX_SERVERS {
        return Err(format!(
            "container_config.mcpServers has {} servers; at most {MAX_SERVERS} are allowed",
            servers.len()
        ));
    }
    let size = raw.to_string().len();
    if size > MAX_CONFIG_BYTES {
        return Err(format!(
            "container_config.mcpServers is {size} bytes; at most {MAX_CONFIG_BYTES} are allowed (it travels in the sandbox's environment)"
        ));
    }
    let mut parsed = BTreeMap::new();
    for (name, spec) in servers {
        let at = format!("container_config.mcpServers.{name}");
        check_name(name).map_err(|e| format!("{at}: {e}"))?;
        parsed.insert(
            name.clone(),
            server(spec).map_err(|e| format!("{at}: {e}"))?,
        );
    }
    Ok(parsed)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 32
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(
            "a server name is 1 to 32 letters, digits, `_` or `-` (its tools are named mcp__{name}__{tool})"
                .into(),
        );
    }
    if name == "nanoclaw" {
        return Err("the name nanoclaw is taken by NanoClaw's own tools; choose another".into());
    }
    Ok(())
}

fn server(spec: &Value) -> Result<McpServer, String> {
    let Some(spec) = spec.as_object() else {
        return Err(
            "a server is an object: {\"command\": \"...\", \"args\": [...], \"env\": {...}}".into(),
        );
    };
    match spec.get("type").map(|t| t.as_str()) {
        None | Some(Some("stdio")) => {}
        Some(Some("http")) => return http(spec).map(McpServer::Http),
        Some(Some("sse")) => {
            return Err("the SSE transport is deprecated in MCP and not supported; use the server's stdio form".into());
        }
        Some(other) => {
            return Err(format!(
                "type is {}; it must be \"stdio\" (or left out) or \"http\"",
                other
                    .map(|t| format!("{t:?}"))
                    .unwrap_or_else(|| "not a string".into())
            ));
        }
    }
    if let Some(key) = spec
        .keys()
        .find(|k| !["type", "command", "args", "env"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown key {key:?}; a stdio server has \"command\", \"args\" and \"env\""
        ));
    }
    // Claude Code (the claude-code harness) expands `${NAME}` in a server's command and
    // arguments from its own environment, which holds the run token; our loop does not
    // expand them at all. Neither can name anything the group should have.
    let no_expansion = |what: &str, v: &str| {
        if v.contains("${") {
            Err(format!(
                "{what} holds `${{…}}`; NanoClaw does not expand variables in a stdio server's \
                 command or arguments (and a secret would never reach the sandbox): write the value itself"
            ))
        } else {
            value(what, v)
        }
    };
    let command = match spec.get("command") {
        Some(Value::String(c)) if !c.trim().is_empty() => no_expansion("command", c)?,
        _ => return Err("\"command\" is required: the program to start, e.g. \"npx\"".into()),
    };
    let args = match spec.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_ITEMS => items
            .iter()
            .map(|a| match a {
                Value::String(a) => no_expansion("an argument", a),
                _ => Err("\"args\" must be a list of strings".to_string()),
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => return Err(format!("\"args\" has more than {MAX_ITEMS} items")),
        Some(_) => return Err("\"args\" must be a list of strings".into()),
    };
    let env = match spec.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(vars)) if vars.len() <= MAX_ITEMS => env(vars)?,
        Some(Value::Object(_)) => {
            return Err(format!("\"env\" has more than {MAX_ITEMS} variables"));
        }
        Some(_) => return Err("\"env\" must be an object of strings".into()),
    };
    Ok(McpServer::Stdio(McpStdio { command, args, env }))
}

fn http(spec: &Map<String, Value>) -> Result<McpHttp, String> {
    if let Some(key) = spec
        .keys()
        .find(|k| !["type", "url", "headers"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown key {key:?}; an http server has \"type\", \"url\" and \"headers\""
        ));
    }
    let Some(Value::String(raw)) = spec.get("url") else {
        return Err("\"url\" is required: the server's streamable-HTTP endpoint, e.g. https://mcp.example.com/mcp".into());
    };
    let url =
        reqwest::Url::parse(raw.trim()).map_err(|e| format!("url {raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "url {raw:?} must be an http:// or https:// URL with a host"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "url holds a user name or password; put credentials in \"headers\" as a ${NAME} secret from .env instead"
                .into(),
        );
    }
    if url.host_str().is_some_and(|h| h.ends_with('.')) {
        return Err(format!(
            "url {raw:?}: write the host without its trailing dot"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!(
            "url {raw:?} has a #fragment, which HTTP never sends; remove it"
        ));
    }
    let headers = match spec.get("headers") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(h)) if h.len() <= MAX_ITEMS => {
            let mut out = BTreeMap::new();
            for (name, value) in h {
                let lower = name.to_ascii_lowercase();
                let token = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    return Err(format!("headers: {name:?} is not a header name"));
                }
                if RESERVED_HEADERS.contains(&lower.as_str()) {
                    return Err(format!(
                        "headers: {name} is set by NanoClaw for the connection and cannot be configured"
                    ));
                }
                let Value::String(value) = value else {
                    return Err(format!("headers: {name} must be a string"));
                };
                if value.len() > MAX_VALUE || value.chars().any(|c| c.is_control()) {
                    return Err(format!(
                        "headers: {name} is over {MAX_VALUE} bytes or holds a control character"
                    ));
                }
                pieces(value).map_err(|e| format!("headers: {name}: {e}"))?;
                if out.insert(lower, value.clone()).is_some() {
                    return Err(format!("headers: {name} is given twice"));
                }
            }
            out
        }
        Some(Value::Object(_)) => {
            return Err(format!("\"headers\" has more than {MAX_ITEMS} headers"));
        }
        Some(_) => return Err("\"headers\" must be an object of strings".into()),
    };
    if headers.values().any(|v| v.contains("${")) {
        // Secrets never travel in clear text beyond this machine.
        nanoclaw_channel::http::check_endpoint("url", url.as_str())
            .map_err(|e| format!("headers name secrets, so {e}"))?;
    }
    Ok(McpHttp {
        url: url.to_string(),
        headers,
    })
}

fn value(what: &str, v: &str) -> Result<String, String> {
    if v.len() > MAX_VALUE || v.contains('\0') {
        return Err(format!(
            "{what} is over {MAX_VALUE} bytes or holds a NUL character"
        ));
    }
    Ok(v.to_string())
}

fn env(vars: &Map<String, Value>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (name, v) in vars {
        if !crate::config::dotenv::is_valid_key(name) {
            return Err(format!(
                "env: {name:?} is not a variable name (letters, digits and `_`, not starting with a digit)"
            ));
        }
        if name.starts_with("NANOCLAW_") || name.starts_with("ANTHROPIC_") {
            return Err(format!(
                "env: {name} is set by NanoClaw for the run and cannot be changed for a server"
            ));
        }
        let Value::String(v) = v else {
            return Err(format!("env: {name} must be a string"));
        };
        if v.contains("${") {
            return Err(format!(
                "env: {name} names a host secret (${{…}}), but a stdio server runs inside the sandbox, \
                 where secrets never go; give it a value that is safe for the group to see"
            ));
        }
        out.insert(name.clone(), value(&format!("env: {name}"), v)?);
    }
    Ok(out)
}

/// What the agent is given (`NANOCLAW_MCP_SERVERS`).
/// HTTP servers appear as `{"type": "http"}` only: the sandbox reaches them through the
/// proxy, which alone knows their URL and headers.
pub fn to_agent_json(servers: &BTreeMap<String, McpServer>) -> String {
    let map: Map<String, Value> = servers
        .iter()
        .map(|(name, server)| {
            let spec = match server {
                McpServer::Stdio(s) => json!({"command": s.command, "args": s.args, "env": s.env}),
                McpServer::Http(_) => json!({"type": "http"}),
            };
            (name.clone(), spec)
        })
        .collect();
    Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: Value) -> String {
        parse(&v).err().unwrap_or_default()
    }

    #[test]
    fn a_claude_code_style_stdio_config_is_accepted_and_passed_on() {
        let servers = parse(&json!({
            "fs": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/workspace/group"]},
            "local": {"type": "stdio", "command": "python3", "env": {"LOG_LEVEL": "debug"}},
        }))
        .expect("valid");
        let McpServer::Stdio(fs) = &servers["fs"] else {
            panic!("stdio")
        };
        assert_eq!(fs.args.len(), 3);
        let McpServer::Stdio(local) = &servers["local"] else {
            panic!("stdio")
        };
        assert_eq!(local.env["LOG_LEVEL"], "debug");
        let agent: Value = serde_json::from_str(&to_agent_json(&servers)).expect("json");
        assert_eq!(agent["fs"]["command"], "npx");
        assert_eq!(agent["local"]["env"]["LOG_LEVEL"], "debug");
    }

    #[test]
    fn http_servers_keep_their_secrets_on_the_host() {
        let servers = parse(
            &json!({"gh": {"type": "http", "url": "https://mcp.example.com/mcp",
            "headers": {"Authorization": "Bearer ${MCP_GH_TOKEN}", "X-Team": "core"}}}),
        )
        .expect("valid");
        let McpServer::Http(gh) = &servers["gh"] else {
            panic!("http")
        };
        let lookup = |name: &str| (name == "MCP_GH_TOKEN").then(|| "s3cret".to_string());
        assert_eq!(
            gh.resolved_headers(lookup).expect("resolved"),
            [
                ("authorization".to_string(), "Bearer s3cret".to_string()),
                ("x-team".to_string(), "core".to_string())
            ]
        );
        let missing = gh.resolved_headers(|_| None).err().unwrap_or_default();
        assert!(
            missing.contains("GH_TOKEN") && missing.contains(".env"),
            "{missing}"
        );
        // The sandbox learns neither the URL nor the headers.
        assert_eq!(to_agent_json(&servers), r#"{"gh":{"type":"http"}}"#);
        // nanoclaw's own credentials cannot be named, and secrets need https elsewhere.
        let own = err(json!({"s": {"type": "http", "url": "https://x",
            "headers": {"X-Key": "${ANTHROPIC_API_KEY}"}}}));
        assert!(own.contains("MCP_"), "{own}");
        let clear = err(
            json!({"s": {"type": "http", "url": "http://mcp.example.com/mcp",
            "headers": {"X-Key": "${MCP_KEY}"}}}),
        );
        assert!(clear.contains("https"), "{clear}");
        assert!(
            parse(
                &json!({"s": {"type": "http", "url": "http://127.0.0.1:9/mcp",
            "headers": {"X-Key": "${MCP_KEY}"}}})
            )
            .is_ok(),
            "loopback may be plain http"
        );
        let dot = err(json!({"s": {"type": "http", "url": "https://mcp.example.com./mcp"}}));
        assert!(dot.contains("trailing dot"), "{dot}");
    }

    #[test]
    fn mistakes_are_refused_with_what_to_do() {
        assert!(err(json!([])).contains("must be an object"));
        assert!(err(json!({"a b": {"command": "x"}})).contains("1 to 32 letters"));
        assert!(err(json!({"nanoclaw": {"command": "x"}})).contains("taken"));
        assert!(err(json!({"s": {"args": []}})).contains("\"command\" is required"));
        assert!(err(json!({"s": {"command": "x", "cwd": "/"}})).contains("unknown key \"cwd\""));
        assert!(err(json!({"s": {"command": "x", "args": [1]}})).contains("list of strings"));
        for bad in [
            json!({"s": {"command": "sh", "args": ["-c", "echo ${ANTHROPIC_API_KEY}"]}}),
            json!({"s": {"command": "${HOME}/bin/server"}}),
        ] {
            assert!(err(bad).contains("does not expand variables"));
        }
        assert!(
            err(json!({"s": {"command": "x", "env": {"K": "${SECRET}"}}})).contains("host secret")
        );
        assert!(
            err(json!({"s": {"command": "x", "env": {"NANOCLAW_IS_MAIN": "1"}}}))
                .contains("set by NanoClaw")
        );
        assert!(
            err(json!({"s": {"command": "x", "env": {"1X": "v"}}})).contains("not a variable name")
        );
        assert!(err(json!({"s": {"type": "http"}})).contains("\"url\" is required"));
        assert!(
            err(json!({"s": {"type": "http", "url": "ftp://x"}})).contains("http:// or https://")
        );
        assert!(err(json!({"s": {"type": "http", "url": "https://u:p@x"}})).contains("password"));
        assert!(
            err(json!({"s": {"type": "http", "url": "https://x", "command": "y"}}))
                .contains("unknown key")
        );
        assert!(
            err(json!({"s": {"type": "http", "url": "https://x", "headers": {"Host": "y"}}}))
                .contains("cannot be configured")
        );
        assert!(
            err(
                json!({"s": {"type": "http", "url": "https://x", "headers": {"X-A": "a\r\nB: c"}}})
            )
            .contains("control character")
        );
        assert!(
            err(json!({"s": {"type": "http", "url": "https://x", "headers": {"X-A": "${OPEN"}}}))
                .contains("not closed")
        );
        assert!(
            err(json!({"s": {"type": "http", "url": "https://x", "headers": {"X-A": "${1X}"}}}))
                .contains("does not name")
        );
        assert!(
            err(json!({"s": {"type": "http", "url": "https://x", "headers": {"a b": "v"}}}))
                .contains("not a header name")
        );
        assert!(err(json!({"s": {"type": "sse", "url": "https://x"}})).contains("deprecated"));
        assert!(err(json!({"s": {"type": "ws", "command": "x"}})).contains("must be \"stdio\""));
        let many: Map<String, Value> = (0..17)
            .map(|i| (format!("s{i}"), json!({"command": "x"})))
            .collect();
        assert!(err(Value::Object(many)).contains("at most 16"));
        let long: Vec<String> = (0..40).map(|_| "a".repeat(4_000)).collect();
        assert!(
            err(json!({"s": {"command": "x", "args": long}})).contains("at most 32768 are allowed")
        );
        // The message names where the mistake is.
        assert!(
            err(json!({"weather": {"command": ""}}))
                .starts_with("container_config.mcpServers.weather:")
        );
    }
}
