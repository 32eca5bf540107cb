//! Until the agent loop exists, `nanoclaw-agent` must fail honestly: one `error` event on
//! stdout saying why, and a failing exit status. (Also makes `cargo test --workspace`
//! build the binary that sandboxes run.)

use std::io::Write;
use std::process::{Command, Stdio};

use nanoclaw_protocol::AgentEvent;

fn run(stdin: &str) -> (bool, Vec<AgentEvent>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nanoclaw-agent"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("agent starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write input");
    let out = child.wait_with_output().expect("agent exits");
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is an event"))
        .collect();
    (out.status.success(), events)
}

#[test]
fn valid_input_gets_an_honest_not_implemented_error() {
    let (ok, events) = run(
        r#"{"prompt":"hi","group_folder":"main","chat_jid":"web:main","is_main":true,"assistant_name":"Andy"}"#,
    );
    assert!(!ok);
    assert!(
        matches!(&events[..], [AgentEvent::Error { message }] if message.contains("not implemented yet")),
        "{events:?}"
    );
}

#[test]
fn invalid_input_is_reported() {
    let (ok, events) = run("not json");
    assert!(!ok);
    assert!(
        matches!(&events[..], [AgentEvent::Error { message }] if message.contains("not an AgentInput")),
        "{events:?}"
    );
}
