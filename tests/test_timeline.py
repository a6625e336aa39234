"""Timeline metrics on hand-made records: exposed tool time and the ideal pipeline."""

import json

import pytest

from conveyor_hf.timeline import CallRecord, RoundRecord, Timeline
from conveyor_hf.tools.base import ToolResult, UnitRecord
from parsers.unit import Unit


def unit(emitted, start, end, error=None):
    return UnitRecord(Unit("x\n"), emitted=emitted, start=start, end=end, error=error)


def two_round_timeline():
    # round 0 decodes 0..4; units emitted at 1 and 2 run 1..2.5 and 2.5..5 (one lane);
    # the loop waits 4..5; round 1 decodes 5..6.
    tl = Timeline(start=0.0, end=6.0)
    tl.rounds = [RoundRecord(0, 0.0, decode_end=4.0, end=5.0, new_tokens=40),
                 RoundRecord(1, 5.0, decode_end=6.0, end=6.0, new_tokens=10)]
    tl.calls = [CallRecord(row=0, round=0, tool="python", opened=0.5,
                           result=ToolResult("", units=[unit(1.0, 1.0, 2.5), unit(2.0, 2.5, 5.0)]))]
    return tl


def test_summary_metrics():
    s = two_round_timeline().summary()
    assert s["latency"] == pytest.approx(6.0)
    assert s["decode"] == pytest.approx(5.0)
    assert s["tool"] == pytest.approx(4.0)
    assert s["exposed_tool"] == pytest.approx(1.0)  # 4..5: tool busy, nothing decoding
    # ideal: round 0 = max(decode 4, units: 1+1.5=2.5, then 2.5+2.5=5) = 5; round 1 = 1
    assert s["ideal"] == pytest.approx(6.0)
    assert (s["rounds"], s["units"], s["new_tokens"]) == (2, 2, 50)


def test_ideal_uses_parallel_lanes():
    tl = two_round_timeline()
    tl.calls[0].lanes = 2
    # with two lanes the second unit starts at its emission (2.0) and ends at 4.5
    assert tl.ideal() == pytest.approx(4.5 + 1.0)


def test_ideal_starts_a_close_time_action_at_the_last_argument():
    # lazy mode records a validated call's action (a unit with no text) when the call is
    # closed at the turn's end (4.5 here); the bound starts it where its last argument
    # was decoded (2.0), so round 0 ends at max(decode 4, 2 + 1.5) = 4, not 4 + 1.5
    tl = two_round_timeline()
    action = UnitRecord(Unit(""), emitted=4.5, start=4.5, end=6.0)
    tl.calls[0].result = ToolResult("", units=[unit(1.0, 1.0, 1.0), unit(2.0, 2.0, 2.0), action])
    assert tl.ideal() == pytest.approx(4.0 + 1.0)
    tl.calls[0].result = ToolResult("", units=[action])  # no argument: ready when the call opened
    assert tl.ideal() == pytest.approx(4.0 + 1.0)


def test_chrome_trace_has_decode_and_unit_spans(tmp_path):
    path = tmp_path / "trace.json"
    trace = two_round_timeline().to_chrome_trace(path)
    spans = [e for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == len(trace["traceEvents"]) - 2  # two thread-name records
    assert sum(1 for e in spans if e["name"].startswith("decode round")) == 2
    assert sum(1 for e in spans if e["tid"] == 1) == 2


def test_plot_writes_a_png(tmp_path):
    path = two_round_timeline().plot(tmp_path / "t.png", others=[two_round_timeline()])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_decode_steps_run_from_token_to_token_within_a_round():
    tl = two_round_timeline()
    # round 0 starts at 0 (prefill until the first token at 0.5); round 1 starts at 5
    tl.token_times = [[0.5, 1.0, 2.0, 4.0, 5.5, 6.0]]
    assert tl.decode_steps() == [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (5.5, 6.0)]  # 4.0 -> 5.5 spans the wait
    assert tl.decode_steps(row=1) == []  # no such conversation
    assert tl.busy_intervals() == [(1.0, 5.0)]  # the two units back to back, merged
