//! A small mutational fuzzer for the parsers that read what arrives from outside (IPC
//! files, `.env`, allowlists, `container_config`, SSE, platform payloads, the prompt
//! formatter, the text splitter), run as ordinary `#[test]`s on the stable toolchain.
//!
//! Each target starts from its corpus (`fuzz/corpus/{target}/` at the top of the
//! repository: real inputs and every input that ever broke it), runs each file as it is,
//! then mutates them (bytes, and for JSON the parsed tree) for a bounded time:
//! `NANOCLAW_FUZZ_SECONDS` (default 2; longer on demand). An input that makes the check
//! panic is saved under `fuzz/crashes/{target}/` and fails the test, naming the file: it
//! then belongs in the corpus (so it is replayed on every run) and in a unit test.
//!
//! It is blind (no coverage feedback): decisions.md §47 says why, and what it trades.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository's `fuzz/` directory.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// How the inputs of a target are shaped, which picks the mutations that reach deep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Any bytes (text formats: `.env`, SSE, prompts).
    Bytes,
    /// JSON documents: the parsed tree is mutated as well as the bytes.
    Json,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: String,
    pub executions: u64,
    pub seeds: usize,
    pub elapsed: Duration,
}

/// A xorshift generator: fast, reproducible from its seed, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Runs `check` on the target's corpus and on mutations of it for the configured time.
/// `dictionary` holds tokens of the format (`"<internal>"`, `"\r\n"`, `"export "`) that
/// blind byte flips would rarely produce.
pub fn fuzz(target: &str, shape: Shape, dictionary: &[&str], check: impl Fn(&[u8])) -> Report {
    let seconds = std::env::var("NANOCLAW_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(2.0);
    let corpus = load_corpus(target);
    let started = Instant::now();
    let mut executions = 0u64;
    let run = |input: &[u8], executions: &mut u64| {
        *executions += 1;
        if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
            let saved = save_crash(target, input);
            panic!(
                "fuzz target `{target}` failed on the input saved at {} ({} bytes). Add it to fuzz/corpus/{target}/ and make it a unit test.",
                saved.display(),
                input.len()
            );
        }
    };
    for seed in &corpus {
        run(seed, &mut executions);
    }
    let time_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9);
    let mut rng = Rng::new(
        std::env::var("NANOCLAW_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(time_seed),
    );
    let until = started + Duration::from_secs_f64(seconds);
    let mut input = Vec::new();
    while Instant::now() < until {
        // A batch between clock reads.
        for _ in 0..64 {
            input.clear();
            input.extend_from_slice(&corpus[rng.below(corpus.len())]);
            let rounds = 1 + rng.below(6);
            for _ in 0..rounds {
                if shape == Shape::Json && rng.chance(2) {
                    mutate_json(&mut input, &mut rng, dictionary);
                } else {
                    mutate_bytes(&mut input, &mut rng, dictionary, &corpus);
                }
            }
            run(&input, &mut executions);
        }
    }
    let report = Report {
        target: target.to_string(),
        executions,
        seeds: corpus.len(),
        elapsed: started.elapsed(),
    };
    println!(
        "fuzz {}: {} executions in {:.1} s from {} corpus inputs",
        report.target,
        report.executions,
        report.elapsed.as_secs_f64(),
        report.seeds
    );
    report
}

fn load_corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut corpus: Vec<Vec<u8>> = files.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    corpus.push(Vec::new());
    corpus
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = fuzz_dir().join("crashes").join(target);
    let _ = std::fs::create_dir_all(&dir);
    // FNV-1a of the input: the same crash is saved once.
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let path = dir.join(format!("{hash:016x}"));
    let _ = std::fs::write(&path, input);
    path
}

const INTERESTING: [u8; 12] = [
    0, 1, 0x7f, 0x80, 0xff, b'\n', b'\r', b'"', b'\\', b'{', b'<', b' ',
];

/// One byte-level change: flip, set, insert, delete, duplicate, a dictionary token, or
/// a splice with another corpus input.
pub fn mutate_bytes(input: &mut Vec<u8>, rng: &mut Rng, dictionary: &[&str], corpus: &[Vec<u8>]) {
    let len = input.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 => {
            let i = rng.below(len + 1);
            input.insert(i, rng.next_u64() as u8);
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16)).min(len);
            input.drain(start..end);
        }
        4 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(64)).min(len);
            let piece = input[start..end].to_vec();
            let at = rng.below(input.len() + 1);
            let most = if rng.chance(8) { 200 } else { 3 };
            let times = 1 + rng.below(most);
            for _ in 0..times {
                input.splice(at..at, piece.iter().copied());
            }
        }
        5 | 6 if !dictionary.is_empty() => {
            let token = dictionary[rng.below(dictionary.len())].as_bytes();
            let at = rng.below(len + 1);
            input.splice(at..at, token.iter().copied());
        }
        7 if corpus.len() > 1 => {
            let other = &corpus[rng.below(corpus.len())];
            let keep = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            input.truncate(keep);
            input.extend_from_slice(&other[from..]);
        }
        _ => {
            // Multi-byte characters, cut anywhere.
            let chars = ["é", "€", "𝄞", "\u{feff}", "\u{2028}", "\u{0}", "\u{1b}[31m"];
            let c = chars[rng.below(chars.len())].as_bytes();
            let at = rng.below(len + 1);
            input.splice(at..at, c.iter().copied());
        }
    }
}

