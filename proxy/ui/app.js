// Anima's dashboard: a small page on the JSON API (/v1), with the caller's key. No build step, no CDN.
// Tolerant of shapes that grow: unknown fields are ignored, missing ones shown as "-".
"use strict";

const TIERS = ["system", "summaries", "history", "volatile", "newest"];
const TIER_NAMES = { system: "persona / system", summaries: "summary", history: "history", volatile: "memory + emotion", newest: "newest message" };
const COLORS = { system: "#6d5bd0", summaries: "#c27c0e", history: "#2f6fd6", volatile: "#178a45", memory: "#178a45", newest: "#c93434" };
const MOOD_COLORS = ["#c93434", "#2f6fd6", "#178a45", "#c27c0e", "#6d5bd0", "#0f8b8d", "#b5179e", "#555"];
const view = () => document.getElementById("view");
let me = null;

// -- helpers -------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function key() { return sessionStorage.getItem("anima-key"); }
function viewing() { return sessionStorage.getItem("anima-as-user"); }
function viewAs(id, name) {
  if (id) { sessionStorage.setItem("anima-as-user", id); sessionStorage.setItem("anima-as-name", name); }
  else { sessionStorage.removeItem("anima-as-user"); sessionStorage.removeItem("anima-as-name"); }
  location.hash = "#/"; route();
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (key()) headers["Authorization"] = "Bearer " + key();
  if (viewing()) headers["X-Anima-As-User"] = viewing();
  if (options.body && typeof options.body !== "string") {
    headers["Content-Type"] = "application/json";
    options = Object.assign({}, options, { body: JSON.stringify(options.body) });
  }
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (options.raw) return response;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { text }; }
  if (!response.ok) {
    const error = new Error((data && data.error && data.error.message) || response.statusText || "request failed");
    error.status = response.status;
    throw error;
  }
  return data;
}

