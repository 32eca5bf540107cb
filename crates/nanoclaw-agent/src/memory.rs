//! `memory_search` (issue 17): full-text search over what this group has said and kept,
//! ranked by BM25 (SQLite FTS5), answered with dated snippets.
//!
//! What is searched is only what the sandbox shows this group: its archived
//! conversations (`/workspace/group/conversations/*.md`, written by compaction), its
//! session transcripts (`~/.claude/nanoclaw/sessions/*.json`: every message the agent was
//! given, and its answers), and the memory files (`/workspace/group/CLAUDE.md`,
//! `/workspace/global/CLAUDE.md`). The index lives beside the transcripts, in the group's
//! own `~/.claude`, so no group's index can hold another's words: the host never mounts
//! one group's folders into another's sandbox. It is brought up to date before every
//! search, re-reading only files whose size or time changed.
//!
//! Self-contained (no other module of the agent), so the bench can include it.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use serde_json::Value;

/// Longest chunk indexed (a message or a section of an archive).
const MAX_CHUNK: usize = 2_000;
/// Results at most.
pub const MAX_LIMIT: usize = 20;
/// Files indexed at most (a group with more has them newest first).
const MAX_FILES: usize = 5_000;
/// Largest file indexed.
const MAX_FILE_BYTES: u64 = 32 << 20;

/// Where the group's searchable things are.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `/workspace/group`.
    pub group: PathBuf,
    /// `/workspace/global`.
    pub global: PathBuf,
    /// `~/.claude/nanoclaw/sessions`.
    pub sessions: PathBuf,
    /// The index database.
    pub index: PathBuf,
}

/// One searchable file and how its chunks are dated and shown.
struct Source {
    path: PathBuf,
    /// How the result names it (the path the agent sees).
    label: String,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    Archive,
    Session,
    Memory,
}

impl Sources {
    fn list(&self) -> Vec<Source> {
        let mut out = Vec::new();
        for (dir, label, kind, ext) in [
            (
                self.group.join("conversations"),
                "/workspace/group/conversations",
                Kind::Archive,
                "md",
            ),
            (
                self.sessions.clone(),
                "~/.claude/nanoclaw/sessions",
                Kind::Session,
                "json",
            ),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .map(|e| {
                    let when = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    (when, e.path())
                })
                .collect();
            files.sort_by_key(|f| std::cmp::Reverse(f.0));
            for (_, path) in files.into_iter().take(MAX_FILES) {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                out.push(Source {
                    label: format!("{label}/{name}"),
                    path,
                    kind,
                });
            }
        }
        for (path, label) in [
            (self.group.join("CLAUDE.md"), "/workspace/group/CLAUDE.md"),
            (self.global.join("CLAUDE.md"), "/workspace/global/CLAUDE.md"),
        ] {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                out.push(Source {
                    path,
                    label: label.into(),
                    kind: Kind::Memory,
                });
            }
        }
        out
    }
}

fn open(index: &Path) -> Result<Connection, String> {
    if let Some(dir) = index.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let db = Connection::open(index).map_err(|e| format!("cannot open the memory index: {e}"))?;
    db.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS files(path TEXT PRIMARY KEY, mtime INTEGER NOT NULL, size INTEGER NOT NULL);
         CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5(
             text, source UNINDEXED, date UNINDEXED, tokenize = 'porter unicode61');
         CREATE TABLE IF NOT EXISTS vectors(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
    )
    .map_err(|e| format!("cannot set up the memory index: {e}"))?;
    Ok(db)
}

/// `(date, text)` pieces of one file.
fn chunks(source: &Source, bytes: &[u8], modified: &str) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(bytes);
    match source.kind {
        Kind::Archive => {
            // Archives are named `{YYYY-MM-DD-HHMMSS}-{session}.md` when written.
            let name = source
                .path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let date = archive_date(&name).unwrap_or_else(|| modified.to_string());
            sections(&text)
                .into_iter()
                .map(|s| (date.clone(), s))
                .collect()
        }
        Kind::Memory => sections(&text)
            .into_iter()
            .map(|s| (modified.to_string(), s))
            .collect(),
        Kind::Session => session_chunks(&text, modified),
    }
}