/// One change to the JSON tree: a value replaced by another of any type, a key added
/// or removed, an array grown or emptied. Input that is not JSON is left alone.
pub fn mutate_json(input: &mut Vec<u8>, rng: &mut Rng, dictionary: &[&str]) {
    let Ok(mut value) = serde_json::from_slice::<Value>(input) else {
        return;
    };
    let mut nodes = 0usize;
    count(&value, &mut nodes);
    let pick = rng.below(nodes.max(1));
    let mut seen = 0usize;
    change(&mut value, pick, &mut seen, rng, dictionary);
    if let Ok(bytes) = serde_json::to_vec(&value) {
        *input = bytes;
    }
}

fn count(v: &Value, n: &mut usize) {
    *n += 1;
    match v {
        Value::Array(items) => items.iter().for_each(|i| count(i, n)),
        Value::Object(map) => map.values().for_each(|i| count(i, n)),
        _ => {}
    }
}

fn change(
    v: &mut Value,
    pick: usize,
    seen: &mut usize,
    rng: &mut Rng,
    dictionary: &[&str],
) -> bool {
    if *seen == pick {
        match (rng.below(4), &mut *v) {
            (0, Value::Object(map)) if !map.is_empty() => {
                let keys: Vec<String> = map.keys().cloned().collect();
                map.remove(&keys[rng.below(keys.len())]);
            }
            (1, Value::Object(map)) => {
                let key = dictionary
                    .get(rng.below(dictionary.len().max(1)))
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| "x".into());
                map.insert(key, random_value(rng, dictionary));
            }
            (2, Value::Array(items)) => {
                if rng.chance(2) {
                    items.clear();
                } else {
                    let copy = items.first().cloned().unwrap_or(Value::Null);
                    for _ in 0..1 + rng.below(5) {
                        items.push(copy.clone());
                    }
                }
            }
            _ => *v = random_value(rng, dictionary),
        }
        return true;
    }
    *seen += 1;
    match v {
        Value::Array(items) => items
            .iter_mut()
            .any(|i| change(i, pick, seen, rng, dictionary)),
        Value::Object(map) => map
            .values_mut()
            .any(|i| change(i, pick, seen, rng, dictionary)),
        _ => false,
    }
}

fn random_value(rng: &mut Rng, dictionary: &[&str]) -> Value {
    match rng.below(10) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(2)),
        2 => Value::from(rng.next_u64() as i64),
        3 => Value::from([0.5, -1.0, 1e300, -0.0][rng.below(4)]),
        4 => {
            Value::from(["", " ", "..", "../x", "/etc/passwd", "~/", "\u{0}", "é€𝄞"][rng.below(8)])
        }
        5 => Value::from("x".repeat(1 + rng.below(5000))),
        6 => Value::Array(vec![]),
        7 => Value::Object(Default::default()),
        8 => Value::from(i64::MAX - rng.below(3) as i64),
        _ => Value::from(
            dictionary
                .get(rng.below(dictionary.len().max(1)))
                .copied()
                .unwrap_or("x"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_change_inputs_and_a_panicking_check_is_caught() {
        let mut rng = Rng::new(7);
        let corpus = vec![b"{\"a\": [1, 2]}".to_vec()];
        let mut changed = 0;
        for _ in 0..200 {
            let mut input = corpus[0].clone();
            mutate_bytes(&mut input, &mut rng, &["<x>"], &corpus);
            mutate_json(&mut input, &mut rng, &["key"]);
            changed += usize::from(input != corpus[0]);
        }
        assert!(changed > 150, "{changed}");
        // The corpus always holds the empty input: a check refusing it fails at once.
        let failed = catch_unwind(|| {
            fuzz("self-test", Shape::Bytes, &[], |input| {
                assert!(!input.is_empty())
            })
        });
        let dir = fuzz_dir().join("crashes/self-test");
        let saved = dir.join("cbf29ce484222325").exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            failed.is_err() && saved,
            "the failure is reported and its input kept"
        );
    }
}
