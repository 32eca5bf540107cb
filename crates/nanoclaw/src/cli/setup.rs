//! `nanoclaw setup` (SPEC §14): the first run, in a terminal or scripted.
//!
//! It checks the sandbox backends, asks for the model credential and each channel's
//! settings, and checks every one of them with the real service (one request each)
//! before anything is saved: a wrong key is caught here, not at the first message. The
//! answers go into `.env` (mode 0600, other lines kept), secrets are never echoed, and it
//! ends with the service and the web app's sign-in link.
//!
//! Every check reads the configuration the way `run` will: the `.env` that would be
//! written, with the environment on top, except for the settings being answered (an
//! answer is meant for `.env`; setup says when the shell's environment would hide it).
//!
//! Scripted (`--non-interactive`), it asks nothing: it takes the settings from the
//! environment (so no secret is ever on a command line, where every user of the machine
//! can read it), checks them the same way, and saves them.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
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
    /// Install the service without asking
    #[arg(long)]
    service: bool,
    /// With --non-interactive: save settings even when their service could not be asked
    #[arg(long)]
    save_unverified: bool,
}

/// The ways to reach a model, each with the settings that belong to it alone.
const CREDENTIAL_KEYS: [&str; 3] = [
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_AUTH_TOKEN",
];
const OPENAI_KEYS: [&str; 3] = ["NANOCLAW_LLM_API", "OPENAI_BASE_URL", "OPENAI_API_KEY"];

