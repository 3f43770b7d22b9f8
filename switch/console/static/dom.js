// Small DOM helpers. Data from the switch is only ever put in the page as text (textContent),
// never parsed as HTML.

import { $, Unauthorized } from "./api.js";

export const MAX_ROWS = 1000; // rows kept in a list: older ones leave the page

export function el(tag, attrs = {}, ...children) {
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

export function timeText(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const d = new Date(seconds * 1000);
  return `${d.toLocaleTimeString([], { hour12: false })}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

export function dateTimeText(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function amountText(minor) {
  if (minor === null || minor === undefined || minor === "") return "";
  const value = Number(minor);
  return Number.isFinite(value) ? (value / 100).toFixed(2) : String(minor);
}

export function say(id, text) { $(id).textContent = text || ""; }

export function failed(errorId, error) {
  if (error instanceof Unauthorized) return;
  say(errorId, error.message || String(error));
}

export function genericTable(rows, caption) {
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
