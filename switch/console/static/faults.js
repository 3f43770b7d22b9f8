// Scenario and fault rules page: enable, edit, add from a template, seed, maintenance, resets.

import { $, api } from "./api.js";
import { el, failed, say } from "./dom.js";

let editing = null; // id of the rule in the editor, or null when adding

export async function loadFaults() {
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
export async function loadTemplates() {
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
