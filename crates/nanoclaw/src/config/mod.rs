//! Configuration: read once, at start, into typed structs (SPEC §3).
//!
//! Values come from the process environment first, then from `{root}/.env`. The `.env`
//! file is parsed here and never exported into our own environment, so nothing in it can
//! leak into a child process by inheritance.
//!
//! Secrets live in [`Secrets`], apart from [`Config`]: `Config` may be logged and shown
//! (`nanoclaw status`), `Secrets` cannot be — its `Debug` prints only which are set.

pub(crate) mod dotenv;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::tz::TimeZone;
use thiserror::Error;

pub use dotenv::DotenvError;

/// Where a setting came from; used to make error messages point at the right place.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Environment,
    DotenvLine(usize),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Environment => write!(f, "the environment"),
            Origin::DotenvLine(n) => write!(f, ".env line {n}"),
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    ReadDotenv {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Dotenv { path: PathBuf, source: DotenvError },
    #[error("{name} (from {origin}) {problem}")]
    Invalid {
        name: &'static str,
        origin: String,
        problem: String,
    },
}

/// Which sandbox backend to use (`CONTAINER_RUNTIME`); `None` in [`Config`] means auto-detect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Docker,
    Podman,
    Bwrap,
}

impl RuntimeKind {
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Podman => "podman",
            RuntimeKind::Bwrap => "bwrap",
        }
    }
}

/// The configured time zone, with the name shown to the agent (`<context timezone=…>`).
#[derive(Clone)]
pub struct Zone {
    pub tz: TimeZone,
    pub name: String,
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

/// Everything that is not secret. Safe to log.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub home: PathBuf,
    pub assistant_name: String,
    pub anthropic_base_url: String,
    pub model: String,
    pub container_runtime: Option<RuntimeKind>,
    pub container_image: String,
    pub container_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent_containers: usize,
    pub container_max_output_size: u64,
    pub credential_proxy_port: u16,
    pub http_port: u16,
    pub zone: Zone,
    /// First delay of the run retry backoff (SPEC §5: 5 s, doubling, at most 5 tries).
    /// `NANOCLAW_RETRY_BASE_MS`; only tests and impatient people change it.
    pub retry_base: Duration,
    /// How long an agent asked to close has to end before its sandbox is stopped
    /// (30 s; tests shorten it).
    pub close_grace: Duration,
    /// The shortest interval a recurring task scheduled by an agent may have
    /// (`NANOCLAW_MIN_TASK_INTERVAL_MS`, default one minute).
    pub min_task_interval: Duration,
    /// `tracing` filter directive (`NANOCLAW_LOG`, else `RUST_LOG`, else `info`).
    pub log_filter: String,
    /// Whether `NANOCLAW_LOG` or `RUST_LOG` was set (short-lived commands log less
    /// unless asked).
    pub log_filter_set: bool,
    /// The `nanoclaw-agent` binary to put in sandboxes (`NANOCLAW_AGENT_BIN`); default:
    /// next to the `nanoclaw` executable.
    pub agent_bin: Option<PathBuf>,
    /// The host's Claude Code executable for bwrap sandboxes of `claude-code` groups
    /// (`CLAUDE_CODE_PATH`); default: the one `nanoclaw image build` installed, else
    /// `claude` on `PATH`.
    pub claude_code_path: Option<PathBuf>,
    /// Debian mirror for building the image base without a registry
    /// (`NANOCLAW_DEBIAN_MIRROR`).
    pub debian_mirror: String,
    /// Which model API the agent speaks (`NANOCLAW_LLM_API`): `anthropic`, or `openai`
    /// for OpenAI-compatible chat completions (local models).
    pub llm_api: String,
    /// How many times the agent tries a model call (`NANOCLAW_LLM_ATTEMPTS`).
    pub llm_attempts: u32,
    /// How long a streamed model response may stay silent before the agent gives that
    /// attempt up (`NANOCLAW_LLM_STREAM_IDLE_MS`).
    pub llm_stream_idle: Duration,
    /// How long the backend may take to start a sandbox's agent, until its first event
    /// (`NANOCLAW_SANDBOX_START_TIMEOUT_MS`).
    pub sandbox_start_timeout: Duration,
    /// Whether agents are offered the API's `web_search` server tool
    /// (`NANOCLAW_WEB_SEARCH`; default on only when `ANTHROPIC_BASE_URL` is Anthropic's
    /// own API). A group's `container_config.webSearch` overrides it.
    pub web_search: bool,
    /// Upstream of the proxy in `openai` mode (`OPENAI_BASE_URL`, e.g. Ollama's).
    pub openai_base_url: String,
    /// The Telegram Bot API (`TELEGRAM_API_URL`; a self-hosted Bot API server or a test
    /// double).
    pub telegram_api_url: String,
    /// Discord's REST root (`DISCORD_API_URL`, scheme + host + port).
    pub discord_api_url: String,
    /// `DISCORD_GATEWAY_URL`: the gateway, else what `GET /gateway/bot` says.
    pub discord_gateway_url: Option<String>,
    /// Slack's Web API (`SLACK_API_URL`; methods are `POST {url}/{method}`).
    pub slack_api_url: String,
    /// WhatsApp's WebSocket (`WHATSAPP_WS_URL`, default `wss://web.whatsapp.com/ws/chat`).
    pub whatsapp_ws_url: String,
    /// `WHATSAPP_VERSION` (`2.3000.N`): the WhatsApp Web version announced; unset, the
    /// current one is read from web.whatsapp.com once a day.
    pub whatsapp_version: Option<(u32, u32, u32)>,
    /// `WHATSAPP_READ_RECEIPTS=on`: mark the messages the assistant receives as read.
    pub whatsapp_read_receipts: bool,
    /// An OpenAI-compatible `/v1/audio/transcriptions` endpoint for voice notes users
    /// send (`TRANSCRIBE_URL`); unset: audio is saved and named, not transcribed.
    pub transcribe_url: Option<String>,
    /// The model asked of it (`TRANSCRIBE_MODEL`, default `whisper-1`).
    pub transcribe_model: String,
    /// An OpenAI-compatible `/v1/embeddings` endpoint (`EMBEDDINGS_URL`): `memory_search`
    /// ranks by meaning as well as words; unset, by words only.
    pub embeddings_url: Option<String>,
    /// The model asked of it (`EMBEDDINGS_MODEL`, default `text-embedding-3-small`).
    pub embeddings_model: String,
    /// Runs are refused, and running ones stopped, when the disk holding the root has
    /// less free than this (`NANOCLAW_MIN_FREE_DISK_MB`, default 1024 MiB), so the store
    /// always has room.
    pub min_free_disk_bytes: u64,
    /// Tokens a group may spend per day unless its `container_config.budget` says
    /// otherwise (`NANOCLAW_DAILY_TOKEN_BUDGET`; unset or 0: no ceiling).
    pub daily_token_budget: Option<u64>,
    /// As root, each group's sandboxes run as a host uid of their own, allocated upwards
    /// from this (`NANOCLAW_SANDBOX_ID_BASE`, default 1900000000; no account or other
    /// subordinate-id range may use those ids).
    pub sandbox_id_base: u32,
}

