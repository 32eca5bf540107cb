//! `nanoclaw status` and `nanoclaw doctor`.

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::{daemon_endpoint, open_existing_store, runtime};
use crate::config::Config;
use crate::layout::Layout;
use crate::router::sender_allowlist;

/// Asks the running daemon for `/api/status`; `None` when none answers.
pub(super) fn daemon_status(config: &Config) -> Option<Value> {
    let endpoint = daemon_endpoint(config).ok()?;
    let rt = runtime().ok()?;
    rt.block_on(async {
        let client = crate::tls::client()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        let response = client
            .get(format!("{}/api/status", endpoint.base_url))
            .bearer_auth(&endpoint.token)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json::<Value>().await.ok()
    })
}

pub fn status(config: &Config, as_json: bool) -> Result<ExitCode> {
    if let Some(live) = daemon_status(config) {
        if as_json {
            let mut live = live;
            live["running"] = json!(true);
            println!("{}", serde_json::to_string_pretty(&live)?);
            return Ok(ExitCode::SUCCESS);
        }
        let s = |v: &Value| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        };
        println!(
            "nanoclaw is running (pid {}, up {}s)",
            live["pid"], live["uptime_seconds"]
        );
        println!(
            "  assistant:  {} (time zone {})",
            s(&live["assistant_name"]),
            s(&live["timezone"])
        );
        println!("  runner:     {}", s(&live["runner"]["description"]));
        let queue = &live["queue"];
        println!(
            "  runs:       {} active of {} allowed, {} waiting",
            queue["active"].as_array().map_or(0, Vec::len),
            queue["max_concurrent"],
            queue["waiting"].as_array().map_or(0, Vec::len)
        );
        for run in queue["active"].as_array().into_iter().flatten() {
            let what = if run["idle"].as_bool() == Some(true) {
                "idle, waiting for follow-ups".to_string()
            } else if let Some(tool) = run["tool"].as_str() {
                format!("running {tool}")
            } else {
                "thinking".to_string()
            };
            let task = run["task_id"]
                .as_str()
                .map(|t| format!(" (task {t})"))
                .unwrap_or_default();
            println!("              {}{task}: {what}", s(&run["chat_jid"]));
        }
        println!(
            "  store:      {} groups, {} messages, {} replies not yet delivered",
            live["registered_groups"], live["stored_messages"], live["undelivered_replies"]
        );
        println!(
            "  senders:    {}",
            s(&live["sender_allowlist"]["description"])
        );
        for (name, verdict) in channel_checks(&live) {
            let text = match verdict {
                Verdict::Ok(t) | Verdict::Warn(t) | Verdict::Fail(t) => t,
            };
            println!("  {name:<11} {text}");
        }
        print_disk(config);
        print_budgets(config);
        return Ok(ExitCode::SUCCESS);
    }
    let store = open_existing_store(config)?;
    let groups = store.registered_groups()?.len();
    let messages = store.count_messages()?;
    let undelivered = store.count_pending_outbox()?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "running": false,
                "registered_groups": groups,
                "stored_messages": messages,
                "undelivered_replies": undelivered,
            }))?
        );
    } else {
        println!("nanoclaw is not running (root {})", config.root.display());
        println!(
            "  store: {groups} groups, {messages} messages, {undelivered} replies not yet delivered"
        );
        println!(
            "  start it with: nanoclaw run --root {}",
            config.root.display()
        );
        print_disk(config);
        print_budgets(config);
    }
    Ok(ExitCode::SUCCESS)
}

/// Each group's daily token budget and what it used today (SPEC §15).
fn print_budgets(config: &Config) {
    let lines =
        open_existing_store(config).and_then(|store| super::usage::budget_lines(config, &store));
    match lines {
        Ok(lines) => {
            for line in lines {
                println!("  budget:     {line}");
            }
        }
        Err(e) => println!("  budget:     cannot read token usage: {e:#}"),
    }
}

