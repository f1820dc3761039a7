// Scrim console: a page per hash route (#/sessions, #/sessions/<id>, #/reviews, #/grants,
// #/chain, #/usage). Every figure comes from the recorder's API (through /console/api, which
// adds the signed-in person's token); state-changing requests carry the session's CSRF token.
// Text from records is only ever set as text (never parsed as HTML), so nothing recorded can
// run in the page.
"use strict";

const PLACEHOLDER = /\[REDACTED:([A-Za-z0-9_.-]+)\]/g;
let me = null;
let events = null;
let refresh = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// Text with every placeholder shown as a marked span naming its rule.
function masked(text) {
  const out = [];
  let at = 0;
  for (const m of String(text).matchAll(PLACEHOLDER)) {
    out.push(text.slice(at, m.index));
    out.push(el("mark", { class: "masked", "data-rule": m[1], title: `masked by rule ${m[1]}` }, m[0]));
    at = m.index + m[0].length;
  }
  out.push(String(text).slice(at));
  return out;
}

function when(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

function left(ms) {
  const s = Math.round((ms - Date.now()) / 1000);
  if (s <= 0) return "expired";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min left` : `${m} min ${s % 60} s left`;
}

function say(message) {
  const s = document.getElementById("status");
  s.textContent = message;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { s.textContent = ""; }, 6000);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = { accept: "application/json" };
  if (options.body !== undefined) headers["content-type"] = "application/json";
  if (options.method && options.method !== "GET") headers["x-csrf-token"] = me ? me.csrf : "";
  const response = await fetch(`/console/api${path}`, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    credentials: "same-origin",
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!response.ok) {
    const message = data && data.error && data.error.message ? data.error.message : `HTTP ${response.status}`;
    if (response.status === 401) showSignIn(message);
    throw new ApiError(response.status, message);
  }
  return data;
}

function page(title, ...content) {
  const main = document.getElementById("main");
  main.replaceChildren(el("h1", { text: title }), ...content);
  document.title = `${title} · Scrim console`;
}

function failure(e) {
  return el("p", { class: "bad", role: "alert" }, e.message || String(e));
}

function showSignIn(message) {
  me = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  const main = document.getElementById("main");
  main.replaceChildren(el("section", { class: "signin" },
    el("h1", { text: "Scrim console" }),
    el("p", {}, message && !/not signed in/.test(message) ? message : "Auditors and approvers sign in with the company's identity provider."),
    el("a", { href: "/console/login", id: "signin" }, "Sign in")));
  document.title = "Sign in · Scrim console";
}

// ---- sessions -------------------------------------------------------------------------

function field(label, input) {
  return el("div", { class: "field" }, el("label", { for: input.id, text: label }), input);
}

function localMs(value) {
  return value ? String(new Date(value).getTime()) : "";
}

async function sessionsPage(params) {
  const q = new URLSearchParams(params);
  const input = (id, type = "text") => el("input", { id: `f-${id}`, name: id, type, value: q.get(id) || "" });
  const decision = el("select", { id: "f-decision", name: "decision" },
    ["", "allowed", "denied", "forbidden", "unauthenticated", "unavailable", "pending_approval"].map(
      (d) => el("option", { value: d, selected: q.get("decision") === d }, d || "any")));
  const from = el("input", { id: "f-from", type: "datetime-local" });
  const to = el("input", { id: "f-to", type: "datetime-local" });
  const form = el("form", { class: "filters", "aria-label": "Filter sessions" },
    field("User", input("user")), field("Group", input("group")), field("Model", input("model")),
    field("Decision", decision), field("Rule", input("rule")), field("From", from), field("To", to),
    el("button", { type: "submit" }, "Apply"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const k of ["user", "group", "model", "rule"]) {
      const v = document.getElementById(`f-${k}`).value.trim();
      if (v) next.set(k, v);
    }
    if (decision.value) next.set("decision", decision.value);
    if (from.value) next.set("from", localMs(from.value));
    if (to.value) next.set("to", localMs(to.value));
    location.hash = `#/sessions?${next}`;
  });
  const body = el("div", {}, el("p", { text: "Loading…" }));
  page("Sessions", form, body);
  try {
    const data = await api(`/v1/sessions?${q}`);
    const rows = data.data.map((s) => el("tr", {},
      el("td", {}, el("a", { href: `#/sessions/${encodeURIComponent(s.session_id)}` }, s.session_id)),
      el("td", { text: s.subjects.join(", ") }),
      el("td", { text: s.exchanges }),
      el("td", { class: s.refused ? "bad" : "", text: s.refused }),
      el("td", { text: when(s.last_ms) }),
      el("td", { text: `${s.input_tokens} / ${s.output_tokens}` }),
      el("td", { text: s.models.join(", ") })));
    const table = el("table", {},
      el("caption", { class: "meta", text: `${data.data.length} sessions, newest first` }),
      el("thead", {}, el("tr", {}, ["Session", "User", "Exchanges", "Refused", "Last", "Tokens in / out", "Models"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows));
    const nav = el("p", {});
    if (data.next_before) {
      const older = new URLSearchParams(q);
      older.set("before", data.next_before);
      nav.append(el("a", { href: `#/sessions?${older}`, id: "older" }, "Older sessions →"));
    }
    body.replaceChildren(rows.length ? table : el("p", { text: "No sessions match." }), nav);
  } catch (e) {
    body.replaceChildren(failure(e));
  }
}

// ---- replay ---------------------------------------------------------------------------

function eventLine(x) {
  const d = (x.event && x.event.detail) || {};
  const what = x.event.kind.replace(".", " ").replace("_", " ");
  const target = d.review || d.grant || "";
  return el("div", { class: "card exchange event" },
    el("p", {}, el("strong", { text: `${what} ${target}` }), ` by ${x.user || "?"} at ${when(x.at_ms)}`,
      d.rule ? ` · rule ${d.rule}` : "", d.requester ? ` · requested by ${d.requester}` : ""),
    d.reason ? el("p", {}, "Why: ", ...masked(d.reason)) : null,
    d.excerpt ? el("p", {}, "Excerpt: ", ...masked(d.excerpt)) : null);
}

function usageText(x) {
  const u = x.usage || {};
  const t = x.timings || {};
  const parts = [];
  if (x.usage) parts.push(`tokens in ${u.input_tokens} out ${u.output_tokens} cache read ${u.cache_read_input_tokens} write ${u.cache_creation_input_tokens}`);
  if (t.first_byte_ms !== undefined && t.first_byte_ms !== null) parts.push(`first byte ${t.first_byte_ms} ms`);
  if (t.total_ms !== undefined && t.total_ms !== null) parts.push(`total ${t.total_ms} ms`);
  else if (x.duration_ms !== undefined && x.duration_ms !== null) parts.push(`total ${x.duration_ms} ms`);
  return parts.join(" · ");
}

async function replayPage(id) {
  page(`Session ${id}`, el("p", { text: "Loading…" }));
  let data;
  try {
    data = await api(`/replay/${encodeURIComponent(id)}`);
  } catch (e) {
    page(`Session ${id}`, failure(e));
    return;
  }
  const cards = [];
  for (const x of data.exchanges) {
    if (x.event) { cards.push(eventLine(x)); continue; }
    const refused = x.decision !== "allowed";
    const turns = data.turns.filter((t) => t.seq === x.seq).map((t) => {
      const who = t.speaker === "user" ? "User" : t.speaker === "assistant" ? "Assistant" : "Gateway";
      const label = t.kind === "text" ? who : `${who} · ${t.kind.replace("_", " ")}${t.name ? ` ${t.name}` : ""}`;
      const shown = t.kind === "thinking" ? "(thinking, as masked by the gateway) " + t.text : t.text;
      return el("div", { class: `turn ${t.kind}` }, el("span", { class: "who", text: label }), el("pre", {}, ...masked(shown)));
    });
    const maskedCounts = (x.masked || []).map((m) => `${m.rule} ×${m.count} (${String(m.direction).toLowerCase()})`).join(", ");
    cards.push(el("article", { class: `card exchange${refused ? " refused" : ""}`, "aria-label": `exchange ${x.exchange_id}` },
      el("p", { class: "meta" },
        `${when(x.at_ms)} · ${x.method} ${x.endpoint} · ${x.model || "no model"} · `,
        el("span", { class: refused ? "bad" : "ok", text: x.decision }),
        x.status ? ` · HTTP ${x.status}` : "", x.reason && refused ? ` · ${x.reason}` : "", " · ",
        el("a", { href: `/console/api/v1/exchanges/${encodeURIComponent(x.exchange_id)}`, target: "_blank", rel: "noopener" }, "raw exchange JSON")),
      el("p", { class: "meta", text: usageText(x) }),
      maskedCounts ? el("p", { class: "meta" }, `Masked: ${maskedCounts}`) : null,
      x.approvals && x.approvals.length ? el("p", { class: "meta" }, `Let through by approved review ${x.approvals.join(", ")}`) : null,
      x.grant ? el("p", { class: "meta" }, `Let through by grant ${x.grant}`) : null,
      x.content_missing ? el("p", { class: "meta", text: "content purged by retention" }) : null,
      turns));
  }
  page(`Session ${id}`, el("p", { class: "meta" }, `${data.exchanges.length} records. Masked secrets show as `,
    el("mark", { class: "masked" }, "[REDACTED:rule-id]"), "."), ...cards);
}

// ---- reviews --------------------------------------------------------------------------

function decideForm(kind, item, actions) {
  const reasonId = `reason-${item.id}`;
  const reason = el("input", { id: reasonId, name: "reason", required: true, autocomplete: "off" });
  const form = el("form", { class: "decide", "aria-label": `Decide ${item.id}` },
    el("div", { class: "field" }, el("label", { for: reasonId, text: "Reason" }), reason));
  for (const [action, label, cls] of actions) {
    form.append(el("button", { type: "button", class: cls, "data-action": action, onclick: async () => {
      if (!reason.value.trim()) { reason.focus(); say("A reason is required."); return; }
      try {
        await api(`/v1/${kind}/${encodeURIComponent(item.id)}/${action}`, { method: "POST", body: { reason: reason.value.trim() } });
        say(`${item.id}: ${action} recorded`);
        route();
      } catch (e) {
        say(`${item.id}: ${e.message}`);
      }
    } }, label));
  }
  form.addEventListener("submit", (ev) => ev.preventDefault());
  return form;
}

function decisions(item) {
  if (!item.decisions || !item.decisions.length) return null;
  return el("ul", { class: "meta" }, item.decisions.map((d) =>
    el("li", {}, `${d.decision} by ${d.approver} at ${when(d.at_ms)}: `, ...masked(d.reason))));
}

async function reviewsPage(focus) {
  const list = el("div", { id: "reviews" }, el("p", { text: "Loading…" }));
  page("Reviews", el("p", { class: "meta", text: "Pending reviews appear here as the gateway opens them." }), list);
  try {
    const data = await api("/v1/reviews");
    const pending = data.data.filter((r) => r.status === "pending");
    const decided = data.data.filter((r) => r.status !== "pending").slice(0, 20);
    const card = (r) => el("article", { class: "card review", id: `review-${r.id}`, "data-status": r.status, "aria-label": `review ${r.id}` },
      el("p", {}, el("strong", { text: r.id }), ` · rule `, el("code", { text: r.rule }), ` · requested by ${r.user.subject} · ${ago(r.created_at_ms)} ago · `,
        el("span", { class: r.status === "approved" ? "ok" : r.status === "pending" ? "" : "bad", text: r.status })),
      el("p", { class: "meta", text: r.rule_message }),
      el("pre", { class: "excerpt" }, ...masked(r.excerpt)),
      el("p", { class: "meta" }, `Session `, el("a", { href: `#/sessions/${encodeURIComponent(r.session_id)}` }, r.session_id),
        ` · approvals ${r.decisions.filter((d) => d.decision === "approve").length}/${r.approvals_required}`),
      decisions(r),
      r.status === "pending" && me.approver && r.user.subject !== me.subject
        ? decideForm("reviews", r, [["approve", "Approve", ""], ["reject", "Reject", "danger"]]) : null);
    list.replaceChildren(
      el("h2", { text: `Pending (${pending.length})` }),
      pending.length ? el("div", {}, pending.map(card)) : el("p", { text: "Nothing waits for a decision." }),
      el("h2", { text: "Recently decided" }),
      decided.length ? el("div", {}, decided.map(card)) : el("p", { text: "None yet." }));
    if (focus) {
      const target = document.getElementById(`review-${focus}`);
      if (target) target.scrollIntoView();
    }
  } catch (e) {
    list.replaceChildren(failure(e));
  }
}

// ---- grants ---------------------------------------------------------------------------

async function grantsPage() {
  const list = el("div", {}, el("p", { text: "Loading…" }));
  const duration = el("input", { id: "grant-duration", type: "number", min: "1", value: "60" });
  const reason = el("input", { id: "grant-reason", required: true });
  const ask = el("form", { class: "filters", "aria-label": "Ask for a grant" },
    field("Minutes", duration), field("Reason", reason), el("button", { type: "submit" }, "Ask for access"));
  ask.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const g = await api("/v1/grants", { method: "POST", body: { duration_seconds: Number(duration.value) * 60, reason: reason.value } });
      say(`grant ${g.id} requested`);
      route();
    } catch (e) { say(e.message); }
  });
  page("Grants", el("h2", { text: "Ask for temporary access" }), ask, list);
  try {
    const data = await api("/v1/grants");
    const row = (g) => el("article", { class: "card grant", id: `grant-${g.id}`, "data-status": g.status, "aria-label": `grant ${g.id}` },
      el("p", {}, el("strong", { text: g.id }), ` · ${g.user.subject} · ${Math.round(g.duration_seconds / 60)} min · `,
        el("span", { class: g.status === "active" ? "ok" : "", text: g.status }),
        g.status === "active" && g.expires_at_ms ? ` · ${left(g.expires_at_ms)}` : "",
        g.status === "pending" ? ` · asked ${ago(g.created_at_ms)} ago` : ""),
      el("p", {}, "Reason: ", ...masked(g.reason)),
      decisions(g),
      me.approver && g.user.subject !== me.subject && g.status === "pending"
        ? decideForm("grants", g, [["approve", "Approve", ""], ["reject", "Reject", "danger"]]) : null,
      me.approver && g.user.subject !== me.subject && g.status === "active"
        ? decideForm("grants", g, [["revoke", "Revoke", "danger"]]) : null);
    const by = (s) => data.data.filter((g) => g.status === s);
    list.replaceChildren(
      el("h2", { text: "Requests" }), by("pending").length ? el("div", {}, by("pending").map(row)) : el("p", { text: "No open requests." }),
      el("h2", { text: "Active" }), by("active").length ? el("div", {}, by("active").map(row)) : el("p", { text: "No active grants." }),
      el("h2", { text: "Ended" }), el("div", {}, data.data.filter((g) => !["pending", "active"].includes(g.status)).slice(0, 20).map(row)));
  } catch (e) {
    list.replaceChildren(failure(e));
  }
}