async function listAll(path, limit = 1000) {
  const out = [];
  for (let offset = 0; offset < 20000; offset += limit) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=${limit}&offset=${offset}`);
    out.push(...(page.data || []));
    if (!page.has_more) break;
  }
  return out;
}

function show(...children) {
  const banner = viewing() ? h("p", { class: "card", id: "viewing" }, `Admin view: the memory of user ${viewing()} (${sessionStorage.getItem("anima-as-name") || ""}). `,
    h("button", { onclick: () => viewAs(null) }, "Back to my own")) : null;
  view().replaceChildren(...[banner, ...children.flat()].filter(Boolean));
}
function failure(error) { return h("p", { class: "error" }, error.message || String(error)); }
function when(value) { return value ? new Date(value).toLocaleString() : "-"; }
function short(text, n = 300) { text = text || ""; return text.length > n ? text.slice(0, n - 1) + "…" : text; }

async function download(path, filename) {
  const response = await api(path, { raw: true });
  if (!response.ok) throw new Error(`export failed (${response.status})`);
  const link = h("a", { href: URL.createObjectURL(await response.blob()), download: filename });
  document.body.append(link); link.click(); link.remove();
}

// -- login -----------------------------------------------------------------------------------------

async function whoAmI() {
  try { me = await api("/v1/users/me"); } catch (e) { if (e.status === 401) { me = null; return false; } throw e; }
  document.getElementById("who").textContent = me.open_mode ? "open mode (loopback)" : `${me.name}${me.admin ? " (admin)" : ""}`;
  document.getElementById("nav-keys").hidden = !me.admin;
  document.getElementById("logout").hidden = !key();
  return true;
}

function loginView(message) {
  const input = h("input", { type: "password", id: "api-key", placeholder: "sk-anima-…", size: 40, autocomplete: "off" });
  const form = h("form", { class: "card", id: "login", onsubmit: async (event) => {
    event.preventDefault();
    sessionStorage.setItem("anima-key", input.value.trim());
    if (await whoAmI()) route(); else loginView("That key was not accepted.");
  } },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Use an Anima API key. It stays in this tab only and is sent as Authorization: Bearer."),
    message ? h("p", { class: "error" }, message) : null,
    h("div", { class: "row" }, input, h("button", { type: "submit" }, "Sign in")));
  show(form);
  input.focus();
}

// -- conversations ---------------------------------------------------------------------------------

async function conversationsView() {
  const conversations = await listAll("/v1/conversations", 200);
  const search = h("input", { type: "search", id: "search", placeholder: "Filter by id, title or persona; Enter searches messages", size: 50 });
  const found = h("div", { id: "message-hits" });
  const body = h("tbody", {});
  const render = (filter, ids) => {
    const f = (filter || "").toLowerCase();
    body.replaceChildren(...conversations
      .filter((c) => ids ? ids.has(c.id) : !f || [c.id, c.title, c.persona].some((v) => (v || "").toLowerCase().includes(f)))
      .map((c) => h("tr", { "data-id": c.id },
        h("td", {}, h("a", { href: `#/c/${encodeURIComponent(c.id)}`, class: "conversation-link" }, c.id)),
        h("td", {}, c.title || "-"), h("td", {}, c.persona || "-"), h("td", {}, c.message_count ?? "-"),
        h("td", {}, c.pending_embeddings ? h("span", { class: "badge" }, `${c.pending_embeddings} to embed`) : ""),
        h("td", {}, when(c.updated_at)),
        h("td", {}, h("button", { onclick: () => download(`/v1/conversations/${encodeURIComponent(c.id)}/messages?limit=1000`, `${c.id}.json`) }, "Export"), " ",
          h("button", { class: "danger", onclick: () => removeConversation(c.id) }, "Delete")))));
  };
  search.addEventListener("input", () => { found.replaceChildren(); render(search.value); });
  search.addEventListener("keydown", async (event) => {
    if (event.key !== "Enter" || !search.value.trim()) return;
    const hits = (await api("/v1/memory/search", { method: "POST", body: { query: search.value, scope: "user", k: 20 } })).data || [];
    found.replaceChildren(h("p", { class: "muted" }, `${hits.length} messages match “${search.value}”; their conversations are listed.`));
    render("", new Set(hits.map((hit) => hit.conversation_id)));
  });
  render("");
  show(h("h1", {}, "Conversations"),
    h("div", { class: "row" }, search, h("button", { onclick: () => viewing() ? download(`/v1/admin/users/${viewing()}/export`, `anima-user-${viewing()}.json`) : download("/v1/users/me/export", "anima-export.json") }, "Export everything")),
    found,
    h("table", { id: "conversations" }, h("thead", {}, h("tr", {}, ["id", "title", "persona", "messages", "", "updated", ""].map((t) => h("th", {}, t)))), body));
}

async function removeConversation(id) {
  if (!confirm(`Delete conversation ${id} and everything remembered from it?`)) return;
  await api(`/v1/conversations/${encodeURIComponent(id)}`, { method: "DELETE" });
  location.hash = "#/";
  route();
}

