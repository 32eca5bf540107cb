//! `nanoclaw setup` (SPEC §14) as a person meets it: the real binary under a
//! pseudo-terminal, answering its questions, against a fake model API and a fake
//! Telegram; then the `.env` it wrote runs the assistant.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Reply};
use nanoclaw_test_support::fake_discord::FakeDiscord;
use nanoclaw_test_support::fake_slack::FakeSlack;
use nanoclaw_test_support::fake_telegram::FakeTelegram;
use nanoclaw_test_support::pty::Pty;
use nanoclaw_test_support::{DEADLINE, wait_for};

const RIGHT_KEY: &str = "sk-ant-right-0123456789";
const WRONG_KEY: &str = "sk-ant-wrong-9876543210";
const BOT_TOKEN: &str = "4242:setup-bot-token";
const STEP: Duration = Duration::from_secs(60);

fn setup_command(root: &std::path::Path, env: &[(&str, &str)]) -> std::process::Command {
    command("setup", root, env)
}

/// `setup --non-interactive` with `env` (and `extra` arguments): its status and stdout.
fn scripted(root: &std::path::Path, env: &[(&str, &str)], extra: &[&str]) -> (bool, String) {
    let out = setup_command(root, env)
        .arg("--non-interactive")
        .args(extra)
        .output()
        .expect("setup runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn command(name: &str, root: &std::path::Path, env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(support::nanoclaw_bin());
    cmd.args([name, "--root"])
        .arg(root)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", root.join("home"))
        .env("TERM", "dumb")
        .envs(env.iter().copied());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_in_a_terminal_catches_a_wrong_key_and_writes_an_env_that_runs() {
    let fake = FakeAnthropic::start(vec![Reply::text("hello from the key setup saved")]).await;
    fake.require_key(RIGHT_KEY);
    let telegram = FakeTelegram::start(BOT_TOKEN).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("home")).expect("root");
    std::fs::write(root.join(".env"), "# mine\nTZ=Europe/Berlin\n").expect("an .env of the user's");

    let cmd = setup_command(
        &root,
        &[
            ("ANTHROPIC_BASE_URL", fake.url.as_str()),
            ("TELEGRAM_API_URL", telegram.url.as_str()),
        ],
    );
    let term = tokio::task::spawn_blocking(move || {
        let mut term = Pty::spawn(cmd).expect("setup starts in a terminal");
        term.expect("1. Sandboxes", STEP);
        term.expect("name [Andy]: ", STEP);
        term.send_line("");
        term.expect("choose [1]: ", STEP);
        term.send_line("1");
        term.expect("Anthropic API key (sk-ant-…) (not shown): ", STEP);
        term.send_line(WRONG_KEY);
        term.expect("refused the credential", STEP);
        term.expect("Try again? [Y/n]: ", STEP);
        term
    })
    .await
    .expect("terminal");
    // A wrong key is caught before anything is saved.
    let before = std::fs::read_to_string(root.join(".env")).expect(".env");
    assert_eq!(before, "# mine\nTZ=Europe/Berlin\n", "nothing saved yet");

    let root_for_term = root.clone();
    let (term, status) = tokio::task::spawn_blocking(move || {
        let mut term = term;
        term.send_line("");
        term.expect("choose [1]: ", STEP);
        term.send_line("1");
        term.expect("(not shown): ", STEP);
        term.send_line(RIGHT_KEY);
        term.expect("accepts the credential", STEP);
        term.expect("Connect Telegram? [y/N]: ", STEP);
        term.send_line("y");
        term.expect("Telegram bot token (not shown): ", STEP);
        term.send_line(BOT_TOKEN);
        term.expect("accepted: the bot @", STEP);
        for other in ["Discord", "Slack", "Email"] {
            term.expect(&format!("Connect {other}? [y/N]: "), STEP);
            term.send_line("");
        }
        term.expect("Saved ", STEP);
        term.expect("service that starts with the computer? [y/N]: ", STEP);
        term.send_line("n");
        term.expect(
            &format!("nanoclaw ui --root {}", root_for_term.display()),
            STEP,
        );
        let status = term.wait(STEP);
        (term, status)
    })
    .await
    .expect("terminal");
    let screen = term.screen();
    // What a person saw, kept for reading (target/tmp/setup-screen.txt).
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("setup-screen.txt"),
        &screen,
    );
    assert!(status.success(), "setup succeeds:\n{screen}");
    for secret in [RIGHT_KEY, WRONG_KEY, BOT_TOKEN] {
        assert!(!screen.contains(secret), "a secret was echoed:\n{screen}");
    }
    drop(term);

    let env_path = root.join(".env");
    let mode = std::fs::metadata(&env_path)
        .expect(".env")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, ".env is private");
    let text = std::fs::read_to_string(&env_path).expect(".env");
    assert!(
        text.starts_with("# mine\nTZ=Europe/Berlin\n"),
        "the user's lines stay: {text}"
    );
    assert!(
        text.contains(&format!("ANTHROPIC_API_KEY={RIGHT_KEY}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("TELEGRAM_BOT_TOKEN={BOT_TOKEN}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("ANTHROPIC_BASE_URL={}\n", fake.url)),
        "{text}"
    );
    assert!(
        !text.contains(WRONG_KEY),
        "the refused key is not saved: {text}"
    );

    // The .env alone runs the assistant: no credential or endpoint in the environment.
    let d = support::BinaryDaemon::spawn(&root, &[]).await;
    d.api
        .send("web:main", "me", "Me", "hello")
        .await
        .expect("202");
    assert_eq!(
        support::wait_bot_texts(&d.api, "web:main", 1).await,
        ["hello from the key setup saved"]
    );
    // Setup again, with the assistant running: it ends with a sign-in link.
    let (ok, stdout) = scripted(&root, &[], &[]);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{}/login#", d.port))
            && stdout.contains("Nothing to change"),
        "{stdout}"
    );
    wait_for(
        "telegram to connect with the saved token",
        DEADLINE,
        || async {
            (support::channel_condition(&d.api, "telegram").await["state"] == "connected")
                .then_some(())
        },
    )
    .await;
    d.terminate().await;
}