/// A secret value. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The raw value, for the one place that must send it (the proxy, a channel client).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Credentials, read only by the parts that need them; never passed to a sandbox.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub anthropic_api_key: Option<Secret>,
    pub claude_code_oauth_token: Option<Secret>,
    pub anthropic_auth_token: Option<Secret>,
    pub openai_api_key: Option<Secret>,
    /// For `TRANSCRIBE_URL`.
    pub transcribe_api_key: Option<Secret>,
    /// For `EMBEDDINGS_URL`.
    pub embeddings_api_key: Option<Secret>,
    pub telegram_bot_token: Option<Secret>,
    pub discord_bot_token: Option<Secret>,
    pub slack_app_token: Option<Secret>,
    pub slack_bot_token: Option<Secret>,
    /// Every `EMAIL_*` setting (SPEC §13.5; some are secrets), for the email channel
    /// to check and use.
    pub email: std::collections::BTreeMap<String, Secret>,
}

impl Secrets {
    /// Names of every variable treated as a secret.
    pub const NAMES: [&'static str; 13] = [
        "ANTHROPIC_API_KEY",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "ANTHROPIC_AUTH_TOKEN",
        "OPENAI_API_KEY",
        "TRANSCRIBE_API_KEY",
        "EMBEDDINGS_API_KEY",
        "TELEGRAM_BOT_TOKEN",
        "DISCORD_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_BOT_TOKEN",
        "EMAIL_PASSWORD",
        "EMAIL_OAUTH2_CLIENT_SECRET",
        "EMAIL_OAUTH2_REFRESH_TOKEN",
    ];
}