/// `2026-10-01` from `2026-10-01-120000-s1.md`.
fn archive_date(name: &str) -> Option<String> {
    let date = name.get(..10)?;
    let ok = date.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        _ => b.is_ascii_digit(),
    });
    ok.then(|| date.to_string())
}

/// Text cut at headings and blank lines into pieces of at most [`MAX_CHUNK`] bytes.
fn sections(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for paragraph in text.split("\n\n") {
        let starts_section = paragraph.trim_start().starts_with('#');
        if !current.is_empty() && (starts_section || current.len() + paragraph.len() > MAX_CHUNK) {
            current.shrink_to_fit();
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push_str("\n\n");
        }
        current.push_str(paragraph);
        while current.len() > MAX_CHUNK {
            let mut cut = MAX_CHUNK;
            while !current.is_char_boundary(cut) {
                cut -= 1;
            }
            // A copy of the piece, then the rest moved down: no piece keeps the whole
            // buffer's capacity (a long paragraph would otherwise cost its square).
            out.push(current[..cut].to_string());
            current.drain(..cut);
        }
    }
    if !current.trim().is_empty() {
        current.shrink_to_fit();
        out.push(current);
    }
    out.retain(|c| !c.trim().is_empty());
    out
}

/// A session transcript's messages: each `<message …>` the agent was given (dated by its
/// `time`), and the assistant's answers.
fn session_chunks(text: &str, modified: &str) -> Vec<(String, String)> {
    let Ok(session) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for message in session["messages"].as_array().into_iter().flatten() {
        let assistant = message["role"] == "assistant";
        for block in message["content"].as_array().into_iter().flatten() {
            let Some(text) = block["text"].as_str() else {
                continue;
            };
            if assistant {
                for s in sections(text) {
                    out.push((modified.to_string(), format!("(assistant) {s}")));
                }
                continue;
            }
            let mut found = false;
            let mut rest = text;
            while let Some(start) = rest.find("<message ") {
                let Some(end) = rest[start..].find("</message>") else {
                    break;
                };
                let element = &rest[start..start + end];
                rest = &rest[start + end + "</message>".len()..];
                let Some(close) = element.find('>') else {
                    continue;
                };
                let attrs = &element[..close];
                let body = &element[close + 1..];
                let date = attr(attrs, "time")
                    .map(|t| t.chars().take(10).collect())
                    .unwrap_or_else(|| modified.to_string());
                let sender = attr(attrs, "sender").unwrap_or_default();
                for s in sections(&unescape(body)) {
                    out.push((date.clone(), format!("{sender}: {s}")));
                }
                found = true;
            }
            if !found {
                for s in sections(text) {
                    out.push((modified.to_string(), s));
                }
            }
        }
    }
    out
}