// ---- chain and usage ------------------------------------------------------------------

async function chainPage() {
  page("Chain", el("p", { text: "Verifying…" }));
  try {
    const c = await api("/chain");
    const problems = c.problems.map((p) => el("li", {}, p.problem,
      p.session_id ? el("span", {}, " in session ", el("a", { href: `#/sessions/${encodeURIComponent(p.session_id)}` }, p.session_id)) : ""));
    page("Chain",
      el("p", { id: "chain-status", class: c.intact ? "ok" : "bad" }, c.intact ? "Chain intact" : `Chain broken: ${c.problems.length} problem(s)`),
      el("p", { class: "meta", text: `${c.records} records, ${c.content_pieces} content pieces${c.head ? `, head record ${c.head.seq} ${c.head.hash}` : ""}` }),
      c.first_problem ? el("p", { id: "first-bad" }, "First bad record: ", c.first_problem.problem) : null,
      c.purged_before_ms ? el("p", { class: "meta", text: `content purged before ${when(c.purged_before_ms)}` }) : null,
      problems.length ? el("ul", {}, problems) : null,
      c.sessions_with_problems.length ? el("p", {}, `Sessions with bad records: ${c.sessions_with_problems.join(", ")}`) : el("p", { class: "meta", text: "Every session verifies." }));
  } catch (e) {
    page("Chain", failure(e));
  }
}

