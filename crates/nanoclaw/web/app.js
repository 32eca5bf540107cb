// NanoClaw's web app: plain DOM code, no framework, nothing fetched from elsewhere.
// Everything shown comes from the daemon's JSON routes and is inserted as text, never
// as HTML, so a message can never become markup or script.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { chat: null, chats: [], events: null, statusTimer: null };

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function notice(text) {
  $("notice").textContent = text || "";
}

// The session's second secret lives in this origin's localStorage (port included), so
// other programs on 127.0.0.1, which the browser sends the cookie to, never see it.
const SECRET = "nanoclaw-session";
function authHeaders() {
  const secret = localStorage.getItem(SECRET);
  return secret ? { "x-nanoclaw-session": secret } : {};
}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", ...options, headers: { ...authHeaders(), ...(options.headers || {}) } };
  if (init.body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(init.body);
  }
  const response = await fetch(path, init);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) {
    localStorage.removeItem(SECRET);
    showSignIn((body && body.error) || "");
    throw new Error("not signed in");
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `HTTP ${response.status}`);
  }
  return body;
}

function when(stored) {
  const d = new Date(stored);
  return isNaN(d) ? String(stored || "") : d.toLocaleString();
}

function show(page) {
  for (const p of ["signin", "chat", "groups", "tasks", "usage", "runs", "status"]) {
    $(`page-${p}`).hidden = p !== page;
    const nav = $(`nav-${p}`);
    if (nav) {
      if (p === page) nav.setAttribute("aria-current", "page");
      else nav.removeAttribute("aria-current");
    }
  }
}

function showSignIn(why) {
  show("signin");
  $("sign-out").hidden = true;
  notice(why);
}

// ---- chat ----

async function loadChats() {
  state.chats = await api("/api/chats");
  const list = $("chat-list");
  list.replaceChildren();
  for (const chat of state.chats) {
    const item = el("li");
    const link = el("a", chat.name || chat.jid);
    link.href = `#/chat/${encodeURIComponent(chat.jid)}`;
    if (state.chat === chat.jid) link.setAttribute("aria-current", "true");
    const meta = el("span", `${chat.channel || chat.jid.split(":")[0]} · ${when(chat.last_message_time)}`, "meta");
    item.append(link, meta);
    list.append(item);
  }
  if (!state.chats.length) list.append(el("li", "No chats yet. Say something in web:main below.", "hint"));
}

function messageItem(m) {
  const mine = m.is_bot_message || m.is_from_me;
  const item = el("li", null, mine ? "msg assistant" : "msg user");
  const head = el("div", `${m.sender_name || m.sender} · ${when(m.timestamp)}`, "meta");
  item.append(head, el("div", m.content, "text"));
  if (m.file) item.append(fileButton(m.file));
  if (m.flagged) item.append(el("div", `flagged: ${m.flagged} (never shown to an agent)`, "flag"));
  return item;
}

// A file the assistant sent: fetched with the session header, saved under its name.
function fileButton(file) {
  const kb = Math.max(1, Math.round(file.size / 1024));
  const button = el("button", `Download ${file.name} (${kb} KB)`, "file");
  button.type = "button";
  button.addEventListener("click", async () => {
    try {
      const response = await fetch(file.url, { credentials: "same-origin", headers: authHeaders() });
      if (!response.ok) throw new Error(response.status === 404 ? "the file is no longer kept" : `HTTP ${response.status}`);
      const url = URL.createObjectURL(await response.blob());
      const a = document.createElement("a");
      a.href = url;
      a.download = file.name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) { notice(`Download failed: ${err.message}`); }
  });
  return button;
}

async function openChat(jid) {
  state.chat = jid;
  const chat = state.chats.find((c) => c.jid === jid);
  $("chat-title").textContent = chat ? `${chat.name || jid} (${jid})` : jid;
  const messages = await api(`/api/chats/${encodeURIComponent(jid)}/messages?limit=200`);
  const list = $("messages");
  list.replaceChildren(...messages.map(messageItem));
  list.lastElementChild && list.lastElementChild.scrollIntoView({ block: "end" });
  const writable = jid.startsWith("web:");
  $("compose").hidden = !writable;
  $("read-only").hidden = writable;
  await loadChats();
  await refreshWorking();
}

