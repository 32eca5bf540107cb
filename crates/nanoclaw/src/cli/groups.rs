//! `nanoclaw groups list|add|remove`.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::{cell, open_existing_store, print_table};
use crate::config::Config;
use crate::layout::Layout;
use crate::store::{RegisteredGroup, Store};

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List registered groups
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Register a chat as a group the assistant works in
    Add {
        /// The chat's JID, e.g. tg:-1001234567890 or web:kitchen
        #[arg(long)]
        jid: String,
        /// A name for the group
        #[arg(long)]
        name: String,
        /// The group's folder under groups/ (letters, digits, _ and -; not `global`)
        #[arg(long)]
        folder: String,
        /// The trigger word [default: @ASSISTANT_NAME]
        #[arg(long)]
        trigger: Option<String>,
        /// Make this the main (admin) group; there can be only one
        #[arg(long)]
        main: bool,
        /// Answer every message, not only those starting with the trigger
        #[arg(long)]
        no_trigger: bool,
    },
    /// Unregister a group (its messages and folder are kept)
    Remove {
        #[arg(long)]
        jid: String,
    },
}

pub fn run(config: &Config, command: GroupsCommand) -> Result<ExitCode> {
    match command {
        GroupsCommand::List { json } => {
            let groups = open_existing_store(config)?.registered_groups()?;
            if json {
                let views: Vec<_> = groups.iter().map(RegisteredGroup::view).collect();
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else if groups.is_empty() {
                println!("No registered groups.");
            } else {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        let mut folder = g.folder.clone();
                        if g.folder().is_err() {
                            folder.push_str(" (invalid: never runs)");
                        }
                        vec![
                            g.jid.clone(),
                            cell(&g.name, 30),
                            folder,
                            g.trigger_pattern.clone(),
                            if g.is_main { "yes" } else { "" }.into(),
                            if g.needs_trigger() { "yes" } else { "no" }.into(),
                            g.added_at.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "JID",
                        "NAME",
                        "FOLDER",
                        "TRIGGER",
                        "MAIN",
                        "NEEDS TRIGGER",
                        "ADDED",
                    ],
                    &rows,
                );
            }
        }
        GroupsCommand::Add {
            jid,
            name,
            folder,
            trigger,
            main,
            no_trigger,
        } => {
            let group = crate::store::GroupRequest {
                jid: &jid,
                name: &name,
                folder: &folder,
                trigger: trigger.as_deref(),
                requires_trigger: !no_trigger,
                container_config: None,
                is_main: main,
            }
            .check(&config.default_trigger())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let folder = group.folder()?;
            let layout = Layout::new(&config.root);
            layout.create().with_context(|| {
                format!("cannot create the layout under {}", config.root.display())
            })?;
            let store = Store::open(&layout.db_path(), &config.assistant_name)?;
            store.register_group(&group)?;
            layout.create_group_dirs(&folder).with_context(|| {
                format!("registered, but cannot create the folders of {folder}")
            })?;
            println!(
                "Registered {} as `{}` (folder groups/{}){}.",
                group.jid,
                group.name,
                folder,
                if group.is_main {
                    ", the main group".to_string()
                } else if group.requires_trigger {
                    format!(
                        ", answering messages that start with {}",
                        group.trigger_pattern
                    )
                } else {
                    ", answering every message".to_string()
                }
            );
        }
        GroupsCommand::Remove { jid } => {
            let store = open_existing_store(config)?;
            match store.remove_group(&jid)? {
                Some(g) => println!(
                    "Unregistered {} (folder groups/{} and its messages are kept).",
                    g.jid, g.folder
                ),
                None => bail!(
                    "{jid} is not registered; `nanoclaw groups list` shows the registered groups"
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
