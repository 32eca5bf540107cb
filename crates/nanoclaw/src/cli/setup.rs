//! `nanoclaw setup` (SPEC §14): the first run, in a terminal or scripted.
//!
//! It checks the sandbox backends, asks for the model credential and each channel's
//! settings, and checks every one of them with the real service (one request each)
//! before anything is saved: a wrong key is caught here, not at the first message. The
//! answers go into `.env` (mode 0600, other lines kept), secrets are never echoed, and it
//! ends with the service and the web app's sign-in link.
//!
//! Scripted (`--non-interactive`), it asks nothing: it takes the settings from the
//! environment (so no secret is ever on a command line, where every user of the machine
//! can read it), checks them the same way, and saves them.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::status::{Verdict, model_upstream_check, sandbox_checks};
use crate::config::{Config, Secrets};

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Ask nothing: check the settings found in the environment and save them
    #[arg(long)]
    non_interactive: bool,
    /// Also install the service (with --non-interactive; interactive setup asks)
    #[arg(long)]
    service: bool,
}

/// Settings setup writes; every other line of `.env` is left as it is.
const MODEL_KEYS: [&str; 7] = [
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_AUTH_TOKEN",
    "OPENAI_API_KEY",
    "NANOCLAW_LLM_API",
    "OPENAI_BASE_URL",
    "NANOCLAW_MODEL",
];

/// Endpoint overrides: saved when they are set in the environment setup runs in, since
/// the checks used them (a proxy, a self-hosted server).
const ENDPOINT_KEYS: [&str; 6] = [
    "ANTHROPIC_BASE_URL",
    "TELEGRAM_API_URL",
    "DISCORD_API_URL",
    "DISCORD_GATEWAY_URL",
    "SLACK_API_URL",
    "EMAIL_TLS_CA_FILE",
];

/// One question of a channel's form.
struct Field {
    key: &'static str,
    prompt: &'static str,
    secret: bool,
    /// Whether an empty answer is fine (the setting then stays unset).
    optional: bool,
}

/// What a channel needs, as questions.
struct ChannelForm {
    /// The channel's name, as `channels::configured` calls it.
    name: &'static str,
    title: &'static str,
    how: &'static str,
    fields: &'static [Field],
}

const fn field(key: &'static str, prompt: &'static str, secret: bool) -> Field {
    Field {
        key,
        prompt,
        secret,
        optional: false,
    }
}

const CHANNELS: [ChannelForm; 4] = [
    ChannelForm {
        name: "telegram",
        title: "Telegram",
        how: "talk to @BotFather in Telegram, send /newbot, and copy the token it gives",
        fields: &[field("TELEGRAM_BOT_TOKEN", "bot token", true)],
    },
    ChannelForm {
        name: "discord",
        title: "Discord",
        how: "Developer Portal → your application → Bot → Reset Token; turn on Message Content Intent on the same page",
        fields: &[field("DISCORD_BOT_TOKEN", "bot token", true)],
    },
    ChannelForm {
        name: "slack",
        title: "Slack",
        how: "your app's page: Basic Information → App-Level Tokens (xapp-…, scope connections:write), and OAuth & Permissions → Bot User OAuth Token (xoxb-…); Socket Mode on",
        fields: &[
            field("SLACK_APP_TOKEN", "app-level token (xapp-…)", true),
            field("SLACK_BOT_TOKEN", "bot token (xoxb-…)", true),
        ],
    },
    ChannelForm {
        name: "email",
        title: "Email",
        how: "the assistant's own mailbox; for Gmail an app password (README: Email), imaps://imap.gmail.com and smtps://smtp.gmail.com",
        fields: &[
            field("EMAIL_ADDRESS", "address", false),
            field("EMAIL_IMAP_URL", "IMAP URL (imaps://host:993)", false),
            field("EMAIL_SMTP_URL", "SMTP URL (smtps://host:465)", false),
            Field {
                key: "EMAIL_USER",
                prompt: "login name (Enter: the address)",
                secret: false,
                optional: true,
            },
            field("EMAIL_PASSWORD", "password", true),
        ],
    },
];