async function refreshWorking() {
  if (!state.chat) return;
  try {
    const status = await api("/api/status");
    const run = (status.queue.active || []).find((r) => r.chat_jid === state.chat);
    const working = $("chat-working");
    working.hidden = !run || run.idle;
    const doing = run && run.tool ? ` (running ${run.tool})` : "";
    working.textContent = run && run.task_id
      ? `Running scheduled task ${run.task_id}${doing}…`
      : `The assistant is working${doing}…`;
  } catch (_) { /* shown by api() */ }
}

function onEvent(data) {
  let event;
  try { event = JSON.parse(data); } catch (_) { return; }
  if (event.chat_jid === state.chat) {
    const item = messageItem({ is_bot_message: true, sender_name: "Assistant", content: event.text, timestamp: event.timestamp });
    if (event.file) item.append(fileButton(event.file));
    $("messages").append(item);
    item.scrollIntoView({ block: "end" });
  }
  refreshWorking();
}

// The event stream over fetch (EventSource cannot send the session header).
async function followEvents() {
  if (state.events || !localStorage.getItem(SECRET)) return;
  const controller = new AbortController();
  state.events = controller;
  try {
    const response = await fetch("/api/events", { credentials: "same-origin", headers: authHeaders(), signal: controller.signal });
    if (response.ok && response.body) {
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const chunk = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (data) onEvent(data);
        }
      }
    }
  } catch (_) { /* aborted or dropped */ }
  const mine = state.events === controller;
  if (mine) state.events = null;
  if (mine && !controller.signal.aborted) setTimeout(followEvents, 2000);
}

// A file goes as the body of its own request, the text with it as its caption.
async function sendFile(file, text) {
  const query = new URLSearchParams({ name: file.name, sender: "web-ui", sender_name: "You", text });
  const response = await fetch(`/api/chats/${encodeURIComponent(state.chat)}/files?${query}`, {
    method: "POST", credentials: "same-origin", headers: authHeaders(), body: file,
  });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
  return body;
}

async function send(e) {
  e.preventDefault();
  const box = $("compose-text");
  const picker = $("compose-file");
  const text = box.value.trim();
  const file = picker.files && picker.files[0];
  if ((!text && !file) || !state.chat) return;
  try {
    if (file) {
      const sent = await sendFile(file, text);
      picker.value = "";
      $("messages").append(messageItem({ sender_name: "You", content: `${text ? `${text}\n` : ""}[attachment: ${sent.path}]`, timestamp: new Date().toISOString() }));
    } else {
      await api("/api/messages", { method: "POST", body: { chat_jid: state.chat, sender: "web-ui", sender_name: "You", text } });
      $("messages").append(messageItem({ sender_name: "You", content: text, timestamp: new Date().toISOString() }));
    }
    box.value = "";
    notice("");
    setTimeout(refreshWorking, 300);
  } catch (err) {
    notice(`Not sent: ${err.message}`);
  }
}

// ---- tasks ----

async function loadTasks() {
  const tasks = await api("/api/tasks");
  const rows = $("task-rows");
  rows.replaceChildren();
  $("no-tasks").hidden = tasks.length > 0;
  for (const t of tasks) {
    const row = el("tr");
    row.append(
      el("td", t.group_folder),
      el("td", t.prompt),
      el("td", `${t.schedule_type} ${t.schedule_value}`),
      el("td", t.next_run ? when(t.next_run) : "—"),
      el("td", t.last_result || "—"),
      el("td", t.status),
    );
    const actions = el("td");
    const choices = t.status === "active" ? ["pause", "cancel"] : t.status === "paused" ? ["resume", "cancel"] : [];
    for (const action of choices) {
      const b = el("button", action[0].toUpperCase() + action.slice(1));
      b.type = "button";
      b.setAttribute("aria-label", `${action} task ${t.id}`);
      b.addEventListener("click", async () => {
        try {
          await api(`/api/tasks/${encodeURIComponent(t.id)}/${action}`, { method: "POST" });
          notice(`Task ${t.id}: ${action} done.`);
          await loadTasks();
        } catch (err) {
          notice(`Task ${t.id}: ${err.message}`);
        }
      });
      actions.append(b);
    }
    row.append(actions);
    rows.append(row);
  }
}

// ---- groups ----