// The tree: messages with the same parent are alternatives (swipes of a reply, or edited user turns).
function tree(messages, turnOf, id) {
  const children = new Map();
  for (const m of messages) {
    const parent = m.parent_id ?? null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(m);
  }
  const node = (m, label) => {
    const badges = [];
    if (label) badges.push(h("span", { class: "badge swipe" }, label));
    if (m.status && m.status !== "complete") badges.push(h("span", { class: `badge ${m.status}` }, m.status));
    if (m.source && !["chat", "proxy"].includes(m.source)) badges.push(h("span", { class: `badge ${m.source}` }, m.source));
    if (m.kind) badges.push(h("span", { class: "badge" }, m.kind));
    if (m.emotion) badges.push(h("span", { class: "badge" }, m.emotion));
    const turn = turnOf.get(m.id);
    return h("li", {},
      h("div", { class: `msg ${m.role}`, "data-message": m.id },
        h("span", { class: "role" }, m.name || m.role), badges,
        turn ? h("a", { class: "button turn-link", href: `#/c/${encodeURIComponent(id)}/turn/${turn}`, style: "float:right" }, `prompt of turn ${turn}`) : null,
        h("div", { class: "text" }, short(m.content, 600))));
  };
  // A chain stays flat; only where a message has several children do the alternatives nest.
  const chain = (parent, first, label) => {
    const items = [];
    let current = first ? [first] : (children.get(parent) || []), tag = label;
    while (current.length === 1) {
      items.push(node(current[0], tag));
      tag = null;
      current = children.get(current[0].id) || [];
    }
    if (current.length > 1) {
      const kind = current[0].role === "assistant" ? "swipe" : "branch";
      items.push(h("li", {}, h("div", { class: "branch" }, `${current.length} alternatives (${kind}s)`),
        current.map((k, i) => h("ul", {}, chain(null, k, `${kind} ${i + 1}/${current.length}`)))));
    }
    return items;
  };
  const branch = (parent) => {
    const items = chain(parent, null, null);
    return items.length ? h("ul", {}, items) : null;
  };
  return h("div", { class: "tree card", id: "tree" }, branch(null) || h("p", { class: "muted" }, "No messages."));
}

async function turnIndex(id) {
  const map = new Map();
  let latest;
  try { latest = await api(`/v1/conversations/${encodeURIComponent(id)}/context`); } catch (e) { return { map, turns: 0 }; }
  const turns = latest.turns || 0;
  const numbers = Array.from({ length: Math.min(turns, 200) }, (_, i) => turns - i);
  const contexts = await Promise.all(numbers.map((n) => api(`/v1/conversations/${encodeURIComponent(id)}/context?turn=${n}`).catch(() => null)));
  contexts.forEach((c, i) => { if (c && c.reply_message_id) map.set(c.reply_message_id, numbers[i]); });
  return { map, turns };
}

function moodPlot(points) {
  if (!points.length) return h("p", { class: "muted" }, "No mood readings yet.");
  const labels = new Map();
  for (const p of points) for (const [label, v] of Object.entries(p.mood_scores || {})) labels.set(label, Math.max(labels.get(label) || 0, v));
  const shown = [...labels.entries()].sort((a, b) => b[1] - a[1]).slice(0, 6).map(([l]) => l);
  const W = 640, H = 180, pad = 28;
  const x = (i) => pad + (points.length === 1 ? (W - 2 * pad) / 2 : (i * (W - 2 * pad)) / (points.length - 1));
  const y = (v) => H - pad - v * (H - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`); svg.setAttribute("class", "plot"); svg.setAttribute("id", "mood-plot"); svg.setAttribute("width", W);
  const add = (tag, attrs, text) => { const el = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v); if (text) el.textContent = text; svg.append(el); return el; };
  add("line", { x1: pad, y1: y(0), x2: W - pad, y2: y(0), stroke: "#ccc" });
  add("text", { x: 2, y: y(1) + 4, "font-size": 10, fill: "#888" }, "1"); add("text", { x: 2, y: y(0) + 4, "font-size": 10, fill: "#888" }, "0");
  shown.forEach((label, n) => {
    const color = MOOD_COLORS[n % MOOD_COLORS.length];
    add("polyline", { fill: "none", stroke: color, "stroke-width": 2, points: points.map((p, i) => `${x(i)},${y((p.mood_scores || {})[label] || 0)}`).join(" ") });
    add("text", { x: pad + n * 95, y: 12, "font-size": 11, fill: color }, label);
    points.forEach((p, i) => add("circle", { cx: x(i), cy: y((p.mood_scores || {})[label] || 0), r: 2.5, fill: color, class: "score" }));
  });
  add("text", { x: W - pad - 120, y: H - 6, "font-size": 10, fill: "#222" }, "● mood (smoothed)");
  points.forEach((p, i) => {
    const dot = add("circle", { cx: x(i), cy: y((p.mood && p.mood.intensity) || 0), r: 4, fill: "none", stroke: "#222", "stroke-width": 1.5, class: "mood" });
    const title = document.createElementNS(ns, "title");
    title.textContent = `turn ${i + 1}: felt ${p.label || "-"} (${p.confidence ?? "-"}), mood ${(p.mood && p.mood.label) || "-"}`;
    dot.append(title);
  });
  return svg;
}

async function conversationView(id) {
  const path = `/v1/conversations/${encodeURIComponent(id)}`;
  const [info, messages, index, emotions] = await Promise.all([
    api(path), listAll(`${path}/messages`), turnIndex(id),
    api(`${path}/emotions`).catch((e) => ({ error: e })),
  ]);
  const turns = Array.from({ length: index.turns }, (_, i) => i + 1);
  show(
    h("h1", {}, info.title || info.id, info.persona ? h("span", { class: "badge" }, info.persona) : null),
    h("div", { class: "row" },
      h("span", { class: "muted" }, `${info.message_count} messages · updated ${when(info.updated_at)} · ${info.pending_embeddings} waiting to be embedded`),
      h("button", { onclick: () => download(`${path}/messages?limit=1000`, `${id}.json`) }, "Export"),
      h("button", { class: "danger", id: "delete-conversation", onclick: () => removeConversation(id) }, "Delete")),
    h("h2", {}, "Mood trajectory"),
    emotions.error ? h("p", { class: "muted" }, emotions.error.message) : moodPlot(emotions.data || []),
    h("h2", {}, "Turns with a recorded prompt"),
    turns.length ? h("div", { class: "row", id: "turns" }, turns.map((n) => h("a", { class: "button", href: `#/c/${encodeURIComponent(id)}/turn/${n}` }, n))) : h("p", { class: "muted" }, "None yet."),
    h("h2", {}, "Branches and swipes"),
    tree(messages, index.map, id));
}

