//! Voice notes to text (issue 17): the host sends a user's audio file to an
//! OpenAI-compatible `/v1/audio/transcriptions` endpoint (`TRANSCRIBE_URL`) and the
//! agent reads the transcript. The fake endpoint (and the fake embeddings endpoint of
//! `tests/hybrid_memory.rs`) is proven with the official `openai` Python client first.

mod support;

use nanoclaw::config::{Secret, Secrets};
use nanoclaw_test_support::fake_telegram::{Chat, FakeTelegram, User};
use nanoclaw_test_support::fake_transcribe::FakeTranscribe;
use support::{ScriptedRunner, Step, register_new, start_daemon_full};

const TOKEN: &str = "123456:transcribe-token";
const KEY: &str = "sk-transcribe-secret";

fn python() -> std::path::PathBuf {
    let venv =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/python");
    assert!(
        venv.exists(),
        "the test venv is missing: run ./scripts/test-tools.sh"
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_transcribes_with_the_fake() {
    let fake = FakeTranscribe::start("hello from the fake", Some(KEY)).await;
    let embeddings = nanoclaw_test_support::fake_embeddings::FakeEmbeddings::start(Some(KEY)).await;
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/transcribe_with_openai.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .arg(&fake.base_url)
        .arg(KEY)
        .arg(&embeddings.base_url)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "TEXT hello from the fake");
    // The embeddings fake, as the official client reads it (base64 floats by default).
    assert_eq!(lines[1], "VECTORS 1,0,0,0,0.05 0,1,0,0,0.05");
    assert_eq!(embeddings.requests()[0].1, ["my car", "the dog"]);
    let heard = fake.heard();
    assert_eq!(heard.len(), 1);
    assert_eq!(heard[0].model, "whisper-1");
    assert_eq!(heard[0].file_name, "voice.ogg");
    assert_eq!(heard[0].bytes, b"OggS\x00\x02 a voice note");
}

async fn daemon(
    tg: &FakeTelegram,
    fake: &FakeTranscribe,
    runner: std::sync::Arc<ScriptedRunner>,
    jid: &str,
    folder: &str,
) -> support::TestDaemon {
    let telegram =
        nanoclaw::channels::telegram::Telegram::new(&tg.url, TOKEN, "Andy").expect("telegram");
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), jid, folder);
    let url = fake.url.clone();
    start_daemon_full(
        runner,
        Default::default(),
        Secrets {
            transcribe_api_key: Some(Secret::new(KEY)),
            ..Default::default()
        },
        vec![telegram],
        root,
        |c| c.transcribe_url = Some(url),
    )
    .await
}

/// A voice note is saved into the inbox, transcribed by the host with its key, and the
/// transcript is in the agent's prompt next to the file; the key never is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_note_reaches_the_agent_as_text() {
    let fake = FakeTranscribe::start("buy milk and call grandma", Some(KEY)).await;
    let tg = FakeTelegram::start(TOKEN).await;
    let runner = ScriptedRunner::new(vec![Step::ReplyAndEnd(vec!["Will do.".into()])]);
    let d = daemon(&tg, &fake, runner.clone(), "tg:-100901", "tg_voice").await;
    let chat = Chat::group(-100_901, "Voice");
    let jo = User::new(41, "Jo");
    let voice = b"OggS\x00\x02\x00\x00 opus frames";
    let id = tg.user_sends_voice(&chat, &jo, voice);
    tg.user_says(&chat, &jo, "@Andy do what I said");
    assert_eq!(tg.wait_sent(-100_901, 1).await, ["Will do."]);
    let runs = runner.wait_runs("one run", |r| !r.is_empty()).await;
    let prompt = &runs[0].prompt;
    assert!(
        prompt.contains(&format!("/workspace/group/inbox/voice-{id}.ogg"))
            && prompt.contains("transcript: buy milk and call grandma"),
        "{prompt}"
    );
    assert!(!prompt.contains(KEY));
    let heard = fake.heard();
    assert_eq!(heard.len(), 1);
    assert_eq!(heard[0].bytes, voice);
    assert_eq!(
        heard[0].authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(
        std::fs::read(
            d.root()
                .join(format!("groups/tg_voice/inbox/voice-{id}.ogg"))
        )
        .expect("saved"),
        voice
    );
    d.stop().await;
}

/// A failing transcription service does not lose the voice note: it is saved and named
/// with the reason, which never carries the service's body (it may quote the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_transcription_names_the_file_without_the_services_words() {
    let fake = FakeTranscribe::start("unused", Some(KEY)).await;
    fake.fail_with(500);
    let tg = FakeTelegram::start(TOKEN).await;
    let runner = ScriptedRunner::new(vec![Step::ReplyAndEnd(vec!["Noted.".into()])]);
    let d = daemon(&tg, &fake, runner.clone(), "tg:-100902", "tg_voice2").await;
    let chat = Chat::group(-100_902, "Voice");
    let jo = User::new(42, "Jo");
    let id = tg.user_sends_voice(&chat, &jo, b"OggS more frames");
    tg.user_says(&chat, &jo, "@Andy listen");
    assert_eq!(tg.wait_sent(-100_902, 1).await, ["Noted."]);
    let runs = runner.wait_runs("one run", |r| !r.is_empty()).await;
    let prompt = &runs[0].prompt;
    assert!(
        prompt.contains(&format!("/workspace/group/inbox/voice-{id}.ogg"))
            && prompt.contains("not transcribed: the transcription service answered HTTP 500"),
        "{prompt}"
    );
    assert!(!prompt.contains(KEY), "{prompt}");
    d.stop().await;
}

/// `doctor` says which of the optional services the host calls is on, never the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_whether_voice_notes_and_meaning_are_on() {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        root.path().join(".env"),
        format!(
            "TRANSCRIBE_URL=http://127.0.0.1:9/v1/audio/transcriptions\nTRANSCRIBE_API_KEY={KEY}\n"
        ),
    )
    .expect(".env");
    let (_, stdout, _) = support::cli(root.path(), &["doctor", "--offline"]).await;
    assert!(
        stdout.contains("voice notes are transcribed (http://127.0.0.1:9/v1/audio/transcriptions, model whisper-1, with its key)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("memory_search ranks by words (set EMBEDDINGS_URL"),
        "{stdout}"
    );
    assert!(!stdout.contains(KEY), "keys are never shown");
}
