"""The load report: summary.json, report.html with inline SVG charts, the console summary.

Summaries are built the way ``iso-terminal load`` builds them (``LoadStats.summary`` plus a
consistency verdict from ``compare_views``), from scripted outcomes, so the numbers are known.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from terminal.load import ConsistencyResult, LoadStats, Mismatch
from terminal.report import histogram_svg, render_html, summary_lines, timeline_svg, write_report

SVG = "{http://www.w3.org/2000/svg}"
CONFIG = {
    "host": "127.0.0.1", "port": 8583, "dialect": "iso87-binary", "terminals": 4, "first_terminal": "L0000001",
    "last_terminal": "L0000004", "count": 12, "duration_seconds": None, "rate_per_second": None,
    "mode": "closed loop", "mix": {"purchase": 90, "echo": 5, "refund": 5}, "settle": True,
    "amount_range_minor": [100, 10000], "cards": 1, "seed": 7, "response_timeout_seconds": 30.0,
    "currency": "840", "currency_exponent": 2,
}


def build_summary(consistency: ConsistencyResult) -> dict[str, Any]:
    stats = LoadStats()
    script = [("purchase", "approved", "00", 0.012 + i * 0.001, 0.1 * i) for i in range(9)]
    script += [("purchase", "declined", "51", 0.020, 1.0), ("purchase", "reversed", "", 30.0, 31.0),
               ("echo", "approved", "00", 0.004, 31.2)]
    for operation, *_ in script:
        stats.record_started(operation)
    for operation, kind, code, latency, at in script:
        stats.record_outcome(operation, kind, code, latency, at)
    stats.record_sends(["reversal"])
    stats.record_note("reversal-cleared")
    stats.record_note("late-reply-discarded")
    stats.record_housekeeping("settle", "approved")
    summary = {"tool": "iso-terminal load", "format": 1, "started_at": "2025-03-01T12:00:00.000Z",
               "ended_at": "2025-03-01T12:00:31.200Z", "interrupted": False, "config": CONFIG,
               **stats.summary(31.2)}
    summary["consistency"] = {**consistency.as_dict(), "headline": consistency.headline()}
    return summary


CONSISTENT = ConsistencyResult("consistent", checked=11, money_moved=9, net_amount=123456, host_postings=11)
MISMATCH = Mismatch("L0000003", "000042", "0301120005", "the terminal believes money moved; the host has no posting",
                    "purchase debit 12.34 approved (00 approved): money moved <&>",
                    "no posting (never received, or never booked)")
INCONSISTENT = ConsistencyResult("inconsistent", checked=11, money_moved=8, net_amount=100, host_postings=10,
                                 mismatches=(MISMATCH,))


def svgs(page: str) -> list[ET.Element]:
    """Every inline <svg> of the page, parsed on its own (they must be well-formed XML)."""
    blocks = re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)
    return [ET.fromstring(block) for block in blocks]


def test_report_files_are_written_and_the_json_is_the_summary(tmp_path: Path) -> None:
    summary = build_summary(CONSISTENT)
    json_path, html_path = write_report(tmp_path / "out" / "run1", summary)
    assert json_path == tmp_path / "out" / "run1" / "summary.json" and html_path.name == "report.html"
    assert json.loads(json_path.read_text()) == summary
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_html_is_self_contained_and_carries_the_numbers(tmp_path: Path) -> None:
    summary = build_summary(CONSISTENT)
    page = write_report(tmp_path, summary)[1].read_text()
    assert "<script" not in page.lower()
    assert re.search(r"""(?:src|href)\s*=\s*["']?https?:""", page) is None  # no external assets
    assert "@import" not in page and "url(" not in page
    assert f"{summary['tps']:.1f}" == "0.4" and ">0.4<" in page  # 12 transactions in 31.2 s
    latency = summary["latency_ms"]
    assert latency["p50"] == 16.0 and latency["p99"] == 30000.0  # 12 samples: ranks 6 and 12
    for text in ("16.0 ms", "30.00 s", "insufficient funds", "Terminals and host agree",
                 "consistent: 11 transactions, 9 money moved (net 1234.56), 0 mismatches",
                 "reversals acknowledged", "L0000001"):
        assert text in page, text