fn print_disk(config: &Config) {
    match disk_check(config) {
        Verdict::Ok(text) => println!("  disk:       {text}"),
        Verdict::Warn(text) | Verdict::Fail(text) => println!("  WARNING:    {text}"),
    }
}

/// One check's verdict.
pub(crate) enum Verdict {
    Ok(String),
    Warn(String),
    Fail(String),
}

impl Verdict {
    /// `ok  name  text`, as `doctor` and `setup` print a check (no color).
    pub(crate) fn line(&self, name: &str) -> String {
        let (tag, text) = match self {
            Verdict::Ok(t) => ("ok", t),
            Verdict::Warn(t) => ("warn", t),
            Verdict::Fail(t) => ("FAIL", t),
        };
        if name.is_empty() {
            // A detail of the check above it.
            format!("{:<4} {text}", if tag == "ok" { "" } else { tag })
        } else {
            format!("{tag:<4} {name}: {text}")
        }
    }
}

/// The Anthropic credential that is set, by its setting's name, in the order the proxy
/// prefers them.
pub(super) fn anthropic_credential(secrets: &crate::config::Secrets) -> Option<&'static str> {
    if secrets.anthropic_api_key.is_some() {
        Some("ANTHROPIC_API_KEY")
    } else if secrets.claude_code_oauth_token.is_some() {
        Some("CLAUDE_CODE_OAUTH_TOKEN")
    } else if secrets.anthropic_auth_token.is_some() {
        Some("ANTHROPIC_AUTH_TOKEN")
    } else {
        None
    }
}

/// Whether agents can reach a model: a credential for the Anthropic API, or an
/// OpenAI-compatible server (which may need no key). Without one every run fails.
fn model_check(config: &Config, secrets: &crate::config::Secrets) -> Verdict {
    if config.llm_api == "openai" {
        return Verdict::Ok(format!(
            "OpenAI-compatible server {} (model {}{})",
            config.openai_base_url,
            config.model,
            if secrets.openai_api_key.is_some() {
                ", with OPENAI_API_KEY"
            } else {
                ", no key"
            }
        ));
    }
    match anthropic_credential(secrets) {
        Some(name) => Verdict::Ok(format!(
            "{name} set, for {} (model {})",
            config.anthropic_base_url, config.model
        )),
        None => Verdict::Fail(
            "no model credential, so every agent run fails: set ANTHROPIC_API_KEY (console.anthropic.com → API keys) or CLAUDE_CODE_OAUTH_TOKEN (`claude setup-token`) in .env, or NANOCLAW_LLM_API=openai with OPENAI_BASE_URL for a local model"
                .into(),
        ),
    }
}