function groupForm(g) {
  $("g-jid").value = g ? g.jid : "";
  $("g-jid").readOnly = !!g;
  $("g-name").value = g ? g.name : "";
  $("g-folder").value = g ? g.folder : "";
  $("g-trigger").value = g ? g.trigger : "";
  $("g-requires").checked = g ? g.requires_trigger !== false : true;
  $("g-main").checked = g ? !!g.is_main : false;
  const cfg = g && g.container_config;
  $("g-config").value = cfg ? (typeof cfg === "string" ? cfg : JSON.stringify(cfg)) : "";
  $("g-replace").value = g ? "1" : "";
  $("group-form-title").textContent = g ? `Edit ${g.jid}` : "Add a group";
  $("group-save").textContent = g ? "Save" : "Add";
  $("group-cancel").hidden = !g;
}

async function loadGroups() {
  const groups = await api("/api/groups");
  const rows = $("group-rows");
  rows.replaceChildren();
  for (const g of groups) {
    const row = el("tr");
    const cfg = g.container_config ? (typeof g.container_config === "string" ? g.container_config : JSON.stringify(g.container_config)) : "—";
    row.append(
      el("td", g.jid),
      el("td", g.name + (g.is_main ? " (main)" : "")),
      el("td", g.folder),
      el("td", g.requires_trigger === false ? `${g.trigger} (not needed)` : g.trigger),
      el("td", cfg),
    );
    const actions = el("td");
    const edit = el("button", "Edit");
    edit.type = "button";
    edit.setAttribute("aria-label", `edit ${g.jid}`);
    edit.addEventListener("click", () => { groupForm(g); $("g-name").focus(); });
    const remove = el("button", "Remove");
    remove.type = "button";
    remove.setAttribute("aria-label", `remove ${g.jid}`);
    remove.addEventListener("click", async () => {
      if (!confirm(`Unregister ${g.jid}? Its messages and folder are kept.`)) return;
      try {
        await api(`/api/groups/${encodeURIComponent(g.jid)}`, { method: "DELETE" });
        notice(`Removed ${g.jid}.`);
        await loadGroups();
      } catch (err) { notice(err.message); }
    });
    actions.append(edit, remove);
    row.append(actions);
    rows.append(row);
  }
}

async function saveGroup(e) {
  e.preventDefault();
  const raw = $("g-config").value.trim();
  if (raw) {
    try { JSON.parse(raw); } catch (err) { notice(`Container config is not JSON: ${err.message}`); return; }
  }
  const body = {
    jid: $("g-jid").value.trim(), name: $("g-name").value, folder: $("g-folder").value.trim(),
    trigger: $("g-trigger").value, requires_trigger: $("g-requires").checked, is_main: $("g-main").checked,
    container_config: raw || null, replace: $("g-replace").value === "1",
  };
  try {
    const g = await api("/api/groups", { method: "POST", body });
    notice(`Saved ${g.jid} (folder ${g.folder}).`);
    groupForm(null);
    await loadGroups();
  } catch (err) {
    notice(`Not saved: ${err.message}`);
  }
}

// ---- usage ----

async function loadUsage() {
  const u = await api("/api/usage?days=14");
  const rows = $("usage-rows");
  rows.replaceChildren();
  const chart = $("usage-chart");
  chart.replaceChildren();
  const max = Math.max(1, ...u.rows.map((r) => r.total_tokens));
  for (const r of u.rows.slice().reverse()) {
    const budget = r.day === u.today ? u.daily_budgets[r.group] : undefined;
    const tr = el("tr");
    rows.append(tr);
    tr.append(el("td", r.day), el("td", r.group), el("td", r.responses), el("td", r.total_tokens.toLocaleString()),
      el("td", budget ? `${budget.toLocaleString()}${r.total_tokens >= budget ? " (reached)" : ""}` : "—"));
  }
  for (const r of u.rows) {
    const bar = el("div", null, "bar");
    const fill = el("span", null, "fill");
    fill.style.width = `${Math.max(1, Math.round((100 * r.total_tokens) / max))}%`;
    bar.append(el("span", `${r.day} ${r.group}`, "label"), fill, el("span", r.total_tokens.toLocaleString(), "value"));
    chart.append(bar);
  }
  if (!u.rows.length) chart.append(el("p", "No model usage in the last 14 days.", "hint"));
}

// ---- runs ----