#[test]
fn scripted_setup_checks_the_environment_and_saves_only_what_works() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fake = rt.block_on(FakeAnthropic::start(vec![]));
    fake.require_key(RIGHT_KEY);
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("home")).expect("root");

    let model = |name, value| [("ANTHROPIC_BASE_URL", fake.url.as_str()), (name, value)];
    let (ok, stdout) = scripted(&root, &model("ANTHROPIC_API_KEY", WRONG_KEY), &[]);
    assert!(!ok, "a wrong key fails: {stdout}");
    assert!(
        stdout.contains("refused the credential") && stdout.contains("Nothing was saved"),
        "{stdout}"
    );
    assert!(!root.join(".env").exists(), "no .env with a refused key");

    let (ok, stdout) = scripted(&root, &model("ANTHROPIC_API_KEY", RIGHT_KEY), &[]);
    assert!(ok, "{stdout}");
    assert!(
        !stdout.contains(RIGHT_KEY),
        "the key is not printed: {stdout}"
    );
    let text = std::fs::read_to_string(root.join(".env")).expect(".env");
    assert!(
        text.contains(&format!("ANTHROPIC_API_KEY={RIGHT_KEY}\n")),
        "{text}"
    );

    // An OAuth token in the environment is what is checked and saved, not the key
    // .env already has: a wrong one is refused and .env stays as it was.
    let before = std::fs::read_to_string(root.join(".env")).expect(".env");
    let (ok, stdout) = scripted(
        &root,
        &model("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat-garbage"),
        &[],
    );
    assert!(
        !ok && stdout.contains("CLAUDE_CODE_OAUTH_TOKEN"),
        "the token from the environment is the one checked: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join(".env")).expect(".env"),
        before
    );

    // A model API that cannot be reached: nothing saved unless asked to.
    let closed = format!("http://127.0.0.1:{}", nanoclaw_test_support::free_port());
    let unverified = [
        ("ANTHROPIC_BASE_URL", closed.as_str()),
        ("ANTHROPIC_API_KEY", "sk-ant-unchecked"),
    ];
    let (ok, stdout) = scripted(&root, &unverified, &[]);
    assert!(!ok, "{stdout}");
    assert_eq!(
        std::fs::read_to_string(root.join(".env")).expect(".env"),
        before
    );
    let (ok, stdout) = scripted(&root, &unverified, &["--save-unverified"]);
    assert!(ok, "{stdout}");
    let text = std::fs::read_to_string(root.join(".env")).expect(".env");
    assert!(
        text.contains("ANTHROPIC_API_KEY=sk-ant-unchecked\n"),
        "{text}"
    );
    assert!(
        !text.contains(RIGHT_KEY),
        "one API key, the new one: {text}"
    );

    // Run without a terminal and without --non-interactive: it says what to do.
    let out = setup_command(&root, &[])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("setup runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--non-interactive"));
}

