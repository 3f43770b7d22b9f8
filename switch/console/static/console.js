// iso-switch QA console: one module, no dependencies, no build step. Every request goes to this
// origin's admin API (the page's Content-Security-Policy refuses anything else). Data from the
// switch is only ever put in the page as text (textContent), never parsed as HTML.

const API = "/api/v1";
const TOKEN_KEY = "iso-switch-admin-token";
const MAX_ROWS = 1000; // rows kept in the traffic list: older ones leave the page
const PAGES = ["traffic", "faults", "held", "ledger", "health"];
const REFRESH_MS = 2000; // held requests and health refresh while their page is shown

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// API calls, with the bearer token from this tab's session

class Unauthorized extends Error {}

class ApiError extends Error {
  constructor(status, detail) {
    super(describeDetail(detail) || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

function describeDetail(detail) {
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${d.msg}`).join("; ");
  }
  if (detail && typeof detail === "object") return detail.reason || JSON.stringify(detail);
  return detail;
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { ...authHeaders(), Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
  });
  if (response.status === 401) {
    showLogin(sessionStorage.getItem(TOKEN_KEY) ? "The token was refused." : "");
    throw new Unauthorized("token required");
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok && !(path === "/health" && response.status === 503)) {
    throw new ApiError(response.status, data && data.detail !== undefined ? data.detail : text);
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// Small DOM helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function timeText(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const d = new Date(seconds * 1000);
  return `${d.toLocaleTimeString([], { hour12: false })}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

function dateTimeText(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function amountText(minor) {
  if (minor === null || minor === undefined || minor === "") return "";
  const value = Number(minor);
  return Number.isFinite(value) ? (value / 100).toFixed(2) : String(minor);
}

function say(id, text) { $(id).textContent = text || ""; }

function failed(errorId, error) {
  if (error instanceof Unauthorized) return;
  say(errorId, error.message || String(error));
}

function genericTable(rows, caption) {
  if (!rows.length) return el("p", { class: "muted" }, "None.");
  const columns = Object.keys(rows[0]);
  return el("table", { class: "grid" }, el("caption", { class: "sr-only" }, caption),
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, columns.map((c) => el("td", {}, formatCell(row[c])))))));
}

function formatCell(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// ---------------------------------------------------------------------------------------------
// Login

let started = false;

function showLogin(message) {
  $("login").hidden = false;
  for (const page of document.querySelectorAll(".page")) page.hidden = true;
  say("login-error", message);
  say("conn-status", "token required");
  $("token").focus();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  try {
    await api("faults");
  } catch (error) {
    if (!(error instanceof Unauthorized)) say("login-error", error.message);
    return;
  }
  $("token").value = "";
  $("login").hidden = true;
  start();
});

// ---------------------------------------------------------------------------------------------
// Pages (hash routing, so the browser's back button and bookmarks work)

const refreshers = { faults: loadFaults, held: loadHeld, ledger: loadLedger, health: loadHealth };
let refreshTimer = null;

function currentPage() {
  const name = location.hash.replace("#", "");
  return PAGES.includes(name) ? name : "traffic";
}

function showPage() {
  if (!$("login").hidden) return;
  const name = currentPage();
  for (const page of document.querySelectorAll(".page")) page.hidden = page.dataset.page !== name;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clearInterval(refreshTimer);
  const refresh = refreshers[name];
  if (refresh) {
    refresh();
    if (name === "held" || name === "health") refreshTimer = setInterval(refresh, REFRESH_MS);
  }
}

window.addEventListener("hashchange", showPage);

// ---------------------------------------------------------------------------------------------
// Live traffic: one row per request, its response attached when it goes out

const traffic = { rows: new Map(), order: [], bySeq: new Map(), paused: false, pending: 0, lastSeq: 0 };

function rowFor(entry) {
  if (entry.direction === "out" && entry.request_seq !== null && traffic.bySeq.has(entry.request_seq)) {
    return traffic.bySeq.get(entry.request_seq);
  }
  const row = { key: entry.seq, request: null, responses: [] };
  traffic.rows.set(entry.seq, row);
  traffic.order.push(entry.seq);
  while (traffic.order.length > MAX_ROWS) {
    const old = traffic.rows.get(traffic.order.shift());
    traffic.rows.delete(old.key);
    if (old.request) traffic.bySeq.delete(old.request.seq);
    for (const response of old.responses) traffic.bySeq.delete(response.seq);
  }
  return row;
}

function applyEntry(entry, isUpdate) {
  const known = traffic.bySeq.get(entry.seq);
  if (known) { // an update: replace the entry where it sits
    if (known.request && known.request.seq === entry.seq) known.request = entry;
    known.responses = known.responses.map((r) => (r.seq === entry.seq ? entry : r));
    return;
  }
  if (isUpdate) return; // a change to a frame no longer listed (cleared, or older than the list)
  const row = rowFor(entry);
  if (entry.direction === "in" && !row.request && !row.responses.length) row.request = entry;
  else row.responses.push(entry);
  traffic.bySeq.set(entry.seq, row);
}

function rowSummary(row) {
  const request = row.request;
  const response = row.responses[0] || null;
  const main = request || response;
  const faults = new Set();
  const rules = new Set();
  for (const entry of [request, ...row.responses]) {
    if (!entry) continue;
    for (const fault of entry.faults || []) faults.add(fault);
    for (const rule of entry.rules || []) rules.add(rule);
  }
  let code = response ? response.response_code || "" : "";
  if (request && request.matched === false && !response) code = request.note ? "none" : "…";
  return {
    time: main.time,
    connection: main.connection,
    terminal: (main.terminal || "").trim(),
    mti: request ? request.mti : response.mti,
    replyMti: response ? response.mti : null,
    stan: main.stan || "",
    amount: (main.fields || {})["4"],
    code,
    latency: request && response ? Math.max(0, (response.time - request.time) * 1000) : null,
    faults: [...faults],
    rules: [...rules],
    unmatched: request ? request.matched === false : response.request_seq === null,
    note: [request && request.note, ...row.responses.map((r) => r.note)].filter(Boolean).join("; "),
    error: [request && request.error, ...row.responses.map((r) => r.error)].filter(Boolean).join("; "),
  };
}

function filters() {
  return {
    terminal: $("f-terminal").value.trim(),
    mti: $("f-mti").value.trim(),
    code: $("f-code").value.trim().toUpperCase(),
    faults: $("f-faults").checked,
    unmatched: $("f-unmatched").checked,
  };
}

function passes(summary, f) {
  if (f.terminal && summary.terminal !== f.terminal) return false;
  if (f.mti && summary.mti !== f.mti && summary.replyMti !== f.mti) return false;
  if (f.code && summary.code.toUpperCase() !== f.code) return false;
  if (f.faults && !summary.faults.length) return false;
  if (f.unmatched && !summary.unmatched) return false;
  return true;
}

function renderTraffic() {
  const f = filters();
  const body = $("traffic-body");
  const fragment = document.createDocumentFragment();
  let shown = 0;
  for (let i = traffic.order.length - 1; i >= 0; i -= 1) {
    const row = traffic.rows.get(traffic.order[i]);
    const s = rowSummary(row);
    if (!passes(s, f)) continue;
    shown += 1;
    const faultText = s.faults.length ? `${s.faults.join(", ")}${s.rules.length ? ` (${s.rules.join(", ")})` : ""}` : "";
    const codeClass = s.code === "00" ? "ok" : s.code && s.code !== "…" ? "bad" : "";
    fragment.append(el("tr", { dataset: { seq: row.key, code: s.code, stan: s.stan, terminal: s.terminal }, class: selectedKey === row.key ? "selected" : "" },
      el("td", {}, el("button", { type: "button", class: "link", "aria-label": `Show message ${s.mti || ""} STAN ${s.stan} at ${timeText(s.time)}`,
        onclick: () => showDetail(row.key) }, timeText(s.time))),
      el("td", {}, s.connection), el("td", {}, s.terminal), el("td", {}, s.mti || "?"), el("td", {}, s.stan),
      el("td", { class: "num" }, amountText(s.amount)),
      el("td", { class: `code ${codeClass}`, title: s.note || s.error || undefined }, s.code),
      el("td", { class: "num" }, s.latency === null ? "" : `${s.latency.toFixed(1)} ms`),
      el("td", { class: s.faults.length ? "fault" : "" }, faultText)));
  }
  body.replaceChildren(fragment);
  say("traffic-count", `${shown} of ${traffic.order.length} shown${traffic.paused ? `, paused (${traffic.pending} new)` : ""}`);
}

const RENDER_MS = 200; // at most five redraws a second, however fast frames arrive
let renderQueued = false;
function scheduleRender() {
  if (traffic.paused) { say("traffic-count", `paused (${traffic.pending} new)`); return; }
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => { renderQueued = false; if (!traffic.paused) renderTraffic(); }, RENDER_MS);
}

function onStreamEvent(kind, data) {
  if (kind === "entry" || kind === "update") {
    if (kind === "entry") traffic.lastSeq = Math.max(traffic.lastSeq, data.seq);
    applyEntry(data, kind === "update");
    if (traffic.paused) traffic.pending += 1;
    scheduleRender();
  } else if (kind === "gap") {
    say("conn-status", "live (some messages were skipped: too many at once)");
  }
}

async function follow() {
  // fetch rather than EventSource, because EventSource cannot send the Authorization header
  for (let attempt = 0; attempt < 1000; attempt += 1) {
    try {
      const response = await fetch(`${API}/journal/stream?after=${traffic.lastSeq}`, { headers: authHeaders(), cache: "no-store" });
      if (response.status === 401) { showLogin("The token was refused."); return; }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      say("conn-status", "live");
      attempt = 0;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).trim());
          }
          if (data.length) onStreamEvent(kind, JSON.parse(data.join("\n")));
        }
      }
    } catch (error) {
      say("conn-status", `disconnected (${error.message}); retrying`);
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(10000, 500 * 2 ** Math.min(attempt, 5))));
  }
}

