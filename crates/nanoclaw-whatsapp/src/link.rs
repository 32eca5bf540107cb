//! `nanoclaw whatsapp link|unlink`: linking this program as a device of the user's
//! WhatsApp account, and undoing it. (`status` is [`crate::store::linked_account`].)

use std::io::Write;
use std::time::Duration;

use qrcode::{Color, EcLevel, QrCode};

use crate::adapter::{Account, WaClient, WaEvent};
use crate::live::{Live, LiveConfig};

/// How long `link` waits, all told, for the phone (WhatsApp's QR codes run out sooner).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `unlink` waits to reach WhatsApp before it gives up on the server side.
pub const UNLINK_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `link` waits for WhatsApp's first answer before saying it is slow.
const SLOW_NOTICE: Duration = Duration::from_secs(15);
/// Modules of light margin around the code (the standard asks for 4).
const QUIET: usize = 4;

/// The QR code for `data` in half-block characters: each line of text holds two rows
/// of modules. `ansi` paints it black on white whatever the terminal's colours, which
/// phones need (most cannot read a code in inverted colours).
pub fn render_qr(data: &str, ansi: bool) -> Result<String, String> {
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::L)
        .map_err(|e| format!("cannot make a QR code of the link data: {e}"))?;
    let width = code.width();
    let colors = code.to_colors();
    let size = width + 2 * QUIET;
    let dark = |x: usize, y: usize| -> bool {
        x >= QUIET
            && y >= QUIET
            && x < QUIET + width
            && y < QUIET + width
            && colors[(y - QUIET) * width + (x - QUIET)] == Color::Dark
    };
    let mut out = String::new();
    for y in (0..size).step_by(2) {
        if ansi {
            out.push_str("\x1b[30;107m");
        }
        for x in 0..size {
            let top = dark(x, y);
            let bottom = y + 1 < size && dark(x, y + 1);
            // The characters draw the light modules; the dark ones are the background.
            let c = match (top, bottom) {
                (false, false) => '█',
                (false, true) => '▀',
                (true, false) => '▄',
                (true, true) => ' ',
            };
            out.push(c);
        }
        if ansi {
            out.push_str("\x1b[0m");
        }
        out.push('\n');
    }
    Ok(out)
}

/// How `link` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linked {
    /// Linked just now.
    New(Account),
    /// The store was linked already: nothing was done.
    Already(Account),
}

/// Links: shows QR codes (or the pairing code, with `phone`) on `out` as WhatsApp
/// issues them, until the phone accepts or `timeout` passes.
pub async fn link(
    config: LiveConfig,
    phone: Option<String>,
    ansi: bool,
    timeout: Duration,
    out: &mut (dyn Write + Send),
) -> Result<Linked, String> {
    if let Some(account) = crate::store::linked_account(&config.store)? {
        return Ok(Linked::Already(account));
    }
    let phone = phone.map(|p| normalize_phone(&p)).transpose()?;
    let (client, mut events) = Live::new(config.clone(), phone.clone());
    let said = |out: &mut (dyn Write + Send), text: &str| {
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    };
    client.start().await?;
    said(
        out,
        &format!("Connecting to WhatsApp ({})…\n", config.ws_url),
    );
    let mut last_trouble = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut paired: Option<Account> = None;
    // A code was shown; the slow-answer notice was given.
    let (mut shown, mut warned) = (false, false);
    let outcome = loop {
        let wait = if paired.is_some() {
            // Linked: the client reconnects with its new identity; give it a moment to
            // finish so the first real connection's keys are stored too.
            Duration::from_secs(20)
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()))
        } else if !shown && !warned {
            // Say so when WhatsApp does not answer (the client keeps retrying).
            SLOW_NOTICE.min(deadline.saturating_duration_since(tokio::time::Instant::now()))
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        let event = match tokio::time::timeout(wait, events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => break Err("the WhatsApp client stopped".to_string()),
            Err(_) => match paired.take() {
                Some(account) => break Ok(account),
                None if !shown && !warned && tokio::time::Instant::now() < deadline => {
                    warned = true;
                    said(
                        out,
                        &format!(
                            "No answer from WhatsApp yet; still trying (check the network, or WHATSAPP_WS_URL={}).\n",
                            config.ws_url
                        ),
                    );
                    continue;
                }
                None => {
                    break Err(format!(
                        "no phone linked within {} s; run the command again",
                        timeout.as_secs()
                    ));
                }
            },
        };
        match event {
            WaEvent::Qr { code, ttl } if phone.is_none() => {
                shown = true;
                let qr = match render_qr(&code, ansi) {
                    Ok(qr) => qr,
                    Err(e) => break Err(e),
                };
                said(
                    out,
                    &format!(
                        "\n{qr}\nOn your phone: WhatsApp → Settings → Linked devices → Link a device, \
                         and point the camera at this code (a new one comes in {} s).\n",
                        ttl.as_secs()
                    ),
                );
            }
            WaEvent::Qr { .. } => {}
            WaEvent::PairCode { code } => {
                shown = true;
                said(
                    out,
                    &format!(
                        "\nPairing code: {code}\n\nOn your phone: WhatsApp → Settings → Linked devices → \
                     Link a device → Link with phone number instead, and type the code.\n"
                    ),
                );
            }
            WaEvent::Paired { account } => {
                said(out, &format!("Linked as {}; finishing…\n", account.pn));
                paired = Some(account);
            }
            WaEvent::Connected { account } if paired.is_some() => break Ok(account),
            WaEvent::LinkFailed { reason } => break Err(format!("linking failed: {reason}")),
            WaEvent::LoggedOut { reason } | WaEvent::Locked { reason } => {
                break Err(format!("WhatsApp refused this device ({reason})"));
            }
            WaEvent::Stopped { reason } => break Err(format!("linking stopped: {reason}")),
            WaEvent::Disconnected { reason } if paired.is_none() && reason != last_trouble => {
                said(
                    out,
                    &format!("WhatsApp is not reachable ({reason}); retrying…\n"),
                );
                last_trouble = reason;
            }
            _ => {}
        }
    };
    client.stop().await;
    outcome.map(Linked::New)
}