/// Settings merged from the environment and `.env`, remembering where each came from.
struct Settings {
    values: HashMap<String, (String, Origin)>,
}

impl Settings {
    fn get(&self, name: &str) -> Option<(&str, &Origin)> {
        self.values
            .get(name)
            .map(|(v, o)| (v.as_str(), o))
            .filter(|(v, _)| !v.is_empty())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name)
            .map(|(v, _)| v.to_string())
            .unwrap_or_else(|| default.to_string())
    }

    fn secret(&self, name: &str) -> Option<Secret> {
        self.get(name).map(|(v, _)| Secret::new(v.trim()))
    }

    fn parsed<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
        what: &str,
        valid: impl Fn(&T) -> bool,
    ) -> Result<T, ConfigError> {
        let Some((raw, origin)) = self.get(name) else {
            return Ok(default);
        };
        match raw.trim().parse::<T>() {
            Ok(v) if valid(&v) => Ok(v),
            _ => Err(ConfigError::Invalid {
                name,
                origin: origin.to_string(),
                problem: format!("is `{raw}`, but it must be {what}"),
            }),
        }
    }

    fn millis(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.parsed(
            name,
            default,
            "a positive whole number of milliseconds",
            |v| *v > 0,
        )
        .map(Duration::from_millis)
    }

    fn port(&self, name: &'static str, default: u16) -> Result<u16, ConfigError> {
        self.parsed(name, default, "a TCP port number from 1 to 65535", |v| {
            *v > 0
        })
    }
}