/// Whether the model API accepts the credential: one cheap request (`GET /v1/models`,
/// which costs no tokens). Only the status and the error's type are shown: some servers
/// quote part of a wrong key in their message.
pub(super) fn model_upstream_check(config: &Config, secrets: &crate::config::Secrets) -> Verdict {
    let openai = config.llm_api == "openai";
    let base = if openai {
        &config.openai_base_url
    } else {
        &config.anthropic_base_url
    };
    let url = format!("{}/v1/models?limit=1", base.trim_end_matches('/'));
    let Ok(client) = crate::tls::client()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    else {
        return Verdict::Warn("cannot create an HTTP client to check the credential".into());
    };
    let mut request = client.get(&url);
    let setting = if openai {
        if let Some(key) = &secrets.openai_api_key {
            request = request.bearer_auth(key.expose());
        }
        "OPENAI_API_KEY"
    } else if let Some(key) = &secrets.anthropic_api_key {
        request = request
            .header("x-api-key", key.expose())
            .header("anthropic-version", "2023-06-01");
        "ANTHROPIC_API_KEY"
    } else if let Some(token) = secrets
        .claude_code_oauth_token
        .as_ref()
        .or(secrets.anthropic_auth_token.as_ref())
    {
        request = request
            .bearer_auth(token.expose())
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "oauth-2025-04-20");
        "CLAUDE_CODE_OAUTH_TOKEN or ANTHROPIC_AUTH_TOKEN"
    } else {
        return Verdict::Warn("no credential to check".into());
    };
    let Ok(rt) = runtime() else {
        return Verdict::Warn("cannot start the async runtime".into());
    };
    let answer = rt.block_on(async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let models: Vec<String> = body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect();
        Ok::<_, reqwest::Error>((
            status,
            body["error"]["type"].as_str().map(str::to_string),
            models,
        ))
    });
    match answer {
        // A local server lists what it can run: a model it lacks fails every run.
        Ok((200, _, models)) if openai && !models.is_empty() && !models.contains(&config.model) => {
            let shown: Vec<String> = models
                .iter()
                .take(10)
                .map(|m| m.chars().filter(|c| !c.is_control()).take(80).collect())
                .collect();
            Verdict::Fail(format!(
                "{base} has no model {:?} (it lists {}): set NANOCLAW_MODEL to one of them",
                config.model,
                shown.join(", ")
            ))
        }
        Ok((200, _, _)) => Verdict::Ok(format!("{base} accepts the credential (GET /v1/models)")),
        Ok((status @ (401 | 403), kind, _)) => Verdict::Fail(format!(
            "{base} refused the credential (HTTP {status}{}): check {setting}",
            kind.map(|k| format!(", {k}")).unwrap_or_default()
        )),
        Ok((status, kind, _)) => Verdict::Warn(format!(
            "could not confirm the credential: {base} answered HTTP {status}{}",
            kind.map(|k| format!(" ({k})")).unwrap_or_default()
        )),
        Err(e) => Verdict::Warn(format!(
            "cannot reach {base} to check the credential ({})",
            e.without_url()
        )),
    }
}