/// With the daemon down, `doctor` asks each configured platform whether its token
/// works, with the same checks as `setup`; `--offline` asks none.
#[test]
fn doctor_asks_each_channel_while_the_daemon_is_down() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (model, telegram, discord, slack) = rt.block_on(async {
        let model = FakeAnthropic::start(vec![]).await;
        model.require_key(RIGHT_KEY);
        (
            model,
            FakeTelegram::start(BOT_TOKEN).await,
            FakeDiscord::start("discord-right-token").await,
            FakeSlack::start("xapp-1-right", "xoxb-right").await,
        )
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("home")).expect("root");
    let env = [
        ("ANTHROPIC_BASE_URL", model.url.as_str()),
        ("ANTHROPIC_API_KEY", RIGHT_KEY),
        ("TELEGRAM_API_URL", telegram.url.as_str()),
        ("TELEGRAM_BOT_TOKEN", BOT_TOKEN),
        ("DISCORD_API_URL", discord.api_url.as_str()),
        ("DISCORD_BOT_TOKEN", "discord-wrong-token"),
        ("SLACK_API_URL", slack.api_url.as_str()),
        ("SLACK_APP_TOKEN", "xapp-1-right"),
        ("SLACK_BOT_TOKEN", "xoxb-right"),
    ];
    let out = command("doctor", &root, &env)
        .output()
        .expect("doctor runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} line: {stdout}"))
            .to_string()
    };
    assert!(
        !out.status.success(),
        "a refused token fails doctor: {stdout}"
    );
    let tg = line("telegram");
    assert!(
        tg.starts_with("ok") && tg.contains("@nanoclaw_test_bot"),
        "{tg}"
    );
    let dc = line("discord");
    assert!(
        dc.starts_with("FAIL") && dc.contains("refused DISCORD_BOT_TOKEN"),
        "{dc}"
    );
    let sl = line("slack");
    assert!(sl.starts_with("ok") && sl.contains("auth.test"), "{sl}");
    for secret in [BOT_TOKEN, "discord-wrong-token", "xoxb-right", RIGHT_KEY] {
        assert!(
            !stdout.contains(secret),
            "doctor never shows a secret: {stdout}"
        );
    }

    let out = command("doctor", &root, &env)
        .arg("--offline")
        .output()
        .expect("doctor runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        line_has(&stdout, "discord:", "not checked (--offline)"),
        "{stdout}"
    );
    assert!(
        !stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("channel")),
        "nothing asked, nothing refused: {stdout}"
    );
}

fn line_has(text: &str, name: &str, what: &str) -> bool {
    text.lines().any(|l| l.contains(name) && l.contains(what))
}

/// Ctrl-C at a secret prompt ends setup, saves nothing, and gives the terminal its echo
/// back (a shell without echo is what a person would be left with otherwise).
#[test]
fn ctrl_c_at_a_secret_prompt_saves_nothing_and_the_terminal_echoes_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("home")).expect("root");
    let closed = format!("http://127.0.0.1:{}", nanoclaw_test_support::free_port());
    let mut term = Pty::spawn(setup_command(
        &root,
        &[("ANTHROPIC_BASE_URL", closed.as_str())],
    ))
    .expect("setup starts in a terminal");
    term.expect("name [Andy]: ", STEP);
    term.send_line("");
    term.expect("choose [1]: ", STEP);
    term.send_line("1");
    term.expect("(not shown): ", STEP);
    term.send_raw(b"sk-half");
    term.send_raw(b"\x03");
    term.expect("cancelled", STEP);
    let status = term.wait(STEP);
    assert!(!status.success(), "{}", term.screen());
    assert!(term.echo_is_on(), "the terminal echoes again");
    assert!(!root.join(".env").exists(), "nothing saved");
}
