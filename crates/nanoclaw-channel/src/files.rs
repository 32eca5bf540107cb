//! Files users send, as every channel handles them: downloaded with a size cap, saved
//! into the group's inbox through [`ChannelHost::save_file`], and named in the message
//! with a line the agent reads (`[attachment: /workspace/group/inbox/… (12 KB)]`, or why
//! the file is not there).

use std::time::Duration;

use crate::ChannelHost;
use crate::text::human_size;

/// How long one download may take.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// The body of `request`, at most `max` bytes (an error past it). Errors never hold the
/// URL, which may hold a token.
pub async fn fetch_capped(request: reqwest::RequestBuilder, max: u64) -> Result<Vec<u8>, String> {
    let mut response = request
        .timeout(DOWNLOAD_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !response.status().is_success() {
        return Err(format!("the download answered HTTP {}", response.status()));
    }
    if response.content_length().is_some_and(|n| n > max) {
        return Err(format!(
            "the file is larger than {}",
            human_size(max as usize)
        ));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if (bytes.len() + chunk.len()) as u64 > max {
            return Err(format!(
                "the file is larger than {}",
                human_size(max as usize)
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Whether the files of `message` are worth downloading: a registered group's chat, a
/// sender the allowlist does not drop, and a message not stored before (a redelivery).
pub async fn wanted(host: &dyn ChannelHost, message: &crate::Message) -> bool {
    host.wants_files(message).await && !host.has_message(&message.chat_jid, &message.id).await
}

/// The line naming a file the host will not take now (asked with its announced size
/// before downloading it), if it will not.
pub async fn refused(host: &dyn ChannelHost, jid: &str, name: &str, size: u64) -> Option<String> {
    let why = host.refuse_file(jid, size).await?;
    Some(format!(
        "[attachment: {name} ({}), not saved: {why}]",
        human_size(size as usize)
    ))
}

/// The line naming a file too large to fetch.
pub fn too_large(name: &str, size: u64, max: u64, why: &str) -> String {
    format!(
        "[attachment: {name} ({}), not saved: {why} {}]",
        human_size(size as usize),
        human_size(max as usize)
    )
}

/// Saves what was fetched for `name` into `jid`'s inbox and returns the line naming it;
/// `None` when no group is registered for the chat (nothing is saved, nothing said).
/// Channels call [`wanted`] first, so that nothing is downloaded for such chats.
pub async fn save(
    host: &dyn ChannelHost,
    channel: &str,
    jid: &str,
    name: &str,
    fetched: Result<Vec<u8>, String>,
) -> Option<String> {
    let bytes = match fetched {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("{channel}: cannot download {name:?}: {e}");
            return Some(format!("[attachment: {name}, could not be downloaded]"));
        }
    };
    match host.save_file(jid, name, &bytes).await {
        Ok(Some(path)) => Some(saved(host, channel, name, &bytes, &path).await),
        Ok(None) => None,
        // The host's reason is written for the user (quota, free space).
        Err(e) => {
            tracing::warn!("{channel}: cannot save {name:?}: {e}");
            Some(format!("[attachment: {name}, not saved: {e}]"))
        }
    }
}

/// The line naming a file saved at `path` (what the agent sees), with what was said in
/// it when it is a voice note and the host can tell.
pub async fn saved(
    host: &dyn ChannelHost,
    channel: &str,
    name: &str,
    bytes: &[u8],
    path: &str,
) -> String {
    let size = human_size(bytes.len());
    let heard = match host.transcribe(name, bytes).await {
        Ok(Some(text)) if !text.is_empty() => format!(", transcript: {text}"),
        Ok(_) => String::new(),
        Err(e) => {
            tracing::warn!("{channel}: cannot transcribe {name:?}: {e}");
            format!(", not transcribed: {e}")
        }
    };
    format!("[attachment: {path} ({size}){heard}]")
}
