//! `Read`, `Write`, `Edit`.

use std::io::{BufRead, BufReader, Read as _};

use serde_json::Value;

use super::{ToolContext, ToolOutput, optional_u64, string};

/// Lines returned when the model asks for no limit.
const DEFAULT_LINES: u64 = 2000;
/// Longest line shown; longer ones are cut.
const MAX_LINE_CHARS: usize = 2000;
/// Total text returned by one `Read`.
const MAX_READ_CHARS: usize = 100_000;
/// Bytes sniffed for a NUL to decide a file is binary.
const SNIFF: usize = 8192;
/// Largest file `Edit` works on.
const MAX_EDIT_BYTES: u64 = 10 << 20;

pub async fn read(input: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolOutput> {
    let path = ctx.resolve(string(input, "file_path")?);
    let offset = optional_u64(input, "offset")?.unwrap_or(1).max(1);
    let limit = optional_u64(input, "limit")?
        .unwrap_or(DEFAULT_LINES)
        .max(1);
    let meta = std::fs::metadata(&path)
        .map_err(|e| ToolOutput::error(format!("cannot read {}: {e}", path.display())))?;
    if meta.is_dir() {
        return Err(ToolOutput::error(format!(
            "{} is a directory; use Glob, or Bash with ls",
            path.display()
        )));
    }
    let mut file = std::fs::File::open(&path)
        .map_err(|e| ToolOutput::error(format!("cannot read {}: {e}", path.display())))?;
    let mut head = vec![0u8; SNIFF];
    let n = file
        .read(&mut head)
        .map_err(|e| ToolOutput::error(format!("cannot read {}: {e}", path.display())))?;
    if head[..n].contains(&0) {
        return Ok(ToolOutput::ok(format!(
            "{} is a binary file ({} bytes); its content is not shown. Use Bash (e.g. `file`, `xxd | head`) to inspect it.",
            path.display(),
            meta.len()
        )));
    }
    if meta.len() == 0 {
        return Ok(ToolOutput::ok(format!("{} is empty.", path.display())));
    }
    let file = std::fs::File::open(&path)
        .map_err(|e| ToolOutput::error(format!("cannot read {}: {e}", path.display())))?;
    let mut reader = BufReader::new(file);
    let mut out = String::new();
    let mut number: u64 = 0;
    let mut shown: u64 = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(ToolOutput::error(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        }
        number += 1;
        if number < offset {
            continue;
        }
        if shown == limit || out.len() > MAX_READ_CHARS {
            out.push_str(&format!(
                "… the file continues after line {}; read on with offset={}\n",
                number - 1,
                number
            ));
            return Ok(ToolOutput::ok(out));
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim_end_matches(['\n', '\r']);
        let line: String = if text.chars().count() > MAX_LINE_CHARS {
            format!(
                "{}… [line cut]",
                text.chars().take(MAX_LINE_CHARS).collect::<String>()
            )
        } else {
            text.to_string()
        };
        out.push_str(&format!("{number:>6}\t{line}\n"));
        shown += 1;
    }
    if shown == 0 {
        return Ok(ToolOutput::ok(format!(
            "{} has {number} lines; nothing at offset {offset}.",
            path.display()
        )));
    }
    Ok(ToolOutput::ok(out))
}

pub async fn write(input: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolOutput> {
    let path = ctx.resolve(string(input, "file_path")?);
    let content = string(input, "content")?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| ToolOutput::error(format!("cannot create {}: {e}", parent.display())))?;
    }
    std::fs::write(&path, content)
        .map_err(|e| ToolOutput::error(format!("cannot write {}: {e}", path.display())))?;
    Ok(ToolOutput::ok(format!(
        "Wrote {} bytes to {}.",
        content.len(),
        path.display()
    )))
}

pub async fn edit(input: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolOutput> {
    let path = ctx.resolve(string(input, "file_path")?);
    let old = string(input, "old_string")?;
    let new = string(input, "new_string")?;
    let replace_all = input["replace_all"].as_bool().unwrap_or(false);
    if old.is_empty() {
        return Err(ToolOutput::error(
            "`old_string` is empty; to create a file use Write",
        ));
    }
    if old == new {
        return Err(ToolOutput::error(
            "`old_string` and `new_string` are the same; nothing to change",
        ));
    }
    let meta = std::fs::metadata(&path)
        .map_err(|e| ToolOutput::error(format!("cannot edit {}: {e}", path.display())))?;
    if meta.len() > MAX_EDIT_BYTES {
        return Err(ToolOutput::error(format!(
            "{} is too large to edit ({} bytes)",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ToolOutput::error(format!(
            "cannot edit {} (not UTF-8 text?): {e}",
            path.display()
        ))
    })?;
    let count = text.matches(old).count();
    if count == 0 {
        return Err(ToolOutput::error(format!(
            "`old_string` was not found in {}; Read the file and copy the text exactly (whitespace included)",
            path.display()
        )));
    }
    if count > 1 && !replace_all {
        return Err(ToolOutput::error(format!(
            "`old_string` occurs {count} times in {}; include more surrounding text so it is unique, or set replace_all",
            path.display()
        )));
    }
    let updated = if replace_all {
        text.replace(old, new)
    } else {
        text.replacen(old, new, 1)
    };
    std::fs::write(&path, updated)
        .map_err(|e| ToolOutput::error(format!("cannot write {}: {e}", path.display())))?;
    Ok(ToolOutput::ok(format!(
        "Replaced {count} occurrence{} in {}.",
        if count == 1 { "" } else { "s" },
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::super::test_ctx::ctx;
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn write_then_read_with_line_numbers_and_offsets() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = ctx(dir.path());
        let w = write(
            &json!({"file_path": "sub/notes.txt", "content": "one\ntwo\nthree\n"}),
            &c,
        )
        .await
        .expect("write");
        assert!(!w.is_error);
        let r = read(&json!({"file_path": "sub/notes.txt"}), &c)
            .await
            .expect("read");
        assert_eq!(r.content, "     1\tone\n     2\ttwo\n     3\tthree\n");
        let part = read(
            &json!({"file_path": "sub/notes.txt", "offset": 2, "limit": 1}),
            &c,
        )
        .await
        .expect("read");
        assert!(
            part.content.starts_with("     2\ttwo\n") && part.content.contains("offset=3"),
            "{}",
            part.content
        );
        let missing = read(&json!({"file_path": "nope.txt"}), &c)
            .await
            .expect_err("missing");
        assert!(missing.is_error);
        let bad = read(&json!({"path": "x"}), &c)
            .await
            .expect_err("no file_path");
        assert!(bad.content.contains("`file_path` is required"));
    }

    #[tokio::test]
    async fn large_and_binary_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = ctx(dir.path());
        let big: String = (1..=5000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.path().join("big.txt"), &big).expect("write");
        let r = read(&json!({"file_path": "big.txt"}), &c)
            .await
            .expect("read");
        assert!(r.content.contains("  2000\tline 2000") && !r.content.contains("line 2001\n"));
        assert!(r.content.contains("offset=2001"), "tells how to continue");
        let long_line = "x".repeat(5000);
        std::fs::write(dir.path().join("long.txt"), &long_line).expect("write");
        let r = read(&json!({"file_path": "long.txt"}), &c)
            .await
            .expect("read");
        assert!(r.content.contains("[line cut]") && r.content.len() < 2100);
        std::fs::write(dir.path().join("blob.bin"), [0u8, 1, 2, 255, 0, 7]).expect("write");
        let r = read(&json!({"file_path": "blob.bin"}), &c)
            .await
            .expect("read");
        assert!(r.content.contains("binary file (6 bytes)"), "{}", r.content);
    }

    #[tokio::test]
    async fn edit_requires_a_unique_match_unless_replace_all() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = ctx(dir.path());
        std::fs::write(dir.path().join("f.txt"), "a b a").expect("write");
        let e = edit(
            &json!({"file_path": "f.txt", "old_string": "a", "new_string": "z"}),
            &c,
        )
        .await
        .expect_err("ambiguous");
        assert!(e.content.contains("occurs 2 times"), "{}", e.content);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f.txt")).expect("read"),
            "a b a",
            "unchanged"
        );
        edit(
            &json!({"file_path": "f.txt", "old_string": "a b", "new_string": "c d"}),
            &c,
        )
        .await
        .expect("unique");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f.txt")).expect("read"),
            "c d a"
        );
        edit(
            &json!({"file_path": "f.txt", "old_string": "c d a", "new_string": "x"}),
            &c,
        )
        .await
        .expect("whole");
        std::fs::write(dir.path().join("f.txt"), "a b a").expect("write");
        let r = edit(&json!({"file_path": "f.txt", "old_string": "a", "new_string": "z", "replace_all": true}), &c)
            .await
            .expect("all");
        assert!(r.content.contains("2 occurrences"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f.txt")).expect("read"),
            "z b z"
        );
        for (input, needle) in [
            (
                json!({"file_path": "f.txt", "old_string": "q", "new_string": "z"}),
                "not found",
            ),
            (
                json!({"file_path": "f.txt", "old_string": "", "new_string": "z"}),
                "empty",
            ),
            (
                json!({"file_path": "f.txt", "old_string": "z", "new_string": "z"}),
                "the same",
            ),
            (
                json!({"file_path": "none.txt", "old_string": "a", "new_string": "b"}),
                "cannot edit",
            ),
        ] {
            let e = edit(&input, &c).await.expect_err(needle);
            assert!(e.is_error && e.content.contains(needle), "{}", e.content);
        }
    }
}
