//! `Glob` and `Grep`, on ripgrep's crates (`ignore`, `globset`, `grep-searcher`):
//! `.gitignore` rules are honoured, hidden files included.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use grep_regex::RegexMatcher;
use grep_searcher::{BinaryDetection, SearcherBuilder, sinks::UTF8};
use serde_json::Value;

use super::{MAX_OUTPUT_CHARS, ToolContext, ToolOutput, string, truncate_middle};

const MAX_FILES: usize = 500;
const MAX_MATCHES: usize = 300;

fn matcher(pattern: &str, literal_separator: bool) -> Result<GlobMatcher, ToolOutput> {
    GlobBuilder::new(pattern)
        .literal_separator(literal_separator)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| ToolOutput::error(format!("`{pattern}` is not a valid glob: {e}")))
}

fn walk(root: &Path) -> ignore::Walk {
    ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(true)
        .require_git(false)
        .build()
}

fn search_root(input: &Value, ctx: &ToolContext) -> Result<PathBuf, ToolOutput> {
    let root = match input["path"].as_str() {
        Some(p) if !p.is_empty() => ctx.resolve(p),
        _ => ctx.workdir.clone(),
    };
    if !root.exists() {
        return Err(ToolOutput::error(format!(
            "{} does not exist",
            root.display()
        )));
    }
    Ok(root)
}

pub async fn glob(input: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolOutput> {
    let pattern = string(input, "pattern")?;
    let root = search_root(input, ctx)?;
    let m = matcher(pattern, true)?;
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for entry in walk(&root).filter_map(Result::ok) {
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let relative = entry.path().strip_prefix(&root).unwrap_or(entry.path());
        if m.is_match(relative) {
            let modified = entry
                .metadata()
                .ok()
                .and_then(|md| md.modified().ok())
                .unwrap_or(std::time::UNIX_EPOCH);
            found.push((modified, entry.path().to_path_buf()));
        }
    }
    if found.is_empty() {
        return Ok(ToolOutput::ok(format!(
            "No files under {} match `{pattern}`.",
            root.display()
        )));
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let total = found.len();
    let mut out: Vec<String> = found
        .into_iter()
        .take(MAX_FILES)
        .map(|(_, p)| p.display().to_string())
        .collect();
    if total > MAX_FILES {
        out.push(format!(
            "… and {} more; narrow the pattern",
            total - MAX_FILES
        ));
    }
    Ok(ToolOutput::ok(out.join("\n")))
}

pub async fn grep(input: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolOutput> {
    let pattern = string(input, "pattern")?;
    let root = search_root(input, ctx)?;
    let regex = RegexMatcher::new(pattern).map_err(|e| {
        ToolOutput::error(format!(
            "`{pattern}` is not a valid regular expression: {e}"
        ))
    })?;
    let filter = match input["glob"].as_str().filter(|g| !g.is_empty()) {
        Some(g) => Some((matcher(g, false)?, !g.contains('/'))),
        None => None,
    };
    let mut searcher = SearcherBuilder::new()
        .binary_detection(BinaryDetection::quit(0))
        .line_number(true)
        .build();
    let mut lines: Vec<String> = Vec::new();
    let mut truncated = false;
    for entry in walk(&root).filter_map(Result::ok) {
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        if let Some((m, by_name)) = &filter {
            let subject = if *by_name {
                path.file_name().map(Path::new).unwrap_or(path)
            } else {
                path.strip_prefix(&root).unwrap_or(path)
            };
            if !m.is_match(subject) {
                continue;
            }
        }
        let display = path.display().to_string();
        let _ = searcher.search_path(
            &regex,
            path,
            UTF8(|number, text| {
                if lines.len() >= MAX_MATCHES {
                    truncated = true;
                    return Ok(false);
                }
                lines.push(format!(
                    "{display}:{number}:{}",
                    text.trim_end_matches(['\n', '\r'])
                ));
                Ok(true)
            }),
        );
        if truncated {
            break;
        }
    }
    if lines.is_empty() {
        return Ok(ToolOutput::ok(format!(
            "No matches for `{pattern}` under {}.",
            root.display()
        )));
    }
    let mut out = lines.join("\n");
    if truncated {
        out.push_str(&format!(
            "\n… stopped after {MAX_MATCHES} matches; narrow the search"
        ));
    }
    Ok(ToolOutput::ok(truncate_middle(&out, MAX_OUTPUT_CHARS)))
}

#[cfg(test)]
mod tests {
    use super::super::test_ctx::ctx;
    use super::*;
    use serde_json::json;

    fn tree(dir: &Path) {
        for (path, text) in [
            ("notes/a.md", "hello world\nsecond line"),
            ("notes/deep/b.md", "Hello again"),
            ("src/main.rs", "fn main() { println!(\"hello\"); }"),
            (".hidden/c.md", "hello hidden"),
            ("ignored/d.md", "hello ignored"),
            (".gitignore", "ignored/\n"),
        ] {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        std::fs::write(dir.join("bin.dat"), b"hello\0binary").expect("write");
    }

    #[tokio::test]
    async fn glob_matches_relative_patterns_and_honours_gitignore() {
        let dir = tempfile::tempdir().expect("temp dir");
        tree(dir.path());
        let c = ctx(dir.path());
        let out = glob(&json!({"pattern": "**/*.md"}), &c)
            .await
            .expect("glob");
        for want in ["notes/a.md", "notes/deep/b.md", ".hidden/c.md"] {
            assert!(out.content.contains(want), "{want}: {}", out.content);
        }
        assert!(!out.content.contains("ignored/d.md"), "{}", out.content);
        let top = glob(&json!({"pattern": "*.md", "path": "notes"}), &c)
            .await
            .expect("glob");
        assert!(
            top.content.contains("a.md") && !top.content.contains("b.md"),
            "`*` stays in one folder"
        );
        let none = glob(&json!({"pattern": "*.xyz"}), &c).await.expect("glob");
        assert!(none.content.starts_with("No files"));
        assert!(glob(&json!({"pattern": "a{"}), &c).await.is_err());
    }

    #[tokio::test]
    async fn grep_finds_lines_with_numbers_and_filters_by_glob() {
        let dir = tempfile::tempdir().expect("temp dir");
        tree(dir.path());
        let c = ctx(dir.path());
        let out = grep(&json!({"pattern": "(?i)hello"}), &c)
            .await
            .expect("grep");
        assert!(
            out.content.contains("notes/a.md:1:hello world"),
            "{}",
            out.content
        );
        assert!(out.content.contains("b.md:1:Hello again"));
        assert!(!out.content.contains("bin.dat"), "binary files are skipped");
        assert!(
            !out.content.contains("ignored"),
            "gitignored files are skipped"
        );
        let md = grep(&json!({"pattern": "hello", "glob": "*.rs"}), &c)
            .await
            .expect("grep");
        assert!(
            md.content.contains("main.rs") && !md.content.contains(".md"),
            "{}",
            md.content
        );
        let bad = grep(&json!({"pattern": "("}), &c)
            .await
            .expect_err("bad regex");
        assert!(bad.content.contains("not a valid regular expression"));
    }
}
