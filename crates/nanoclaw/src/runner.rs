//! The seam between the host and whatever runs the agent.
//!
//! A run is: one [`RunRequest`] in; a stream of [`AgentEvent`]s out (replies, session id,
//! idle); [`RunInput`]s in while it lives (follow-up messages, close); a final result.
//! The sandboxed runner (sandbox + `nanoclaw-agent`) implements [`AgentRunner`]; tests use
//! a scripted double. This module knows nothing of chats, cursors or delivery.

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use nanoclaw_protocol::AgentEvent;

use crate::store::RegisteredGroup;

/// Everything a runner needs to start one agent run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Short random id for logs.
    pub run_id: String,
    pub group: RegisteredGroup,
    pub chat_jid: String,
    pub prompt: String,
    pub session_id: Option<String>,
    pub is_scheduled_task: bool,
    pub assistant_name: String,
}

/// Host → live run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunInput {
    /// More messages for the conversation (already formatted like the first prompt).
    Message(String),
    /// Finish the run (idle timeout, shutdown, a task needs the group).
    Close,
}

/// The channels of one live run.
pub struct RunIo {
    pub input: mpsc::UnboundedReceiver<RunInput>,
    pub events: mpsc::UnboundedSender<AgentEvent>,
}

/// Why a run failed. `message` is shown to the user, so it must never hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RunError {
    pub message: String,
    /// Retrying cannot help (e.g. the model API rejected the credentials).
    pub permanent: bool,
    /// The run was stopped by a spending ceiling (SPEC §15); the router words and paces
    /// the notice (the daily one once a day).
    pub budget: Option<crate::proxy::Refusal>,
}

impl RunError {
    pub fn new(message: impl Into<String>) -> RunError {
        RunError {
            message: message.into(),
            permanent: false,
            budget: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> RunError {
        RunError {
            message: message.into(),
            permanent: true,
            budget: None,
        }
    }

    /// A run refused or stopped by a token budget.
    pub fn budget(refusal: crate::proxy::Refusal) -> RunError {
        RunError {
            message: refusal.message(),
            permanent: true,
            budget: Some(refusal),
        }
    }
}

#[async_trait]
pub trait AgentRunner: Send + Sync + 'static {
    /// Runs the agent until it finishes (after `RunInput::Close`, or on its own).
    /// Dropping the future must stop the run (kill the sandbox).
    async fn run(&self, request: RunRequest, io: RunIo) -> Result<(), RunError>;

    /// One line for `status` and `doctor`: what runs agents here, or why nothing can.
    fn describe(&self) -> String;

    /// False when this runner can never succeed (nothing installed to run agents).
    fn is_available(&self) -> bool {
        true
    }

    /// Waits (boundedly) for the clean-up of runs that were stopped (sandboxes being
    /// removed), so nothing outlives the daemon's shutdown.
    async fn finish(&self) {}
}

/// The runner used when no sandbox backend is available. It never pretends: every run
/// fails with an explanation, so the router's retry policy applies and the user is told.
pub struct UnavailableRunner {
    reason: String,
}

impl UnavailableRunner {
    pub fn new(reason: impl Into<String>) -> UnavailableRunner {
        UnavailableRunner {
            reason: reason.into(),
        }
    }
}

#[async_trait]
impl AgentRunner for UnavailableRunner {
    async fn run(&self, request: RunRequest, _io: RunIo) -> Result<(), RunError> {
        tracing::error!(
            run_id = %request.run_id,
            group = %request.group.folder,
            chat_jid = %request.chat_jid,
            "cannot run the agent: {}", self.reason
        );
        Err(RunError::new(format!(
            "the assistant cannot run: {}",
            self.reason
        )))
    }

    fn describe(&self) -> String {
        format!("no agent runner: {}", self.reason)
    }

    fn is_available(&self) -> bool {
        false
    }
}
