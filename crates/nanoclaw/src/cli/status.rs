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
fn daemon_status(config: &Config) -> Option<Value> {
    let endpoint = daemon_endpoint(config).ok()?;
    let rt = runtime().ok()?;
    rt.block_on(async {
        let client = crate::tls::client()
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
        println!(
            "  store:      {} groups, {} messages, {} replies not yet delivered",
            live["registered_groups"], live["stored_messages"], live["undelivered_replies"]
        );
        println!(
            "  senders:    {}",
            s(&live["sender_allowlist"]["description"])
        );
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
    }
    Ok(ExitCode::SUCCESS)
}

/// One check's verdict.
enum Verdict {
    Ok(String),
    Warn(String),
    Fail(String),
}

pub fn doctor(config: &Config) -> Result<ExitCode> {
    let layout = Layout::new(&config.root);
    let mut checks: Vec<(&str, Verdict)> = vec![(
        "config",
        Verdict::Ok(format!(
            "assistant `{}`, time zone {}, HTTP port {}",
            config.assistant_name, config.zone.name, config.http_port
        )),
    )];

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

    if let Some((uid, _)) = crate::sandbox::Identity::current().owner()
        && let Some(account) = account_with_uid(uid)
    {
        checks.push((
            "sandbox uid",
            Verdict::Warn(format!(
                "nanoclaw runs as root, so sandboxes run as uid {uid}, which on this host is the account `{account}`: \
                 that account can read and write what the sandboxes can (chats in the store, group folders). \
                 Make sure it is yours, or run nanoclaw as an ordinary user"
            )),
        ));
    }

    checks.extend(sandbox_checks(config));

    checks.push((
        "daemon",
        match daemon_status(config) {
            Some(live) => Verdict::Ok(format!("running, pid {}", live["pid"])),
            None => Verdict::Warn("not running".into()),
        },
    ));

    let mut failed = false;
    for (name, verdict) in &checks {
        let (tag, text) = match verdict {
            Verdict::Ok(t) => ("ok  ", t),
            Verdict::Warn(t) => ("warn", t),
            Verdict::Fail(t) => {
                failed = true;
                ("FAIL", t)
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

/// One line per backend (works, or why not), and which one `run` would use.
fn sandbox_checks(config: &Config) -> Vec<(&'static str, Verdict)> {
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
            match sandbox::backend(kind, config).probe().await {
                Ok(detail) => {
                    working.push(kind);
                    let image = image_note(config, kind).await;
                    checks.push((name, Verdict::Ok(format!("{detail}{image}"))));
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

/// For podman/docker: whether the image holds the current agent.
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
    match image::state(&Oci::new(flavor, config), &build).await {
        Ok(ImageState::Current) => "; image holds this agent".into(),
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
