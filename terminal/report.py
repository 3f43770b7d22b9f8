"""What a load run leaves for people: the console summary, summary.json and report.html.

Everything here renders the summary dictionary ``terminal.load`` builds (the very content of
summary.json), so a report can be re-rendered from a saved summary and nothing in it can disagree
with the JSON. The HTML page is one self-contained file — inline CSS and inline SVG charts drawn
here, no JavaScript, no external fonts or images — so it reads the same offline, attached to a
ticket or opened years later. Hovering a bar shows its exact numbers (SVG ``<title>``).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from terminal.profile import format_amount

__all__ = [
    "histogram_svg",
    "render_html",
    "summary_lines",
    "timeline_svg",
    "write_report",
]

OUTCOME_MEANINGS = {
    "approved": "approved by the host",
    "declined": "declined by the host (an answer: nothing moved)",
    "reversed": "no trustworthy answer; the reversal was acknowledged: nothing moved",
    "unknown-queued": "no trustworthy answer yet; a reversal is stored and goes out first next time",
    "unknown": "the host refused the reversal: whether money moved cannot be known",
    "refused": "refused by the terminal itself: nothing sent",
    "failed": "not done: no connection or no sign-on",
    "completed": "nothing left owed to the host",
}
_COLOURS = {"approved": "#2e7d32", "declined": "#f9a825", "errors": "#c62828", "grid": "#e0e0e0",
            "axis": "#616161", "marker": "#1565c0"}
_MAX_TABLE_ROWS = 500
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif"


def write_report(directory: str | Path, summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``report.html`` into ``directory`` (created if needed)."""
    target = Path(directory).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    json_path, html_path = target / "summary.json", target / "report.html"
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    html_path.write_text(render_html(summary), encoding="utf-8")
    return json_path, html_path


