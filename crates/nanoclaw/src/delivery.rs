//! The outbox worker: delivers committed replies through their channel, in order per chat,
//! retrying failures with backoff, and publishes each delivered reply on the event bus
//! (`GET /api/events`). Woken by [`Delivery::notify`]; no polling.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;

use crate::channels::{ChannelSet, OutboundMessage, SendRetry};
use crate::metrics::Metrics;
use crate::store::{OutboxItem, Store};

/// How long one channel send may take before it counts as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The same for a reply carrying a file (uploads of up to 50 MB).
const FILE_SEND_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait between attempts for one reply.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Chats looked at per pass.
const HEADS: usize = 500;
/// A reply still undelivered this long after it was written is given up on (it would
/// no longer make sense, and it holds back the chat's later replies).
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How soon a reply waiting for its channel to (re)connect is looked at again.
const NOT_CONNECTED_RETRY: Duration = Duration::from_secs(5);
/// The last pass at shutdown may take at most this long.
const FINAL_PASS: Duration = Duration::from_secs(10);

/// A delivered reply as the event stream shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutboundEvent {
    /// Delivery number: increases in the order replies were delivered.
    #[serde(skip)]
    pub seq: i64,
    pub chat_jid: String,
    pub text: String,
    pub timestamp: String,
    /// A file the reply carries, downloaded from `url` (`GET /api/files/{outbox id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<EventFile>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventFile {
    pub name: String,
    pub size: u64,
    pub url: String,
}

impl OutboundEvent {
    fn new(item: &OutboxItem, seq: i64) -> OutboundEvent {
        OutboundEvent {
            seq,
            chat_jid: item.chat_jid.clone(),
            text: item.text.clone(),
            timestamp: item.created_at.clone(),
            file: item.file.as_ref().map(|f| EventFile {
                name: f.name.clone(),
                size: f.size,
                url: format!("/api/files/{}", item.id),
            }),
        }
    }

    /// For replies read back from the store (replay); `None` if never delivered.
    pub fn from_delivered(item: &OutboxItem) -> Option<OutboundEvent> {
        item.delivery_seq.map(|seq| OutboundEvent::new(item, seq))
    }
}

pub struct Delivery {
    store: Arc<Store>,
    channels: ChannelSet,
    events: broadcast::Sender<OutboundEvent>,
    metrics: Arc<Metrics>,
    wake: Notify,
}

/// Why a reply was not delivered this time.
struct Failure {
    message: String,
    retry: SendRetry,
    /// False when no send was tried (the channel is not connected).
    attempted: bool,
}

/// What the worker remembers between passes.
#[derive(Default)]
struct WorkerState {
    /// Replies to retry no earlier than this.
    retry_at: HashMap<i64, Instant>,
    /// Sent, but recording that failed: record again, never send again.
    unrecorded: HashSet<i64>,
}

impl Delivery {
    pub fn new(
        store: Arc<Store>,
        channels: ChannelSet,
        events: broadcast::Sender<OutboundEvent>,
        metrics: Arc<Metrics>,
    ) -> Arc<Delivery> {
        Arc::new(Delivery {
            store,
            channels,
            events,
            metrics,
            wake: Notify::new(),
        })
    }