/// Unlinks: logs this device out on WhatsApp's side when it can be reached, then
/// deletes the keys. `Ok(true)` when WhatsApp was told; `Ok(false)` when only the keys
/// were deleted (the phone still lists the device until the user removes it).
pub async fn unlink(config: LiveConfig, connect_timeout: Duration) -> Result<bool, String> {
    // A store that cannot be read is still deleted: unlink is how the user gets rid
    // of the keys, whatever state they are in.
    if matches!(crate::store::linked_account(&config.store), Ok(None)) {
        crate::store::delete(&config.store)?;
        return Ok(false);
    }
    let (client, mut events) = Live::new(config.clone(), None);
    let mut told = false;
    if client.start().await.is_ok() {
        let connected = tokio::time::timeout(connect_timeout, async {
            while let Some(event) = events.recv().await {
                match event {
                    WaEvent::Connected { .. } => return true,
                    WaEvent::LoggedOut { .. }
                    | WaEvent::Locked { .. }
                    | WaEvent::Stopped { .. } => return false,
                    _ => {}
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if connected {
            told = client.logout().await.is_ok();
        }
        client.stop().await;
    }
    crate::store::delete(&config.store)?;
    Ok(told)
}

/// A phone number as WhatsApp wants it for a pairing code: digits only, with the
/// country code (`+1 555 123-4567` → `15551234567`).
pub fn normalize_phone(text: &str) -> Result<String, String> {
    let digits: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.' | '+'))
        .collect();
    if digits.len() < 7 || digits.len() > 15 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "--phone {text:?} is not a phone number: give the account's number with its country code, like +15551234567"
        ));
    }
    Ok(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a rendered code back as a camera would: each character is two modules.
    fn decode(rendered: &str) -> String {
        let plain = rendered.replace("\x1b[30;107m", "").replace("\x1b[0m", "");
        let rows: Vec<Vec<char>> = plain.lines().map(|l| l.chars().collect()).collect();
        let (w, h) = (rows[0].len(), rows.len() * 2);
        let scale = 4;
        let light = |x: usize, y: usize| -> bool {
            let c = rows[y / 2][x];
            match (c, y % 2) {
                ('█', _) => true,
                (' ', _) => false,
                ('▀', 0) | ('▄', 1) => true,
                _ => false,
            }
        };
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(w * scale, h * scale, |x, y| {
            if light(x / scale, y / scale) { 255 } else { 0 }
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the picture");
        let (_, content) = grids[0].decode().expect("the code decodes");
        content
    }

    #[test]
    fn a_rendered_code_reads_back_as_its_data() {
        let data = "2@AbCdEfGh0123456789+/==,Z2hpamtsbW5vcHFyc3R1dnd4eXo=,YWJjZGVmZ2hpamtsbW5vcHFy,c2VjcmV0IGtleSBmb3IgdGVzdA==";
        for ansi in [false, true] {
            let rendered = render_qr(data, ansi).expect("rendered");
            assert_eq!(decode(&rendered), data, "ansi {ansi}");
        }
        let rendered = render_qr(data, true).expect("rendered");
        assert!(
            rendered
                .lines()
                .all(|l| l.starts_with("\x1b[30;107m") && l.ends_with("\x1b[0m")),
            "every line is painted black on white"
        );
    }

    #[test]
    fn phone_numbers_are_digits_with_a_country_code() {
        assert_eq!(
            normalize_phone("+1 (555) 123-4567").as_deref(),
            Ok("15551234567")
        );
        assert_eq!(
            normalize_phone("4915112345678").as_deref(),
            Ok("4915112345678")
        );
        for bad in ["", "12345", "phone", "+1 555 CALL NOW", "1234567890123456"] {
            let e = normalize_phone(bad).expect_err(bad);
            assert!(e.contains("country code"), "{e}");
        }
    }
}