impl Config {
    /// Reads the configuration for `root` from `env` (normally the process environment)
    /// and `{root}/.env`. A missing `.env` is fine; an unreadable or malformed one is not.
    pub fn load(
        root: &Path,
        env: &HashMap<String, String>,
    ) -> Result<(Config, Secrets), ConfigError> {
        let dotenv_path = root.join(".env");
        let text = match std::fs::read_to_string(&dotenv_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ConfigError::ReadDotenv {
                    path: dotenv_path,
                    source,
                });
            }
        };
        Config::load_with_dotenv(root, env, text.as_deref())
    }

    /// [`Config::load`] with `dotenv_text` as the content of `.env` (`None`: there is
    /// none): how `setup` checks a `.env` before writing it.
    pub fn load_with_dotenv(
        root: &Path,
        env: &HashMap<String, String>,
        dotenv_text: Option<&str>,
    ) -> Result<(Config, Secrets), ConfigError> {
        let dotenv_path = root.join(".env");
        let dotenv = match dotenv_text {
            Some(text) => dotenv::parse(text).map_err(|source| ConfigError::Dotenv {
                path: dotenv_path.clone(),
                source,
            })?,
            None => Default::default(),
        };
        let mut values: HashMap<String, (String, Origin)> = dotenv
            .into_iter()
            .map(|(k, (v, line))| (k, (v, Origin::DotenvLine(line))))
            .collect();
        for (k, v) in env {
            if !v.is_empty() {
                values.insert(k.clone(), (v.clone(), Origin::Environment));
            }
        }
        let s = Settings { values };

        let home = env
            .get("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));

        let assistant_name = s.string("ASSISTANT_NAME", "Andy").trim().to_string();
        if assistant_name.is_empty() || assistant_name.chars().any(char::is_control) {
            return Err(invalid(
                &s,
                "ASSISTANT_NAME",
                "must be a non-empty name without control characters",
            ));
        }

        let anthropic_base_url = s
            .string("ANTHROPIC_BASE_URL", "https://api.anthropic.com")
            .trim_end_matches('/')
            .to_string();
        if !(anthropic_base_url.starts_with("http://")
            || anthropic_base_url.starts_with("https://"))
        {
            return Err(invalid(
                &s,
                "ANTHROPIC_BASE_URL",
                "must start with http:// or https://",
            ));
        }

        let telegram_api_url = s
            .string("TELEGRAM_API_URL", "https://api.telegram.org")
            .trim_end_matches('/')
            .to_string();
        if !(telegram_api_url.starts_with("http://") || telegram_api_url.starts_with("https://")) {
            return Err(invalid(
                &s,
                "TELEGRAM_API_URL",
                "must start with http:// or https://",
            ));
        }

        let container_runtime = match s.get("CONTAINER_RUNTIME") {
            None => None,
            Some((raw, origin)) => Some(match raw.trim().to_ascii_lowercase().as_str() {
                "docker" => RuntimeKind::Docker,
                "podman" => RuntimeKind::Podman,
                "bwrap" | "bubblewrap" => RuntimeKind::Bwrap,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "CONTAINER_RUNTIME",
                        origin: origin.to_string(),
                        problem: format!(
                            "is `{raw}`, but it must be docker, podman or bwrap (or unset to auto-detect)"
                        ),
                    });
                }
            }),
        };

        // Anthropic's own API has the `web_search` server tool; a compatible server
        // (llama.cpp's, a proxy) may not, and shows the model an empty tool instead.
        let anthropic_itself = anthropic_base_url
            .strip_prefix("https://")
            .map(|rest| rest.split(['/', ':']).next() == Some("api.anthropic.com"))
            .unwrap_or(false);
        let web_search = on_off(
            &s,
            "NANOCLAW_WEB_SEARCH",
            anthropic_itself,
            "must be on or off (unset: on only with Anthropic's own API)",
        )?;
        let config = Config {
            root: root.to_path_buf(),
            web_search,
            home: home.clone(),
            assistant_name,
            anthropic_base_url,
            model: s.string("NANOCLAW_MODEL", "claude-sonnet-4-5"),
            container_runtime,
            container_image: s.string("CONTAINER_IMAGE", "nanoclaw-agent:latest"),
            container_timeout: s.millis("CONTAINER_TIMEOUT", 1_800_000)?,
            idle_timeout: s.millis("IDLE_TIMEOUT", 1_800_000)?,
            max_concurrent_containers: s.parsed(
                "MAX_CONCURRENT_CONTAINERS",
                5usize,
                "a whole number of at least 1",
                |v| *v >= 1,
            )?,
            container_max_output_size: s.parsed(
                "CONTAINER_MAX_OUTPUT_SIZE",
                10_485_760u64,
                "a positive number of bytes",
                |v| *v > 0,
            )?,
            credential_proxy_port: s.port("CREDENTIAL_PROXY_PORT", 3001)?,
            http_port: s.port("NANOCLAW_HTTP_PORT", 3002)?,
            zone: resolve_zone(s.get("TZ"))?,
            retry_base: s.millis("NANOCLAW_RETRY_BASE_MS", 5_000)?,
            close_grace: Duration::from_secs(30),
            min_task_interval: s.millis("NANOCLAW_MIN_TASK_INTERVAL_MS", 60_000)?,
            log_filter_set: s
                .get("NANOCLAW_LOG")
                .or_else(|| s.get("RUST_LOG"))
                .is_some(),
            log_filter: s
                .get("NANOCLAW_LOG")
                .or_else(|| s.get("RUST_LOG"))
                .map(|(v, _)| v.to_string())
                .unwrap_or_else(|| "info".to_string()),
            agent_bin: s.get("NANOCLAW_AGENT_BIN").map(|(v, _)| PathBuf::from(v)),
            claude_code_path: s.get("CLAUDE_CODE_PATH").map(|(v, _)| PathBuf::from(v)),
            debian_mirror: s.string("NANOCLAW_DEBIAN_MIRROR", "http://deb.debian.org/debian"),
            llm_api: match s
                .string("NANOCLAW_LLM_API", "anthropic")
                .to_ascii_lowercase()
                .as_str()
            {
                "anthropic" => "anthropic".to_string(),
                "openai" => "openai".to_string(),
                _ => {
                    return Err(invalid(
                        &s,
                        "NANOCLAW_LLM_API",
                        "must be anthropic or openai",
                    ));
                }
            },
            telegram_api_url,
            discord_api_url: {
                let url = url_setting(&s, "DISCORD_API_URL", "https://discord.com")?;
                if url
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.contains('/'))
                {
                    return Err(invalid(
                        &s,
                        "DISCORD_API_URL",
                        "must be a scheme, host and port without a path, like https://discord.com",
                    ));
                }
                url
            },
            discord_gateway_url: match s.get("DISCORD_GATEWAY_URL") {
                None => None,
                Some(_) => Some(url_setting(&s, "DISCORD_GATEWAY_URL", "")?),
            },
            slack_api_url: url_setting(&s, "SLACK_API_URL", "https://slack.com/api")?,
            whatsapp_ws_url: url_setting(&s, "WHATSAPP_WS_URL", "wss://web.whatsapp.com/ws/chat")?,
            whatsapp_version: match s.get("WHATSAPP_VERSION") {
                None => None,
                Some((raw, _)) => {
                    let parts: Vec<Option<u32>> =
                        raw.trim().split('.').map(|p| p.parse().ok()).collect();
                    match parts.as_slice() {
                        [Some(a), Some(b), Some(c)] => Some((*a, *b, *c)),
                        _ => {
                            return Err(invalid(
                                &s,
                                "WHATSAPP_VERSION",
                                "must be three numbers like 2.3000.1023456789 (or unset)",
                            ));
                        }
                    }
                }
            },
            whatsapp_read_receipts: on_off(
                &s,
                "WHATSAPP_READ_RECEIPTS",
                false,
                "must be on or off",
            )?,
            transcribe_url: keyed_endpoint(&s, "TRANSCRIBE_URL")?,
            transcribe_model: s.string("TRANSCRIBE_MODEL", "whisper-1").trim().to_string(),
            embeddings_url: keyed_endpoint(&s, "EMBEDDINGS_URL")?,
            embeddings_model: s
                .string("EMBEDDINGS_MODEL", "text-embedding-3-small")
                .trim()
                .to_string(),
            openai_base_url: s
                .string("OPENAI_BASE_URL", "http://127.0.0.1:11434")
                .trim_end_matches('/')
                .trim_end_matches("/v1")
                .to_string(),
            llm_attempts: s.parsed(
                "NANOCLAW_LLM_ATTEMPTS",
                5u32,
                "a whole number from 1 to 20",
                |v| (1..=20).contains(v),
            )?,
            llm_stream_idle: s.millis("NANOCLAW_LLM_STREAM_IDLE_MS", 300_000)?,
            sandbox_start_timeout: s.millis("NANOCLAW_SANDBOX_START_TIMEOUT_MS", 120_000)?,
            min_free_disk_bytes: s
                .parsed(
                    "NANOCLAW_MIN_FREE_DISK_MB",
                    1024u64,
                    "a whole number of MiB",
                    |_| true,
                )?
                .saturating_mul(1 << 20),
            daily_token_budget: Some(s.parsed(
                "NANOCLAW_DAILY_TOKEN_BUDGET",
                0u64,
                "a whole number of tokens (0: no ceiling)",
                |v| *v <= crate::mounts::MAX_BUDGET_TOKENS,
            )?)
            .filter(|v| *v > 0),
            sandbox_id_base: s.parsed(
                "NANOCLAW_SANDBOX_ID_BASE",
                1_900_000_000u32,
                "a whole number from 100000 to 4000000000 (an unused range of host ids)",
                |v| (100_000..=4_000_000_000).contains(v),
            )?,
        };

        let secrets = Secrets {
            anthropic_api_key: s.secret("ANTHROPIC_API_KEY"),
            claude_code_oauth_token: s.secret("CLAUDE_CODE_OAUTH_TOKEN"),
            anthropic_auth_token: s.secret("ANTHROPIC_AUTH_TOKEN"),
            openai_api_key: s.secret("OPENAI_API_KEY"),
            transcribe_api_key: s.secret("TRANSCRIBE_API_KEY"),
            embeddings_api_key: s.secret("EMBEDDINGS_API_KEY"),
            telegram_bot_token: s.secret("TELEGRAM_BOT_TOKEN"),
            discord_bot_token: s.secret("DISCORD_BOT_TOKEN"),
            slack_app_token: s.secret("SLACK_APP_TOKEN"),
            slack_bot_token: s.secret("SLACK_BOT_TOKEN"),
            email: s
                .values
                .iter()
                .filter(|(k, (v, _))| k.starts_with("EMAIL_") && !v.trim().is_empty())
                .map(|(k, (v, _))| (k.clone(), Secret::new(v.trim())))
                .collect(),
        };
        Ok((config, secrets))
    }

    /// The trigger every group uses unless it registered its own: `@{ASSISTANT_NAME}`.
    pub fn default_trigger(&self) -> String {
        format!("@{}", self.assistant_name)
    }

    pub fn mount_allowlist_path(&self) -> PathBuf {
        self.home.join(".config/nanoclaw/mount-allowlist.json")
    }

    pub fn sender_allowlist_path(&self) -> PathBuf {
        self.home.join(".config/nanoclaw/sender-allowlist.json")
    }
}