// -- one turn: the prompt as sent, tier by tier ------------------------------------------------------

function classify(messages) {
  const chat = messages.map((m, i) => (m.role !== "system" ? i : -1)).filter((i) => i >= 0);
  const first = chat.length ? chat[0] : messages.length, newest = chat.length ? chat[chat.length - 1] : -1;
  return messages.map((m, i) => {
    if (m.tier) return m.tier;
    const text = m.content || "";
    if (m.role === "system" && text.startsWith("Summary of the earlier part")) return "summaries";
    if (m.role === "system" && (text.startsWith("Memory:") || (i > first && i < newest))) return "volatile";
    if (m.role === "system") return "system";
    return i === newest ? "newest" : "history";
  });
}

function recalledLines(messages, tiers) {
  const out = [];
  messages.forEach((m, i) => {
    if (tiers[i] !== "volatile" && tiers[i] !== "memory") return;
    for (const line of (m.content || "").split("\n")) {
      const match = line.match(/^- (\S+), (.+?) said: (".*")$/);
      if (!match) continue;
      let text = match[3];
      try { text = JSON.parse(text); } catch (e) { /* shown as quoted */ }
      out.push({ date: match[1], speaker: match[2], content: text });
    }
  });
  return out;
}

function tokenBar(tokens) {
  const parts = TIERS.map((t) => [t, Number(tokens[t] || 0)]).filter(([, n]) => n > 0);
  const sum = parts.reduce((a, [, n]) => a + n, 0) || 1;
  return h("div", { class: "card", id: "tokens" },
    h("div", { class: "bar" }, parts.map(([t, n]) => h("span", { title: `${TIER_NAMES[t]}: ${n}`, style: `width:${(100 * n) / sum}%;background:${COLORS[t]}` }))),
    h("div", { class: "legend" }, parts.map(([t, n]) => h("span", { "data-tier": t }, h("i", { style: `background:${COLORS[t]}` }), `${TIER_NAMES[t]} ${n}`)),
      Object.entries(tokens).filter(([k]) => !TIERS.includes(k)).map(([k, v]) => h("span", { class: "muted" }, `${k.replace(/_/g, " ")} ${v}`))));
}

