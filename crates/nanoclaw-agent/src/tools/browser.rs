//! The `Browser` tool: a real Chromium (see [`crate::browser`]) the model drives with
//! numbered elements. Every action that changes the page answers with a snapshot (the
//! page's readable text and its interactive elements, numbered `[n]` for `click` and
//! `type`), so "navigate and read" is one call.

use base64::Engine;
use serde_json::{Value, json};

use super::{ToolContext, ToolOutput, optional_u64, string};
use crate::browser::Browser;

/// How long a click, Enter or going back may take to start a navigation.
const AFTER_INPUT: std::time::Duration = std::time::Duration::from_millis(150);

/// The run's browser, started on first use.
static BROWSER: tokio::sync::Mutex<Option<Browser>> = tokio::sync::Mutex::const_new(None);

pub fn definition() -> Value {
    json!({"name": "Browser", "description": "A real web browser (headless Chromium, one per run, with this group's own cookies and logins). \
Actions: navigate {url}; snapshot; click {ref}; type {ref, text, submit?} (a select takes the option's text); scroll {direction: down|up}; \
screenshot {path?} (a PNG saved in /workspace/group); back; close. Every action but screenshot and close answers with a snapshot: \
the page's text and its interactive elements numbered [n], the numbers click and type take.",
           "input_schema": {"type": "object", "properties": {
               "action": {"type": "string", "enum": ["navigate", "snapshot", "click", "type", "scroll", "screenshot", "back", "close"]},
               "url": {"type": "string", "description": "navigate: http(s) URL"},
               "ref": {"type": "integer", "description": "click, type: the element's number from the last snapshot"},
               "text": {"type": "string", "description": "type: the text to enter"},
               "submit": {"type": "boolean", "description": "type: press Enter afterwards"},
               "direction": {"type": "string", "enum": ["down", "up"]},
               "path": {"type": "string", "description": "screenshot: where to save it, under /workspace/group"}},
               "required": ["action"]}})
}

/// The element numbered `n` in the last snapshot, as a JS expression (null if gone).
fn element(n: u64) -> String {
    format!("document.querySelector('[data-nc-ref=\"{n}\"]')")
}

/// Closes the run's browser, if any.
pub async fn close() {
    if let Some(browser) = BROWSER.lock().await.take() {
        browser.close().await;
    }
}