# ---------------------------------------------------------------------------------------------
# Console


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The end-of-run summary for people, a few aligned lines."""
    config = summary["config"]
    transactions = summary["transactions"]
    latency = summary["latency_ms"]
    mode = f"rate {config['rate_per_second']:g}/s" if config["rate_per_second"] else "closed loop"
    in_flight = f" ({transactions['in_flight']} still in flight)" if transactions["in_flight"] else ""
    lines = [
        f"load     {config['terminals']} terminals → {config['host']}:{config['port']} ({config['dialect']}, {mode}): "
        f"{transactions['finished']} transactions in {summary['elapsed_seconds']:.2f} s = {summary['tps']:.1f} TPS"
        f"{in_flight}" + ("  [INTERRUPTED]" if summary.get("interrupted") else "")
        + ("  [stopped early by Ctrl-C]" if summary.get("stopped_early") else ""),
        "latency  " + "  ".join(f"{name} {_ms(latency.get(name))}"
                                for name in ("p50", "p90", "p99", "p99.9", "max")),
        "outcomes " + " · ".join(f"{kind} {n}" for kind, n in summary["outcomes"].items()
                                 if n or kind in ("approved", "declined")),
    ]
    codes = summary["response_codes"]
    if codes:
        lines.append("codes    " + " · ".join(
            f"{code} {item['count']}" + ("" if code == "00" else f" ({item['meaning']})")
            for code, item in codes.items()))
    lines.append("by op    " + " · ".join(
        f"{op} {sum(counts.values())} (" + ", ".join(f"{kind} {n}" for kind, n in counts.items()) + ")"
        for op, counts in summary["by_operation"].items()))
    events = summary["terminal_events"]
    lines.append(
        f"terminal reversal messages sent {events['reversals_sent']} (repeats included), reversals acknowledged "
        f"{events['reversals_acknowledged']}, refused {events['reversals_refused']} · "
        f"late replies discarded {events['late_replies_discarded']} · "
        f"exchanges failed {events['exchanges_failed']} · sign-ons {events['sign_ons']} · "
        f"connections lost {events['connections_lost']}")
    housekeeping = summary.get("housekeeping", {})
    if "settle" in housekeeping:
        lines.append("settle   " + ", ".join(f"{kind} {n}" for kind, n in housekeeping["settle"].items())
                     + " (batch closed = approved)")
    drains = housekeeping.get("drain", {})
    owed = sum(n for kind, n in drains.items() if kind != "completed")
    if owed:
        store_dir = config.get("store_dir", "DIR")
        lines.append(f"drain    {owed} drains could not finish: something is still owed to the host "
                     f"(the next load with these stores sends it first, or `iso-terminal drain --terminal-id ID "
                     f"--store {store_dir}/ID.sqlite`)")
    consistency = summary["consistency"]
    lines.append(f"check    {consistency['headline']}")
    for mismatch in consistency["mismatches"][:20]:
        lines.append("  MISMATCH " + _mismatch_line(mismatch))
    if len(consistency["mismatches"]) > 20:
        lines.append(f"  ... and {len(consistency['mismatches']) - 20} more (see --json or --report)")
    for item in consistency["undecided"][:5]:
        lines.append("  undecided " + _mismatch_line(item))
    if consistency.get("hint"):
        lines.append(f"  hint: {consistency['hint']}")
    for problem in summary.get("accounting_problems", []):
        lines.append(f"BUG: accounting does not add up: {problem}")
    if "report" in summary:
        lines.append(f"report   {summary['report']['html']}")
    return lines


def _mismatch_line(item: Mapping[str, str]) -> str:
    when = f" field 7 {item['transmission_time']}" if item["transmission_time"] else ""
    return (f"{item['terminal']} STAN {item['stan']}{when}: {item['problem']} — terminal: {item['terminal_view']}; "
            f"host: {item['host_view']}")


# ---------------------------------------------------------------------------------------------
# SVG charts


def _nice_step(maximum: float, ticks: int = 5) -> float:
    """A 1-2-5 step giving at most ``ticks`` intervals up to ``maximum``."""
    if maximum <= 0:
        return 1.0
    raw = maximum / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= raw:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def _number(value: float) -> str:
    return f"{value:g}" if value < 1e6 else f"{value:.3g}"


def _svg_open(width: int, height: int, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}" style="{_FONT}">',
            f"<title>{html.escape(title)}</title>",
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']


def _y_axis(parts: list[str], top: float, bottom: float, left: float, right: float, maximum: float,
            label: str) -> float:
    """Grid lines and labels; returns the scale's top value."""
    step = _nice_step(maximum)
    scale_top = max(step, math.ceil(maximum / step) * step)
    value = 0.0
    while value <= scale_top + step / 2:
        y = bottom - (bottom - top) * value / scale_top
        parts.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" '
                     f'stroke="{_COLOURS["grid"]}" stroke-width="1"/>')
        parts.append(f'<text x="{left - 6:.1f}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="{_COLOURS["axis"]}">{_number(value)}</text>')
        value += step
    mid = (top + bottom) / 2
    parts.append(f'<text x="14" y="{mid:.1f}" font-size="12" text-anchor="middle" fill="{_COLOURS["axis"]}" '
                 f'transform="rotate(-90 14 {mid:.1f})">{html.escape(label)}</text>')
    return scale_top


def _ms_label(milliseconds: float) -> str:
    if milliseconds >= 1000:
        return f"{milliseconds / 1000:g} s"
    return f"{milliseconds:g} ms"


def _empty_chart(parts: list[str], width: int, height: int) -> str:
    parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="14" '
                 f'fill="{_COLOURS["axis"]}">no transactions finished</text></svg>')
    return "\n".join(parts)