async function turnView(id, n) {
  const path = `/v1/conversations/${encodeURIComponent(id)}`;
  const ctx = await api(`${path}/context?turn=${n}`);
  const messages = ctx.messages || [];
  const tiers = classify(messages);
  const recalled = recalledLines(messages, tiers);
  const newest = messages[tiers.lastIndexOf("newest")];
  let hits = [];
  if (newest && newest.content) {
    hits = ((await api("/v1/memory/search", { method: "POST", body: { query: newest.content, conversation_id: id, k: 10 } }).catch(() => ({ data: [] }))).data) || [];
  }
  const inPrompt = new Set(recalled.map((r) => r.content));
  const summaries = messages.filter((_, i) => tiers[i] === "summaries");
  show(
    h("h1", {}, `Turn ${ctx.turn} of ${ctx.turns}`, h("span", { class: "badge" }, ctx.model || "-"),
      ctx.persona ? h("span", { class: "badge", id: "turn-persona" }, `${ctx.persona.name} v${ctx.persona.version}`) : null),
    h("div", { class: "row" },
      h("a", { class: "button", href: `#/c/${encodeURIComponent(id)}` }, "← conversation"),
      ctx.turn > 1 ? h("a", { class: "button", href: `#/c/${encodeURIComponent(id)}/turn/${ctx.turn - 1}` }, "previous turn") : null,
      ctx.turn < ctx.turns ? h("a", { class: "button", href: `#/c/${encodeURIComponent(id)}/turn/${ctx.turn + 1}` }, "next turn") : null,
      h("span", { class: "muted" }, when(ctx.created_at))),
    h("h2", {}, "Tokens per tier"), tokenBar(ctx.tokens || {}),
    h("div", { class: "grid2" },
      h("div", {}, h("h2", {}, "The prompt as sent"),
        h("div", { id: "prompt" }, messages.map((m, i) => h("div", { class: `tier tier-${tiers[i]}`, "data-tier": tiers[i] },
          h("div", { class: "label" }, `${TIER_NAMES[tiers[i]] || tiers[i]} · ${m.name || m.role}`), m.content)))),
      h("div", {},
        h("h2", {}, "Recalled memories in this prompt"),
        recalled.length ? h("ul", { id: "recalled" }, recalled.map((r) => h("li", {}, h("span", { class: "muted" }, `${r.date}, ${r.speaker}: `), r.content)))
          : h("p", { class: "muted", id: "recalled" }, "None (nothing relevant outside the history window)."),
        h("h2", {}, "How memory ranks them now"),
        h("p", { class: "muted" }, "Hybrid recall (vector similarity fused with full-text rank) for this turn's message, scored today."),
        h("table", { id: "scores" }, h("thead", {}, h("tr", {}, ["score", "who", "text", ""].map((t) => h("th", {}, t)))),
          h("tbody", {}, hits.map((hit) => h("tr", {}, h("td", {}, Number(hit.score).toFixed(4)), h("td", {}, hit.name || hit.role),
            h("td", {}, short(hit.content, 200)), h("td", {}, inPrompt.has(hit.content) ? h("span", { class: "badge" }, "in prompt") : ""))))),
        h("h2", {}, "Summary used"),
        summaries.length ? summaries.map((s) => h("div", { class: "tier tier-summaries" }, s.content)) : h("p", { class: "muted" }, "No summary: the whole branch fitted."))));
}

// -- personas ------------------------------------------------------------------------------------

async function personasView() {
  const list = await api("/v1/personas");
  show(h("h1", {}, "Personas"),
    (list.errors && Object.keys(list.errors).length) ? h("p", { class: "error" }, JSON.stringify(list.errors)) : null,
    h("table", { id: "personas" }, h("thead", {}, h("tr", {}, ["name", "version", "source", "", "updated"].map((t) => h("th", {}, t)))),
      h("tbody", {}, (list.data || []).map((p) => h("tr", {},
        h("td", {}, h("a", { href: `#/p/${encodeURIComponent(p.name)}` }, p.name)), h("td", {}, p.version), h("td", {}, p.source),
        h("td", {}, p.shared ? h("span", { class: "badge" }, "shared") : h("span", { class: "badge" }, "yours")), h("td", {}, when(p.created_at)))))));
}