/// Endpoint overrides, saved when they are set in the environment setup runs in (the
/// checks used them), with the channel they belong to (`None`: the model).
const ENDPOINT_KEYS: [(&str, Option<&str>); 6] = [
    ("ANTHROPIC_BASE_URL", None),
    ("TELEGRAM_API_URL", Some("telegram")),
    ("DISCORD_API_URL", Some("discord")),
    ("DISCORD_GATEWAY_URL", Some("discord")),
    ("SLACK_API_URL", Some("slack")),
    ("EMAIL_TLS_CA_FILE", Some("email")),
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
        how: "the assistant's own mailbox; for Gmail an app password (README: Email), imaps://imap.gmail.com and smtps://smtp.gmail.com; OAuth2 is set in .env by hand (README)",
        fields: &[
            field("EMAIL_ADDRESS", "address", false),
            field("EMAIL_IMAP_URL", "IMAP URL (imaps://host:993)", false),
            field("EMAIL_SMTP_URL", "SMTP URL (smtps://host:465)", false),
            Field {
                key: "EMAIL_USER",
                prompt: "login name (-: the address)",
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
    let dotenv = dotenv_target(&config.root.join(".env"))?;
    let old_text = match std::fs::read_to_string(&dotenv) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dotenv.display())),
    };
    let mut s = Setup {
        root: config.root.clone(),
        env: env.clone(),
        term: Term { interactive },
        old_text,
        changes: BTreeMap::new(),
        save_unverified: args.save_unverified,
    };
    println!("NanoClaw setup for {}", config.root.display());
    if !s.old_text.is_empty() {
        println!("(.env exists: setup changes only what you answer; every other line stays)");
    }
    // What `run` creates first; the sandbox checks look into it.
    crate::layout::Layout::new(&config.root)
        .create()
        .context("creating the root layout")?;

    s.sandbox(config)?;
    s.assistant_name(config)?;
    if !s.model()? || !s.channels()? {
        println!("\nNothing was saved.");
        return Ok(ExitCode::FAILURE);
    }
    let (final_config, final_secrets) = s.candidate(&[])?;
    let on: Vec<&str> = crate::channels::configured(&final_config, &final_secrets)
        .channels
        .iter()
        .map(|c| c.name())
        .collect();
    for (key, channel) in ENDPOINT_KEYS {
        if channel.is_some_and(|c| !on.contains(&c)) {
            continue;
        }
        if let Some(v) = env.get(key).filter(|v| !v.is_empty())
            && s.saved(key).as_ref() != Some(v)
        {
            s.changes.insert(key, Some(v.clone()));
        }
    }
    if s.changes.is_empty() {
        println!("\nNothing to change in {}.", dotenv.display());
    } else {
        write_dotenv(&dotenv, &s.changes)?;
        let list = |set: bool| -> Vec<&str> {
            s.changes
                .iter()
                .filter(|(_, v)| v.is_some() == set)
                .map(|(k, _)| *k)
                .collect()
        };
        println!("\nSaved {} (mode 0600)", dotenv.display());
        for (what, keys) in [("set", list(true)), ("removed", list(false))] {
            if !keys.is_empty() {
                println!("   {what}: {}", keys.join(", "));
            }
        }
    }
    let shadowed: Vec<&str> = s
        .changes
        .keys()
        .copied()
        .filter(|k| env.get(*k).is_some_and(|v| !v.is_empty()))
        .filter(|k| env.get(*k) != s.changes.get(k).and_then(|v| v.as_ref()))
        .collect();
    if !shadowed.is_empty() {
        println!(
            "   note: this shell's environment also sets {}, and the environment wins over .env: unset it before `nanoclaw run` here",
            shadowed.join(", ")
        );
    }

    // The settings as saved, for the service and the link.
    let (config, _) = s.candidate(&[])?;
    let was_running = super::status::daemon_status(&config).is_some();
    let service = if interactive && !args.service {
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
        if was_running && !s.changes.is_empty() {
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
    root: PathBuf,
    env: HashMap<String, String>,
    term: Term,
    /// `.env` as it was when setup started.
    old_text: String,
    /// What goes into `.env`: a value, or `None` to take the setting out.
    changes: BTreeMap<&'static str, Option<String>>,
    save_unverified: bool,
}

/// Whether a check's verdict lets its settings be saved.
enum Keep {
    Yes,
    No,
}

impl Setup {
    /// The configuration as `run` would read it once `.env` holds the answers so far and
    /// `extra`: the environment wins, except over the settings answered here.
    fn candidate(&self, extra: &[(&'static str, Option<String>)]) -> Result<(Config, Secrets)> {
        let mut changes = self.changes.clone();
        changes.extend(extra.iter().cloned());
        let text = updated_dotenv(&self.old_text, &changes);
        let mut env = self.env.clone();
        for key in changes.keys() {
            env.remove(*key);
        }
        Ok(Config::load_with_dotenv(&self.root, &env, Some(&text))?)
    }

    /// A setting as `.env` holds it now (with the answers so far).
    fn saved(&self, key: &str) -> Option<String> {
        if let Some(answer) = self.changes.get(key) {
            return answer.clone();
        }
        crate::config::dotenv::parse(&self.old_text)
            .ok()
            .and_then(|entries| entries.get(key).map(|(v, _)| v.clone()))
    }

    /// A setting as `run` would see it now (environment first).
    fn current(&self, key: &str) -> Option<String> {
        match self.changes.get(key) {
            Some(answer) => answer.clone(),
            None => self
                .env
                .get(key)
                .filter(|v| !v.is_empty())
                .cloned()
                .or_else(|| self.saved(key)),
        }
    }

    /// The settings among `keys` that only the environment has (a service would not
    /// see them): offered for saving, or saved when scripted.
    fn keep_from_environment(&mut self, keys: &[&'static str]) -> Result<()> {
        let only_env: Vec<&'static str> = keys
            .iter()
            .copied()
            .filter(|k| {
                self.env
                    .get(*k)
                    .is_some_and(|v| !v.is_empty() && self.saved(k).as_ref() != Some(v))
            })
            .collect();
        if only_env.is_empty() {
            return Ok(());
        }
        let save = !self.term.interactive
            || self.term.confirm(
                &format!(
                    "{} come(s) from this shell's environment, which a service does not see. Save in .env?",
                    only_env.join(", ")
                ),
                true,
            )?;
        if save {
            for key in only_env {
                let value = self.env.get(key).cloned();
                self.changes.insert(key, value);
            }
        }
        Ok(())
    }

    /// What to do after a check: a refusal is never kept; a check that could not be
    /// made is kept only when the person says so (or `--save-unverified`).
    fn keep(&self, verdict: &Verdict) -> Result<Keep> {
        Ok(match verdict {
            Verdict::Ok(_) => Keep::Yes,
            Verdict::Fail(_) => Keep::No,
            Verdict::Warn(_) if !self.term.interactive => {
                if self.save_unverified {
                    Keep::Yes
                } else {
                    println!(
                        "   (not saved: it could not be checked; --save-unverified saves it anyway)"
                    );
                    Keep::No
                }
            }
            Verdict::Warn(_) => {
                if self
                    .term
                    .confirm("It could not be checked. Save it anyway?", false)?
                {
                    Keep::Yes
                } else {
                    Keep::No
                }
            }
        })
    }

    fn sandbox(&mut self, config: &Config) -> Result<()> {
        println!("\n1. Sandboxes (every agent runs in one)");
        let checks = sandbox_checks(config);
        let works = checks
            .last()
            .is_some_and(|(_, v)| matches!(v, Verdict::Ok(_)));
        for (name, verdict) in &checks {
            say(verdict, name);
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
            self.keep_from_environment(&["ASSISTANT_NAME", "TZ"])?;
            return Ok(());
        }
        println!("\n2. The assistant's name (people write @Name to call it in group chats)");
        loop {
            let name = self.term.ask("name", Some(&config.assistant_name))?;
            if name == config.assistant_name {
                return Ok(());
            }
            match self.candidate(&[("ASSISTANT_NAME", Some(name.clone()))]) {
                Ok(_) => {
                    self.changes.insert("ASSISTANT_NAME", Some(name));
                    return Ok(());
                }
                Err(e) => println!("   {}", clean(&format!("{e:#}"))),
            }
        }
    }

    /// Chooses and checks the model credential. False: none accepted (nothing saved).
    fn model(&mut self) -> Result<bool> {
        println!("\n3. The model (agents think with it; the key stays outside every sandbox)");
        if !self.term.interactive {
            return self.scripted_model();
        }
        let (config, secrets) = self.candidate(&[])?;
        if let Some(name) = configured_credential(&config, &secrets) {
            let verdict = model_upstream_check(&config, &secrets);
            say(&verdict, name);
            if matches!(verdict, Verdict::Fail(_)) {
                println!("   Enter one that works (or answer n to stop; nothing is saved):");
            } else if !self.term.confirm("Use a different credential?", false)? {
                let mut keys: Vec<&'static str> = CREDENTIAL_KEYS.to_vec();
                keys.extend(OPENAI_KEYS);
                keys.push("NANOCLAW_MODEL");
                self.keep_from_environment(&keys)?;
                return Ok(true);
            }
        }
        let was_openai = config.llm_api == "openai";
        loop {
            println!("   How do agents reach a model?");
            println!("     1) Anthropic API key (console.anthropic.com → API Keys)");
            println!("     2) Claude subscription: a token from `claude setup-token`");
            println!("     3) an OpenAI-compatible server (Ollama, vLLM, LM Studio, …)");
            let choice = self.term.choose("choose", 3, 1)?;
            let mut answers: Vec<(&'static str, Option<String>)> = Vec::new();
            let chosen = match choice {
                1 => "ANTHROPIC_API_KEY",
                2 => "CLAUDE_CODE_OAUTH_TOKEN",
                _ => "NANOCLAW_LLM_API",
            };
            if choice <= 2 {
                let prompt = if choice == 1 {
                    "Anthropic API key (sk-ant-…)"
                } else {
                    "OAuth token (sk-ant-oat…)"
                };
                answers.push((chosen, Some(self.term.ask_secret(prompt)?)));
                // Only one credential: the proxy prefers an API key, so a stale one
                // would silently win.
                for key in CREDENTIAL_KEYS.iter().chain(&OPENAI_KEYS) {
                    if *key != chosen {
                        answers.push((key, None));
                    }
                }
                if was_openai {
                    // A local model's name means nothing to Anthropic.
                    answers.push(("NANOCLAW_MODEL", None));
                }
            } else {
                let url = self.term.ask(
                    "server URL, without /v1",
                    Some(
                        &self
                            .current("OPENAI_BASE_URL")
                            .unwrap_or_else(|| config.openai_base_url.clone()),
                    ),
                )?;
                let current_model = if was_openai {
                    Some(config.model.clone())
                } else {
                    None
                };
                let model = self
                    .term
                    .ask("model name (e.g. llama3.1)", current_model.as_deref())?;
                let key = self
                    .term
                    .ask_secret_optional("API key (Enter if the server needs none)")?;
                answers.push(("NANOCLAW_LLM_API", Some("openai".into())));
                answers.push(("OPENAI_BASE_URL", Some(url)));
                answers.push(("NANOCLAW_MODEL", Some(model)));
                answers.push(("OPENAI_API_KEY", key));
                for key in CREDENTIAL_KEYS {
                    answers.push((key, None));
                }
            }
            match self.candidate(&answers) {
                Err(e) => println!("   {}", clean(&format!("{e:#}"))),
                Ok((config, secrets)) => {
                    let name = configured_credential(&config, &secrets).unwrap_or("credential");
                    let verdict = model_upstream_check(&config, &secrets);
                    say(&verdict, name);
                    if let Keep::Yes = self.keep(&verdict)? {
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

    /// The credential the environment supplies (or else the one `.env` has), checked.
    fn scripted_model(&mut self) -> Result<bool> {
        let given = |key: &str| self.env.get(key).is_some_and(|v| !v.is_empty());
        let kind: Option<&'static str> =
            if self.env.get("NANOCLAW_LLM_API").map(String::as_str) == Some("openai") {
                Some("NANOCLAW_LLM_API")
            } else {
                CREDENTIAL_KEYS.iter().copied().find(|k| given(k))
            };
        let mut answers: Vec<(&'static str, Option<String>)> = Vec::new();
        if let Some(kind) = kind {
            let own: Vec<&'static str> = if kind == "NANOCLAW_LLM_API" {
                OPENAI_KEYS.to_vec()
            } else {
                vec![kind]
            };
            for key in CREDENTIAL_KEYS.iter().chain(&OPENAI_KEYS) {
                if own.contains(key) {
                    if given(key) {
                        answers.push((key, self.env.get(*key).cloned()));
                    }
                } else {
                    answers.push((key, None));
                }
            }
            if given("NANOCLAW_MODEL") {
                answers.push(("NANOCLAW_MODEL", self.env.get("NANOCLAW_MODEL").cloned()));
            }
        }
        let (config, secrets) = self.candidate(&answers)?;
        let Some(name) = configured_credential(&config, &secrets) else {
            println!(
                "   no model credential in the environment or .env: set ANTHROPIC_API_KEY, CLAUDE_CODE_OAUTH_TOKEN, or NANOCLAW_LLM_API=openai with OPENAI_BASE_URL"
            );
            return Ok(false);
        };
        let verdict = model_upstream_check(&config, &secrets);
        say(&verdict, name);
        match self.keep(&verdict)? {
            Keep::Yes => {
                self.changes.extend(answers);
                Ok(true)
            }
            Keep::No => Ok(false),
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
                all_good &= self.scripted_channel(form)?;
                continue;
            }
            let ask = match (built, off) {
                (Some(channel), _) => {
                    let verdict = verify(channel);
                    say(&verdict, form.title);
                    let change = self.term.confirm(
                        &format!("Change {}'s settings?", form.title),
                        matches!(verdict, Verdict::Fail(_)),
                    )?;
                    if !change {
                        let keys: Vec<&'static str> = form.fields.iter().map(|f| f.key).collect();
                        self.keep_from_environment(&keys)?;
                    }
                    change
                }
                (None, Some((_, crate::channels::ChannelOff::Invalid(why)))) => {
                    println!("   {}: {}", form.title, clean(why));
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

    /// Scripted: checks what the environment sets for this channel, and saves it all.
    fn scripted_channel(&mut self, form: &ChannelForm) -> Result<bool> {
        let mut keys: Vec<&'static str> = form.fields.iter().map(|f| f.key).collect();
        if form.name == "email" {
            keys.extend(EMAIL_KEYS);
        }
        let answers: Vec<(&'static str, Option<String>)> = keys
            .iter()
            .filter_map(|k| {
                self.env
                    .get(*k)
                    .filter(|v| !v.is_empty())
                    .map(|v| (*k, Some(v.clone())))
            })
            .collect();
        if answers.is_empty() {
            return Ok(true);
        }
        let verdict = self.check_channel(form, &answers);
        say(&verdict, form.title);
        match self.keep(&verdict)? {
            Keep::Yes => {
                self.changes.extend(answers);
                Ok(true)
            }
            Keep::No => Ok(false),
        }
    }

    fn check_channel(
        &self,
        form: &ChannelForm,
        answers: &[(&'static str, Option<String>)],
    ) -> Verdict {
        match self.candidate(answers) {
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
        }
    }

    fn channel_form(&mut self, form: &ChannelForm) -> Result<()> {
        println!("   {}: {}", form.title, form.how);
        loop {
            let mut answers: Vec<(&'static str, Option<String>)> = Vec::new();
            for f in form.fields {
                let prompt = format!("{} {}", form.title, f.prompt);
                let current = self.current(f.key);
                let value = if f.secret {
                    match (
                        self.term.ask_secret_optional(&if current.is_some() {
                            format!("{prompt}, Enter keeps the current one")
                        } else {
                            prompt.clone()
                        })?,
                        &current,
                    ) {
                        (Some(v), _) => Some(v),
                        (None, Some(_)) => continue, // kept as it is
                        (None, None) if f.optional => None,
                        (None, None) => Some(self.term.ask_secret(&prompt)?),
                    }
                } else if f.optional {
                    // `-` clears it.
                    let answer = self
                        .term
                        .ask(&prompt, Some(current.as_deref().unwrap_or("-")))?;
                    Some(answer).filter(|a| a != "-")
                } else {
                    Some(self.term.ask(&prompt, current.as_deref())?)
                };
                answers.push((f.key, value));
            }
            let verdict = self.check_channel(form, &answers);
            say(&verdict, form.title);
            if let Keep::Yes = self.keep(&verdict)? {
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

/// The email settings beyond the form's, saved by scripted setup when they are set.
const EMAIL_KEYS: [&str; 9] = [
    "EMAIL_MAILBOX",
    "EMAIL_OAUTH2_TOKEN_URL",
    "EMAIL_OAUTH2_CLIENT_ID",
    "EMAIL_OAUTH2_CLIENT_SECRET",
    "EMAIL_OAUTH2_REFRESH_TOKEN",
    "EMAIL_AUTHSERV_ID",
    "EMAIL_TRUST_UNAUTHENTICATED",
    "EMAIL_MAX_ATTACHMENT_MB",
    "EMAIL_TLS_CA_FILE",
];

/// Prints a check's line, without control characters from whatever answered.
fn say(verdict: &Verdict, name: &str) {
    println!("   {}", clean(&verdict.line(name)));
}

/// Text from outside (a server's error, a bot's name) made safe for a terminal.
fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
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
    } else {
        super::status::anthropic_credential(secrets)
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
                (true, Some(d)) if !d.is_empty() => return Ok(d.to_string()),
                (true, _) => println!("   (an answer is needed)"),
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

    /// A secret, typed with the terminal's echo off; `None` for an empty answer.
    ///
    /// The terminal is put in a mode where Ctrl-C arrives as a key rather than a signal,
    /// so the mode is always put back (a signal would leave the shell without echo).
    fn ask_secret_optional(&self, question: &str) -> Result<Option<String>> {
        use rustix::termios::{
            LocalModes, OptionalActions, SpecialCodeIndex, tcgetattr, tcsetattr,
        };
        let question = format!("{question} (not shown)");
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            self.prompt(&question)?;
            let answer = self.read_line()?.trim().to_string();
            return Ok(Some(answer).filter(|a| !a.is_empty()));
        };
        let mut quiet = saved.clone();
        quiet
            .local_modes
            .remove(LocalModes::ECHO | LocalModes::ICANON | LocalModes::ISIG);
        quiet.special_codes[SpecialCodeIndex::VMIN] = 1;
        quiet.special_codes[SpecialCodeIndex::VTIME] = 0;
        tcsetattr(&stdin, OptionalActions::Now, &quiet)
            .context("cannot turn the terminal's echo off")?;
        // Asked only once the echo is off: nothing typed after the question shows.
        let typed = self
            .prompt(&question)
            .and_then(|()| read_secret(&mut stdin.lock()));
        let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
        println!();
        let answer = typed?;
        let answer = answer.trim().to_string();
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

/// Reads a line typed without echo, key by key: Enter ends it, Backspace and Ctrl-U
/// edit it, Ctrl-C cancels setup, Ctrl-D on an empty line ends the input.
fn read_secret(input: &mut impl Read) -> Result<String> {
    let mut typed: Vec<u8> = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if input.read(&mut byte).context("cannot read the answer")? == 0 {
            bail!("the input ended before setup was done; nothing was saved");
        }
        match byte[0] {
            b'\r' | b'\n' => break,
            0x03 => bail!("cancelled (Ctrl-C); nothing was saved"),
            0x04 if typed.is_empty() => {
                bail!("the input ended before setup was done; nothing was saved")
            }
            0x7f | 0x08 => {
                // One character back, however many bytes it took.
                while typed.pop().is_some_and(|b| b & 0xc0 == 0x80) {}
            }
            0x15 => typed.clear(),
            b if b < 0x20 => {}
            b => typed.push(b),
        }
    }
    String::from_utf8(typed).map_err(|_| anyhow::anyhow!("the answer is not valid UTF-8"))
}

/// Where `.env` really is: a symlinked `.env` is written through (the link and its
/// target's other users stay as they were).
fn dotenv_target(path: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).with_context(|| {
            format!(
                "{} is a symlink to nothing; fix or remove it",
                path.display()
            )
        }),
        Ok(m) if !m.is_file() => bail!(
            "{} is not a regular file; move it aside and run setup again",
            path.display()
        ),
        _ => Ok(path.to_path_buf()),
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
    let old_owner = std::fs::metadata(path).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.uid(), m.gid())
    });
    let tmp = dir.join(format!(".env.setup-{}", crate::ids::random_hex(8)));
    let written = (|| -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        // Whoever owned the file keeps it (setup run with sudo for a service user).
        if let Some((uid, gid)) = old_owner {
            use std::os::unix::fs::MetadataExt;
            let mine = file.metadata()?;
            if (mine.uid(), mine.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    // The rename itself lasts once the directory is on disk (best effort).
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

pub(crate) fn updated_dotenv(old: &str, changes: &BTreeMap<&str, Option<String>>) -> String {
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
    fn scripted(old: &str, env: &[(&str, &str)]) -> Setup {
        Setup {
            root: PathBuf::from("/nonexistent-root"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            term: Term { interactive: false },
            old_text: old.to_string(),
            changes: BTreeMap::new(),
            save_unverified: false,
        }
    }

    #[test]
    fn an_answer_is_checked_as_run_will_read_the_new_env() {
        // Leaving an OpenAI-compatible server for an API key: the key is checked
        // against Anthropic, not the old server.
        let s = scripted(
            "NANOCLAW_LLM_API=openai\nOPENAI_BASE_URL=http://127.0.0.1:9\n",
            &[],
        );
        let (config, secrets) = s
            .candidate(&[
                ("ANTHROPIC_API_KEY", Some("sk-new".into())),
                ("NANOCLAW_LLM_API", None),
                ("OPENAI_BASE_URL", None),
            ])
            .expect("loads");
        assert_eq!(config.llm_api, "anthropic");
        assert!(secrets.anthropic_api_key.is_some());
        // An answer that removes a setting removes it, though the shell exports it.
        let s = scripted(
            "",
            &[("ANTHROPIC_API_KEY", "sk-exported"), ("TZ", "Europe/Paris")],
        );
        let (config, secrets) = s
            .candidate(&[
                ("CLAUDE_CODE_OAUTH_TOKEN", Some("tok".into())),
                ("ANTHROPIC_API_KEY", None),
            ])
            .expect("loads");
        assert!(secrets.anthropic_api_key.is_none() && secrets.claude_code_oauth_token.is_some());
        // Everything not answered is read as `run` reads it: the environment first.
        assert_eq!(config.zone.name, "Europe/Paris");
        // A login name cleared by an answer is not taken from the old .env.
        let s = scripted("EMAIL_USER=olduser\n", &[]);
        assert_eq!(s.saved("EMAIL_USER").as_deref(), Some("olduser"));
        let mut s = s;
        s.changes.insert("EMAIL_USER", None);
        assert_eq!(s.current("EMAIL_USER"), None);
    }

    #[test]
    fn a_symlinked_env_is_written_through_and_the_link_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = dir.path().join("secrets.env");
        std::fs::write(&shared, "ANTHROPIC_API_KEY=sk-old\n").expect("write");
        let link = dir.path().join(".env");
        std::os::unix::fs::symlink(&shared, &link).expect("symlink");
        let target = dotenv_target(&link).expect("target");
        write_dotenv(&target, &changes(&[("ANTHROPIC_API_KEY", Some("sk-new"))])).expect("written");
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("link")
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(&shared).expect("read"),
            "ANTHROPIC_API_KEY=sk-new\n",
            "no stale key left in the link's target"
        );
        std::fs::create_dir(dir.path().join("dir.env")).expect("dir");
        assert!(
            dotenv_target(&dir.path().join("dir.env")).is_err(),
            "a directory is refused"
        );
    }

    #[test]
    fn secrets_are_read_key_by_key() {
        let read = |typed: &[u8]| read_secret(&mut &typed[..]);
        assert_eq!(read(b"sk-abc\r").expect("typed"), "sk-abc");
        assert_eq!(read(b"sk-abX\x7fc\n").expect("backspace"), "sk-abc");
        assert_eq!(
            read("é\u{7f}ok\r".as_bytes()).expect("a whole character back"),
            "ok"
        );
        assert_eq!(read(b"wrong\x15right\r").expect("ctrl-u"), "right");
        assert!(
            read(b"sk-\x03")
                .expect_err("ctrl-c")
                .to_string()
                .contains("cancelled")
        );
        assert!(
            read(b"\x04").is_err(),
            "ctrl-d on an empty line ends the input"
        );
        assert!(read(b"no newline").is_err(), "the input ended");
    }

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