pub fn doctor(
    config: &Config,
    secrets: &crate::config::Secrets,
    offline: bool,
) -> Result<ExitCode> {
    let layout = Layout::new(&config.root);
    let mut checks: Vec<(&str, Verdict)> = vec![(
        "config",
        Verdict::Ok(format!(
            "assistant `{}`, time zone {}, HTTP port {}",
            config.assistant_name, config.zone.name, config.http_port
        )),
    )];

    let model = model_check(config, secrets);
    let configured = matches!(model, Verdict::Ok(_));
    checks.push(("model", model));
    if configured {
        checks.push((
            "",
            if offline {
                Verdict::Ok("  the model API was not asked (--offline)".into())
            } else {
                match model_upstream_check(config, secrets) {
                    Verdict::Ok(t) => Verdict::Ok(format!("  {t}")),
                    Verdict::Warn(t) => {
                        Verdict::Warn(format!("  {t}; `doctor --offline` skips this"))
                    }
                    Verdict::Fail(t) => Verdict::Fail(format!("  {t}")),
                }
            },
        ));
    }

    let db = layout.db_path();
    checks.push((
        "store",
        if !db.exists() {
            Verdict::Warn(format!(
                "{} does not exist yet; `nanoclaw run` creates it",
                db.display()
            ))
        } else {
            // Opening migrates, so a store that opens is at the latest schema.
            match open_existing_store(config).and_then(|s| Ok(s.schema_version()?)) {
                Ok(v) => Verdict::Ok(format!("{} (schema {v})", db.display())),
                Err(e) => Verdict::Fail(format!("{e:#}")),
            }
        },
    ));

    let token = layout.http_token_path();
    checks.push((
        "http token",
        match std::fs::metadata(&token) {
            Err(_) => Verdict::Warn(format!(
                "{} does not exist yet; `nanoclaw run` creates it",
                token.display()
            )),
            Ok(m) if m.permissions().mode() & 0o077 != 0 => Verdict::Fail(format!(
                "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
                token.display(),
                m.permissions().mode() & 0o777,
                token.display()
            )),
            Ok(_) => Verdict::Ok(format!("{} (0600)", token.display())),
        },
    ));

    let senders = sender_allowlist::load(&config.sender_allowlist_path());
    checks.push((
        "senders",
        if senders.is_invalid() {
            Verdict::Fail(senders.describe())
        } else {
            Verdict::Ok(senders.describe())
        },
    ));

    let mounts = crate::mounts::allowlist::load(&config.mount_allowlist_path(), &config.home);
    checks.push((
        "mounts",
        if mounts.is_invalid() {
            Verdict::Fail(mounts.describe())
        } else {
            Verdict::Ok(mounts.describe())
        },
    ));

    if let Ok(store) = open_existing_store(config)
        && let Ok(groups) = store.registered_groups()
    {
        let bad: Vec<String> = groups
            .iter()
            .filter_map(|g| {
                crate::mounts::ContainerConfig::parse(g.container_config.as_deref())
                    .err()
                    .map(|e| format!("{} ({}): {e}", g.jid, g.folder))
            })
            .collect();
        checks.push((
            "groups",
            if bad.is_empty() {
                Verdict::Ok(format!(
                    "{} registered, every container_config valid",
                    groups.len()
                ))
            } else {
                Verdict::Fail(format!(
                    "these groups' runs fail until their container_config is fixed: {}",
                    bad.join("; ")
                ))
            },
        ));
    }
    checks.push(("disk", disk_check(config)));
    checks.extend(service_checks(config, secrets));
    checks.extend(identity_checks(config));
    checks.extend(sandbox_checks(config));

    // Channels whose settings keep them off, running or not.
    let configured = crate::channels::configured(config, secrets);
    for (name, off) in &configured.off {
        checks.push((
            "channel",
            match off {
                crate::channels::ChannelOff::NotConfigured(hint) => {
                    Verdict::Ok(format!("{name}: off ({hint})"))
                }
                crate::channels::ChannelOff::Invalid(why) => {
                    Verdict::Fail(format!("{name}: off: {why}"))
                }
            },
        ));
    }
    match daemon_status(config) {
        Some(live) => {
            checks.push((
                "daemon",
                Verdict::Ok(format!("running, pid {}", live["pid"])),
            ));
            checks.extend(channel_checks(&live));
        }
        None => {
            checks.push(("daemon", Verdict::Warn("not running".into())));
            // The platforms are asked directly: a wrong token shows now, not at start.
            let verified = if offline {
                None
            } else {
                runtime().ok().map(|rt| {
                    rt.block_on(futures_util::future::join_all(
                        configured.channels.iter().map(|c| c.verify()),
                    ))
                })
            };
            for (i, c) in configured.channels.iter().enumerate() {
                let name = c.name();
                let verdict = match verified.as_ref().and_then(|v| v.get(i)) {
                    None => Verdict::Ok(format!(
                        "{name}: configured, not checked (--offline); connects when nanoclaw runs"
                    )),
                    Some(Ok(who)) => {
                        Verdict::Ok(format!("{name}: {who}; connects when nanoclaw runs"))
                    }
                    Some(Err(crate::channels::VerifyError::Refused(why))) => {
                        Verdict::Fail(format!("{name}: {why}"))
                    }
                    Some(Err(crate::channels::VerifyError::Unreachable(why))) => {
                        Verdict::Warn(format!("{name}: could not be checked: {why}"))
                    }
                };
                checks.push(("channel", verdict));
            }
        }
    }
    let (service, ok) = super::service::doctor_line(&super::process_env());
    checks.push((
        "service",
        if ok {
            Verdict::Ok(service)
        } else {
            Verdict::Warn(service)
        },
    ));

    let mut failed = false;
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    for (name, verdict) in &checks {
        let (tag, text) = match verdict {
            Verdict::Ok(t) => ("ok  ".to_string(), t),
            Verdict::Warn(t) => (paint(color, "33", "warn"), t),
            Verdict::Fail(t) => {
                failed = true;
                (paint(color, "31", "FAIL"), t)
            }
        };
        println!("{tag}  {name:<11} {text}");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One line per channel of a running daemon, from its `/api/status`.
fn channel_checks(live: &Value) -> Vec<(&'static str, Verdict)> {
    let Some(channels) = live["channels"].as_array() else {
        return Vec::new();
    };
    channels
        .iter()
        .filter(|c| c["name"] != "web")
        .map(|c| {
            let name = c["name"].as_str().unwrap_or("channel");
            let condition = &c["condition"];
            let text = |key: &str| condition[key].as_str().unwrap_or("").to_string();
            let verdict = match condition["state"].as_str() {
                Some("connected") => Verdict::Ok(format!("{name}: connected {}", text("detail"))),
                Some("needs_attention") => Verdict::Fail(format!("{name}: {}", text("reason"))),
                Some("reconnecting") => {
                    Verdict::Warn(format!("{name}: reconnecting ({})", text("reason")))
                }
                _ => Verdict::Warn(format!("{name}: connecting")),
            };
            ("channel", verdict)
        })
        .collect()
}

fn paint(color: bool, code: &str, text: &str) -> String {
    if color {
        format!("\x1b[1;{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Free space under the root, against `NANOCLAW_MIN_FREE_DISK_MB`.
pub(crate) fn disk_check(config: &Config) -> Verdict {
    match crate::sandbox::disk::free_bytes(&config.root) {
        Err(e) => Verdict::Warn(format!(
            "cannot tell the free space under {}: {e}",
            config.root.display()
        )),
        Ok(free) if free < config.min_free_disk_bytes => Verdict::Fail(format!(
            "only {} MiB free under {}, below the {} MiB kept for the store (NANOCLAW_MIN_FREE_DISK_MB): \
             agent runs are refused until you free some space",
            free >> 20,
            config.root.display(),
            config.min_free_disk_bytes >> 20
        )),
        Ok(free) => Verdict::Ok(format!(
            "{} MiB free under {} (runs stop below {} MiB)",
            free >> 20,
            config.root.display(),
            config.min_free_disk_bytes >> 20
        )),
    }
}

/// Who sandboxes run as on the host, and whether anything else on it shares that id.
fn identity_checks(config: &Config) -> Vec<(&'static str, Verdict)> {
    use crate::config::RuntimeKind;
    if !crate::sandbox::Identity::daemon_is_root() {
        return vec![(
            "sandbox ids",
            Verdict::Ok(
                "nanoclaw runs as an ordinary user: sandboxes are that user inside user namespaces, \
                 and the root's folders are private to it (0700)"
                    .into(),
            ),
        )];
    }
    let mut checks = Vec::new();
    let docker = config.container_runtime == Some(RuntimeKind::Docker)
        || (config.container_runtime.is_none() && crate::sandbox::which("docker").is_some());
    if docker {
        let account = account_with_uid(crate::sandbox::SANDBOX_UID)
            .map(|a| format!(", which on this host is the account `{a}`"))
            .unwrap_or_default();
        checks.push((
            "sandbox ids",
            Verdict::Fail(format!(
                "docker runs every group's sandboxes as the same real uid 1000{account}: that uid (and anything \
                 running as it) can read and write every group's folders and IPC requests. \
                 Use podman or bwrap (CONTAINER_RUNTIME=podman), which give each group its own host uid, \
                 or run nanoclaw as an ordinary user"
            )),
        ));
    }
    let ids = open_existing_store(config)
        .and_then(|s| Ok(s.sandbox_host_ids()?))
        .unwrap_or_default();
    let clashes: Vec<String> = ids
        .iter()
        .filter_map(|(folder, id)| {
            host_use_of_id(*id).map(|what| format!("{folder} ({id}): {what}"))
        })
        .collect();
    checks.push((
        "sandbox ids",
        if clashes.is_empty() {
            Verdict::Ok(format!(
                "as root, each group's sandboxes run as a host uid of its own from {} ({} allocated), \
                 used by no account or subordinate-id range",
                config.sandbox_id_base,
                ids.len()
            ))
        } else {
            Verdict::Fail(format!(
                "sandbox ids are also used elsewhere on this host, so those accounts or containers could reach \
                 the groups' folders: {}. Set NANOCLAW_SANDBOX_ID_BASE to an unused range and remove the \
                 sandbox_ids rows of those folders",
                clashes.join("; ")
            ))
        },
    ));
    checks
}

/// What else on this host uses uid/gid `id`, if anything: an account, a group, or a
/// subordinate id range (another user's containers).
fn host_use_of_id(id: u32) -> Option<String> {
    let in_table = |path: &str| -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let n: u32 = fields.nth(1)?.parse().ok()?;
            (n == id).then(|| format!("{name} in {path}"))
        })
    };
    let in_ranges = |path: &str| -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let start: u64 = fields.next()?.parse().ok()?;
            let count: u64 = fields.next()?.parse().ok()?;
            (start..start + count)
                .contains(&u64::from(id))
                .then(|| format!("{name}'s range in {path}"))
        })
    };
    in_table("/etc/passwd")
        .or_else(|| in_table("/etc/group"))
        .or_else(|| in_ranges("/etc/subuid"))
        .or_else(|| in_ranges("/etc/subgid"))
}