function lineDiff(a, b) {
  const x = a.split("\n"), y = b.split("\n");
  const dp = Array.from({ length: x.length + 1 }, () => new Array(y.length + 1).fill(0));
  for (let i = x.length - 1; i >= 0; i--) for (let j = y.length - 1; j >= 0; j--)
    dp[i][j] = x[i] === y[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < x.length || j < y.length) {
    if (i < x.length && j < y.length && x[i] === y[j]) { out.push(["same", "  " + x[i]]); i++; j++; }
    else if (j < y.length && (i >= x.length || dp[i][j + 1] >= dp[i + 1][j])) { out.push(["add", "+ " + y[j]]); j++; }
    else { out.push(["del", "- " + x[i]]); i++; }
  }
  return out;
}

async function personaView(name) {
  const path = `/v1/personas/${encodeURIComponent(name)}`;
  const [persona, versions] = await Promise.all([api(path), api(`${path}/versions`).catch(() => ({ data: [] }))]);
  const p = persona.persona || {};
  const status = h("span", { class: "muted", id: "persona-status" }, `version ${persona.version}`);
  const slider = (trait, value) => {
    const out = h("span", {}, Number(value).toFixed(2));
    const input = h("input", { type: "range", min: 0, max: 1, step: 0.05, value, "data-trait": trait, oninput: () => { out.textContent = Number(input.value).toFixed(2); },
      onchange: async () => {
        try {
          const saved = await api(path, { method: "PATCH", body: { trait, action: "set", intensity: Number(input.value) } });
          status.textContent = `saved: version ${saved.version}`;
          status.setAttribute("data-version", saved.version);
        } catch (e) { status.textContent = e.message; }
      } });
    return h("div", { class: "trait" }, h("label", {}, trait), input, out);
  };
  const all = versions.data || [];
  const pick = (id, selected) => h("select", { id }, all.map((v) => h("option", { value: v.version, selected: v.version === selected }, `v${v.version} ${v.source || ""}`)));
  const from = pick("diff-from", all.length > 1 ? all[all.length - 2].version : persona.version);
  const to = pick("diff-to", persona.version);
  const diff = h("div", { class: "diff", id: "diff" });
  const renderDiff = () => {
    const of = (v) => JSON.stringify((all.find((x) => String(x.version) === String(v)) || {}).persona || {}, null, 2);
    diff.replaceChildren(...lineDiff(of(from.value), of(to.value)).map(([kind, line]) => h("span", { class: kind }, line)));
  };
  from.addEventListener("change", renderDiff); to.addEventListener("change", renderDiff);
  show(h("h1", {}, p.display_name || persona.name, h("span", { class: "badge" }, persona.source)),
    h("p", {}, p.description || ""), status,
    h("h2", {}, "Traits"), h("p", { class: "muted" }, "0.5 is neutral. Moving a slider saves a new version; the next turn's prompt uses it."),
    h("div", { class: "card", id: "traits" }, Object.entries(p.traits || {}).map(([t, v]) => slider(t, v)), Object.entries(p.extra_traits || {}).map(([t, v]) => slider(t, v))),
    h("h2", {}, "Versions"),
    h("table", { id: "versions" }, h("tbody", {}, all.map((v) => h("tr", {}, h("td", {}, `v${v.version}`), h("td", {}, v.source), h("td", {}, v.note || ""), h("td", {}, when(v.created_at)))))),
    all.length > 1 ? [h("h2", {}, "Diff"), h("div", { class: "row" }, from, "→", to), diff] : null);
  if (all.length > 1) renderDiff();
}

// -- memory search and keys ------------------------------------------------------------------------

