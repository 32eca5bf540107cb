//! `memory_search` by meaning (issue 17): with `EMBEDDINGS_URL` set, a real bwrap
//! agent's search is ranked by words and by meaning, its texts embedded through the
//! credential proxy, which adds the service's key (the sandbox never has it). A group
//! with a token budget searches by words only, and says so.

mod support;

use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Recorded, Reply};
use nanoclaw_test_support::fake_embeddings::FakeEmbeddings;
use serde_json::{Value, json};
use support::{open_store, wait_bot_texts};

const KEY: &str = "sk-embeddings-secret";

fn register(root: &std::path::Path, folder: &str, config: Option<Value>) {
    support::register_web_group(root, folder, config);
    let archive = root.join("groups").join(folder).join("conversations");
    std::fs::create_dir_all(&archive).expect("archive");
    std::fs::write(
        archive.join("2026-09-01-120000-old.md"),
        "# Conversation old\n\n## User\n\nI parked the automobile in the blue garage on Elm street.\n\n\
         ## User\n\nThe plumber comes on Friday.",
    )
    .expect("archive");
}

fn last_result(r: &Recorded) -> String {
    support::last_tool_result(r)["content"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_search_finds_by_meaning_through_the_proxy() {
    let llm = FakeAnthropic::start(vec![
        Reply::tool("memory_search", json!({"query": "where is my car?"})),
        Reply::text("In the blue garage."),
        Reply::tool("memory_search", json!({"query": "where is my car?"})),
        Reply::text("Words only."),
    ])
    .await;
    let embeddings = FakeEmbeddings::start(Some(KEY)).await;
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    register(root.path(), "team", None);
    register(
        root.path(),
        "thrifty",
        Some(json!({"budget": {"dailyTokens": 1000000}})),
    );
    let secrets = Secrets {
        anthropic_api_key: Some(Secret::new("sk-ant-hybrid")),
        embeddings_api_key: Some(Secret::new(KEY)),
        ..Default::default()
    };
    let (url, embed_url) = (llm.url.clone(), embeddings.url.clone());
    let d = support::start_sandboxed_daemon_in(
        root,
        RuntimeKind::Bwrap,
        None,
        secrets,
        vec![],
        move |c| {
            c.anthropic_base_url = url;
            c.embeddings_url = Some(embed_url);
        },
    )
    .await;
    d.api
        .send("web:team", "me", "Me", "where did I park?")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:team", 1).await,
        ["In the blue garage."]
    );
    let found = last_result(&llm.requests()[1]);
    assert!(
        found.contains("automobile in the blue garage") && !found.contains("words only"),
        "found by meaning, not by its words: {found}"
    );
    let asked = embeddings.requests();
    assert!(!asked.is_empty());
    for (model, _, auth) in &asked {
        assert_eq!(model, "text-embedding-3-small");
        assert_eq!(
            auth.as_deref(),
            Some(&*format!("Bearer {KEY}")),
            "the proxy's key"
        );
    }
    assert!(
        asked
            .iter()
            .any(|(_, inputs, _)| inputs.iter().any(|t| t.contains("automobile"))),
        "the archive was embedded: {asked:?}"
    );
    for r in llm.requests() {
        assert!(
            !r.all_text().contains(KEY),
            "the key never reaches the model log"
        );
    }
    // What embeddings cost is recorded for the group, beside its model tokens.
    let recorded = nanoclaw_test_support::wait_for(
        "embeddings usage recorded",
        nanoclaw_test_support::DEADLINE,
        || {
            let root = d.root().to_path_buf();
            async move {
                let rows = open_store(&root).usage_since("2000-01-01T00:00:00Z").ok()?;
                rows.into_iter().find(|r| {
                    r.group_folder == "team"
                        && r.model.as_deref() == Some("embeddings:text-embedding-3-small")
                })
            }
        },
    )
    .await;
    assert!(recorded.usage.input_tokens > 0, "{recorded:?}");

    d.api
        .send("web:thrifty", "me", "Me", "where did I park?")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:thrifty", 1).await,
        ["Words only."]
    );
    let words = last_result(&llm.requests()[3]);
    assert!(
        !words.contains("automobile"),
        "a budgeted group gets no embeddings: {words}"
    );
    assert_eq!(
        embeddings.requests().len(),
        asked.len(),
        "nothing embedded for it"
    );
    d.stop().await;
}