async function loadRuns() {
  const runs = await api("/api/runs");
  const rows = $("run-rows");
  rows.replaceChildren();
  $("run-log").hidden = true;
  for (const r of runs) {
    const tr = el("tr");
    const open = el("button", "Show");
    open.type = "button";
    open.setAttribute("aria-label", `show the log of ${r.file}`);
    open.addEventListener("click", async () => {
      const response = await fetch(`/api/runs/${encodeURIComponent(r.group)}/${encodeURIComponent(r.file)}`, { credentials: "same-origin", headers: authHeaders() });
      const log = $("run-log");
      log.textContent = response.ok ? await response.text() : `HTTP ${response.status}`;
      log.hidden = false;
      log.focus();
    });
    const td = el("td");
    td.append(open);
    tr.append(el("td", when(r.started)), el("td", r.group + (r.scheduled_task ? " (task)" : "")), el("td", r.outcome),
      el("td", r.duration_ms === null ? "—" : `${(r.duration_ms / 1000).toFixed(1)} s`), td);
    rows.append(tr);
  }
  if (!runs.length) {
    const tr = el("tr");
    const td = el("td", "No runs yet.", "hint");
    td.colSpan = 5;
    tr.append(td);
    rows.append(tr);
  }
}

// ---- status ----

async function loadStatus() {
  const s = await api("/api/status");
  const list = $("status-list");
  list.replaceChildren();
  const add = (term, value) => list.append(el("dt", term), el("dd", value));
  add("Assistant", `${s.assistant_name} (time zone ${s.timezone})`);
  add("Version", `${s.version}, up ${s.uptime_seconds} s`);
  add("Runner", s.runner.description + (s.runner.available ? "" : " — not available"));
  add("Runs", `${(s.queue.active || []).length} active of ${s.queue.max_concurrent}, ${(s.queue.waiting || []).length} waiting`);
  add("Store", `${s.registered_groups} groups, ${s.stored_messages} messages, ${s.undelivered_replies} replies not yet delivered`);
  add("Senders", s.sender_allowlist.description);
  for (const c of s.channels || []) {
    const cond = c.condition || {};
    add(`Channel ${c.name}`, [cond.state, cond.detail || cond.reason].filter(Boolean).join(": "));
  }
}

// ---- routing ----

async function route() {
  const hash = location.hash || "#/chat";
  const [, page, arg] = hash.split("/");
  try {
    if (page === "tasks") { show("tasks"); await loadTasks(); }
    else if (page === "groups") { show("groups"); await loadGroups(); }
    else if (page === "usage") { show("usage"); await loadUsage(); }
    else if (page === "runs") { show("runs"); await loadRuns(); }
    else if (page === "status") { show("status"); await loadStatus(); }
    else {
      show("chat");
      await loadChats();
      followEvents();
      let jid = arg ? decodeURIComponent(arg) : state.chat || "web:main";
      if (!jid.includes(":")) jid = "web:main";
      await openChat(jid);
    }
    $("sign-out").hidden = false;
    if ($("notice").textContent.startsWith("Signed in")) setTimeout(() => notice(""), 3000);
  } catch (err) {
    if (err.message !== "not signed in") notice(err.message);
  }
}

async function signInFromLink() {
  if (location.pathname !== "/login") return;
  const code = location.hash.slice(1);
  history.replaceState(null, "", "/#/chat");
  if (!code) { showSignIn("This link has no sign-in code: run `nanoclaw ui` again."); return false; }
  const response = await fetch("/api/session", {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json" }, body: JSON.stringify({ code }),
  });
  if (!response.ok) {
    let body = {};
    try { body = await response.json(); } catch (_) { body = {}; }
    showSignIn(body.error || `Sign-in failed (HTTP ${response.status}).`);
    return false;
  }
  const body = await response.json();
  localStorage.setItem(SECRET, body.session);
  notice("Signed in.");
  return true;
}

async function start() {
  $("compose").addEventListener("submit", send);
  $("group-form").addEventListener("submit", saveGroup);
  $("group-cancel").addEventListener("click", () => groupForm(null));
  $("compose-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e);
  });
  $("sign-out").addEventListener("click", async () => {
    await fetch("/api/logout", { method: "POST", credentials: "same-origin", headers: authHeaders() });
    localStorage.removeItem(SECRET);
    if (state.events) state.events.abort();
    state.events = null;
    showSignIn("Signed out.");
  });
  window.addEventListener("hashchange", route);
  state.statusTimer = setInterval(refreshWorking, 3000);
  if ((await signInFromLink()) === false) return;
  await route();
}

document.addEventListener("DOMContentLoaded", start);
