// Live traffic page: one row per request, its response attached when it goes out, fed by the
// journal's SSE stream; and the detail view of one exchange.

import { $, API, Unauthorized, api, authHeaders, unauthorized } from "./api.js";
import { MAX_ROWS, amountText, el, say, timeText } from "./dom.js";

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

export async function follow() {
  // fetch rather than EventSource, because EventSource cannot send the Authorization header
  for (let attempt = 0; attempt < 1000; attempt += 1) {
    try {
      const response = await fetch(`${API}/journal/stream?after=${traffic.lastSeq}`, { headers: authHeaders(), cache: "no-store" });
      if (response.status === 401) { unauthorized("The token was refused."); return; }
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