/// One line per backend (works, or why not), and which one `run` would use.
pub(super) fn sandbox_checks(config: &Config) -> Vec<(&'static str, Verdict)> {
    use crate::config::RuntimeKind;
    use crate::sandbox;
    let Ok(rt) = runtime() else {
        return vec![(
            "sandbox",
            Verdict::Fail("cannot start the async runtime".into()),
        )];
    };
    rt.block_on(async {
        let mut checks = Vec::new();
        let mut working = Vec::new();
        for kind in [RuntimeKind::Docker, RuntimeKind::Podman, RuntimeKind::Bwrap] {
            let name = kind.name();
            let backend = sandbox::backend(kind, config);
            match backend.probe().await {
                Ok(detail) => {
                    working.push(kind);
                    let image = image_note(config, kind).await;
                    checks.push((name, Verdict::Ok(format!("{detail}{image}"))));
                    for mechanism in backend.mechanisms() {
                        checks.push(("", Verdict::Ok(format!("  {mechanism}"))));
                    }
                    if kind == RuntimeKind::Bwrap {
                        checks.push(("", browser_check()));
                        checks.push(("", claude_code_check(config).await));
                    }
                }
                Err(why) => checks.push((name, Verdict::Warn(why))),
            }
        }
        let chosen = match config.container_runtime {
            Some(kind) if working.contains(&kind) => Verdict::Ok(format!("CONTAINER_RUNTIME={} works", kind.name())),
            Some(kind) => Verdict::Fail(format!("CONTAINER_RUNTIME={} does not work here (see above)", kind.name())),
            None => match working.first() {
                Some(kind) => Verdict::Ok(format!("agents will run in {} sandboxes (auto-detected)", kind.name())),
                None => Verdict::Fail(
                    "no sandbox backend works, so no agent can run: install bubblewrap (`apt install bubblewrap`) \
                     or podman (`apt install podman runc`), or start Docker"
                        .into(),
                ),
            },
        };
        checks.push(("sandbox", chosen));
        checks
    })
}

