//! `GET /api/events`: a Server-Sent Events stream of delivered replies,
//! `data: {"chat_jid", "text", "timestamp"}` with the outbox id as the event `id`.
//!
//! A client that reconnects with `Last-Event-ID` first gets what it missed (from the
//! store), then live events. `?chat_jid=J` limits the stream to one chat.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::HttpState;
use crate::delivery::OutboundEvent;
use crate::store::Store;

const REPLAY_BATCH: usize = 500;

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    chat_jid: Option<String>,
}

struct StreamState {
    live: broadcast::Receiver<OutboundEvent>,
    store: Arc<Store>,
    chat_jid: Option<String>,
    last_sent: Option<i64>,
    replay_pending: bool,
    replayed: HashSet<i64>,
    backlog: VecDeque<OutboundEvent>,
    shutdown: watch::Receiver<bool>,
}

pub async fn stream(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribe before replaying, so nothing falls between the two.
    let live = state.events.subscribe();
    let last_sent = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let initial = StreamState {
        live,
        store: Arc::clone(&state.store),
        chat_jid: query.chat_jid,
        last_sent,
        replay_pending: last_sent.is_some(),
        replayed: HashSet::new(),
        backlog: VecDeque::new(),
        shutdown: state.shutdown.clone(),
    };
    let events = futures_util::stream::unfold(initial, |mut st| async move {
        next_event(&mut st).await.map(|event| (Ok(event), st))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn next_event(st: &mut StreamState) -> Option<Event> {
    loop {
        if *st.shutdown.borrow() {
            return None;
        }
        while let Some(event) = st.backlog.pop_front() {
            if let Some(sse) = st.emit(event) {
                return Some(sse);
            }
        }
        if st.replay_pending {
            st.replay_pending = false;
            let after = st.last_sent.unwrap_or(0);
            let store = Arc::clone(&st.store);
            match store
                .call(move |s| s.delivered_after(after, REPLAY_BATCH))
                .await
            {
                Ok(items) => {
                    st.replay_pending = items.len() == REPLAY_BATCH;
                    st.replayed.extend(items.iter().map(|i| i.id));
                    st.backlog.extend(items.iter().map(OutboundEvent::from));
                }
                Err(e) => tracing::warn!("event stream replay failed: {e}"),
            }
            continue;
        }
        tokio::select! {
            received = st.live.recv() => match received {
                Ok(event) => {
                    if st.replayed.remove(&event.id) {
                        continue;
                    }
                    if let Some(sse) = st.emit(event) {
                        return Some(sse);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "event stream client fell behind; replaying from the store");
                    st.replay_pending = st.last_sent.is_some();
                }
                Err(RecvError::Closed) => return None,
            },
            _ = st.shutdown.changed() => return None,
        }
    }
}

impl StreamState {
    fn emit(&mut self, event: OutboundEvent) -> Option<Event> {
        if self.chat_jid.as_ref().is_some_and(|j| *j != event.chat_jid) {
            return None;
        }
        self.last_sent = Some(self.last_sent.map_or(event.id, |l| l.max(event.id)));
        let data = serde_json::to_string(&event).ok()?;
        Some(Event::default().id(event.id.to_string()).data(data))
    }
}