function usagePage(params) {
  const q = new URLSearchParams(params);
  const days = el("select", { id: "u-days" }, [7, 14, 31].map((d) => el("option", { value: d, selected: q.get("days") === String(d) }, `${d} days`)));
  const group = el("input", { id: "u-group", value: q.get("group") || "" });
  const model = el("input", { id: "u-model", value: q.get("model") || "" });
  const form = el("form", { class: "filters", "aria-label": "Usage period" }, field("Period", days), field("Group", group), field("Model", model),
    el("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams({ days: days.value });
    if (group.value.trim()) next.set("group", group.value.trim());
    if (model.value.trim()) next.set("model", model.value.trim());
    location.hash = `#/usage?${next}`;
  });
  const src = new URLSearchParams({ days: q.get("days") || "7" });
  for (const k of ["group", "model"]) if (q.get(k)) src.set(k, q.get(k));
  page("Usage", form, el("img", { id: "usage-chart", src: `/console/usage.svg?${src}`, alt: "Tokens per user per day (bar chart)", width: "720", height: "320" }));
}

// ---- routing and live updates ----------------------------------------------------------

function liveReviews(on) {
  if (on && !events) {
    events = new EventSource("/console/api/events");
    events.addEventListener("change", () => { if (location.hash.startsWith("#/reviews") || location.hash.startsWith("#/grants")) route(); });
    // A fallback for proxies that buffer event streams.
    refresh = setInterval(() => { if (location.hash.startsWith("#/reviews")) route(); }, 15000);
  } else if (!on && events) {
    events.close(); events = null; clearInterval(refresh);
  }
}