fn attr(attrs: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = attrs.find(&key)? + key.len();
    let end = attrs[start..].find('"')?;
    Some(unescape(&attrs[start..start + end]))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn file_stamp(meta: &std::fs::Metadata) -> (i64, i64) {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    (mtime, meta.len() as i64)
}

/// Brings the index up to date; returns how many files were (re)read.
pub fn refresh(sources: &Sources) -> Result<usize, String> {
    let mut db = open(&sources.index)?;
    let tx = db.transaction().map_err(|e| format!("memory index: {e}"))?;
    let err = |e: rusqlite::Error| format!("memory index: {e}");
    let listed = sources.list();
    let mut read = 0;
    let mut seen = std::collections::HashSet::new();
    for source in &listed {
        let key = source.path.to_string_lossy().to_string();
        seen.insert(key.clone());
        let Ok(meta) = std::fs::symlink_metadata(&source.path) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
            continue;
        }
        let (mtime, size) = file_stamp(&meta);
        let known: Option<(i64, i64)> = tx
            .query_row(
                "SELECT mtime, size FROM files WHERE path = ?1",
                params![key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        if known == Some((mtime, size)) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&source.path) else {
            continue;
        };
        let modified = jiff::Timestamp::from_nanosecond(mtime as i128)
            .map(|t| t.strftime("%Y-%m-%d").to_string())
            .unwrap_or_default();
        tx.execute(
            "DELETE FROM vectors WHERE id IN (SELECT rowid FROM chunks WHERE source = ?1)",
            params![source.label],
        )
        .map_err(err)?;
        tx.execute(
            "DELETE FROM chunks WHERE source = ?1",
            params![source.label],
        )
        .map_err(err)?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO chunks(text, source, date) VALUES (?1, ?2, ?3)")
                .map_err(err)?;
            for (date, text) in chunks(source, &bytes, &modified) {
                insert
                    .execute(params![text, source.label, date])
                    .map_err(err)?;
            }
        }
        tx.execute(
            "INSERT INTO files(path, mtime, size) VALUES (?1, ?2, ?3)
             ON CONFLICT(path) DO UPDATE SET mtime = excluded.mtime, size = excluded.size",
            params![key, mtime, size],
        )
        .map_err(err)?;
        read += 1;
    }
    // Files that are gone take their chunks with them.
    let gone: Vec<String> = {
        let mut q = tx.prepare("SELECT path FROM files").map_err(err)?;
        q.query_map([], |r| r.get::<_, String>(0))
            .map_err(err)?
            .filter_map(Result::ok)
            .filter(|p| !seen.contains(p))
            .collect()
    };
    for path in gone {
        if let Some(source) = label_of(sources, Path::new(&path)) {
            tx.execute(
                "DELETE FROM vectors WHERE id IN (SELECT rowid FROM chunks WHERE source = ?1)",
                params![source],
            )
            .map_err(err)?;
            tx.execute("DELETE FROM chunks WHERE source = ?1", params![source])
                .map_err(err)?;
        }
        tx.execute("DELETE FROM files WHERE path = ?1", params![path])
            .map_err(err)?;
    }
    tx.commit().map_err(err)?;
    Ok(read)
}

/// The label a file had when it was indexed.
fn label_of(sources: &Sources, path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().to_string();
    if path.starts_with(sources.group.join("conversations")) {
        Some(format!("/workspace/group/conversations/{name}"))
    } else if path.starts_with(&sources.sessions) {
        Some(format!("~/.claude/nanoclaw/sessions/{name}"))
    } else if path == sources.group.join("CLAUDE.md") {
        Some("/workspace/group/CLAUDE.md".into())
    } else if path == sources.global.join("CLAUDE.md") {
        Some("/workspace/global/CLAUDE.md".into())
    } else {
        None
    }
}

/// The FTS5 query for what a person typed: its words, any of them, ranked by BM25.
fn fts_query(query: &str) -> Option<String> {
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(32)
        .map(|w| format!("\"{}\"", w.to_lowercase()))
        .collect();
    (!words.is_empty()).then(|| words.join(" OR "))
}

/// One match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub date: String,
    pub source: String,
    pub snippet: String,
}

/// The best `limit` matches for `query`, after bringing the index up to date.
pub fn search(sources: &Sources, query: &str, limit: usize) -> Result<Vec<Hit>, String> {
    refresh(sources)?;
    let Some(fts) = fts_query(query) else {
        return Err("the query has no words to search for".into());
    };
    let db = open(&sources.index)?;
    let mut q = db
        .prepare(
            "SELECT date, source, snippet(chunks, 0, '[', ']', '…', 32)
             FROM chunks WHERE chunks MATCH ?1 ORDER BY bm25(chunks) LIMIT ?2",
        )
        .map_err(|e| format!("memory index: {e}"))?;
    let hits = q
        .query_map(params![fts, limit.clamp(1, MAX_LIMIT) as i64], |r| {
            Ok(Hit {
                date: r.get(0)?,
                source: r.get(1)?,
                snippet: r.get(2)?,
            })
        })
        .map_err(|e| format!("memory search: {e}"))?
        .filter_map(Result::ok)
        .collect();
    Ok(hits)
}

/// Chunks embedded per search at most (the rest on later searches), newest first.
pub const EMBED_PER_SEARCH: usize = 512;
/// Candidates each ranking gives the fusion.
const CANDIDATES: usize = 50;
/// Reciprocal rank fusion's constant (Cormack et al.): ranks matter less far down.
const RRF_K: f64 = 60.0;

