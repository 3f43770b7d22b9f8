// Held requests page: release a held request as approve, decline (with a code) or drop.

import { $, api } from "./api.js";
import { amountText, el, failed, say } from "./dom.js";

export async function loadHeld() {
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