function memoryView() {
  const query = h("input", { type: "search", id: "memory-query", size: 50, placeholder: "What do you want to find?" });
  const scope = h("select", { id: "memory-scope" }, ["user", "persona", "branch"].map((s) => h("option", { value: s }, s)));
  const results = h("div", { id: "memory-results" });
  const run = async (event) => {
    event.preventDefault();
    try {
      const hits = (await api("/v1/memory/search", { method: "POST", body: { query: query.value, scope: scope.value, k: 20 } })).data || [];
      results.replaceChildren(h("table", {}, h("thead", {}, h("tr", {}, ["score", "conversation", "who", "text", "when"].map((t) => h("th", {}, t)))),
        h("tbody", {}, hits.map((hit) => h("tr", {}, h("td", {}, Number(hit.score).toFixed(4)),
          h("td", {}, h("a", { href: `#/c/${encodeURIComponent(hit.conversation_id)}` }, hit.conversation_id)),
          h("td", {}, hit.name || hit.role), h("td", {}, short(hit.content, 300)), h("td", {}, when(hit.created_at)))))));
    } catch (e) { results.replaceChildren(failure(e)); }
  };
  show(h("h1", {}, "Memory search"), h("form", { class: "row", onsubmit: run }, query, scope, h("button", { type: "submit" }, "Search")), results);
}

async function keysView() {
  const keys = (await api("/v1/admin/keys")).data || [];
  const name = h("input", { type: "text", id: "key-name", placeholder: "name" });
  const admin = h("input", { type: "checkbox", id: "key-admin" });
  const created = h("div", {});
  const create = async (event) => {
    event.preventDefault();
    const made = await api("/v1/admin/keys", { method: "POST", body: { name: name.value, admin: admin.checked } });
    created.replaceChildren(h("p", { class: "card" }, "New key (shown only now): ", h("code", { id: "new-key" }, made.key)));
  };
  show(h("h1", {}, "API keys"),
    h("form", { class: "row card", onsubmit: create }, name, h("label", {}, admin, " admin"), h("button", { type: "submit" }, "Create key")), created,
    h("table", { id: "keys" }, h("thead", {}, h("tr", {}, ["id", "name", "prefix", "admin", "revoked", "rpm", "tpm", "created", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, keys.map((k) => h("tr", { "data-key": k.name }, [k.id, k.name, k.prefix, k.admin ? "yes" : "", k.revoked ? "yes" : "", k.requests_per_minute ?? "-", k.tokens_per_minute ?? "-", when(k.created_at)].map((v) => h("td", {}, v)),
        h("td", {}, k.revoked ? "" : [h("button", { class: "view-as", onclick: () => viewAs(String(k.id), k.name) }, "View memory"), " ",
          h("button", { onclick: () => download(`/v1/admin/users/${k.id}/export`, `anima-user-${k.id}.json`) }, "Export"), " ",
          h("button", { class: "danger", onclick: async () => { if (confirm(`Revoke key ${k.name}?`)) { await api(`/v1/admin/keys/${k.id}`, { method: "DELETE" }); keysView(); } } }, "Revoke")]))))));
}

// -- routing ---------------------------------------------------------------------------------------

async function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (!me && !(await whoAmI())) return loginView();
    if (parts[0] === "c" && parts[2] === "turn") await turnView(parts[1], Number(parts[3]));
    else if (parts[0] === "c") await conversationView(parts[1]);
    else if (parts[0] === "personas") await personasView();
    else if (parts[0] === "p") await personaView(parts[1]);
    else if (parts[0] === "memory") memoryView();
    else if (parts[0] === "keys") await keysView();
    else await conversationsView();
    view().setAttribute("data-ready", location.hash || "#/");
  } catch (e) {
    if (e.status === 401) { me = null; return loginView("Your key is no longer accepted."); }
    show(failure(e));
    view().setAttribute("data-ready", "error");
  }
}

document.getElementById("logout").addEventListener("click", () => { sessionStorage.clear(); me = null; location.hash = "#/"; loginView(); });
window.addEventListener("hashchange", () => { view().removeAttribute("data-ready"); route(); });
route();