/// A URL setting without its trailing slash; it must have a scheme the client speaks.
/// An optional endpoint a key is sent to: unset, or https (http only to this machine).
fn keyed_endpoint(s: &Settings, name: &'static str) -> Result<Option<String>, ConfigError> {
    match s.get(name) {
        Some((v, _)) if !v.trim().is_empty() => {
            let url = url_setting(s, name, "")?;
            nanoclaw_channel::http::check_endpoint(name, &url)
                .map_err(|why| invalid(s, name, &why))?;
            Ok(Some(url))
        }
        _ => Ok(None),
    }
}

fn url_setting(s: &Settings, name: &'static str, default: &str) -> Result<String, ConfigError> {
    let value = s
        .string(name, default)
        .trim()
        .trim_end_matches('/')
        .to_string();
    let schemes = ["http://", "https://", "ws://", "wss://"];
    if schemes.iter().any(|p| value.starts_with(p)) {
        Ok(value)
    } else {
        Err(invalid(
            s,
            name,
            "must be a URL starting with http://, https://, ws:// or wss://",
        ))
    }
}

/// An on/off setting (`on`, `true`, `1`, `yes` or their opposites); `unset` when absent.
fn on_off(
    s: &Settings,
    name: &'static str,
    unset: bool,
    problem: &str,
) -> Result<bool, ConfigError> {
    match s.get(name) {
        None => Ok(unset),
        Some((raw, _)) => match raw.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => Ok(true),
            "off" | "false" | "0" | "no" => Ok(false),
            _ => Err(invalid(s, name, problem)),
        },
    }
}