async function route() {
  if (!me) return;
  const hash = location.hash || "#/sessions";
  const [path, query] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean);
  for (const a of document.querySelectorAll("nav a")) {
    const current = a.getAttribute("href").slice(2) === (parts[0] || "sessions");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  liveReviews(parts[0] === "reviews" || parts[0] === "grants");
  switch (parts[0] || "sessions") {
    case "sessions": return parts[1] ? replayPage(decodeURIComponent(parts.slice(1).join("/"))) : sessionsPage(query || "");
    case "reviews": return reviewsPage(parts[1]);
    case "grants": return grantsPage();
    case "chain": return chainPage();
    case "usage": return usagePage(query || "");
    default: page("Not found", el("p", { text: "No such page." }));
  }
}

async function start() {
  try {
    me = await api("/me");
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) showSignIn(e.message);
    return;
  }
  const roles = [me.auditor ? "auditor" : null, me.approver ? "approver" : null].filter(Boolean);
  document.getElementById("who").textContent = `${me.subject}${roles.length ? ` (${roles.join(", ")})` : ""}`;
  for (const a of document.querySelectorAll("nav a[data-needs=auditor]")) a.hidden = !me.auditor;
  document.getElementById("nav").hidden = false;
  const out = document.getElementById("signout");
  out.hidden = false;
  out.addEventListener("click", async () => {
    await fetch("/console/logout", { method: "POST", headers: { "x-csrf-token": me.csrf }, credentials: "same-origin" });
    location.href = "/console/";
  });
  window.addEventListener("hashchange", route);
  route();
}

document.addEventListener("DOMContentLoaded", start);