    /// A reply was committed: deliver it now.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Delivers until `stop` turns true, then makes one last pass.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut state = WorkerState::default();
        loop {
            let next = self.deliver_pending(&mut state, Some(&stop)).await;
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let stopping = tokio::select! {
                _ = self.wake.notified() => false,
                _ = sleep => false,
                stopped = stop.wait_for(|s| *s) => stopped.is_ok(),
            };
            if stopping {
                let _ =
                    tokio::time::timeout(FINAL_PASS, self.deliver_pending(&mut state, None)).await;
                return;
            }
        }
    }

    /// Delivers everything deliverable now. Returns when the earliest postponed reply
    /// is due, if any.
    /// With `stop`, returns early once it turns true (the caller then makes its capped
    /// final pass).
    async fn deliver_pending(
        &self,
        state: &mut WorkerState,
        stop: Option<&watch::Receiver<bool>>,
    ) -> Option<Instant> {
        let stopping = || stop.is_some_and(|s| *s.borrow());
        loop {
            let heads = match self.store.call(|s| s.pending_outbox_heads(HEADS)).await {
                Ok(items) => items,
                Err(e) => {
                    tracing::error!("cannot read the outbox: {e}");
                    return Some(Instant::now() + Duration::from_secs(5));
                }
            };
            let now = Instant::now();
            let mut earliest: Option<Instant> = None;
            let mut progressed = false;
            for item in heads {
                if stopping() {
                    return Some(Instant::now());
                }
                if let Some(at) = state.retry_at.get(&item.id).copied().filter(|at| *at > now) {
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    continue;
                }
                match self.deliver_one(&item, state).await {
                    Ok(()) => {
                        state.retry_at.remove(&item.id);
                        progressed = true;
                    }
                    Err(Failure {
                        message: error,
                        retry,
                        attempted: false,
                    }) => {
                        // Not tried (the channel is not connected): no attempt counted,
                        // no give-up by age, just look again later.
                        tracing::debug!(chat_jid = %item.chat_jid, outbox_id = item.id, "reply waits: {error}");
                        let wait = match retry {
                            SendRetry::After(wait) => wait,
                            _ => NOT_CONNECTED_RETRY,
                        };
                        let at = Instant::now() + wait;
                        state.retry_at.insert(item.id, at);
                        earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    }
                    Err(Failure {
                        message: error,
                        retry,
                        attempted: true,
                    }) => {
                        Metrics::inc(&self.metrics.delivery_failures);
                        let id = item.id;
                        // A reply that was sent but not recorded is never given up.
                        let give_up = !state.unrecorded.contains(&id)
                            && (retry == SendRetry::Never || too_old(&item.created_at));
                        if give_up {
                            let why = if retry == SendRetry::Never {
                                error
                            } else {
                                format!(
                                    "still failing after {} h: {error}",
                                    GIVE_UP_AFTER.as_secs() / 3600
                                )
                            };
                            tracing::error!(chat_jid = %item.chat_jid, outbox_id = id,
                                "reply given up, it cannot be delivered: {why}");
                            let recorded = self
                                .store
                                .call(move |s| s.mark_undeliverable(id, &why))
                                .await;
                            match recorded {
                                Ok(()) => {
                                    state.retry_at.remove(&id);
                                    progressed = true;
                                }
                                Err(e) => {
                                    tracing::error!("cannot record an undeliverable reply: {e}");
                                    let at = Instant::now() + Duration::from_secs(5);
                                    state.retry_at.insert(id, at);
                                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                                }
                            }
                            continue;
                        }
                        let wait = match retry {
                            SendRetry::After(wait) => wait,
                            _ => Duration::from_secs(1u64 << item.attempts.clamp(0, 9))
                                .min(MAX_BACKOFF),
                        };
                        tracing::warn!(chat_jid = %item.chat_jid, outbox_id = id, attempt = item.attempts + 1,
                            retry_in_s = wait.as_secs(), "reply not delivered: {error}");
                        let _ = self
                            .store
                            .call(move |s| s.record_delivery_failure(id, &error))
                            .await;
                        let at = Instant::now() + wait;
                        state.retry_at.insert(id, at);
                        earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    }
                }
            }
            // Delivering a chat's head makes its next reply the new head: go again.
            if !progressed {
                return earliest;
            }
        }
    }

    async fn deliver_one(&self, item: &OutboxItem, state: &mut WorkerState) -> Result<(), Failure> {
        let later = |message: String| Failure {
            message,
            retry: SendRetry::Later,
            attempted: true,
        };
        if !state.unrecorded.contains(&item.id) {
            let channel = self
                .channels
                .for_jid(&item.chat_jid)
                .filter(|c| c.is_connected())
                .ok_or_else(|| {
                    let owned = self.channels.for_jid(&item.chat_jid).is_some();
                    Failure {
                        message: if owned {
                            format!("the channel of {} is not connected", item.chat_jid)
                        } else {
                            format!("no channel handles {}", item.chat_jid)
                        },
                        // Channels reconnect on their own: look again soon. A chat no
                        // channel handles (not configured) only every few minutes.
                        retry: SendRetry::After(if owned {
                            NOT_CONNECTED_RETRY
                        } else {
                            MAX_BACKOFF
                        }),
                        attempted: false,
                    }
                })?;
            let message = OutboundMessage {
                outbox_id: item.id,
                chat_jid: item.chat_jid.clone(),
                text: item.text.clone(),
                timestamp: item.created_at.clone(),
                file: item.file.as_ref().map(|f| crate::channels::OutboundFile {
                    name: f.name.clone(),
                    path: f.path.clone(),
                    size: f.size,
                }),
                explicit: item.explicit,
            };
            let timeout = if message.file.is_some() {
                FILE_SEND_TIMEOUT
            } else {
                SEND_TIMEOUT
            };
            match tokio::time::timeout(timeout, channel.send(&message)).await {
                Err(_) => {
                    return Err(later(format!(
                        "{} did not answer within {}s",
                        channel.name(),
                        timeout.as_secs()
                    )));
                }
                Ok(Err(e)) => {
                    return Err(Failure {
                        message: e.to_string(),
                        retry: e.retry,
                        attempted: true,
                    });
                }
                Ok(Ok(())) => {}
            }
            // The host's copy has served its purpose, unless the chat downloads it later.
            if let Some(file) = &item.file
                && !channel.serves_files()
            {
                let _ = std::fs::remove_file(&file.path);
            }
            Metrics::inc(&self.metrics.replies_delivered);
        }
        let id = item.id;
        match self.store.call(move |s| s.mark_delivered(id)).await {
            Ok(seq) => {
                state.unrecorded.remove(&id);
                let _ = self.events.send(OutboundEvent::new(item, seq));
                Ok(())
            }
            Err(e) => {
                // Sent but not recorded: record it later, never send it twice.
                state.unrecorded.insert(id);
                Err(later(format!(
                    "delivered, but recording the delivery failed: {e}"
                )))
            }
        }
    }
}

/// Whether a reply written at `created_at` (RFC 3339) is past [`GIVE_UP_AFTER`].
fn too_old(created_at: &str) -> bool {
    created_at
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| jiff::Timestamp::now().duration_since(t).try_into().ok())
        .is_some_and(|age: Duration| age > GIVE_UP_AFTER)
}
