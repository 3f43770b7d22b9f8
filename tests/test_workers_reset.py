"""How the ``--workers`` supervisor treats a reset (pure functions of switch.workers_admin, no processes):
what a restarted worker gets again, and the one answer made of every worker's."""

from __future__ import annotations

import json

import pytest

from switch.workers_admin import Answer, _merged_reset, _replayed_body


@pytest.mark.parametrize(("path", "body", "replayed"), [
    ("/api/v1/reset", b'{"what": "faults"}', b'{"what": "faults"}'),
    ("/api/v1/reset", b'{"what": "all"}', b'{"what": "faults"}'),  # sessions are shared rows: never again
    ("/api/v1/reset", b'{"what": "sessions"}', None),
    ("/api/v1/reset", b"not json", None),
    ("/api/v1/held/h1/release", b'{"as": "approve"}', None),  # the held request died with its worker
    ("/api/v1/faults", b'{"delay_request": "1s"}', b'{"delay_request": "1s"}'),
])
def test_a_restarted_worker_never_gets_a_sessions_reset_again(path: str, body: bytes, replayed: bytes | None) -> None:
    assert _replayed_body(path, body) == replayed


def answer(worker: int, body: dict[str, object]) -> Answer:
    return Answer(worker, 200, "application/json", json.dumps(body).encode())


def test_sessions_kept_are_those_no_worker_could_end() -> None:
    answers = [answer(1, {"reset": "sessions", "sessions_cleared": 2, "sessions_kept": ["T1", "T2", "T3"]}),
               answer(2, {"reset": "sessions", "sessions_cleared": 1, "sessions_kept": ["T2", "T3"]}),
               answer(3, {"reset": "sessions", "sessions_cleared": 0, "sessions_kept": ["T3", "T4"]})]
    status, _, payload, headers = _merged_reset(answers, (200, "application/json", answers[0].body, {"X": "1"}))
    assert (status, headers) == (200, {"X": "1"})
    assert json.loads(payload) == {"reset": "sessions", "sessions_cleared": 3, "sessions_kept": ["T3"]}


def test_a_faults_only_reset_is_passed_through() -> None:
    combined = (200, "application/json", b'{"reset": "faults", "faults": {}}', {})
    assert _merged_reset([Answer(1, *combined[:3])], combined) == combined