fn invalid(s: &Settings, name: &'static str, problem: &str) -> ConfigError {
    let (raw, origin) = s
        .get(name)
        .map(|(v, o)| (v.to_string(), o.to_string()))
        .unwrap_or_default();
    ConfigError::Invalid {
        name,
        origin,
        problem: format!("is `{raw}`, but it {problem}"),
    }
}

/// `TZ` unset → the system zone; `Area/City` → that IANA zone; `:…` and absolute paths
/// (POSIX style) → a TZif file; otherwise a POSIX TZ rule. An unknown zone is an error:
/// silently scheduling in UTC would fire the user's reminders at the wrong hour.
fn resolve_zone(value: Option<(&str, &Origin)>) -> Result<Zone, ConfigError> {
    let Some((raw, origin)) = value else {
        let tz = TimeZone::try_system().unwrap_or(TimeZone::UTC);
        let name = tz.iana_name().unwrap_or("UTC").to_string();
        return Ok(Zone { tz, name });
    };
    let spec = raw.trim().trim_start_matches(':');
    let bad = |why: String| ConfigError::Invalid {
        name: "TZ",
        origin: origin.to_string(),
        problem: format!("is `{raw}`, but {why}"),
    };
    if spec.starts_with('/') {
        let bytes =
            std::fs::read(spec).map_err(|e| bad(format!("the zone file cannot be read ({e})")))?;
        let name = spec
            .split_once("/zoneinfo/")
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| spec.to_string());
        let tz = TimeZone::tzif(&name, &bytes)
            .map_err(|e| bad(format!("the zone file is not valid ({e})")))?;
        return Ok(Zone { tz, name });
    }
    if let Ok(tz) = TimeZone::get(spec) {
        return Ok(Zone {
            name: tz.iana_name().unwrap_or(spec).to_string(),
            tz,
        });
    }
    match TimeZone::posix(spec) {
        Ok(tz) => Ok(Zone {
            tz,
            name: spec.to_string(),
        }),
        Err(_) => Err(bad(
            "that is not a known time zone; use an IANA name such as Europe/Berlin or UTC"
                .to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn root_with_dotenv(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(".env"), text).expect("write .env");
        dir
    }

    #[test]
    fn defaults_match_the_spec() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (c, s) = Config::load(dir.path(), &env(&[("TZ", "UTC")])).expect("loads");
        assert_eq!(c.assistant_name, "Andy");
        assert_eq!(c.default_trigger(), "@Andy");
        assert_eq!(c.anthropic_base_url, "https://api.anthropic.com");
        assert_eq!(c.model, "claude-sonnet-4-5");
        assert_eq!(c.container_runtime, None);
        assert_eq!(c.container_image, "nanoclaw-agent:latest");
        assert_eq!(c.container_timeout, Duration::from_millis(1_800_000));
        assert_eq!(c.idle_timeout, Duration::from_millis(1_800_000));
        assert_eq!(c.max_concurrent_containers, 5);
        assert_eq!(c.container_max_output_size, 10_485_760);
        assert_eq!(c.credential_proxy_port, 3001);
        assert_eq!(c.http_port, 3002);
        assert_eq!(c.zone.name, "UTC");
        assert_eq!(c.retry_base, Duration::from_secs(5));
        assert!(s.anthropic_api_key.is_none());
    }

    #[test]
    fn transcription_is_off_unless_set_and_its_key_never_crosses_in_clear() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (c, s) = Config::load(dir.path(), &env(&[("TZ", "UTC")])).expect("loads");
        assert_eq!(
            (c.transcribe_url, c.transcribe_model.as_str()),
            (None, "whisper-1")
        );
        assert!(s.transcribe_api_key.is_none());
        let (c, s) = Config::load(
            dir.path(),
            &env(&[
                ("TZ", "UTC"),
                (
                    "TRANSCRIBE_URL",
                    "http://127.0.0.1:8080/v1/audio/transcriptions",
                ),
                ("TRANSCRIBE_API_KEY", "sk-t"),
                ("TRANSCRIBE_MODEL", "large-v3"),
            ]),
        )
        .expect("loads");
        assert_eq!(
            c.transcribe_url.as_deref(),
            Some("http://127.0.0.1:8080/v1/audio/transcriptions")
        );
        assert_eq!(c.transcribe_model, "large-v3");
        assert_eq!(
            s.transcribe_api_key
                .map(|k| k.expose().to_string())
                .as_deref(),
            Some("sk-t")
        );
        for bad in ["http://whisper.lan/v1/audio/transcriptions", "ftp://x"] {
            let e = Config::load(dir.path(), &env(&[("TZ", "UTC"), ("TRANSCRIBE_URL", bad)]))
                .expect_err(bad)
                .to_string();
            assert!(e.contains("TRANSCRIBE_URL"), "{e}");
        }
    }

    #[test]
    fn channel_endpoints_default_to_the_platforms_and_are_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (c, _) = Config::load(dir.path(), &env(&[("TZ", "UTC")])).expect("loads");
        assert_eq!(c.discord_api_url, "https://discord.com");
        assert_eq!(c.discord_gateway_url, None);
        assert_eq!(c.slack_api_url, "https://slack.com/api");
        assert_eq!(c.whatsapp_ws_url, "wss://web.whatsapp.com/ws/chat");
        assert_eq!(c.whatsapp_version, None);
        assert!(
            !c.whatsapp_read_receipts,
            "read receipts only when asked for"
        );
        let (c, _) = Config::load(
            dir.path(),
            &env(&[
                ("TZ", "UTC"),
                ("WHATSAPP_WS_URL", "ws://127.0.0.1:9/ws/chat"),
                ("WHATSAPP_VERSION", "2.3000.1023456789"),
                ("WHATSAPP_READ_RECEIPTS", "on"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.whatsapp_ws_url, "ws://127.0.0.1:9/ws/chat");
        assert_eq!(c.whatsapp_version, Some((2, 3000, 1_023_456_789)));
        assert!(c.whatsapp_read_receipts);
        let (c, s) = Config::load(
            dir.path(),
            &env(&[
                ("TZ", "UTC"),
                ("SLACK_API_URL", "http://127.0.0.1:9/api/"),
                ("SLACK_BOT_TOKEN", "xoxb-1"),
                ("DISCORD_GATEWAY_URL", "ws://127.0.0.1:9"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.slack_api_url, "http://127.0.0.1:9/api");
        assert_eq!(c.discord_gateway_url.as_deref(), Some("ws://127.0.0.1:9"));
        assert_eq!(
            s.slack_bot_token.as_ref().map(Secret::expose),
            Some("xoxb-1")
        );
        for (name, value) in [
            ("DISCORD_API_URL", "https://discord.com/api/v10"),
            ("DISCORD_API_URL", "discord.com"),
            ("SLACK_API_URL", "slack.com/api"),
            ("WHATSAPP_WS_URL", "web.whatsapp.com"),
            ("WHATSAPP_VERSION", "2.3000"),
            ("WHATSAPP_VERSION", "latest"),
            ("WHATSAPP_READ_RECEIPTS", "sometimes"),
        ] {
            let err = Config::load(dir.path(), &env(&[("TZ", "UTC"), (name, value)]))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn web_search_defaults_to_on_only_for_anthropics_own_api() {
        let dir = tempfile::tempdir().expect("temp dir");
        let load = |vars: &[(&str, &str)]| {
            let mut all = vec![("TZ", "UTC")];
            all.extend_from_slice(vars);
            Config::load(dir.path(), &env(&all))
        };
        let on = |vars: &[(&str, &str)]| load(vars).map(|(c, _)| c.web_search).ok();
        assert_eq!(on(&[]), Some(true));
        assert_eq!(
            on(&[("ANTHROPIC_BASE_URL", "https://api.anthropic.com/")]),
            Some(true)
        );
        for other in [
            "http://127.0.0.1:8080",
            "https://api.anthropic.com.example.org",
            "http://api.anthropic.com",
            "https://llm.example.org/anthropic",
        ] {
            assert_eq!(on(&[("ANTHROPIC_BASE_URL", other)]), Some(false), "{other}");
        }
        assert_eq!(
            on(&[
                ("ANTHROPIC_BASE_URL", "http://127.0.0.1:8080"),
                ("NANOCLAW_WEB_SEARCH", "on")
            ]),
            Some(true)
        );
        assert_eq!(on(&[("NANOCLAW_WEB_SEARCH", "OFF")]), Some(false));
        let err = load(&[("NANOCLAW_WEB_SEARCH", "sometimes")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("NANOCLAW_WEB_SEARCH") && err.contains("on or off"),
            "{err}"
        );
    }

    #[test]
    fn environment_wins_over_dotenv() {
        let dir = root_with_dotenv("ASSISTANT_NAME=FromFile\nMAX_CONCURRENT_CONTAINERS=3\n");
        let (c, _) = Config::load(
            dir.path(),
            &env(&[("ASSISTANT_NAME", "FromEnv"), ("TZ", "UTC")]),
        )
        .expect("loads");
        assert_eq!(c.assistant_name, "FromEnv");
        assert_eq!(c.max_concurrent_containers, 3);
    }

    #[test]
    fn secrets_are_read_but_never_printed() {
        let dir = root_with_dotenv("ANTHROPIC_API_KEY=sk-ant-secret-value\n");
        let (c, s) = Config::load(dir.path(), &env(&[("TZ", "UTC")])).expect("loads");
        assert_eq!(
            s.anthropic_api_key.as_ref().map(Secret::expose),
            Some("sk-ant-secret-value")
        );
        let printed = format!("{c:?} {s:?}");
        assert!(!printed.contains("sk-ant-secret-value"), "{printed}");
    }

    #[test]
    fn invalid_values_name_the_variable_its_origin_and_the_fix() {
        let dir = root_with_dotenv("IDLE_TIMEOUT=soon\n");
        let e = Config::load(dir.path(), &env(&[("TZ", "UTC")])).expect_err("bad timeout");
        let msg = e.to_string();
        assert!(msg.contains("IDLE_TIMEOUT"), "{msg}");
        assert!(msg.contains(".env line 1"), "{msg}");
        assert!(msg.contains("milliseconds"), "{msg}");

        let cases = [
            ("MAX_CONCURRENT_CONTAINERS", "0", "at least 1"),
            ("NANOCLAW_HTTP_PORT", "70000", "port"),
            ("CONTAINER_RUNTIME", "lxc", "docker, podman or bwrap"),
            ("TZ", "Mars/Olympus_Mons", "IANA"),
            ("ANTHROPIC_BASE_URL", "api.anthropic.com", "http"),
        ];
        for (name, value, needle) in cases {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut e = env(&[("TZ", "UTC")]);
            e.insert(name.to_string(), value.to_string());
            let err = Config::load(dir.path(), &e).expect_err(name).to_string();
            assert!(err.contains(name) && err.contains(needle), "{err}");
            assert!(err.contains("the environment"), "{err}");
        }
    }

    #[test]
    fn malformed_dotenv_is_an_error_not_a_silent_default() {
        let dir = root_with_dotenv("GOOD=1\nthis line is wrong\n");
        let e = Config::load(dir.path(), &env(&[])).expect_err("malformed");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn time_zones_resolve_by_name_and_path() {
        for (value, name) in [
            ("Europe/Berlin", "Europe/Berlin"),
            (":Europe/Berlin", "Europe/Berlin"),
            ("UTC", "UTC"),
        ] {
            let dir = tempfile::tempdir().expect("temp dir");
            let (c, _) = Config::load(dir.path(), &env(&[("TZ", value)])).expect(value);
            assert_eq!(c.zone.name, name);
        }
    }
}