def histogram_svg(histogram: Sequence[Mapping[str, float]], latency: Mapping[str, Any],
                  width: int = 760, height: int = 280) -> str:
    """Latency histogram on a log axis (bins of equal width per tenth of a decade), with the
    p50 / p99 / p99.9 markers drawn where those latencies fall."""
    title = "Latency histogram (log scale), transactions per bin"
    parts = _svg_open(width, height, title)
    left, right, top, bottom = 60.0, width - 16.0, 56.0, height - 46.0
    if not histogram:
        return _empty_chart(parts, width, height)
    counts = [int(item["count"]) for item in histogram]
    scale_top = _y_axis(parts, top, bottom, left, right, max(counts), "transactions")
    bar_width = (right - left) / len(histogram)
    low_log = math.log10(histogram[0]["from_ms"])
    high_log = math.log10(histogram[-1]["to_ms"])

    def x_of(milliseconds: float) -> float:
        position = (math.log10(milliseconds) - low_log) / (high_log - low_log)
        return left + (right - left) * min(max(position, 0.0), 1.0)

    for index, item in enumerate(histogram):
        count = int(item["count"])
        if not count:
            continue
        bar_height = (bottom - top) * count / scale_top
        x = left + index * bar_width
        parts.append(f'<rect x="{x + 0.5:.1f}" y="{bottom - bar_height:.1f}" width="{max(bar_width - 1, 1):.1f}" '
                     f'height="{bar_height:.1f}" fill="{_COLOURS["approved"]}">'
                     f'<title>{_ms_label(item["from_ms"])} – {_ms_label(item["to_ms"])}: {count}</title></rect>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="{_COLOURS["axis"]}"/>')
    few_decades = high_log - low_log <= 2.5
    for decade in range(math.floor(low_log), math.ceil(high_log) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**decade
            if not low_log - 1e-9 <= math.log10(value) <= high_log + 1e-9:
                continue
            x = x_of(value)
            parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" '
                         f'stroke="{_COLOURS["axis"]}"/>')
            if mantissa == 1 or few_decades:
                parts.append(f'<text x="{x:.1f}" y="{bottom + 18}" font-size="11" text-anchor="middle" '
                             f'fill="{_COLOURS["axis"]}">{_ms_label(float(f"{value:.6g}"))}</text>')
    parts.append(f'<text x="{(left + right) / 2:.1f}" y="{height - 8}" font-size="12" text-anchor="middle" '
                 f'fill="{_COLOURS["axis"]}">latency (time to the outcome), log scale</text>')
    for row, name in enumerate(("p50", "p99", "p99.9")):
        quantile = latency.get(name)
        if quantile is None or quantile <= 0:
            continue
        value = float(quantile)
        x = x_of(value)
        label_y = 14 + row * 13
        parts.append(f'<line x1="{x:.1f}" y1="{label_y + 3}" x2="{x:.1f}" y2="{bottom}" stroke="{_COLOURS["marker"]}" '
                     f'stroke-width="1.5" stroke-dasharray="4 3"><title>{name} = {_ms(value)}</title></line>')
        anchor = "end" if x > right - 90 else "start"
        dx = -4 if anchor == "end" else 4
        parts.append(f'<text x="{x + dx:.1f}" y="{label_y}" font-size="11" text-anchor="{anchor}" '
                     f'fill="{_COLOURS["marker"]}">{name} {_ms(value)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def timeline_svg(timeline: Sequence[Mapping[str, float]], width: int = 760, height: int = 280) -> str:
    """Transactions per second over the run, stacked by outcome: approved, declined, errors (no
    trustworthy answer). Each bar is one bucket of the summary's timeline (``start``, ``seconds``),
    its height the bucket's count divided by its width."""
    title = "Transactions per second over time, by outcome"
    parts = _svg_open(width, height, title)
    left, right, top, bottom = 60.0, width - 16.0, 34.0, height - 46.0
    if not timeline:
        return _empty_chart(parts, width, height)
    bars = []  # start, width, approved/s, declined/s, errors/s
    for bucket in timeline:
        seconds = float(bucket["seconds"])
        bars.append((float(bucket["start"]), seconds, bucket["ok"] / seconds,
                     bucket["declined"] / seconds, bucket["errors"] / seconds))
    span = bars[-1][0] + bars[-1][1]
    peak = max(a + d + e for _, _, a, d, e in bars)
    scale_top = _y_axis(parts, top, bottom, left, right, peak, "transactions per second")

    def x_of(second: float) -> float:
        return left + (right - left) * second / span

    for start, seconds, approved, declined, errors in bars:
        x, bar_width = x_of(start), x_of(start + seconds) - x_of(start)
        y = bottom
        label = f"{_number(round(start, 3))}–{_number(round(start + seconds, 3))} s"
        for value, colour, name in ((approved, _COLOURS["approved"], "approved"),
                                    (declined, _COLOURS["declined"], "declined"),
                                    (errors, _COLOURS["errors"], "errors")):
            if value <= 0:
                continue
            h = (bottom - top) * value / scale_top
            y -= h
            gap = 1.0 if bar_width > 3 else 0.0
            parts.append(f'<rect x="{x:.2f}" y="{y:.2f}" width="{max(bar_width - gap, 0.5):.2f}" height="{h:.2f}" '
                         f'fill="{colour}"><title>{label}: {_number(round(value, 2))} {name}/s</title></rect>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="{_COLOURS["axis"]}"/>')
    step = _nice_step(span, 8)
    tick = 0.0
    while tick <= span + step / 1000:
        x = x_of(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" stroke="{_COLOURS["axis"]}"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 18}" font-size="11" text-anchor="middle" '
                     f'fill="{_COLOURS["axis"]}">{_number(round(tick, 6))}</text>')
        tick += step
    parts.append(f'<text x="{(left + right) / 2:.1f}" y="{height - 8}" font-size="12" text-anchor="middle" '
                 f'fill="{_COLOURS["axis"]}">seconds since the start</text>')
    legend_x = right - 250
    for offset, (name, colour) in enumerate((("approved", _COLOURS["approved"]), ("declined", _COLOURS["declined"]),
                                             ("errors", _COLOURS["errors"]))):
        x = legend_x + offset * 85
        parts.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16}" y="18" font-size="12" fill="#212121">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# HTML


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; color: #212121;
       margin: 0; background: #f5f5f5; }
