//! Photos users sent, shown to the model (issue 17): a user turn that names image files
//! in the group's inbox (`/workspace/group/inbox/…`, where the host saves what users
//! send) carries them as image blocks, within a budget; the model can still open any
//! file with its tools. The file's bytes decide what it is, never its name.

use std::path::Path;

use base64::Engine;
use serde_json::{Value, json};

/// Largest image shown (Anthropic's limit is 5 MB of base64, which this fits in).
const MAX_IMAGE_BYTES: u64 = 3_750_000;
/// Images shown per turn.
const MAX_IMAGES: usize = 4;
/// Where the host saves files users send, as the sandbox sees it.
const INBOX: &str = "/workspace/group/inbox/";

/// The media type of an image the APIs accept, from its first bytes.
fn media_type(head: &[u8]) -> Option<&'static str> {
    match head {
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [0x89, b'P', b'N', b'G', ..] => Some("image/png"),
        [b'G', b'I', b'F', b'8', ..] => Some("image/gif"),
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Some("image/webp"),
        _ => None,
    }
}

/// The inbox files `text` names, in order, each once.
fn named_inbox_files(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(INBOX) {
        let tail = &rest[at + INBOX.len()..];
        let name: String = tail
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, ')' | ']' | '<' | '"' | '\''))
            .collect();
        if !name.is_empty() && !name.contains('/') && !out.contains(&name) {
            out.push(name.clone());
        }
        rest = &tail[name.len()..];
    }
    out
}

/// Image blocks for the inbox images `text` names, read from `workdir/inbox/` (the
/// group folder as this process sees it), and a note for each one left out.
pub fn blocks_for(text: &str, workdir: &Path) -> Vec<Value> {
    let mut blocks = Vec::new();
    let mut shown = 0;
    for name in named_inbox_files(text) {
        let path = workdir.join("inbox").join(&name);
        // Only a regular file right in the inbox: no symlink out of it.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&path).and_then(|f| {
            use std::io::Read;
            f.take(MAX_IMAGE_BYTES + 1).read_to_end(&mut bytes)
        });
        if read.is_err() {
            continue;
        }
        let Some(kind) = media_type(&bytes) else {
            continue; // not an image: the model opens it with its tools if it wants
        };
        let note = |why: &str| json!({"type": "text", "text": format!("(The image {INBOX}{name} is not shown: {why}. Its file is there for your tools.)")});
        if bytes.len() as u64 > MAX_IMAGE_BYTES {
            blocks.push(note("it is larger than 3.75 MB"));
            continue;
        }
        if shown == MAX_IMAGES {
            blocks.push(note(&format!(
                "only {MAX_IMAGES} images are shown per message"
            )));
            continue;
        }
        shown += 1;
        blocks.push(
            json!({"type": "image", "source": {"type": "base64", "media_type": kind,
            "data": base64::engine::general_purpose::STANDARD.encode(&bytes)}}),
        );
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0];

    #[test]
    fn named_inbox_images_become_blocks_and_nothing_else_does() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inbox = dir.path().join("inbox");
        std::fs::create_dir_all(&inbox).expect("inbox");
        std::fs::write(inbox.join("photo-1.jpg"), [0xFF, 0xD8, 0xFF, 0xE0, 1, 2]).expect("jpg");
        std::fs::write(inbox.join("fake.png"), b"not an image").expect("text");
        std::fs::write(inbox.join("real.txt"), PNG).expect("png named txt");
        std::fs::write(dir.path().join("outside.png"), PNG).expect("outside");
        std::os::unix::fs::symlink(dir.path().join("outside.png"), inbox.join("link.png"))
            .expect("symlink");
        let text = "look [attachment: /workspace/group/inbox/photo-1.jpg (1 KB)] and \
            /workspace/group/inbox/fake.png /workspace/group/inbox/real.txt \
            /workspace/group/inbox/link.png /workspace/group/inbox/../outside.png \
            /workspace/group/inbox/photo-1.jpg";
        let blocks = blocks_for(text, dir.path());
        let kinds: Vec<&str> = blocks
            .iter()
            .filter_map(|b| b["source"]["media_type"].as_str())
            .collect();
        assert_eq!(kinds, ["image/jpeg", "image/png"], "{blocks:?}");
        assert_eq!(blocks.len(), 2);
    }

    #[test]
    fn too_many_or_too_large_images_are_named_not_sent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inbox = dir.path().join("inbox");
        std::fs::create_dir_all(&inbox).expect("inbox");
        let mut text = String::new();
        for i in 0..6 {
            std::fs::write(inbox.join(format!("p{i}.png")), PNG).expect("png");
            text.push_str(&format!(" /workspace/group/inbox/p{i}.png"));
        }
        let mut big = PNG.to_vec();
        big.resize(MAX_IMAGE_BYTES as usize + 10, 0);
        std::fs::write(inbox.join("big.png"), big).expect("big");
        text.push_str(" /workspace/group/inbox/big.png");
        let blocks = blocks_for(&text, dir.path());
        assert_eq!(
            blocks.iter().filter(|b| b["type"] == "image").count(),
            MAX_IMAGES
        );
        let notes: Vec<&str> = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("big.png") && n.contains("larger"))
        );
    }
}
