//! The outbox worker: delivers committed replies through their channel, in order per chat,
//! retrying failures with backoff, and publishes each delivered reply on the event bus
//! (`GET /api/events`). Woken by [`Delivery::notify`]; no polling.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;

use crate::channels::{ChannelSet, OutboundMessage};
use crate::metrics::Metrics;
use crate::store::{OutboxItem, Store};

/// How long one channel send may take before it counts as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait between attempts for one reply.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const BATCH: usize = 200;

/// A delivered reply as the event stream shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutboundEvent {
    #[serde(skip)]
    pub id: i64,
    pub chat_jid: String,
    pub text: String,
    pub timestamp: String,
}

impl From<&OutboxItem> for OutboundEvent {
    fn from(item: &OutboxItem) -> Self {
        OutboundEvent {
            id: item.id,
            chat_jid: item.chat_jid.clone(),
            text: item.text.clone(),
            timestamp: item.created_at.clone(),
        }
    }
}

pub struct Delivery {
    store: Arc<Store>,
    channels: ChannelSet,
    events: broadcast::Sender<OutboundEvent>,
    metrics: Arc<Metrics>,
    wake: Notify,
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

    /// Delivers until `shutdown` turns true, then makes one last pass.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut retry_at: HashMap<i64, Instant> = HashMap::new();
        loop {
            let next = self.deliver_pending(&mut retry_at).await;
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = sleep => {}
                _ = shutdown.changed() => {
                    self.deliver_pending(&mut retry_at).await;
                    return;
                }
            }
        }
    }

    /// One pass over the outbox. Returns when the earliest postponed reply is due.
    async fn deliver_pending(&self, retry_at: &mut HashMap<i64, Instant>) -> Option<Instant> {
        let items = match self.store.call(|s| s.pending_outbox(BATCH)).await {
            Ok(items) => items,
            Err(e) => {
                tracing::error!("cannot read the outbox: {e}");
                return Some(Instant::now() + Duration::from_secs(5));
            }
        };
        let mut blocked: HashSet<String> = HashSet::new();
        let mut earliest: Option<Instant> = None;
        let now = Instant::now();
        for item in items {
            // Replies to one chat go out in order: one stuck reply holds back the rest.
            if blocked.contains(&item.chat_jid) {
                continue;
            }
            if let Some(at) = retry_at.get(&item.id).copied().filter(|at| *at > now) {
                blocked.insert(item.chat_jid.clone());
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
                continue;
            }
            match self.deliver_one(&item).await {
                Ok(()) => {
                    retry_at.remove(&item.id);
                }
                Err(error) => {
                    Metrics::inc(&self.metrics.delivery_failures);
                    let backoff =
                        Duration::from_secs(1u64 << item.attempts.clamp(0, 9)).min(MAX_BACKOFF);
                    tracing::warn!(chat_jid = %item.chat_jid, outbox_id = item.id, attempt = item.attempts + 1,
                        retry_in_s = backoff.as_secs(), "reply not delivered: {error}");
                    let id = item.id;
                    let _ = self
                        .store
                        .call(move |s| s.record_delivery_failure(id, &error))
                        .await;
                    let at = Instant::now() + backoff;
                    retry_at.insert(item.id, at);
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    blocked.insert(item.chat_jid.clone());
                }
            }
        }
        earliest
    }

    async fn deliver_one(&self, item: &OutboxItem) -> Result<(), String> {
        let channel = self
            .channels
            .for_jid(&item.chat_jid)
            .filter(|c| c.is_connected())
            .ok_or_else(|| format!("no connected channel handles {}", item.chat_jid))?;
        let message = OutboundMessage {
            outbox_id: item.id,
            chat_jid: item.chat_jid.clone(),
            text: item.text.clone(),
            timestamp: item.created_at.clone(),
        };
        match tokio::time::timeout(SEND_TIMEOUT, channel.send(&message)).await {
            Err(_) => {
                return Err(format!(
                    "{} did not answer within {}s",
                    channel.name(),
                    SEND_TIMEOUT.as_secs()
                ));
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(())) => {}
        }
        let id = item.id;
        if let Err(e) = self.store.call(move |s| s.mark_delivered(id)).await {
            // Delivered but not recorded: it may be sent again after a restart. Say so.
            tracing::error!(
                outbox_id = id,
                "reply delivered but not marked delivered: {e}"
            );
        }
        Metrics::inc(&self.metrics.replies_delivered);
        let _ = self.events.send(OutboundEvent::from(item));
        Ok(())
    }
}
