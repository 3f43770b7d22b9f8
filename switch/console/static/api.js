// Admin API calls, with the bearer token from this tab's session. Every request goes to this
// origin (the page's Content-Security-Policy refuses anything else).

export const API = "/api/v1";
export const TOKEN_KEY = "iso-switch-admin-token";

export const $ = (id) => document.getElementById(id);

// What to do when the API refuses the token: the login form, registered by console.js (which
// owns the pages), so this module needs no import of it.
let onUnauthorized = () => {};
export function whenUnauthorized(handler) { onUnauthorized = handler; }
export function unauthorized(message) { onUnauthorized(message); }

export class Unauthorized extends Error {}

export class ApiError extends Error {
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

export function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { ...authHeaders(), Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
  });
  if (response.status === 401) {
    unauthorized(sessionStorage.getItem(TOKEN_KEY) ? "The token was refused." : "");
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