/// Brings the index up to date and returns chunks that have no vector yet (newest
/// first, at most `max`), for the caller to embed.
pub fn unembedded(sources: &Sources, max: usize) -> Result<Vec<(i64, String)>, String> {
    refresh(sources)?;
    let db = open(&sources.index)?;
    let err = |e: rusqlite::Error| format!("memory index: {e}");
    let mut q = db
        .prepare(
            "SELECT rowid, text FROM chunks WHERE rowid NOT IN (SELECT id FROM vectors)
             ORDER BY rowid DESC LIMIT ?1",
        )
        .map_err(err)?;
    let rows = q
        .query_map(params![max as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(err)?
        .filter_map(Result::ok)
        .collect();
    Ok(rows)
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter().flat_map(|x| (x / norm).to_le_bytes()).collect()
}

fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Stores the vectors of chunks (unit length, so a dot product is their cosine). A
/// vector of another length than those stored (the model changed) starts over.
pub fn store_vectors(sources: &Sources, vectors: &[(i64, Vec<f32>)]) -> Result<(), String> {
    let mut db = open(&sources.index)?;
    let err = |e: rusqlite::Error| format!("memory index: {e}");
    let tx = db.transaction().map_err(err)?;
    if let Some((_, first)) = vectors.first() {
        let stored: Option<i64> = tx
            .query_row("SELECT length(v) FROM vectors LIMIT 1", [], |r| r.get(0))
            .ok();
        if stored.is_some_and(|len| len != (first.len() * 4) as i64) {
            tx.execute("DELETE FROM vectors", []).map_err(err)?;
        }
    }
    {
        let mut insert = tx
            .prepare_cached("INSERT OR REPLACE INTO vectors(id, v) VALUES (?1, ?2)")
            .map_err(err)?;
        for (id, v) in vectors {
            insert.execute(params![id, to_blob(v)]).map_err(err)?;
        }
    }
    tx.commit().map_err(err)
}

/// The best `limit` matches by words and by meaning together: BM25's and the query
/// vector's `CANDIDATES` best, fused by their ranks (reciprocal rank fusion), so a
/// chunk that says "automobile" is found for "car", and exact words still count.
pub fn hybrid(
    sources: &Sources,
    query: &str,
    query_vector: &[f32],
    limit: usize,
) -> Result<Vec<Hit>, String> {
    let db = open(&sources.index)?;
    let err = |e: rusqlite::Error| format!("memory index: {e}");
    let mut scores: std::collections::HashMap<i64, f64> = std::collections::HashMap::new();
    let mut snippets: std::collections::HashMap<i64, Hit> = std::collections::HashMap::new();
    if let Some(fts) = fts_query(query) {
        let mut q = db
            .prepare(
                "SELECT rowid, date, source, snippet(chunks, 0, '[', ']', '…', 32)
                 FROM chunks WHERE chunks MATCH ?1 ORDER BY bm25(chunks) LIMIT ?2",
            )
            .map_err(err)?;
        let rows = q
            .query_map(params![fts, CANDIDATES as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    Hit {
                        date: r.get(1)?,
                        source: r.get(2)?,
                        snippet: r.get(3)?,
                    },
                ))
            })
            .map_err(err)?;
        for (rank, (id, hit)) in rows.filter_map(Result::ok).enumerate() {
            *scores.entry(id).or_default() += 1.0 / (RRF_K + rank as f64 + 1.0);
            snippets.insert(id, hit);
        }
    }
    let q = to_blob(query_vector);
    let q = from_blob(&q);
    let mut by_meaning: Vec<(i64, f32)> = Vec::new();
    {
        let mut all = db.prepare("SELECT id, v FROM vectors").map_err(err)?;
        let rows = all
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(err)?;
        for (id, blob) in rows.filter_map(Result::ok) {
            let v = from_blob(&blob);
            if v.len() == q.len() {
                by_meaning.push((id, v.iter().zip(&q).map(|(a, b)| a * b).sum()));
            }
        }
    }
    by_meaning.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (rank, (id, _)) in by_meaning.iter().take(CANDIDATES).enumerate() {
        *scores.entry(*id).or_default() += 1.0 / (RRF_K + rank as f64 + 1.0);
    }
    let mut ranked: Vec<(i64, f64)> = scores.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut hits = Vec::new();
    for (id, _) in ranked.into_iter().take(limit.clamp(1, MAX_LIMIT)) {
        if let Some(hit) = snippets.remove(&id) {
            hits.push(hit);
            continue;
        }
        let found = db.query_row(
            "SELECT date, source, text FROM chunks WHERE rowid = ?1",
            params![id],
            |r| {
                Ok(Hit {
                    date: r.get(0)?,
                    source: r.get(1)?,
                    snippet: {
                        let text: String = r.get(2)?;
                        let cut: String = text.chars().take(240).collect();
                        if cut.len() < text.len() {
                            format!("{cut}…")
                        } else {
                            cut
                        }
                    },
                })
            },
        );
        if let Ok(hit) = found {
            hits.push(hit);
        }
    }
    Ok(hits)
}

