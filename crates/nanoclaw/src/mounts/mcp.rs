//! `container_config.mcpServers` (SPEC §9.1): the MCP servers a group's agent may use,
//! shaped like Claude Code's `.mcp.json`. Checked when a group is registered or changed,
//! so a mistake is a clear error then instead of a tool that silently never appears.
//!
//! stdio servers run inside the sandbox, so nothing secret can be handed to them: a
//! `${NAME}` value is refused. Streamable-HTTP servers (whose `${NAME}` headers the host
//! would add outside the sandbox) are not built yet and are refused with that reason.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// Servers one group may configure.
pub const MAX_SERVERS: usize = 16;
/// Longest command, argument or environment value.
const MAX_VALUE: usize = 4_096;
/// Arguments or environment variables per server.
const MAX_ITEMS: usize = 64;

/// A stdio server: started inside the sandbox, in the group's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpStdio {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Parses and checks `mcpServers`.
pub fn parse(raw: &Value) -> Result<BTreeMap<String, McpStdio>, String> {
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

fn server(spec: &Value) -> Result<McpStdio, String> {
    let Some(spec) = spec.as_object() else {
        return Err(
            "a server is an object: {\"command\": \"...\", \"args\": [...], \"env\": {...}}".into(),
        );
    };
    match spec.get("type").map(|t| t.as_str()) {
        None | Some(Some("stdio")) => {}
        Some(Some("http")) | Some(Some("streamable-http")) => {
            return Err(
                "streamable-HTTP MCP servers are not supported yet (only stdio servers, started inside the sandbox); \
                 run the server's stdio form instead, or leave it out"
                    .into(),
            );
        }
        Some(Some("sse")) => {
            return Err("the SSE transport is deprecated in MCP and not supported; use the server's stdio form".into());
        }
        Some(other) => {
            return Err(format!(
                "type is {}; it must be \"stdio\" (or left out)",
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
    let command = match spec.get("command") {
        Some(Value::String(c)) if !c.trim().is_empty() => value("command", c)?,
        _ => return Err("\"command\" is required: the program to start, e.g. \"npx\"".into()),
    };
    let args = match spec.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_ITEMS => items
            .iter()
            .map(|a| match a {
                Value::String(a) => value("an argument", a),
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
    Ok(McpStdio { command, args, env })
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
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
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
pub fn to_agent_json(servers: &BTreeMap<String, McpStdio>) -> String {
    let map: Map<String, Value> = servers
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                json!({"command": s.command, "args": s.args, "env": s.env}),
            )
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
        assert_eq!(servers["fs"].args.len(), 3);
        assert_eq!(servers["local"].env["LOG_LEVEL"], "debug");
        let agent: Value = serde_json::from_str(&to_agent_json(&servers)).expect("json");
        assert_eq!(agent["fs"]["command"], "npx");
        assert_eq!(agent["local"]["env"]["LOG_LEVEL"], "debug");
    }

    #[test]
    fn mistakes_are_refused_with_what_to_do() {
        assert!(err(json!([])).contains("must be an object"));
        assert!(err(json!({"a b": {"command": "x"}})).contains("1 to 32 letters"));
        assert!(err(json!({"nanoclaw": {"command": "x"}})).contains("taken"));
        assert!(err(json!({"s": {"args": []}})).contains("\"command\" is required"));
        assert!(err(json!({"s": {"command": "x", "cwd": "/"}})).contains("unknown key \"cwd\""));
        assert!(err(json!({"s": {"command": "x", "args": [1]}})).contains("list of strings"));
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
        assert!(
            err(json!({"s": {"type": "http", "url": "https://x"}})).contains("not supported yet")
        );
        assert!(err(json!({"s": {"type": "sse", "url": "https://x"}})).contains("deprecated"));
        assert!(err(json!({"s": {"type": "ws", "command": "x"}})).contains("must be \"stdio\""));
        let many: Map<String, Value> = (0..17)
            .map(|i| (format!("s{i}"), json!({"command": "x"})))
            .collect();
        assert!(err(Value::Object(many)).contains("at most 16"));
        // The message names where the mistake is.
        assert!(
            err(json!({"weather": {"command": ""}}))
                .starts_with("container_config.mcpServers.weather:")
        );
    }
}
