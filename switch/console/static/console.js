// iso-switch QA console: ES modules, no dependencies, no build step. This module owns the login
// form, the pages (hash routing) and the start; each page lives in a module of its own.

import { $, TOKEN_KEY, Unauthorized, api, whenUnauthorized } from "./api.js";
import { say } from "./dom.js";
import { loadFaults, loadTemplates } from "./faults.js";
import { loadHealth } from "./health.js";
import { loadHeld } from "./held.js";
import { loadLedger } from "./ledger.js";
import { follow } from "./traffic.js";

const PAGES = ["traffic", "faults", "held", "ledger", "health"];
const REFRESH_MS = 2000; // held requests and health refresh while their page is shown

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

whenUnauthorized(showLogin);

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