pub fn setup(config: &Config, env: &HashMap<String, String>, args: SetupArgs) -> Result<ExitCode> {
    let interactive = !args.non_interactive;
    if interactive && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!(
            "setup asks questions, and its input is not a terminal; run it in a terminal, or use `nanoclaw setup --non-interactive` with the settings in the environment"
        );
    }
    let mut s = Setup {
        root: config.root.clone(),
        env: env.clone(),
        term: Term { interactive },
        changes: BTreeMap::new(),
    };
    println!("NanoClaw setup for {}", config.root.display());
    // What `run` creates first; the sandbox checks look into it.
    crate::layout::Layout::new(&config.root)
        .create()
        .context("creating the root layout")?;
    if config.root.join(".env").exists() {
        println!("(.env exists: setup changes only what you answer; every other line stays)");
    }

    s.sandbox(config)?;
    s.assistant_name(config)?;
    if !s.model()? {
        println!("\nNothing was saved.");
        return Ok(ExitCode::FAILURE);
    }
    if !s.channels()? {
        println!("\nNothing was saved.");
        return Ok(ExitCode::FAILURE);
    }
    for key in ENDPOINT_KEYS {
        if let Some(v) = env.get(key).filter(|v| !v.is_empty()) {
            s.changes.insert(key, Some(v.clone()));
        }
    }
    let path = config.root.join(".env");
    if s.changes.is_empty() {
        println!("\nNothing to change in {}.", path.display());
    } else {
        write_dotenv(&path, &s.changes)?;
        let set: Vec<&str> = s
            .changes
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        println!("\nSaved {} (mode 0600): {}", path.display(), set.join(", "));
    }

    // The settings as saved, for the service and the link.
    let (config, _) = s.candidate(&[])?;
    let was_running = super::status::daemon_status(&config).is_some();
    let service = if interactive {
        s.term.confirm(
            "Run NanoClaw as a service that starts with the computer?",
            false,
        )?
    } else {
        args.service
    };
    let mut started = false;
    if service {
        super::service::run(&config, env, super::service::ServiceCommand::Install)?;
        started = !was_running && super::service::starts_service(env);
    }
    let mut live = was_running;
    if started {
        // The service's first start: wait for it, to end with a link that works.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !live && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(500));
            live = super::status::daemon_status(&config).is_some();
        }
    }
    println!();
    if live {
        if was_running {
            println!(
                "The assistant is running with the settings it had when it started: restart it to use these."
            );
        }
        match super::ui::login_link(&config) {
            Ok(url) => {
                println!("Open the web app (this link works once, for 10 minutes):\n  {url}")
            }
            Err(e) => println!("`nanoclaw ui` signs you in to the web app ({e:#})"),
        }
    } else {
        let root = shell_word(&config.root.display().to_string());
        println!("Start it with:  nanoclaw run --root {root}");
        println!("Then sign in to the web app with:  nanoclaw ui --root {root}");
        println!(
            "(it is served at http://127.0.0.1:{}/; `nanoclaw doctor --root {root}` checks everything again)",
            config.http_port
        );
    }
    Ok(ExitCode::SUCCESS)
}

struct Setup {
    root: std::path::PathBuf,
    env: HashMap<String, String>,
    term: Term,
    /// What goes into `.env`: a value, or `None` to take the setting out.
    changes: BTreeMap<&'static str, Option<String>>,
}

