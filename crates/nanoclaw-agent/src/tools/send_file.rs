//! `send_file`: a file from the group's own folder, sent to the chat. The tool checks
//! what it can see so the model gets a clear answer at once; the host checks again when
//! it opens the file (without following symlinks, beneath the group folder) and copies
//! it before delivery, so nothing done here is what keeps other files out.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nanoclaw_protocol::ipc::{IpcRequest, MAX_SEND_FILE_BYTES, group_file_components};
use serde_json::{Value, json};

use super::{ToolContext, ToolOutput, string};

/// Longest caption, in characters.
const MAX_CAPTION_CHARS: usize = 4000;

pub fn definition() -> Value {
    json!({"name": "send_file", "description": "Send a file from the group's folder (/workspace/group) to the chat, with an optional caption: a report, an image, an export. Only regular files inside /workspace/group can be sent (up to 50 MB; some chat apps allow less).",
           "input_schema": {"type": "object", "properties": {
               "path": {"type": "string", "description": "The file, relative to /workspace/group or absolute under it"},
               "caption": {"type": "string", "description": "Optional text sent with the file"}},
               "required": ["path"]}})
}

/// The request for `input`, and what to tell the model once it is handed over.
pub fn request(input: &Value, ctx: &ToolContext) -> Result<(IpcRequest, String), ToolOutput> {
    let given = string(input, "path")?;
    // Absolute paths under the working folder (what `Glob` shows) count as relative.
    let relative = match Path::new(given).strip_prefix(&ctx.workdir) {
        Ok(rest) => rest.to_str().unwrap_or(given),
        Err(_) => given,
    };
    let parts = group_file_components(relative).map_err(ToolOutput::error)?;
    let size = check_file(&ctx.workdir, &parts, given)?;
    let caption = match input["caption"].as_str().map(str::trim) {
        Some(c) if c.chars().count() > MAX_CAPTION_CHARS => {
            return Err(ToolOutput::error(format!(
                "the caption is longer than {MAX_CAPTION_CHARS} characters: send the text with send_message"
            )));
        }
        Some("") | None => None,
        Some(c) => Some(c.to_string()),
    };
    let path = parts.join("/");
    let done = format!(
        "{path} ({}) handed to the host for delivery to the chat.",
        human_size(size)
    );
    Ok((
        IpcRequest::File {
            chat_jid: ctx.chat_jid.clone(),
            path,
            caption,
        },
        done,
    ))
}

/// The size of the regular file at `parts` under `base`, reached through real
/// directories only.
fn check_file(base: &Path, parts: &[&str], given: &str) -> Result<u64, ToolOutput> {
    let mut path = PathBuf::from(base);
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let last = i + 1 == parts.len();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ToolOutput::error(format!("`{given}` does not exist in /workspace/group"))
            }
            _ => ToolOutput::error(format!("cannot look at `{given}`: {e}")),
        })?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(ToolOutput::error(format!(
                "`{given}` goes through a symbolic link ({}); only regular files in the group folder can be sent (copy the file there)",
                parts[..=i].join("/")
            )));
        }
        if !last {
            if !kind.is_dir() {
                return Err(ToolOutput::error(format!(
                    "`{given}`: {} is not a folder",
                    parts[..=i].join("/")
                )));
            }
            continue;
        }
        if kind.is_dir() {
            return Err(ToolOutput::error(format!(
                "`{given}` is a folder: send one file (pack a folder with tar or zip first)"
            )));
        }
        if kind.is_fifo() || kind.is_socket() || kind.is_block_device() || kind.is_char_device() {
            return Err(ToolOutput::error(format!(
                "`{given}` is not a regular file (a pipe, socket or device cannot be sent)"
            )));
        }
        if meta.len() == 0 {
            return Err(ToolOutput::error(format!("`{given}` is empty")));
        }
        if meta.len() > MAX_SEND_FILE_BYTES {
            return Err(ToolOutput::error(format!(
                "`{given}` is {}; at most {} can be sent (compress or split it)",
                human_size(meta.len()),
                human_size(MAX_SEND_FILE_BYTES)
            )));
        }
        return Ok(meta.len());
    }
    Err(ToolOutput::error(format!("`{given}` names no file")))
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{} KB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_ctx::ctx;
    use super::*;

    fn refused(c: &ToolContext, path: &str) -> String {
        match request(&json!({"path": path}), c) {
            Err(e) => {
                assert!(e.is_error);
                e.content
            }
            Ok((r, _)) => panic!("{path} was accepted: {r:?}"),
        }
    }

    #[test]
    fn only_regular_files_in_the_group_folder_are_taken() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = ctx(dir.path());
        let w = &c.workdir;
        std::fs::create_dir_all(w.join("out")).expect("mkdir");
        std::fs::write(w.join("out/report.pdf"), vec![7u8; 3000]).expect("write");
        std::fs::write(w.join("empty.txt"), b"").expect("write");
        let outside = tempfile::tempdir().expect("temp dir");
        std::fs::write(outside.path().join("secret.txt"), b"secret").expect("write");
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), w.join("link.txt"))
            .expect("symlink");
        std::os::unix::fs::symlink(outside.path(), w.join("up")).expect("symlink");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            w.join("pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let big = std::fs::File::create(w.join("big.bin")).expect("create");
        big.set_len(MAX_SEND_FILE_BYTES + 1).expect("sparse file");

        let (req, done) =
            request(&json!({"path": "out/report.pdf", "caption": " Q3 "}), &c).expect("sent");
        assert_eq!(
            req,
            IpcRequest::File {
                chat_jid: "tg:1".into(),
                path: "out/report.pdf".into(),
                caption: Some("Q3".into()),
            }
        );
        assert!(done.contains("out/report.pdf (2 KB)"), "{done}");
        let absolute = w.join("out/report.pdf");
        let (req, _) = request(&json!({"path": absolute.to_str()}), &c).expect("sent");
        assert!(matches!(req, IpcRequest::File { path, .. } if path == "out/report.pdf"));

        assert!(refused(&c, "link.txt").contains("symbolic link"));
        assert!(refused(&c, "up/secret.txt").contains("symbolic link (up)"));
        assert!(refused(&c, "../secret.txt").contains("`..`"));
        assert!(refused(&c, "/etc/passwd").contains("outside /workspace/group"));
        assert!(refused(&c, "pipe").contains("not a regular file"));
        assert!(refused(&c, "out").contains("is a folder"));
        assert!(refused(&c, "empty.txt").contains("is empty"));
        assert!(refused(&c, "big.bin").contains("at most 50.0 MB"));
        assert!(refused(&c, "missing.pdf").contains("does not exist"));
        assert!(refused(&c, "out/report.pdf/x").contains("not a folder"));
        let long = "x".repeat(MAX_CAPTION_CHARS + 1);
        assert!(
            request(&json!({"path": "out/report.pdf", "caption": long}), &c)
                .expect_err("long caption")
                .content
                .contains("send_message")
        );
    }
}