def test_svgs_are_well_formed_and_draw_every_outcome(tmp_path: Path) -> None:
    summary = build_summary(CONSISTENT)
    histogram, timeline = svgs(render_html(summary))
    for svg in (histogram, timeline):
        assert svg.tag == f"{SVG}svg"
        assert svg.find(f"{SVG}title") is not None
    bars = [rect for rect in histogram.iter(f"{SVG}rect") if rect.find(f"{SVG}title") is not None]
    drawn = sum(int(rect.find(f"{SVG}title").text.rsplit(": ", 1)[1]) for rect in bars)  # type: ignore[union-attr]
    assert drawn == sum(b["count"] for b in summary["latency_histogram"]) == 12
    markers = "".join(text.text or "" for text in histogram.iter(f"{SVG}text"))
    assert "p50 16.0 ms" in markers and "p99 30.00 s" in markers
    stacked = [rect.find(f"{SVG}title").text for rect in timeline.iter(f"{SVG}rect")  # type: ignore[union-attr]
               if rect.find(f"{SVG}title") is not None]
    assert any("declined/s" in title for title in stacked) and any("errors/s" in title for title in stacked)
    assert any("approved/s" in title for title in stacked)


def test_mismatches_are_listed_escaped_and_flagged(tmp_path: Path) -> None:
    summary = build_summary(INCONSISTENT)
    page = write_report(tmp_path, summary)[1].read_text()
    assert "Terminals and host DISAGREE" in page and 'class="banner inconsistent"' in page
    assert "Mismatches (1)" in page and "000042" in page and "0301120005" in page
    assert "money moved &lt;&amp;&gt;" in page and "<&>" not in page
    lines = summary_lines(summary)
    assert any(line.startswith("check    inconsistent: 11 transactions") for line in lines)
    assert any("MISMATCH L0000003 STAN 000042 field 7 0301120005" in line for line in lines)


def test_console_summary_names_the_numbers() -> None:
    summary = build_summary(CONSISTENT)
    text = "\n".join(summary_lines(summary))
    assert "12 transactions in 31.20 s = 0.4 TPS" in text
    assert "p50 16.0 ms" in text and "p99.9 30.00 s" in text
    assert "approved 10 · declined 1 · reversed 1" in text
    assert "51 1 (insufficient funds)" in text
    assert "reversal messages sent 1 (repeats included), reversals acknowledged 1" in text
    assert "late replies discarded 1" in text
    assert "settle   approved 1" in text


def test_a_drain_left_owing_names_a_command_that_exists() -> None:
    summary = build_summary(CONSISTENT)
    summary["config"] = {**CONFIG, "store_dir": "/srv/stores"}
    summary["housekeeping"]["drain"] = {"completed": 3, "unknown-queued": 1}
    (line,) = [line for line in summary_lines(summary) if line.startswith("drain")]
    assert "1 drains could not finish" in line
    assert "--store-dir" not in line  # `iso-terminal drain` has no such option
    assert "iso-terminal drain --terminal-id ID --store /srv/stores/ID.sqlite" in line


def test_a_run_where_nothing_finished_still_renders(tmp_path: Path) -> None:
    stats = LoadStats()
    stats.record_started("purchase")
    summary = {"tool": "iso-terminal load", "format": 1, "started_at": "x", "ended_at": "y", "interrupted": True,
               "config": CONFIG, **stats.summary(0.0),
               "consistency": {**ConsistencyResult("skipped", reason="the run was interrupted").as_dict(),
                               "headline": "consistency check skipped: the run was interrupted"}}
    page = write_report(tmp_path, summary)[1].read_text()
    assert "INTERRUPTED" in page and "Consistency not checked" in page
    assert all(svg.tag == f"{SVG}svg" for svg in svgs(page))
    assert "no transactions finished" in page
    assert "(1 still in flight)" in "\n".join(summary_lines(summary))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(1e-4, 120.0), min_size=1, max_size=200), st.floats(0.0, 4000.0))
def test_any_latencies_and_run_length_give_well_formed_charts(latencies: list[float], last: float) -> None:
    stats = LoadStats()
    for index, latency in enumerate(latencies):
        stats.record_started("purchase")
        stats.record_outcome("purchase", ("approved", "declined", "failed")[index % 3], "00", latency,
                             last * index / len(latencies))
    summary = stats.summary(last)
    histogram = ET.fromstring(histogram_svg(summary["latency_histogram"], summary["latency_ms"]))
    timeline = ET.fromstring(timeline_svg(summary["timeline"]))
    assert len(summary["timeline"]) <= 300
    for svg in (histogram, timeline):
        for rect in svg.iter(f"{SVG}rect"):
            assert float(rect.get("height", "0")) >= 0 and float(rect.get("width", "0")) > 0
