//! `GET /api/events`: a Server-Sent Events stream of delivered replies,
//! `data: {"chat_jid", "text", "timestamp"}` with the delivery number as the event `id`.
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
    /// Delivery number up to which this client has everything (sent or filtered out).
    position: Option<i64>,
    replay_pending: bool,
    replayed: HashSet<i64>,
    backlog: VecDeque<OutboundEvent>,
    shutdown: watch::Receiver<bool>,
    /// A web app session the stream belongs to: it ends when the session does.
    session: Option<(Arc<super::web::Sessions>, String)>,
}

pub async fn stream(
    State(state): State<Arc<HttpState>>,
    session: Option<axum::Extension<super::web::SessionId>>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribe before replaying, so nothing falls between the two.
    let live = state.events.subscribe();
    let position = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let initial = StreamState {
        live,
        store: Arc::clone(&state.store),
        chat_jid: query.chat_jid,
        position,
        replay_pending: position.is_some(),
        replayed: HashSet::new(),
        backlog: VecDeque::new(),
        shutdown: state.shutdown.clone(),
        session: session
            .map(|axum::Extension(super::web::SessionId(id))| (Arc::clone(&state.sessions), id)),
    };
    let events = futures_util::stream::unfold(initial, |mut st| async move {
        let event = next_event(&mut st).await?;
        // Signed out (or expired) since the stream opened: nothing more.
        if let Some((sessions, id)) = &st.session
            && !sessions.is_live(id)
        {
            return None;
        }
        Some((Ok(event), st))
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
            let after = st.position.unwrap_or(0);
            let store = Arc::clone(&st.store);
            match store
                .call(move |s| s.delivered_after(after, REPLAY_BATCH))
                .await
            {
                Ok(items) => {
                    // A full batch means there may be more: fetch again after this one.
                    st.replay_pending = items.len() == REPLAY_BATCH;
                    let events: Vec<OutboundEvent> = items
                        .iter()
                        .filter_map(OutboundEvent::from_delivered)
                        .collect();
                    st.replayed.extend(events.iter().map(|e| e.seq));
                    st.backlog.extend(events);
                }
                Err(e) => tracing::warn!("event stream replay failed: {e}"),
            }
            continue;
        }
        tokio::select! {
            received = st.live.recv() => match received {
                Ok(event) => {
                    if st.replayed.remove(&event.seq) {
                        continue;
                    }
                    if let Some(sse) = st.emit(event) {
                        return Some(sse);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "event stream client fell behind; replaying from the store");
                    st.replay_pending = st.position.is_some();
                }
                Err(RecvError::Closed) => return None,
            },
            _ = st.shutdown.changed() => return None,
        }
    }
}

impl StreamState {
    /// Advances the position past `event` and renders it, unless the filter hides it.
    fn emit(&mut self, event: OutboundEvent) -> Option<Event> {
        self.position = Some(self.position.map_or(event.seq, |p| p.max(event.seq)));
        if self.chat_jid.as_ref().is_some_and(|j| *j != event.chat_jid) {
            return None;
        }
        let data = serde_json::to_string(&event).ok()?;
        Some(Event::default().id(event.seq.to_string()).data(data))
    }
}