impl Setup {
    /// The configuration as it would be with the answers so far and `extra`: `.env`,
    /// then the environment, then the answers, exactly as `run` would read them.
    fn candidate(&self, extra: &[(&'static str, Option<String>)]) -> Result<(Config, Secrets)> {
        let mut values = self.env.clone();
        let mut removed = Vec::new();
        let changes = self
            .changes
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .chain(extra.iter().cloned());
        for (key, value) in changes {
            match value {
                Some(v) => {
                    values.insert(key.to_string(), v);
                }
                None => {
                    values.remove(key);
                    removed.push(key);
                }
            }
        }
        let (config, mut secrets) = Config::load(&self.root, &values)?;
        // A setting taken out must not come back from the `.env` being replaced.
        for key in removed {
            match key {
                "ANTHROPIC_API_KEY" => secrets.anthropic_api_key = None,
                "CLAUDE_CODE_OAUTH_TOKEN" => secrets.claude_code_oauth_token = None,
                "ANTHROPIC_AUTH_TOKEN" => secrets.anthropic_auth_token = None,
                "OPENAI_API_KEY" => secrets.openai_api_key = None,
                _ => {}
            }
        }
        Ok((config, secrets))
    }

    fn sandbox(&mut self, config: &Config) -> Result<()> {
        println!("\n1. Sandboxes (every agent runs in one)");
        let checks = sandbox_checks(config);
        let works = checks
            .last()
            .is_some_and(|(_, v)| matches!(v, Verdict::Ok(_)));
        for (name, verdict) in &checks {
            println!("   {}", verdict.line(name));
        }
        if !works
            && self.term.interactive
            && !self.term.confirm(
                "No sandbox works yet, so no agent can run. Go on anyway?",
                true,
            )?
        {
            bail!("stopped: install a sandbox backend (above), then run `nanoclaw setup` again");
        }
        Ok(())
    }

    fn assistant_name(&mut self, config: &Config) -> Result<()> {
        if !self.term.interactive {
            if let Some(name) = self.env.get("ASSISTANT_NAME").filter(|v| !v.is_empty()) {
                self.changes.insert("ASSISTANT_NAME", Some(name.clone()));
            }
            return Ok(());
        }
        println!("\n2. The assistant's name (people write @Name to call it in group chats)");
        loop {
            let name = self.term.ask("name", Some(&config.assistant_name))?;
            match self.candidate(&[("ASSISTANT_NAME", Some(name.clone()))]) {
                Ok(_) => {
                    if name != config.assistant_name {
                        self.changes.insert("ASSISTANT_NAME", Some(name));
                    }
                    return Ok(());
                }
                Err(e) => println!("   {e:#}"),
            }
        }
    }

    /// Chooses and checks the model credential. False: none accepted (nothing saved).
    fn model(&mut self) -> Result<bool> {
        println!("\n3. The model (agents think with it; the key stays outside every sandbox)");
        let (config, secrets) = self.candidate(&[])?;
        let current = configured_credential(&config, &secrets);
        if !self.term.interactive {
            let Some(name) = current else {
                println!(
                    "   no model credential in the environment: set ANTHROPIC_API_KEY, CLAUDE_CODE_OAUTH_TOKEN, or NANOCLAW_LLM_API=openai with OPENAI_BASE_URL"
                );
                return Ok(false);
            };
            let verdict = model_upstream_check(&config, &secrets);
            println!("   {}", verdict.line(name));
            if matches!(verdict, Verdict::Fail(_)) {
                return Ok(false);
            }
            for key in MODEL_KEYS {
                if let Some(v) = self.env.get(key).filter(|v| !v.is_empty()) {
                    self.changes.insert(key, Some(v.clone()));
                }
            }
            return Ok(true);
        }
        if let Some(name) = current {
            let verdict = model_upstream_check(&config, &secrets);
            println!("   {}", verdict.line(name));
            if !matches!(verdict, Verdict::Fail(_))
                && !self.term.confirm("Use a different credential?", false)?
            {
                return Ok(true);
            }
        }
        loop {
            println!("   How do agents reach a model?");
            println!("     1) Anthropic API key (console.anthropic.com → API Keys)");
            println!("     2) Claude subscription: a token from `claude setup-token`");
            println!("     3) an OpenAI-compatible server (Ollama, vLLM, LM Studio, …)");
            let choice = self.term.choose("choose", 3, 1)?;
            let answers: Vec<(&'static str, Option<String>)> = match choice {
                1 => vec![
                    (
                        "ANTHROPIC_API_KEY",
                        Some(self.term.ask_secret("Anthropic API key (sk-ant-…)")?),
                    ),
                    ("CLAUDE_CODE_OAUTH_TOKEN", None),
                    ("ANTHROPIC_AUTH_TOKEN", None),
                    ("NANOCLAW_LLM_API", None),
                ],
                2 => vec![
                    (
                        "CLAUDE_CODE_OAUTH_TOKEN",
                        Some(self.term.ask_secret("OAuth token (sk-ant-oat…)")?),
                    ),
                    ("ANTHROPIC_API_KEY", None),
                    ("ANTHROPIC_AUTH_TOKEN", None),
                    ("NANOCLAW_LLM_API", None),
                ],
                _ => {
                    let url = self
                        .term
                        .ask("server URL, without /v1", Some(&config.openai_base_url))?;
                    let model = self.term.ask("model name", Some(&config.model))?;
                    let key = self
                        .term
                        .ask_secret_optional("API key (Enter if the server needs none)")?;
                    vec![
                        ("NANOCLAW_LLM_API", Some("openai".into())),
                        ("OPENAI_BASE_URL", Some(url)),
                        ("NANOCLAW_MODEL", Some(model)),
                        ("OPENAI_API_KEY", key),
                    ]
                }
            };
            let checked = self.candidate(&answers).map(|(config, secrets)| {
                let name = configured_credential(&config, &secrets).unwrap_or("credential");
                (name, model_upstream_check(&config, &secrets))
            });
            match checked {
                Err(e) => println!("   {e:#}"),
                Ok((name, verdict)) => {
                    println!("   {}", verdict.line(name));
                    let keep = match verdict {
                        Verdict::Ok(_) => true,
                        Verdict::Warn(_) => self
                            .term
                            .confirm("It could not be checked. Save it anyway?", false)?,
                        Verdict::Fail(_) => false,
                    };
                    if keep {
                        self.changes.extend(answers);
                        return Ok(true);
                    }
                }
            }
            if !self.term.confirm("Try again?", true)? {
                return Ok(false);
            }
        }
    }

    /// Offers each channel and checks what is given. False: a scripted check failed.
    fn channels(&mut self) -> Result<bool> {
        println!("\n4. Channels (where people talk to the assistant; the web app is always on)");
        let mut all_good = true;
        for form in &CHANNELS {
            let (config, secrets) = self.candidate(&[])?;
            let configured = crate::channels::configured(&config, &secrets);
            let built = configured.channels.iter().find(|c| c.name() == form.name);
            let off = configured.off.iter().find(|(n, _)| *n == form.name);
            if built.is_none() && off.is_none() {
                continue; // not compiled in
            }
            if !self.term.interactive {
                // Scripted: check what the environment configures, nothing else.
                let given = form
                    .fields
                    .iter()
                    .any(|f| self.env.get(f.key).is_some_and(|v| !v.is_empty()));
                if !given {
                    continue;
                }
                let verdict = match (built, off) {
                    (Some(channel), _) => verify(channel),
                    (None, Some((_, why))) => Verdict::Fail(off_text(why)),
                    (None, None) => continue,
                };
                println!("   {}", verdict.line(form.title));
                if matches!(verdict, Verdict::Fail(_)) {
                    all_good = false;
                    continue;
                }
                for f in form.fields {
                    if let Some(v) = self.env.get(f.key).filter(|v| !v.is_empty()) {
                        self.changes.insert(f.key, Some(v.clone()));
                    }
                }
                continue;
            }
            let ask = match (built, off) {
                (Some(channel), _) => {
                    let verdict = verify(channel);
                    println!("   {}", verdict.line(form.title));
                    self.term.confirm(
                        &format!("Change {}'s settings?", form.title),
                        matches!(verdict, Verdict::Fail(_)),
                    )?
                }
                (None, Some((_, crate::channels::ChannelOff::Invalid(why)))) => {
                    println!("   {}: {why}", form.title);
                    self.term
                        .confirm(&format!("Fix {}'s settings?", form.title), true)?
                }
                _ => self
                    .term
                    .confirm(&format!("Connect {}?", form.title), false)?,
            };
            if ask {
                self.channel_form(form)?;
            }
        }
        Ok(all_good)
    }

    fn channel_form(&mut self, form: &ChannelForm) -> Result<()> {
        println!("   {}: {}", form.title, form.how);
        loop {
            let mut answers: Vec<(&'static str, Option<String>)> = Vec::new();
            for f in form.fields {
                let prompt = format!("{} {}", form.title, f.prompt);
                let value = match (f.secret, f.optional) {
                    (true, false) => Some(self.term.ask_secret(&prompt)?),
                    (true, true) => self.term.ask_secret_optional(&prompt)?,
                    (false, false) => Some(self.term.ask(&prompt, None)?),
                    (false, true) => {
                        Some(self.term.ask(&prompt, Some(""))?).filter(|v| !v.is_empty())
                    }
                };
                answers.push((f.key, value));
            }
            let verdict = match self.candidate(&answers) {
                Err(e) => Verdict::Fail(format!("{e:#}")),
                Ok((config, secrets)) => {
                    let configured = crate::channels::configured(&config, &secrets);
                    match (
                        configured.channels.iter().find(|c| c.name() == form.name),
                        configured.off.iter().find(|(n, _)| *n == form.name),
                    ) {
                        (Some(channel), _) => verify(channel),
                        (None, Some((_, why))) => Verdict::Fail(off_text(why)),
                        (None, None) => Verdict::Fail("this build has no such channel".into()),
                    }
                }
            };
            println!("   {}", verdict.line(form.title));
            let keep = match verdict {
                Verdict::Ok(_) => true,
                Verdict::Warn(_) => self
                    .term
                    .confirm("It could not be checked. Save it anyway?", false)?,
                Verdict::Fail(_) => false,
            };
            if keep {
                self.changes.extend(answers);
                return Ok(());
            }
            if !self.term.confirm("Try again?", true)? {
                println!("   {} is left as it was.", form.title);
                return Ok(());
            }
        }
    }
}

fn off_text(off: &crate::channels::ChannelOff) -> String {
    match off {
        crate::channels::ChannelOff::NotConfigured(hint) => format!("off: {hint}"),
        crate::channels::ChannelOff::Invalid(why) => why.clone(),
    }
}

/// Asks the platform once whether the channel's credentials work.
fn verify(channel: &std::sync::Arc<dyn crate::channels::Channel>) -> Verdict {
    let Ok(rt) = super::runtime() else {
        return Verdict::Warn("cannot start the async runtime".into());
    };
    match rt.block_on(channel.verify()) {
        Ok(who) => Verdict::Ok(format!("accepted: {who}")),
        Err(crate::channels::VerifyError::Refused(why)) => Verdict::Fail(why),
        Err(crate::channels::VerifyError::Unreachable(why)) => Verdict::Warn(why),
    }
}

/// Which model credential the configuration holds, by its setting's name.
fn configured_credential(config: &Config, secrets: &Secrets) -> Option<&'static str> {
    if config.llm_api == "openai" {
        Some("OpenAI-compatible server")
    } else if secrets.anthropic_api_key.is_some() {
        Some("ANTHROPIC_API_KEY")
    } else if secrets.claude_code_oauth_token.is_some() {
        Some("CLAUDE_CODE_OAUTH_TOKEN")
    } else if secrets.anthropic_auth_token.is_some() {
        Some("ANTHROPIC_AUTH_TOKEN")
    } else {
        None
    }
}

/// Questions on the terminal.
struct Term {
    interactive: bool,
}

impl Term {
    fn read_line(&self) -> Result<String> {
        let mut line = String::new();
        let n = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the answer")?;
        if n == 0 {
            bail!("the input ended before setup was done; nothing was saved");
        }
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }

    fn prompt(&self, text: &str) -> Result<()> {
        print!("   {text}: ");
        std::io::stdout()
            .flush()
            .context("cannot write to the terminal")?;
        Ok(())
    }

    /// A free answer; Enter takes `default` when there is one.
    fn ask(&self, question: &str, default: Option<&str>) -> Result<String> {
        loop {
            match default {
                Some(d) if !d.is_empty() => self.prompt(&format!("{question} [{d}]"))?,
                _ => self.prompt(question)?,
            }
            let answer = self.read_line()?.trim().to_string();
            match (answer.is_empty(), default) {
                (false, _) => return Ok(answer),
                (true, Some(d)) => return Ok(d.to_string()),
                (true, None) => println!("   (an answer is needed)"),
            }
        }
    }

    fn ask_secret(&self, question: &str) -> Result<String> {
        loop {
            if let Some(answer) = self.ask_secret_optional(question)? {
                return Ok(answer);
            }
            println!("   (an answer is needed)");
        }
    }

    /// A secret, read with the terminal's echo off; `None` for an empty answer.
    fn ask_secret_optional(&self, question: &str) -> Result<Option<String>> {
        self.prompt(&format!("{question} (not shown)"))?;
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
            quiet
                .local_modes
                .insert(rustix::termios::LocalModes::ECHONL);
            rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Flush, &quiet)
                .context("cannot turn the terminal's echo off")?;
        }
        let answer = self.read_line();
        if let Some(saved) = &saved {
            let _ =
                rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, saved);
        }
        let answer = answer?.trim().to_string();
        Ok(Some(answer).filter(|a| !a.is_empty()))
    }

    fn confirm(&self, question: &str, default: bool) -> Result<bool> {
        loop {
            self.prompt(&format!(
                "{question} [{}]",
                if default { "Y/n" } else { "y/N" }
            ))?;
            match self.read_line()?.trim().to_ascii_lowercase().as_str() {
                "" => return Ok(default),
                "y" | "yes" => return Ok(true),
                "n" | "no" => return Ok(false),
                _ => println!("   (answer y or n)"),
            }
        }
    }

    /// A number from 1 to `count`.
    fn choose(&self, question: &str, count: usize, default: usize) -> Result<usize> {
        loop {
            let answer = self.ask(question, Some(&default.to_string()))?;
            match answer.parse::<usize>() {
                Ok(n) if (1..=count).contains(&n) => return Ok(n),
                _ => println!("   (a number from 1 to {count})"),
            }
        }
    }
}

