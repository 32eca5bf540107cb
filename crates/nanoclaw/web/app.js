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

async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: {}, ...options };
  if (init.body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(init.body);
  }
  const response = await fetch(path, init);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) {
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
  for (const p of ["signin", "chat", "tasks", "status"]) {
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
  if (m.flagged) item.append(el("div", `flagged: ${m.flagged} (never shown to an agent)`, "flag"));
  return item;
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
    working.textContent = run && run.task_id ? `Running scheduled task ${run.task_id}…` : "The assistant is working…";
  } catch (_) { /* shown by api() */ }
}

function followEvents() {
  if (state.events) return;
  const source = new EventSource("/api/events");
  source.onmessage = (e) => {
    let event;
    try { event = JSON.parse(e.data); } catch (_) { return; }
    if (event.chat_jid === state.chat) {
      const item = messageItem({ is_bot_message: true, sender_name: "Assistant", content: event.text, timestamp: event.timestamp });
      $("messages").append(item);
      item.scrollIntoView({ block: "end" });
    }
    refreshWorking();
  };
  state.events = source;
}

async function send(e) {
  e.preventDefault();
  const box = $("compose-text");
  const text = box.value.trim();
  if (!text || !state.chat) return;
  try {
    await api("/api/messages", { method: "POST", body: { chat_jid: state.chat, sender: "web-ui", sender_name: "You", text } });
    box.value = "";
    $("messages").append(messageItem({ sender_name: "You", content: text, timestamp: new Date().toISOString() }));
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
    else if (page === "status") { show("status"); await loadStatus(); }
    else {
      show("chat");
      await loadChats();
      followEvents();
      const jid = arg ? decodeURIComponent(arg) : state.chat || "web:main";
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
  notice("Signed in.");
  return true;
}

async function start() {
  $("compose").addEventListener("submit", send);
  $("compose-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e);
  });
  $("sign-out").addEventListener("click", async () => {
    await fetch("/api/logout", { method: "POST", credentials: "same-origin" });
    if (state.events) state.events.close();
    state.events = null;
    showSignIn("Signed out.");
  });
  window.addEventListener("hashchange", route);
  state.statusTimer = setInterval(refreshWorking, 3000);
  if ((await signInFromLink()) === false) return;
  await route();
}

document.addEventListener("DOMContentLoaded", start);
