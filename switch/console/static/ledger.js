// Ledger page: postings (searchable), batches with net totals, settlements, discrepancies, and
// the page of one terminal.

import { $, Unauthorized, api } from "./api.js";
import { MAX_ROWS, amountText, dateTimeText, el, genericTable, say } from "./dom.js";

let postings = [];

export async function loadLedger() {
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
