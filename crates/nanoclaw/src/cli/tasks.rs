//! `nanoclaw tasks list|pause|resume|cancel`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{cell, daemon_endpoint, open_existing_store, print_table, runtime};
use crate::config::Config;
use crate::store::{ScheduledTask, TaskStatus};

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// List scheduled tasks
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Pause a task (it will not run until resumed)
    Pause { id: String },
    /// Resume a paused task
    Resume { id: String },
    /// Cancel a task for good (its run history is kept)
    Cancel { id: String },
}

pub fn run(config: &Config, command: TasksCommand) -> Result<ExitCode> {
    let store = open_existing_store(config)?;
    let (id, to, verb) = match command {
        TasksCommand::List { json } => {
            let tasks = store.tasks()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tasks)?);
            } else if tasks.is_empty() {
                println!("No scheduled tasks.");
            } else {
                let rows: Vec<Vec<String>> = tasks
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.group_folder.clone(),
                            format!("{} {}", t.schedule_type, t.schedule_value),
                            t.status.clone(),
                            t.next_run.clone().unwrap_or_else(|| "-".into()),
                            t.last_run.clone().unwrap_or_else(|| "-".into()),
                            cell(t.last_result.as_deref().unwrap_or("-"), 40),
                            cell(&t.prompt, 40),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ID",
                        "GROUP",
                        "SCHEDULE",
                        "STATUS",
                        "NEXT RUN",
                        "LAST RUN",
                        "LAST RESULT",
                        "PROMPT",
                    ],
                    &rows,
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        TasksCommand::Pause { id } => (id, TaskStatus::Paused, "Paused"),
        TasksCommand::Resume { id } => (id, TaskStatus::Active, "Resumed"),
        TasksCommand::Cancel { id } => (id, TaskStatus::Cancelled, "Cancelled"),
    };
    let task = match via_daemon(config, &id, to) {
        Some(result) => result?,
        None => store.set_task_status(&id, to)?,
    };
    println!(
        "{verb} task {} ({} {}).",
        task.id, task.schedule_type, task.schedule_value
    );
    Ok(ExitCode::SUCCESS)
}

/// Asks the running daemon to make the change, so its scheduler hears of it at once.
/// `None` when no daemon answers (the store is then changed directly).
fn via_daemon(config: &Config, id: &str, to: TaskStatus) -> Option<Result<ScheduledTask>> {
    let endpoint = daemon_endpoint(config).ok()?;
    let action = match to {
        TaskStatus::Active => "resume",
        TaskStatus::Paused => "pause",
        TaskStatus::Cancelled => "cancel",
    };
    let client = crate::tls::client()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .ok()?;
    let url = format!("{}/api/tasks/{}/{action}", endpoint.base_url, urlencode(id));
    let rt = runtime().ok()?;
    rt.block_on(async move {
        let response = client
            .post(url)
            .bearer_auth(&endpoint.token)
            .send()
            .await
            .ok()?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.ok()?;
        if status.is_success() {
            Some(serde_json::from_value::<ScheduledTask>(body).map_err(anyhow::Error::from))
        } else {
            let message = body["error"]
                .as_str()
                .unwrap_or("the daemon refused the change");
            Some(Err(anyhow::anyhow!("{message}")))
        }
    })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