$("pause").addEventListener("click", () => {
  traffic.paused = !traffic.paused;
  $("pause").setAttribute("aria-pressed", String(traffic.paused));
  $("pause").textContent = traffic.paused ? "Resume" : "Pause";
  traffic.pending = 0;
  renderTraffic();
});
$("clear").addEventListener("click", () => {
  traffic.rows.clear(); traffic.order.length = 0; traffic.bySeq.clear();
  renderTraffic();
});
$("traffic-filters").addEventListener("input", () => renderTraffic());
$("traffic-filters").addEventListener("submit", (event) => event.preventDefault());

// -- detail: the request and its response(s) field by field, as `iso-switch describe` shows them

let selectedKey = null;

function describedTable(title, item) {
  const entry = item.entry;
  const parts = [el("h4", {}, `${title}: ${entry.mti || "?"} (seq ${entry.seq}, ${entry.direction === "in" ? "received" : "sent"} ${timeText(entry.time)})`)];
  if (entry.faults && entry.faults.length) parts.push(el("p", { class: "fault" }, `Faults: ${entry.faults.join(", ")}${entry.rules && entry.rules.length ? ` (rules ${entry.rules.join(", ")})` : ""}`));
  if (entry.note) parts.push(el("p", { class: "muted" }, entry.note));
  const described = item.described;
  if (!described) {
    parts.push(el("p", { class: "muted" }, "No frame to describe."));
    return el("div", { class: "message-view" }, parts);
  }
  if (described.mti_meaning) parts.push(el("p", {}, `${described.mti} ${described.mti_meaning}`));
  parts.push(el("table", { class: "grid fields" },
    el("caption", { class: "sr-only" }, `${title} fields`),
    el("thead", {}, el("tr", {}, ["Element", "Name", "Value", "Wire"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, described.elements.map((e) => el("tr", {},
      el("td", {}, e.element), el("td", {}, e.name),
      el("td", {}, el("span", { class: e.masked ? "masked" : "" }, e.value),
        Object.keys(e.parts || {}).length ? el("ul", { class: "parts" }, Object.entries(e.parts).map(([k, v]) => el("li", {}, `${k}: ${v}`))) : null),
      el("td", { class: "wire" }, e.masked ? "(masked)" : `${e.length_prefix}${e.data || ""}`))))));
  if (described.error) parts.push(el("p", { class: "error" }, `Decoding stopped: ${described.error.reason} (element ${described.error.element}, byte ${described.error.offset})`));
  return el("div", { class: "message-view" }, parts);
}

async function showDetail(key) {
  selectedKey = key;
  const row = traffic.rows.get(key);
  if (!row) return;
  const entry = row.request || row.responses[0];
  const params = new URLSearchParams();
  if (entry.terminal) params.set("terminal", entry.terminal.trim());
  if (entry.stan) params.set("stan", entry.stan);
  const body = $("detail-body");
  body.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  renderTraffic();
  try {
    const data = await api(`journal/${entry.seq}?${params}`);
    const items = [data, ...data.related].sort((a, b) => a.entry.seq - b.entry.seq);
    body.replaceChildren(...items.map((item) => describedTable(item.entry.direction === "in" ? "Request" : "Response", item)));
  } catch (error) {
    if (!(error instanceof Unauthorized)) body.replaceChildren(el("p", { class: "error" }, error.message));
  }
}

// ---------------------------------------------------------------------------------------------
// Scenario and fault rules

let editing = null; // id of the rule in the editor, or null when adding

async function loadFaults() {
  try {
    const [state, scenarios] = await Promise.all([api("faults"), api("scenarios")]);
    renderFaults(state);
    say("scenario-name", scenarios.loaded);
    $("scenario-list").replaceChildren(...scenarios.shipped.map((name) => el("option", { value: name })));
  } catch (error) { failed("faults-error", error); }
}

function renderFaults(state) {
  say("seed-value", state.seed);
  $("maintenance-mode").value = state.maintenance.mode;
  $("maintenance-code").value = state.maintenance.code;
  const counters = state.counters || {};
  $("rules-body").replaceChildren(...state.rules.map((rule) => {
    const actions = Object.fromEntries(Object.entries(rule).filter(([k]) => !["id", "name", "enabled", "when", "probability"].includes(k)));
    const fired = counters[rule.id] ? counters[rule.id].fired ?? Object.values(counters[rule.id]).join("/") : "";
    return el("tr", { dataset: { rule: rule.id } },
      el("td", {}, el("input", { type: "checkbox", checked: rule.enabled, "aria-label": `Enable rule ${rule.id}`,
        onchange: (event) => patchRule(rule.id, { enabled: event.target.checked }) })),
      el("td", {}, el("code", {}, rule.id)), el("td", {}, rule.name),
      el("td", {}, el("code", {}, JSON.stringify(rule.when))), el("td", {}, el("code", {}, JSON.stringify(actions))),
      el("td", { class: "num" }, rule.probability), el("td", { class: "num" }, fired),
      el("td", {}, el("button", { type: "button", class: "secondary", onclick: () => editRule(rule), "aria-label": `Edit rule ${rule.id}` }, "Edit"),
        " ", el("button", { type: "button", class: "danger", onclick: () => deleteRule(rule.id), "aria-label": `Delete rule ${rule.id}` }, "Delete")));
  }));
  if (!state.rules.length) $("rules-body").append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No fault rules: every message is handled cleanly.")));
}

async function change(action, message) {
  say("faults-error", ""); say("faults-message", "");
  try {
    const result = await action();
    say("faults-message", typeof message === "function" ? message(result) : message);
    await loadFaults();
    return result;
  } catch (error) { failed("faults-error", error); return null; }
}

function patchRule(id, changes) {
  return change(() => api(`faults/${encodeURIComponent(id)}`, { method: "PATCH", body: changes }),
    `Rule ${id} ${"enabled" in changes ? (changes.enabled ? "enabled" : "disabled") : "changed"}; applies from the next message.`);
}

function deleteRule(id) {
  if (!confirm(`Delete fault rule ${id}?`)) return null;
  return change(() => api(`faults/${encodeURIComponent(id)}`, { method: "DELETE" }), `Rule ${id} deleted.`);
}

function editRule(rule) {
  editing = rule.id;
  $("rule-form-title").textContent = `Edit rule ${rule.id}`;
  $("rule-save").textContent = "Save changes";
  $("rule-cancel").hidden = false;
  const { id, ...keys } = rule;
  $("rule-json").value = JSON.stringify(keys, null, 2);
  $("rule-json").focus();
}

function stopEditing() {
  editing = null;
  $("rule-form-title").textContent = "Add a rule";
  $("rule-save").textContent = "Add rule";
  $("rule-cancel").hidden = true;
}

$("rule-cancel").addEventListener("click", () => { stopEditing(); $("rule-json").value = ""; });

let templates = {};
async function loadTemplates() {
  templates = (await api("fault-templates")).templates;
  $("template").replaceChildren(...Object.keys(templates).map((name) => el("option", { value: name }, name)));
}

$("use-template").addEventListener("click", () => {
  stopEditing();
  $("rule-json").value = JSON.stringify(templates[$("template").value] || {}, null, 2);
  $("rule-json").focus();
});

$("rule-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  let table;
  try { table = JSON.parse($("rule-json").value); } catch (error) {
    say("faults-error", `Rule: not valid JSON (${error.message})`);
    return;
  }
  if (editing) {
    const id = editing;
    // keys removed in the editor go back to their defaults: send them as null
    const current = (await api(`faults/${encodeURIComponent(id)}`));
    for (const key of Object.keys(current)) if (!(key in table) && key !== "id") table[key] = null;
    if (await patchRule(id, table)) { stopEditing(); $("rule-json").value = ""; }
  } else {
    const added = await change(() => api("faults", { method: "POST", body: table }), (rule) => `Rule ${rule.id} added; applies from the next message.`);
    if (added) $("rule-json").value = "";
  }
});

$("scenario-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const body = { name: $("scenario-input").value.trim() };
  if ($("scenario-seed").value !== "") body.seed = $("scenario-seed").value.trim();
  change(() => api("scenario", { method: "POST", body }), (r) => {
    const waits = Object.keys(r.host.not_applied || {});
    return `Scenario ${r.scenario} loaded: ${r.fault_rules.length} fault rules, ${r.response_rules} response rules, seed ${r.seed}`
      + (waits.length ? `; needs a restart for: ${waits.join(", ")}` : "") + ".";
  });
});

