//! Voice notes to text: an OpenAI-compatible `/v1/audio/transcriptions` endpoint
//! (`TRANSCRIBE_URL`: OpenAI's, a local whisper server's), called by the host when a
//! user's audio file is saved, so the agent reads what was said. The key
//! (`TRANSCRIBE_API_KEY`) stays on the host like every other credential.

use std::time::Duration;

use serde_json::Value;

use crate::config::Secret;

/// Longest a transcription may take.
const TIMEOUT: Duration = Duration::from_secs(120);
/// The most audio sent (OpenAI's own limit is 25 MB).
pub const MAX_AUDIO_BYTES: usize = 25 << 20;
/// The most transcript kept, in characters.
const MAX_TEXT_CHARS: usize = 8000;

pub struct Transcriber {
    url: String,
    model: String,
    key: Option<Secret>,
    client: reqwest::Client,
}

impl Transcriber {
    /// `None` when `url` is unset. The key crosses the network only over https (or to
    /// this machine).
    pub fn new(
        url: Option<&str>,
        model: &str,
        key: Option<Secret>,
    ) -> Result<Option<Transcriber>, String> {
        let Some(url) = url else {
            return Ok(None);
        };
        nanoclaw_channel::http::check_endpoint("TRANSCRIBE_URL", url)?;
        let client = nanoclaw_channel::http::client()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("cannot create the transcription client: {e}"))?;
        Ok(Some(Transcriber {
            url: url.to_string(),
            model: model.to_string(),
            key,
            client,
        }))
    }

    /// The text spoken in the audio file `name`; the error says why not, in words for
    /// the user (never the endpoint's body, which might quote the key).
    pub async fn transcribe(&self, name: &str, bytes: &[u8]) -> Result<String, String> {
        if bytes.len() > MAX_AUDIO_BYTES {
            return Err(format!(
                "longer than the {} MB a transcription takes",
                MAX_AUDIO_BYTES >> 20
            ));
        }
        let media_type = nanoclaw_channel::OutboundFile {
            name: name.to_string(),
            path: Default::default(),
            size: 0,
        }
        .media_type();
        let (content_type, body) = nanoclaw_channel::multipart::Form::new()
            .text("model", &self.model)
            .text("response_format", "json")
            .file("file", name, media_type, bytes)
            .finish();
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key.expose());
        }
        let response = request.send().await.map_err(|e| {
            format!(
                "the transcription service cannot be reached ({})",
                e.without_url()
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "the transcription service answered HTTP {}",
                status.as_u16()
            ));
        }
        let answer: Value = response
            .json()
            .await
            .map_err(|_| "the transcription service gave an unreadable answer".to_string())?;
        let text = answer["text"]
            .as_str()
            .ok_or("the transcription service's answer had no text")?
            .trim();
        Ok(nanoclaw_protocol::ipc::shorten(text, MAX_TEXT_CHARS))
    }
}

/// Whether `name` is an audio file worth transcribing (by its extension, as the
/// channels name voice notes and audio: `voice-12.ogg`, `audio-3.mp3`).
pub fn is_audio(name: &str) -> bool {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    matches!(
        ext.as_str(),
        "ogg" | "oga" | "opus" | "mp3" | "m4a" | "wav" | "flac" | "webm" | "aac" | "amr"
    )
}
