//! `nanoclaw whatsapp link|status|unlink` (SPEC §13.4).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::channels::whatsapp::{self, link::Linked};
use crate::config::Config;
use crate::layout::Layout;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum WhatsAppCommand {
    /// Link this program as a device of your WhatsApp (a QR code to scan, or a pairing code)
    Link {
        /// Link with a pairing code for this number (with its country code) instead of a QR code
        #[arg(long, value_name = "NUMBER")]
        phone: Option<String>,
        /// Make the self-chat ("message yourself") the main group without asking, when
        /// the main group is still web:main
        #[arg(long)]
        main: bool,
    },
    /// Say whether WhatsApp is linked, and as whom
    Status,
    /// Log this device out of WhatsApp and delete its keys
    Unlink,
}

pub fn run(config: &Config, command: WhatsAppCommand) -> Result<ExitCode> {
    let store = Layout::new(&config.root).whatsapp_store();
    match command {
        WhatsAppCommand::Status => {
            match whatsapp::store::linked_account(&store) {
                Ok(None) => println!("not linked (run `nanoclaw whatsapp link`)"),
                Ok(Some(account)) => println!("linked as {}", describe(&account)),
                Err(e) => println!(
                    "not usable: {e} (`nanoclaw whatsapp unlink` deletes it; then link again)"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        WhatsAppCommand::Link { phone, main } => {
            let rt = super::runtime()?;
            let mut out = std::io::stdout();
            let ansi = out.is_terminal();
            let linked = rt
                .block_on(whatsapp::link::link(
                    crate::channels::whatsapp_config(config),
                    phone,
                    ansi,
                    whatsapp::link::LINK_TIMEOUT,
                    &mut out,
                ))
                .map_err(anyhow::Error::msg)?;
            let account = match linked {
                Linked::Already(account) => {
                    println!(
                        "Already linked as {}; `nanoclaw whatsapp unlink` first to link another account.",
                        describe(&account)
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                Linked::New(account) => account,
            };
            println!("Linked as {}.", describe(&account));
            offer_main(config, &account, main)?;
            if super::status::daemon_status(config).is_some() {
                println!(
                    "The assistant is running: restart it (`nanoclaw service` or stop and `nanoclaw run`) to connect WhatsApp."
                );
            } else {
                println!("`nanoclaw run` connects WhatsApp.");
            }
            let _ = out.flush();
            Ok(ExitCode::SUCCESS)
        }
        WhatsAppCommand::Unlink => {
            if matches!(whatsapp::store::linked_account(&store), Ok(None)) && !store.exists() {
                println!("not linked; nothing to do");
                return Ok(ExitCode::SUCCESS);
            }
            let rt = super::runtime()?;
            let told = rt
                .block_on(whatsapp::link::unlink(
                    crate::channels::whatsapp_config(config),
                    whatsapp::link::UNLINK_CONNECT_TIMEOUT,
                ))
                .map_err(anyhow::Error::msg)?;
            if told {
                println!("Unlinked: WhatsApp logged this device out, and its keys are deleted.");
            } else {
                println!(
                    "Keys deleted, but WhatsApp could not be reached to log the device out: \
                     remove \"{}\" under Linked devices on your phone.",
                    whatsapp::live::DEVICE_NAME
                );
            }
            if super::status::daemon_status(config).is_some() {
                println!("The assistant is running: restart it so it stops using WhatsApp.");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn describe(account: &whatsapp::adapter::Account) -> String {
    let number = account.pn.split('@').next().unwrap_or(&account.pn);
    if account.push_name.trim().is_empty() {
        format!("+{number}")
    } else {
        format!("+{number} ({})", account.push_name.trim())
    }
}

/// When the main group is still the web chat the first start made, offers to make the
/// self-chat the main group (its folder, memory and settings move with it).
fn offer_main(config: &Config, account: &whatsapp::adapter::Account, yes: bool) -> Result<()> {
    let path = Layout::new(&config.root).db_path();
    if !path.exists() {
        return Ok(());
    }
    let store = Store::open(&path, &config.assistant_name)?;
    let Some(main) = store.main_group()? else {
        return Ok(());
    };
    if main.jid != "web:main" {
        return Ok(());
    }
    let yes = yes
        || {
            if !std::io::stdin().is_terminal() {
                println!(
                    "Your main group is the web chat; `nanoclaw whatsapp link --main` would make \
                 your WhatsApp self-chat (\"message yourself\") the main group instead."
                );
                return Ok(());
            }
            print!(
                "Make your WhatsApp self-chat (\"message yourself\") the main group instead of the web chat? [y/N] "
            );
            let _ = std::io::stdout().flush();
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
        };
    if !yes {
        return Ok(());
    }
    match store.move_main("web:main", &account.pn, "WhatsApp (me)") {
        Ok(()) => println!(
            "The self-chat {} is the main group now (folder groups/{}); web:main is no longer registered.",
            account.pn, main.folder
        ),
        Err(e) => bail!("linked, but the main group stays web:main: {e}"),
    }
    Ok(())
}