main { max-width: 860px; margin: 0 auto; padding: 24px 20px 48px; background: #ffffff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #e0e0e0; padding-bottom: 4px; }
p.sub { color: #616161; margin: 0 0 16px; font-size: 14px; }
.banner { padding: 12px 16px; border-radius: 6px; font-size: 15px; margin: 12px 0; }
.banner.consistent { background: #e8f5e9; border: 1px solid #66bb6a; }
.banner.inconsistent { background: #ffebee; border: 1px solid #e53935; }
.banner.skipped { background: #eeeeee; border: 1px solid #9e9e9e; }
.banner b { display: block; margin-bottom: 2px; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(118px, 1fr)); gap: 10px; margin: 12px 0; }
.figure { border: 1px solid #e0e0e0; border-radius: 6px; padding: 8px 12px; box-sizing: border-box; }
.figure .value { font-size: 22px; font-weight: 600; }
.figure .label { font-size: 12px; color: #616161; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #eeeeee; vertical-align: top; }
th { background: #fafafa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.chart { margin: 8px 0; }
.chart svg { max-width: 100%; height: auto; }
.note { color: #616161; font-size: 12px; }
footer { color: #9e9e9e; font-size: 12px; margin-top: 32px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(headings: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headings))
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "-"


def render_html(summary: Mapping[str, Any]) -> str:
    """The report page for ``summary`` (as written to summary.json)."""
    config = summary["config"]
    latency = summary["latency_ms"]
    transactions = summary["transactions"]
    outcomes: Mapping[str, int] = summary["outcomes"]
    finished = transactions["finished"]
    consistency = summary["consistency"]
    exponent = config.get("currency_exponent", 2)
    mode = f"open loop at {config['rate_per_second']:g}/s" if config["rate_per_second"] else "closed loop"
    limit = (f"{config['count']} transactions" if config["count"] is not None
             else f"{config['duration_seconds']:g} s")
    out: list[str] = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Load test {_e(config['host'])}:{_e(config['port'])} — {_e(summary['started_at'])}</title>",
        f"<style>{_CSS}</style>", "</head>", "<body>", "<main>",
        f"<h1>Load test: {_e(config['terminals'])} terminals → {_e(config['host'])}:{_e(config['port'])}</h1>",
        f'<p class="sub">{_e(summary["started_at"])} to {_e(summary["ended_at"])} · dialect {_e(config["dialect"])} '
        f"· {_e(mode)} · {_e(limit)}{' · INTERRUPTED' if summary.get('interrupted') else ''}"
        f"{' · stopped early' if summary.get('stopped_early') else ''}</p>",
    ]
    status = consistency["status"]
    banner_title = {"consistent": "Terminals and host agree", "inconsistent": "Terminals and host DISAGREE",
                    "skipped": "Consistency not checked"}[status]
    out.append(f'<div class="banner {status}"><b>{_e(banner_title)}</b>{_e(consistency["headline"])}'
               + (f'<br><span class="note">{_e(consistency["hint"])}</span>' if consistency.get("hint") else "")
               + "</div>")
    figures = [
        (f"{summary['tps']:.1f}", "transactions per second"),
        (str(finished), f"transactions in {summary['elapsed_seconds']:.1f} s"),
        (_ms(latency.get("p50")), "p50 latency"),
        (_ms(latency.get("p99")), "p99 latency"),
        (_ms(latency.get("max")), "max latency"),
        (str(summary["errors"]), "errors (no trustworthy answer)"),
    ]
    out.append('<div class="figures">' + "".join(
        f'<div class="figure"><div class="value">{_e(v)}</div><div class="label">{_e(label)}</div></div>'
        for v, label in figures) + "</div>")

    out.append("<h2>Latency</h2>")
    out.append(f'<div class="chart">{histogram_svg(summary["latency_histogram"], latency)}</div>')
    names = ("min", "p50", "p90", "p99", "p99.9", "max", "mean")
    out.append(_table(names, [[_ms(latency.get(n)) for n in names]], numeric=range(len(names))))
    out.append('<p class="note">Time from starting an operation to its outcome, including anything the terminal '
               "had to send first (sign-on, a stored reversal). Percentiles are nearest-rank: each one is a "
               "latency that was actually observed.</p>")

    out.append("<h2>Throughput over time</h2>")
    out.append(f'<div class="chart">{timeline_svg(summary["timeline"])}</div>')

    out.append("<h2>Outcomes</h2>")
    out.append(_table(["outcome", "count", "share", "what it means"],
                      [[kind, n, _share(n, finished), OUTCOME_MEANINGS.get(kind, "")]
                       for kind, n in outcomes.items()], numeric=(1, 2)))
    rows = [[op, sum(counts.values()), ", ".join(f"{k} {n}" for k, n in counts.items())]
            for op, counts in summary["by_operation"].items()]
    out.append(_table(["operation", "count", "outcomes"], rows, numeric=(1,)))

    out.append("<h2>Response codes</h2>")
    codes = summary["response_codes"]
    if codes:
        total_codes = sum(item["count"] for item in codes.values())
        out.append(_table(["code", "meaning", "count", "share"],
                          [[code, item["meaning"], item["count"], _share(item["count"], total_codes)]
                           for code, item in codes.items()], numeric=(2, 3)))
    else:
        out.append('<p class="note">No response code was received.</p>')

    out.append("<h2>What the terminals did</h2>")
    events = summary["terminal_events"]
    out.append(_table(["event", "count"], [[name.replace("_", " "), n] for name, n in events.items()], numeric=(1,)))
    sent = summary.get("messages_sent", {})
    if sent:
        out.append(_table(["messages sent, by purpose", "count"], list(sent.items()), numeric=(1,)))
    housekeeping = summary.get("housekeeping", {})
    if housekeeping:
        out.append(_table(["before / after the run", "outcomes"],
                          [[op, ", ".join(f"{k} {n}" for k, n in counts.items())]
                           for op, counts in housekeeping.items()]))

    out.append("<h2>Consistency: terminals' journals against the host's ledger</h2>")
    if status == "skipped":
        out.append(f"<p>Skipped: {_e(consistency['reason'])}</p>")
    else:
        out.append(_table(["transactions compared", "money moved", "net amount", "host postings in the run",
                           "mismatches", "undecided"],
                          [[consistency["checked"], consistency["money_moved"],
                            format_amount(consistency["net_amount"], exponent), consistency["host_postings"],
                            len(consistency["mismatches"]), len(consistency["undecided"])]],
                          numeric=range(6)))
        out.append('<p class="note">Each journal entry of the run is matched to the host posting with the same '
                   "terminal, STAN and field 7; the money movement must agree (and, where money moved, the amount "
                   "and direction). Undecided entries are ones the terminal itself cannot know yet.</p>")
    for title, items in (("Mismatches", consistency["mismatches"]), ("Undecided", consistency["undecided"])):
        if items:
            out.append(f"<h3>{_e(title)} ({len(items)})</h3>")
            shown = items[:_MAX_TABLE_ROWS]
            out.append(_table(["terminal", "STAN", "field 7", "problem", "terminal believes", "host has"],
                              [[m["terminal"], m["stan"], m["transmission_time"], m["problem"], m["terminal_view"],
                                m["host_view"]] for m in shown]))
            if len(items) > len(shown):
                out.append(f'<p class="note">... and {len(items) - len(shown)} more in summary.json.</p>')

    problems = summary.get("accounting_problems", [])
    if problems:
        out.append("<h2>Accounting problems (a bug in the load runner)</h2>")
        out.append("<ul>" + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>")

    out.append("<h2>Settings</h2>")
    out.append(_table(["setting", "value"], [[key.replace("_", " "), _setting(value)]
                                             for key, value in config.items()]))
    out.append("<footer>Written by iso-terminal load; the same numbers are in summary.json beside this file."
               "</footer>")
    out.extend(["</main>", "</body>", "</html>"])
    return "\n".join(out) + "\n"


def _setting(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "–".join(str(v) for v in value)
    return str(value)