/// The optional services the host calls for agents: what is on, and with which key.
fn service_checks(
    config: &Config,
    secrets: &crate::config::Secrets,
) -> Vec<(&'static str, Verdict)> {
    let describe = |url: &Option<String>, model: &str, key: bool, on: &str, off: &str| match url {
        Some(url) => Verdict::Ok(format!(
            "{on} ({url}, model {model}, {})",
            if key { "with its key" } else { "no key set" }
        )),
        None => Verdict::Ok(off.to_string()),
    };
    vec![
        (
            "voice",
            describe(
                &config.transcribe_url,
                &config.transcribe_model,
                secrets.transcribe_api_key.is_some(),
                "voice notes are transcribed",
                "voice notes are saved, not transcribed (set TRANSCRIBE_URL to transcribe them)",
            ),
        ),
        (
            "memory",
            describe(
                &config.embeddings_url,
                &config.embeddings_model,
                secrets.embeddings_api_key.is_some(),
                "memory_search ranks by meaning and words",
                "memory_search ranks by words (set EMBEDDINGS_URL to rank by meaning too)",
            ),
        ),
    ]
}

/// Whether bwrap agents get the `Browser` tool: they use the host's Chromium.
fn browser_check() -> Verdict {
    match nanoclaw_protocol::BROWSER_CANDIDATES
        .iter()
        .find(|p| std::path::Path::new(p).is_file())
    {
        Some(path) => Verdict::Ok(format!("  Browser tool: the host's Chromium, {path}")),
        None => Verdict::Warn(
            "  Browser tool: no Chromium on this host, so bwrap agents have none (`apt install chromium`; the agent image has its own)"
                .into(),
        ),
    }
}