/// Applies `changes` to the `.env` at `path`: a setting's first line is replaced, its
/// later lines (which would win) removed, new settings appended; comments and every
/// other line stay. Written to a private file first and renamed over, so a crash never
/// leaves half a file, and the result is 0600 whatever the old file's mode was.
pub(crate) fn write_dotenv(path: &Path, changes: &BTreeMap<&str, Option<String>>) -> Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let text = updated_dotenv(&old, changes);
    // It must read back as what was meant.
    let parsed = crate::config::dotenv::parse(&text)
        .map_err(|e| anyhow::anyhow!("setup made an unreadable .env ({e}); nothing was saved"))?;
    for (key, value) in changes {
        if parsed.get(*key).map(|(v, _)| v) != value.as_ref() {
            bail!("setup could not write {key} so that it reads back the same; nothing was saved");
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".env.setup-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

fn updated_dotenv(old: &str, changes: &BTreeMap<&str, Option<String>>) -> String {
    let mut done: Vec<&str> = Vec::new();
    let mut out = String::new();
    for line in old.lines() {
        match crate::config::dotenv::key_of(line).and_then(|k| changes.get_key_value(k)) {
            Some((key, value)) => {
                if !done.contains(key) {
                    done.push(key);
                    if let Some(v) = value {
                        out.push_str(&format!("{key}={}\n", dotenv_value(v)));
                    }
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let new: Vec<_> = changes
        .iter()
        .filter(|(k, v)| v.is_some() && !done.contains(*k))
        .collect();
    if !new.is_empty() {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str("# written by nanoclaw setup\n");
        for (key, value) in new {
            if let Some(v) = value {
                out.push_str(&format!("{key}={}\n", dotenv_value(v)));
            }
        }
    }
    out
}

/// A value as `.env` reads it back: bare when that is unambiguous, else double-quoted.
fn dotenv_value(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@+,=%~".contains(c));
    if bare {
        return value.to_string();
    }
    let mut quoted = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// A path as one shell word, for commands to copy.
fn shell_word(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:@".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(pairs: &[(&'static str, Option<&str>)]) -> BTreeMap<&'static str, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (*k, v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn other_lines_stay_and_a_setting_is_replaced_where_it_was() {
        let old = "# my settings\nASSISTANT_NAME=Bob\nexport ANTHROPIC_API_KEY=old\nTZ=Europe/Berlin\nANTHROPIC_API_KEY=older\n";
        let new = updated_dotenv(
            old,
            &changes(&[
                ("ANTHROPIC_API_KEY", Some("sk-new")),
                ("TELEGRAM_BOT_TOKEN", Some("1:abc")),
            ]),
        );
        assert_eq!(
            new,
            "# my settings\nASSISTANT_NAME=Bob\nANTHROPIC_API_KEY=sk-new\nTZ=Europe/Berlin\n\n# written by nanoclaw setup\nTELEGRAM_BOT_TOKEN=1:abc\n"
        );
    }

    #[test]
    fn a_setting_taken_out_loses_every_line() {
        let old = "CLAUDE_CODE_OAUTH_TOKEN=a\nX=1\nCLAUDE_CODE_OAUTH_TOKEN=b\n";
        let new = updated_dotenv(old, &changes(&[("CLAUDE_CODE_OAUTH_TOKEN", None)]));
        assert_eq!(new, "X=1\n");
    }

    #[test]
    fn every_value_reads_back_as_written() {
        for value in [
            "sk-ant-api03-AbC_09",
            "with space",
            "quote\"and\\back",
            "hash # not a comment",
            "'single'",
            "line\nbreak",
            "tab\there",
            "ünïcödé",
            "$HOME",
        ] {
            let text = updated_dotenv("", &changes(&[("K", Some(value))]));
            let parsed = crate::config::dotenv::parse(&text).expect("parses");
            assert_eq!(parsed["K"].0, value, "{text}");
        }
    }

    #[test]
    fn the_file_is_private_whatever_the_old_mode_was() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".env");
        std::fs::write(&path, "KEEP=me\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_dotenv(&path, &changes(&[("ANTHROPIC_API_KEY", Some("sk-x"))])).expect("written");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("KEEP=me\n") && text.contains("ANTHROPIC_API_KEY=sk-x"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != ".env")
            .collect();
        assert!(leftovers.is_empty(), "no temporary file stays behind");
    }
}
