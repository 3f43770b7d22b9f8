// Health page: status cards, and messages/s and latency charts drawn as SVG.

import { $, api } from "./api.js";
import { el, failed, say } from "./dom.js";

export async function loadHealth() {
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