/// The answer the model reads.
pub fn describe(query: &str, hits: &[Hit]) -> String {
    if hits.is_empty() {
        return format!("Nothing in this group's past matches {query:?}.");
    }
    let mut out = format!("{} matches for {query:?}, best first:\n", hits.len());
    for (i, h) in hits.iter().enumerate() {
        out.push_str(&format!(
            "\n{}. {} ({})\n   {}\n",
            i + 1,
            h.date,
            h.source,
            h.snippet.replace('\n', " ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &Path) -> Sources {
        let s = Sources {
            group: dir.join("group"),
            global: dir.join("global"),
            sessions: dir.join("home/.claude/nanoclaw/sessions"),
            index: dir.join("home/.claude/nanoclaw/memory.db"),
        };
        for d in [
            s.group.join("conversations"),
            s.global.clone(),
            s.sessions.clone(),
        ] {
            std::fs::create_dir_all(d).expect("dirs");
        }
        s
    }

    /// A tiny model of meaning for tests: one dimension per concept.
    fn meaning(text: &str) -> Vec<f32> {
        let t = text.to_lowercase();
        let concepts: [&[&str]; 3] = [
            &["car", "automobile", "vehicle"],
            &["dog", "puppy"],
            &["password", "wifi"],
        ];
        let mut v: Vec<f32> = concepts
            .iter()
            .map(|words| words.iter().filter(|w| t.contains(*w)).count() as f32)
            .collect();
        v.push(0.1);
        v
    }

    #[test]
    fn hybrid_ranking_finds_by_meaning_and_keeps_words() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = sources(dir.path());
        std::fs::write(
            s.group.join("conversations/2026-09-01-120000-a.md"),
            "# Conversation a\n\n## User\n\nI parked the automobile in the blue garage.\n\n## User\n\nThe puppy sleeps in the kitchen.",
        )
        .expect("archive");
        let pending = unembedded(&s, 100).expect("pending");
        assert!(pending.len() >= 2, "{pending:?}");
        let vectors: Vec<(i64, Vec<f32>)> =
            pending.iter().map(|(id, t)| (*id, meaning(t))).collect();
        store_vectors(&s, &vectors).expect("store");
        assert!(
            unembedded(&s, 100).expect("pending").is_empty(),
            "all embedded"
        );
        // Words alone find nothing for "car"; meaning does.
        assert!(search(&s, "car", 5).expect("search").is_empty());
        let hits = hybrid(&s, "where is my car?", &meaning("car"), 5).expect("hybrid");
        assert!(hits[0].snippet.contains("automobile"), "{hits:?}");
        // An exact word still ranks first.
        let hits = hybrid(&s, "kitchen", &meaning("kitchen"), 5).expect("hybrid");
        assert!(hits[0].snippet.contains("kitchen"), "{hits:?}");
        // A changed file loses its old vectors with its chunks.
        std::fs::write(
            s.group.join("conversations/2026-09-01-120000-a.md"),
            "# Conversation a\n\n## User\n\nNothing about vehicles now, only zebras.",
        )
        .expect("archive");
        // Its chunks (whose row ids SQLite reuses) need vectors again.
        let pending = unembedded(&s, 100).expect("pending");
        assert_eq!(pending.len(), 2, "{pending:?}");
        assert!(pending.iter().any(|(_, t)| t.contains("zebras")));
        let db = open(&s.index).expect("db");
        let orphans: i64 = db
            .query_row(
                "SELECT count(*) FROM vectors WHERE id NOT IN (SELECT rowid FROM chunks)",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(orphans, 0);
        // Another model (other dimensions) starts the vectors over.
        store_vectors(&s, &[(pending[0].0, vec![1.0, 0.0])]).expect("store");
        let kept: i64 = db
            .query_row("SELECT count(*) FROM vectors", [], |r| r.get(0))
            .expect("count");
        assert_eq!(kept, 1);
    }

    #[test]
    fn archives_sessions_and_memory_are_found_with_their_dates() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = sources(dir.path());
        std::fs::write(
            s.group.join("conversations/2026-10-01-120000-s1.md"),
            "# Conversation s1\n\n## User\n\nThe wifi password is tulip-42.\n\n## Andy\n\nNoted.",
        )
        .expect("archive");
        let session = serde_json::json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text":
                "<messages><message sender=\"Jo\" time=\"2026-11-20T10:00:00Z\">the plumber comes on &quot;Friday&quot;</message></messages>"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "I will remind you about the plumber."}]},
        ]});
        std::fs::write(s.sessions.join("s2.json"), session.to_string()).expect("session");
        std::fs::write(s.group.join("CLAUDE.md"), "Jo is allergic to peanuts.").expect("memory");

        let hits = search(&s, "what is the wifi password?", 5).expect("search");
        assert_eq!(hits[0].date, "2026-10-01");
        assert_eq!(
            hits[0].source,
            "/workspace/group/conversations/2026-10-01-120000-s1.md"
        );
        assert!(
            hits[0].snippet.contains("[password]") && hits[0].snippet.contains("tulip"),
            "{hits:?}"
        );
        let plumber = search(&s, "plumber", 5).expect("search");
        assert_eq!(plumber.len(), 2, "{plumber:?}");
        assert!(plumber.iter().any(|h| h.date == "2026-11-20"
            && h.snippet.contains("Jo: ")
            && h.snippet.contains("\"Friday\"")));
        assert!(
            search(&s, "peanut", 5).expect("search")[0]
                .source
                .ends_with("group/CLAUDE.md"),
            "porter stemming"
        );
        assert!(search(&s, "   ", 5).is_err());
        assert!(search(&s, "zebra", 5).expect("search").is_empty());
    }

    #[test]
    fn the_index_follows_changes_and_removals_reading_only_what_changed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = sources(dir.path());
        let a = s.group.join("conversations/2026-01-01-000000-a.md");
        std::fs::write(&a, "the boat is blue").expect("a");
        std::fs::write(
            s.group.join("conversations/2026-01-02-000000-b.md"),
            "the car is red",
        )
        .expect("b");
        assert_eq!(refresh(&s).expect("refresh"), 2);
        assert_eq!(refresh(&s).expect("refresh"), 0, "nothing changed");
        std::fs::write(&a, "the boat is green now").expect("a again");
        assert_eq!(refresh(&s).expect("refresh"), 1);
        assert!(search(&s, "blue", 5).expect("search").is_empty());
        assert_eq!(search(&s, "green", 5).expect("search").len(), 1);
        std::fs::remove_file(&a).expect("rm");
        assert!(search(&s, "green", 5).expect("search").is_empty());
        assert_eq!(search(&s, "car", 5).expect("search").len(), 1);
    }

    #[test]
    fn a_long_paragraph_costs_its_length_not_its_square() {
        let pieces = sections(&"x".repeat(1 << 20));
        assert_eq!(pieces.iter().map(String::len).sum::<usize>(), 1 << 20);
        assert!(
            pieces.iter().all(|p| p.capacity() <= MAX_CHUNK * 2),
            "a piece kept the whole buffer"
        );
    }

    #[test]
    fn long_text_is_cut_into_bounded_chunks() {
        let text = format!("# A\n\n{}\n\n# B\n\nshort", "word ".repeat(1_000));
        let pieces = sections(&text);
        assert!(
            pieces.iter().all(|p| p.len() <= MAX_CHUNK),
            "{:?}",
            pieces.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(pieces.len() >= 4);
        assert_eq!(
            archive_date("2026-10-01-120000-s1.md").as_deref(),
            Some("2026-10-01")
        );
        assert_eq!(archive_date("notes.md"), None);
    }
}