pub async fn run(input: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolOutput> {
    let action = string(input, "action")?;
    let mut slot = BROWSER.lock().await;
    if action == "close" {
        return Ok(ToolOutput::ok(match slot.take() {
            Some(browser) => {
                browser.close().await;
                "The browser is closed (its cookies stay in the group's profile)."
            }
            None => "No browser was open.",
        }));
    }
    if slot.is_none() {
        *slot = Some(
            Browser::start(&ctx.workdir)
                .await
                .map_err(ToolOutput::error)?,
        );
    }
    let Some(browser) = slot.as_mut() else {
        return Err(ToolOutput::error("the browser is not running"));
    };
    let result = act(browser, action, input, ctx).await;
    if let Err(e) = &result
        && e.content.contains("the browser connection failed")
    {
        // A crashed browser: the next action starts a new one.
        if let Some(b) = slot.take() {
            b.close().await;
        }
    }
    result
}

async fn act(
    browser: &mut Browser,
    action: &str,
    input: &Value,
    ctx: &ToolContext,
) -> Result<ToolOutput, ToolOutput> {
    let fail = ToolOutput::error;
    match action {
        "navigate" => {
            let url = string(input, "url")?.trim();
            let allowed = ["http://", "https://", "file://", "about:", "data:"];
            if !allowed.iter().any(|p| url.starts_with(p)) {
                return Err(fail(format!(
                    "`{url}` is not a web address; give an http:// or https:// URL"
                )));
            }
            let navigated = browser
                .page("Page.navigate", json!({"url": url}))
                .await
                .map_err(fail)?;
            if let Some(error) = navigated["errorText"].as_str().filter(|e| !e.is_empty()) {
                return Err(fail(format!("{url} could not be opened: {error}")));
            }
            browser.settle(std::time::Duration::ZERO).await;
        }
        "snapshot" => {}
        "click" => {
            let n = reference(input)?;
            let js = format!(
                "(() => {{ const el = {}; if (!el) return false; el.scrollIntoView({{block: 'center'}}); el.focus(); el.click(); return true; }})()",
                element(n)
            );
            found(browser.eval(&js).await.map_err(fail)?, n)?;
            browser.settle(AFTER_INPUT).await;
        }
        "type" => {
            let n = reference(input)?;
            let text = string(input, "text")?;
            let is_select = browser
                .eval(&format!(
                    "(() => {{ const el = {}; return el ? el.tagName === 'SELECT' : null; }})()",
                    element(n)
                ))
                .await
                .map_err(fail)?;
            if is_select.is_null() {
                found(Value::Bool(false), n)?;
            }
            if is_select == Value::Bool(true) {
                let js = format!(
                    "(() => {{ const el = {}; const want = {}; const o = [...el.options].find((o) => o.text.trim() === want || o.value === want); \
                     if (!o) return false; el.value = o.value; el.dispatchEvent(new Event('input', {{bubbles: true}})); \
                     el.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
                    element(n),
                    json!(text)
                );
                if browser.eval(&js).await.map_err(fail)? != Value::Bool(true) {
                    return Err(fail(format!(
                        "element {n} has no option \"{text}\"; the snapshot lists its options"
                    )));
                }
            } else {
                // Focus and empty it, then type as a person would (input events fire).
                let js = format!(
                    "(() => {{ const el = {}; el.scrollIntoView({{block: 'center'}}); el.focus(); \
                     if ('value' in el) {{ el.value = ''; el.dispatchEvent(new Event('input', {{bubbles: true}})); }} return true; }})()",
                    element(n)
                );
                browser.eval(&js).await.map_err(fail)?;
                browser
                    .page("Input.insertText", json!({"text": text}))
                    .await
                    .map_err(fail)?;
            }
            if input["submit"].as_bool() == Some(true) {
                for kind in ["keyDown", "keyUp"] {
                    let mut key = json!({"type": kind, "key": "Enter", "code": "Enter",
                                         "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13});
                    if kind == "keyDown" {
                        key["text"] = json!("\r");
                    }
                    browser
                        .page("Input.dispatchKeyEvent", key)
                        .await
                        .map_err(fail)?;
                }
                browser.settle(AFTER_INPUT).await;
            }
        }
        "scroll" => {
            let sign = match input["direction"].as_str() {
                Some("up") => "-",
                _ => "",
            };
            browser
                .eval(&format!(
                    "window.scrollBy(0, {sign}Math.round(innerHeight * 0.8))"
                ))
                .await
                .map_err(fail)?;
        }
        "back" => {
            browser.eval("history.back()").await.map_err(fail)?;
            browser.settle(AFTER_INPUT).await;
        }
        "screenshot" => return screenshot(browser, input, ctx).await,
        other => {
            return Err(fail(format!(
                "unknown action `{other}`: use navigate, snapshot, click, type, scroll, screenshot, back or close"
            )));
        }
    }
    snapshot(browser).await
}

fn reference(input: &Value) -> Result<u64, ToolOutput> {
    optional_u64(input, "ref")?.ok_or_else(|| {
        ToolOutput::error("`ref` is required: the element's number from the last snapshot")
    })
}

fn found(value: Value, n: u64) -> Result<(), ToolOutput> {
    if value == Value::Bool(true) {
        Ok(())
    } else {
        Err(ToolOutput::error(format!(
            "there is no element {n} on the page now (it changed): take a snapshot and use its numbers"
        )))
    }
}

/// The page described for the model.
async fn snapshot(browser: &mut Browser) -> Result<ToolOutput, ToolOutput> {
    let page = browser
        .eval(crate::browser::SNAPSHOT_JS)
        .await
        .map_err(ToolOutput::error)?;
    let mut out = format!(
        "Title: {}\nURL: {}\n",
        page["title"].as_str().unwrap_or(""),
        page["url"].as_str().unwrap_or("")
    );
    let (y, bottom) = (
        page["y"].as_u64().unwrap_or(0),
        page["bottom"].as_u64().unwrap_or(0),
    );
    if bottom > 0 {
        out.push_str(&format!("Scrolled {y} of {bottom} px.\n"));
    }
    out.push('\n');
    out.push_str(page["text"].as_str().unwrap_or(""));
    if page["cut"].as_bool() == Some(true) {
        out.push_str("\n[… the page's text goes on: scroll, or use WebFetch for all of it]");
    }
    let items: Vec<&str> = page["items"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if items.is_empty() {
        out.push_str("\n\nNo interactive elements.");
    } else {
        out.push_str("\n\nInteractive elements (click and type take their numbers):\n");
        out.push_str(&items.join("\n"));
    }
    Ok(ToolOutput::ok(out))
}

/// Saves a PNG of the visible page under the group folder.
async fn screenshot(
    browser: &mut Browser,
    input: &Value,
    ctx: &ToolContext,
) -> Result<ToolOutput, ToolOutput> {
    let fail = ToolOutput::error;
    let default = format!(
        "screenshots/screenshot-{}.png",
        jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S")
    );
    let given = input["path"].as_str().unwrap_or(&default);
    let relative = match std::path::Path::new(given).strip_prefix(&ctx.workdir) {
        Ok(rest) => rest.to_str().unwrap_or(given),
        Err(_) => given,
    };
    let parts = nanoclaw_protocol::ipc::group_file_components(relative).map_err(fail)?;
    let path = ctx.workdir.join(parts.join("/"));
    let shot = browser
        .page("Page.captureScreenshot", json!({"format": "png"}))
        .await
        .map_err(fail)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap_or(""))
        .map_err(|_| ToolOutput::error("the browser gave an unreadable screenshot"))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
    }
    std::fs::write(&path, &bytes)
        .map_err(|e| fail(format!("cannot save {}: {e}", path.display())))?;
    Ok(ToolOutput::ok(format!(
        "Saved a screenshot of the visible page to {} ({} KB); send_file sends it to the chat.",
        std::path::Path::new(nanoclaw_protocol::ipc::GROUP_DIR)
            .join(parts.join("/"))
            .display(),
        bytes.len() / 1024
    )))
}
