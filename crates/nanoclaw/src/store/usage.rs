//! Token usage per group and run, recorded by the credential proxy.

use rusqlite::params;
use serde::Serialize;

use super::{Store, StoreError, WithContext};

/// The usage of one model response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
}

impl Usage {
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

/// A stored usage row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub group_folder: String,
    pub run_id: String,
    pub model: Option<String>,
    #[serde(flatten)]
    pub usage: Usage,
    pub created_at: String,
}

impl Store {
    pub fn record_usage(
        &self,
        group_folder: &str,
        run_id: &str,
        model: Option<&str>,
        usage: &Usage,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO token_usage (group_folder, run_id, model, input_tokens, output_tokens,
                     cache_read_tokens, cache_write_tokens, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    group_folder,
                    run_id,
                    model,
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cache_read_tokens,
                    usage.cache_write_tokens,
                    crate::clock::now()
                ],
            )
            .ctx("recording token usage")?;
        Ok(())
    }

    /// Tokens of every kind `group_folder` used at or after `since` (a stored timestamp).
    pub fn group_tokens_since(&self, group_folder: &str, since: &str) -> Result<u64, StoreError> {
        self.conn()
            .query_row(
                "SELECT COALESCE(SUM(input_tokens + output_tokens + cache_read_tokens + cache_write_tokens), 0)
                 FROM token_usage WHERE created_at >= ?1 AND group_folder = ?2",
                params![since, group_folder],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .ctx("reading a group's token usage")
    }

    /// Tokens of every kind one run used.
    pub fn run_tokens(&self, run_id: &str) -> Result<u64, StoreError> {
        self.conn()
            .query_row(
                "SELECT COALESCE(SUM(input_tokens + output_tokens + cache_read_tokens + cache_write_tokens), 0)
                 FROM token_usage WHERE run_id = ?1",
                params![run_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .ctx("reading a run's token usage")
    }

    /// Rows recorded at or after `since` (a stored timestamp), oldest first.
    pub fn usage_since(&self, since: &str) -> Result<Vec<UsageRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT group_folder, run_id, model, input_tokens, output_tokens, cache_read_tokens,
                        cache_write_tokens, created_at
                 FROM token_usage WHERE created_at >= ?1 ORDER BY created_at, id",
            )
            .ctx("preparing the usage query")?;
        let rows = stmt
            .query_map(params![since], |r| {
                Ok(UsageRow {
                    group_folder: r.get(0)?,
                    run_id: r.get(1)?,
                    model: r.get(2)?,
                    usage: Usage {
                        input_tokens: r.get(3)?,
                        output_tokens: r.get(4)?,
                        cache_read_tokens: r.get(5)?,
                        cache_write_tokens: r.get(6)?,
                    },
                    created_at: r.get(7)?,
                })
            })
            .ctx("reading token usage")?;
        rows.collect::<Result<_, _>>().ctx("reading token usage")
    }
}
