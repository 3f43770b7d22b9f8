"""SwitchMetrics: what the server counts comes out of render() as valid Prometheus text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from switch.metrics import LATENCY_BUCKETS, MAX_SERIES, SwitchMetrics


def samples(metrics: SwitchMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text, keyed by name and sorted labels (parsing proves the format)."""
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def message_count(metrics: SwitchMetrics, mti: str, code: str) -> float:
    return samples(metrics).get(("iso_switch_messages_total", (("mti", mti), ("response_code", code))), 0.0)


def test_messages_are_counted_by_mti_and_response_code() -> None:
    metrics = SwitchMetrics()
    for _ in range(3):
        metrics.message("0200", "00")
    metrics.message("0200", "51")
    metrics.message("0800", "00")
    metrics.message("0400", None)
    assert message_count(metrics, "0200", "00") == 3
    assert message_count(metrics, "0200", "51") == 1
    assert message_count(metrics, "0800", "00") == 1
    assert message_count(metrics, "0400", "none") == 1


def test_garbage_labels_are_normalised_not_exported_verbatim() -> None:
    metrics = SwitchMetrics()
    metrics.message("02\n00", "0\"")
    metrics.message("XYZ", "a0")
    assert message_count(metrics, "invalid", "invalid") == 1
    assert message_count(metrics, "invalid", "A0") == 1


def test_distinct_series_are_capped() -> None:
    metrics = SwitchMetrics()
    for number in range(MAX_SERIES + 50):
        metrics.message(f"{number:04d}", "00")
    found = samples(metrics)
    series = [key for key in found if key[0] == "iso_switch_messages_total"]
    assert len(series) == MAX_SERIES + 1  # the cap, plus the one "other" series absorbing the rest
    assert message_count(metrics, "other", "other") == 50
    assert sum(found[key] for key in series) == MAX_SERIES + 50  # nothing lost


def fault_count(metrics: SwitchMetrics, action: str, rule: str) -> float:
    return samples(metrics).get(("iso_switch_faults_applied_total", (("action", action), ("rule", rule))), 0.0)


def test_faults_are_counted_by_action_and_rule() -> None:
    metrics = SwitchMetrics()
    metrics.fault("delay_request", "slow-host")
    metrics.fault("delay_request", "slow-host")
    metrics.fault("delay_request", "f2")
    metrics.fault("drop_response", "maintenance")
    metrics.fault("Not An Action!", "slow-host")
    metrics.fault("drop_response", "no id\n")
    metrics.fault("drop_response")  # a caller that does not know the rule
    assert fault_count(metrics, "delay_request", "slow-host") == 2
    assert fault_count(metrics, "delay_request", "f2") == 1
    assert fault_count(metrics, "drop_response", "maintenance") == 1
    assert fault_count(metrics, "invalid", "slow-host") == 1
    assert fault_count(metrics, "drop_response", "invalid") == 1
    assert fault_count(metrics, "drop_response", "unknown") == 1


def test_fault_series_are_capped_over_action_and_rule() -> None:
    metrics = SwitchMetrics()
    for number in range(MAX_SERIES + 20):
        metrics.fault("delay_request", f"r{number}")
    found = samples(metrics)
    series = [key for key in found if key[0] == "iso_switch_faults_applied_total"]
    assert len(series) == MAX_SERIES + 1
    assert fault_count(metrics, "other", "other") == 20
    assert sum(found[key] for key in series) == MAX_SERIES + 20


def test_latency_histogram_buckets_span_one_millisecond_to_a_minute() -> None:
    metrics = SwitchMetrics()
    for seconds in (0.0005, 0.2, 0.2, 45.0, 120.0):
        metrics.latency(seconds)
    found = samples(metrics)

    def bucket(le: str) -> float:
        return found[("iso_switch_request_latency_seconds_bucket", (("le", le),))]

    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 60.0
    assert bucket("0.001") == 1
    assert bucket("0.1") == 1
    assert bucket("0.25") == 3
    assert bucket("30.0") == 3
    assert bucket("60.0") == 4
    assert bucket("+Inf") == 5
    assert found[("iso_switch_request_latency_seconds_count", ())] == 5
    assert abs(found[("iso_switch_request_latency_seconds_sum", ())] - 165.4005) < 1e-9


def test_connections_gauge_follows_opens_and_closes() -> None:
    metrics = SwitchMetrics()
    for _ in range(3):
        metrics.connection_opened()
    metrics.connection_closed()
    assert metrics.open_connections == 2
    found = samples(metrics)
    assert found[("iso_switch_connections_open", ())] == 2
    assert found[("iso_switch_connections_total", ())] == 3


def test_each_instance_has_its_own_registry() -> None:
    first, second = SwitchMetrics(), SwitchMetrics()
    first.message("0200", "00")
    assert message_count(first, "0200", "00") == 1
    assert message_count(second, "0200", "00") == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["0100", "0200", "0400", "0800", "bad"]),
                          st.sampled_from(["00", "05", "91", None])), max_size=60))
def test_message_counts_match_calls(calls: list[tuple[str, str | None]]) -> None:
    metrics = SwitchMetrics()
    for mti, code in calls:
        metrics.message(mti, code)
    for mti, code in set(calls):
        expected = sum(1 for call in calls if call == (mti, code))
        label_mti = "invalid" if mti == "bad" else mti
        assert message_count(metrics, label_mti, code or "none") == expected