$("seed-form").addEventListener("submit", (event) => {
  event.preventDefault();
  // the digits as typed: a 64-bit seed does not fit a JavaScript number; the API parses the text
  const seed = $("seed-input").value.trim();
  change(() => api("seed", { method: "PUT", body: { seed } }), (r) => `Seed set to ${r.seed}; rules start afresh.`);
});

$("maintenance-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const body = { mode: $("maintenance-mode").value };
  if ($("maintenance-code").value) body.code = $("maintenance-code").value;
  change(() => api("maintenance", { method: "PUT", body }), (r) => `Maintenance ${r.mode} (code ${r.code}).`);
});

$("reset-sessions").addEventListener("click", () => change(() => api("reset", { method: "POST", body: { what: "sessions" } }),
  (r) => `${r.sessions_cleared} sessions cleared: every terminal must sign on again.`));
$("reset-faults").addEventListener("click", () => {
  if (confirm("Remove every fault rule and turn maintenance off?")) {
    change(() => api("reset", { method: "POST", body: { what: "faults" } }), "Fault rules removed, maintenance off.");
  }
});

// ---------------------------------------------------------------------------------------------
// Held requests

async function loadHeld() {
  try {
    const data = await api("held");
    const rows = data.held.map((h) => {
      const code = el("input", { size: 3, maxlength: 2, value: "05", "aria-label": `Decline code for ${h.id}` });
      const release = (as) => releaseHeld(h.id, as, as === "decline" ? code.value : undefined);
      const actions = h.state === "held" ? [
        el("button", { type: "button", onclick: () => release("approve") }, "Approve"), " ",
        el("button", { type: "button", class: "secondary", onclick: () => release("decline") }, "Decline"), " ", code, " ",
        el("button", { type: "button", class: "danger", onclick: () => release("drop") }, "Drop"),
      ] : [h.state];
      return el("tr", { dataset: { held: h.id } }, el("td", {}, el("code", {}, h.id)), el("td", {}, h.state),
        el("td", {}, h.terminal || ""), el("td", {}, h.mti), el("td", {}, h.stan || ""),
        el("td", { class: "num" }, amountText(h.amount)), el("td", { class: "num", dataset: { age: h.id } }, `${Math.round(h.age_seconds)} s`),
        el("td", {}, (h.rules || []).join(", ")), el("td", {}, actions));
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No held requests.")));
    // keep focus and a half-typed decline code: replace the rows only when the list changed
    const signature = JSON.stringify(data.held.map((h) => [h.id, h.state]));
    if ($("held-body").dataset.signature !== signature) {
      $("held-body").replaceChildren(...rows);
      $("held-body").dataset.signature = signature;
    } else {
      for (const h of data.held) {
        const cell = $("held-body").querySelector(`[data-age="${CSS.escape(h.id)}"]`);
        if (cell) cell.textContent = `${Math.round(h.age_seconds)} s`;
      }
    }
  } catch (error) { failed("held-error", error); }
}

async function releaseHeld(id, as, code) {
  say("held-error", ""); say("held-message", "");
  try {
    const body = { as };
    if (code) body.code = code;
    const result = await api(`held/${encodeURIComponent(id)}/release`, { method: "POST", body });
    say("held-message", `${id} released as ${as}: ${result.status}${result.response_code ? `, code ${result.response_code}` : ""}.`);
  } catch (error) { failed("held-error", error); }
  loadHeld();
}

// ---------------------------------------------------------------------------------------------
// Ledger

let postings = [];

async function loadLedger() {
  try {
    const [p, b, s, d, t] = await Promise.all([api("ledger/postings"), api("ledger/batches"), api("ledger/settlements"),
      api("ledger/discrepancies"), api("terminals")]);
    postings = p.postings;
    renderPostings();
    renderBatches(b.batches);
    $("settlements").replaceChildren(genericTable(s.settlements, "Settlements"));
    $("discrepancies").replaceChildren(genericTable(d.discrepancies, "Discrepancies"));
    $("terminal-list").replaceChildren(...t.terminals.map((name) => el("option", { value: name })));
  } catch (error) { if (!(error instanceof Unauthorized)) $("postings-count").textContent = error.message; }
}

function renderPostings() {
  const words = $("postings-search").value.toLowerCase().split(/\s+/).filter(Boolean);
  const shown = postings.filter((p) => {
    const text = [p.terminal, p.stan, p.rrn, p.pan, p.response_code, p.amount, amountText(p.amount), p.kind, p.batch, p.auth_code].join(" ").toLowerCase();
    return words.every((w) => text.includes(w));
  });
  $("postings-body").replaceChildren(...shown.slice(-MAX_ROWS).reverse().map((p) => el("tr", {},
    el("td", {}, p.seq), el("td", {}, dateTimeText(p.received_at)), el("td", {}, p.terminal), el("td", {}, p.stan),
    el("td", {}, `${p.kind} ${p.direction}`), el("td", { class: "num" }, `${amountText(p.amount)} ${p.currency}`),
    el("td", {}, p.pan), el("td", {}, p.batch), el("td", { class: p.approved ? "code ok" : "code bad" }, p.response_code),
    el("td", {}, p.rrn), el("td", {}, p.reversed ? "reversed" : p.captured ? "captured" : p.approved ? "approved" : "declined"))));
  say("postings-count", `${shown.length} of ${postings.length} postings`);
}

function renderBatches(batches) {
  const total = { dc: 0, da: 0, cc: 0, ca: 0 };
  $("batches-body").replaceChildren(...batches.map((b) => {
    total.dc += b.debit_count; total.da += b.debit_amount; total.cc += b.credit_count; total.ca += b.credit_amount;
    return el("tr", { dataset: { terminal: b.terminal, batch: b.batch } },
      el("td", {}, b.terminal), el("td", {}, b.batch), el("td", {}, b.status),
      el("td", { class: "num", dataset: { col: "debit_count" } }, b.debit_count),
      el("td", { class: "num", dataset: { col: "debit_amount" } }, amountText(b.debit_amount)),
      el("td", { class: "num", dataset: { col: "credit_count" } }, b.credit_count),
      el("td", { class: "num", dataset: { col: "credit_amount" } }, amountText(b.credit_amount)),
      el("td", { class: "num", dataset: { col: "net_amount" } }, amountText(b.debit_amount - b.credit_amount)),
      el("td", { class: "num" }, b.postings), el("td", { class: "num" }, b.discrepancies));
  }));
  $("batches-foot").replaceChildren(el("tr", { id: "batches-total" }, el("th", { scope: "row", colspan: 3 }, "All batches"),
    el("td", { class: "num", dataset: { col: "debit_count" } }, total.dc),
    el("td", { class: "num", dataset: { col: "debit_amount" } }, amountText(total.da)),
    el("td", { class: "num", dataset: { col: "credit_count" } }, total.cc),
    el("td", { class: "num", dataset: { col: "credit_amount" } }, amountText(total.ca)),
    el("td", { class: "num", dataset: { col: "net_amount" } }, amountText(total.da - total.ca)), el("td", {}), el("td", {})));
}

$("postings-search").addEventListener("input", renderPostings);
$("ledger-refresh").addEventListener("click", loadLedger);

$("terminal-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const terminal = $("terminal-input").value.trim();
  const section = $("terminal-page");
  section.hidden = false;
  $("terminal-title").textContent = `Terminal ${terminal}`;
  try {
    const t = await api(`terminals/${encodeURIComponent(terminal)}`);
    const sessions = t.sessions.map((s) => el("li", {}, `${s.family}: ${s.signed_on_at ? `signed on since ${dateTimeText(s.signed_on_at)}` : "not signed on"}`
      + (s.check_values ? `; key check values ${Object.entries(s.check_values).map(([k, v]) => `${k} ${v}`).join(", ")}` : "")));
    const open = t.open_batch;
    $("terminal-body").replaceChildren(
      el("dl", { class: "pairs" },
        el("dt", {}, "Sessions"), el("dd", {}, el("ul", {}, sessions)),
        el("dt", {}, "Last sign-on request"), el("dd", {}, dateTimeText(t.last_signon_request)),
        el("dt", {}, "Open batch"), el("dd", { id: "terminal-open-batch" },
          `${open.batch}: ${open.debit_count} debits ${amountText(open.debit_amount)}, ${open.credit_count} credits ${amountText(open.credit_amount)}, net ${amountText(open.debit_amount - open.credit_amount)} (${open.postings} postings)`)),
      el("h4", {}, "Settlements"), genericTable(t.settlements, "Settlements of this terminal"));
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("terminal-body").replaceChildren(el("p", { class: "error" }, error.message));
  }
});

// ---------------------------------------------------------------------------------------------
// Health

async function loadHealth() {
  try {
    const [health, history] = await Promise.all([api("/health"), api("health/history")]);
    const cards = [["Status", health.status], ["Uptime", `${Math.round(health.uptime_seconds)} s`],
      ["Connections open", health.connections_open], ["Commit lag", `${health.commit_lag_seconds} s`],
      ["Scenario", health.scenario], ["Seed", health.seed], ["Maintenance", health.maintenance], ["Dialect", health.dialect]];
    $("health-cards").replaceChildren(...cards.map(([name, value]) => el("div", { class: "card stat" }, el("dt", {}, name), el("dd", {}, value))));
    say("health-problems", (health.problems || []).join("; "));
    drawChart(history.points);
    say("conn-status", health.status === "ok" ? "live" : `unhealthy: ${(health.problems || []).join("; ")}`);
  } catch (error) { failed("health-problems", error); }
}

function drawChart(points) {
  const last = points[points.length - 1];
  const summary = last ? `Last second: ${last.messages_per_second} messages per second, mean latency ${last.latency_ms ?? "n/a"} ms, ${last.connections} connections open` : "No samples yet";
  $("chart").replaceChildren(
    sparkChart(points, (p) => p.messages_per_second, "Messages per second", "msg/s", "rate"),
    sparkChart(points, (p) => p.latency_ms, "Mean latency", "ms", "latency"));
  say("chart-summary", `${summary}.`);
}

function sparkChart(points, value, title, unit, kind) {
  // one series per chart: two scales on one plot would hide one line behind the other
  const width = 600; const height = 180; const left = 56; const right = 12; const top = 16; const bottom = 28;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const values = points.map(value);
  const known = values.filter((v) => v !== null && v !== undefined);
  const max = Math.max(1, ...known);
  const latest = known.length ? known[known.length - 1] : null;
  svg.setAttribute("aria-label", `${title} over the last ${points.length} seconds: latest ${latest ?? "n/a"} ${unit}, highest ${known.length ? Math.max(...known) : "n/a"} ${unit}`);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const span = points.length > 1 ? points[points.length - 1].time - points[0].time : 0;
  const x = (i) => left + (points.length > 1 ? (points[i].time - points[0].time) / span : 0) * (width - left - right);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  add("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, class: "axis" });
  add("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis" });
  add("text", { x: 4, y: top + 4 }, max.toFixed(max < 10 ? 1 : 0));
  add("text", { x: 4, y: height - bottom }, "0");
  add("text", { x: left, y: height - 6 }, span ? `−${Math.round(span)} s` : "");
  add("text", { x: width - right - 24, y: height - 6 }, "now");
  add("text", { x: left + 8, y: top + 4, class: kind }, `${title} (${unit})`);
  const coords = [];
  values.forEach((v, i) => { if (v !== null && v !== undefined) coords.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`); });
  if (coords.length > 1) add("polyline", { points: coords.join(" "), class: kind });
  return svg;
}

// ---------------------------------------------------------------------------------------------
// Start: check the token (if any), then follow the journal and show the page in the URL

async function start() {
  if (started) { showPage(); return; }
  try {
    await api("faults");
  } catch (error) {
    if (!(error instanceof Unauthorized)) say("conn-status", `admin API unreachable: ${error.message}`);
    return;
  }
  started = true;
  $("login").hidden = true;
  showPage();
  loadTemplates().catch(() => {});
  follow();
}

start();
