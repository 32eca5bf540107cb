//! `nanoclaw tasks list|pause|resume|cancel`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{cell, open_existing_store, print_table};
use crate::config::Config;
use crate::store::TaskStatus;

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
    let task = store.set_task_status(&id, to)?;
    println!(
        "{verb} task {} ({} {}).",
        task.id, task.schedule_type, task.schedule_value
    );
    Ok(ExitCode::SUCCESS)
}
