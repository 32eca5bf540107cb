//! `nanoclaw-agent`: the agent loop that runs inside a sandbox.
//!
//! Not built yet (see the agent issue). Until then the binary reads the host's
//! [`AgentInput`] and answers with an honest [`AgentEvent::Error`], so a host that starts
//! it reports a clear failure instead of pretending an agent answered.

use std::io::{Read, Write};

use nanoclaw_protocol::{AgentEvent, AgentInput};

fn main() {
    let mut raw = String::new();
    let message = match std::io::stdin().read_to_string(&mut raw) {
        Err(e) => format!("nanoclaw-agent could not read its input from stdin: {e}"),
        Ok(_) => match serde_json::from_str::<AgentInput>(&raw) {
            Err(e) => format!("nanoclaw-agent got input that is not an AgentInput object: {e}"),
            Ok(_) => String::from(
                "nanoclaw-agent is not implemented yet: this build has no agent loop, so no \
                 answer can be produced",
            ),
        },
    };
    let line = AgentEvent::Error { message }.to_line();
    let mut out = std::io::stdout().lock();
    // Nothing sensible can be done if stdout is gone; the exit status still says it failed.
    let _ = writeln!(out, "{line}");
    std::process::exit(1);
}