/// Whether bwrap sandboxes of `claude-code` groups get Claude Code: the host's.
async fn claude_code_check(config: &Config) -> Verdict {
    use crate::sandbox::claude_code;
    use nanoclaw_protocol::CLAUDE_CODE_VERSION as PINNED;
    let path = match claude_code::host_binary(config) {
        Ok(path) => path,
        Err(why) => return Verdict::Warn(format!("  Claude Code harness: {why}")),
    };
    match claude_code::version(&path).await {
        Ok(v) if v == PINNED => {
            Verdict::Ok(format!("  Claude Code harness: {} ({v})", path.display()))
        }
        Ok(v) => Verdict::Warn(format!(
            "  Claude Code harness: {} is {v}, NanoClaw is tested with {PINNED} \
             (`npm install -g @anthropic-ai/claude-code@{PINNED}` or set CLAUDE_CODE_PATH)",
            path.display()
        )),
        Err(e) => Verdict::Warn(format!("  Claude Code harness: {e}")),
    }
}

/// For podman/docker: whether the image holds the current agent (and Claude Code).
async fn image_note(config: &Config, kind: crate::config::RuntimeKind) -> String {
    use crate::config::RuntimeKind;
    use crate::sandbox::image::{self, ImageState};
    use crate::sandbox::oci::{Flavor, Oci};
    let flavor = match kind {
        RuntimeKind::Podman => Flavor::Podman,
        RuntimeKind::Docker => Flavor::Docker,
        RuntimeKind::Bwrap => return String::new(),
    };
    let Ok(agent) = crate::sandbox::agent_binary(config) else {
        return "; nanoclaw-agent not found".into();
    };
    let Ok(build) = image::agent_build_id(&agent) else {
        return "; cannot read nanoclaw-agent".into();
    };
    let oci = Oci::new(flavor, config);
    match image::state(&oci, &build).await {
        Ok(ImageState::Current) => {
            let claude = match image::label(&oci, crate::sandbox::claude_code::LABEL).await {
                Ok(v) if v == nanoclaw_protocol::CLAUDE_CODE_VERSION => {
                    format!(" and Claude Code {v}")
                }
                _ => " but no Claude Code (claude-code groups cannot run: install npm, then \
                      `nanoclaw image build --force`)"
                    .into(),
            };
            format!("; image holds this agent{claude}")
        }
        Ok(ImageState::Stale { .. }) => "; image is stale (rebuilt before the next run)".into(),
        Ok(ImageState::Missing) => String::new(),
        Err(e) => format!("; cannot inspect the image: {e}"),
    }
}

/// The name of the account with `uid` in /etc/passwd, if any.
fn account_with_uid(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}
