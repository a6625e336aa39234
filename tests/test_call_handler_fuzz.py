"""Property tests of the <tool_call> path (detector + JSON call handler) under any chunking.

Streaming tool-call parsers elsewhere lose or garble arguments when one delta carries
several tokens, when a call ends in the last delta, or when a string argument holds
braces or the closing tag. Here any chunking of valid calls must give the same arguments
as feeding the text whole, and random text must never raise.
"""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor_hf.call_handlers import JsonCallHandler
from conveyor_hf.formats import JSON_CALL
from conveyor_hf.tools.base import SideEffect, Tool, UnitOutput
from parsers.calls import CallDetector
from parsers.json_object import JsonObjectParser

TRICKY = st.sampled_from(["{", "}", '"', "\\", "\\u00e9", "</tool_call>", "<tool_call>", "\n", "é", "🎉", ",", ":"])
STRINGS = st.lists(st.one_of(TRICKY, st.text(max_size=5)), max_size=6).map("".join)
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), STRINGS),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(STRINGS, inner, max_size=3)),
    max_leaves=8,
)
ARGUMENTS = st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=6), VALUES, max_size=4)


class Recorder(Tool):
    name = "record"
    side_effect = SideEffect.PURE
    json_arguments = True

    def make_parser(self):
        return JsonObjectParser()

    def execute(self, unit):
        return UnitOutput(json.dumps(unit.value))


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)]) if b > a]


def run(chunks: list[str]) -> tuple[list[list[tuple[str, object]]], str]:
    """Feed ``chunks``; return each call's (argument, value) units and the plain text."""
    detector = CallDetector([JSON_CALL])
    handlers, text = [], []

    def open_tool(name):
        tool = Recorder()
        return tool, tool.open_call(early=False)

    def dispatch(event):
        if event.kind == "open":
            handlers.append(JsonCallHandler(open_tool, ["record"], event.syntax))
        elif event.kind == "body":
            handlers[-1].feed(event.text)
        elif event.kind == "close":
            handlers[-1].close(event.closed)
        else:
            text.append(event.text)

    for chunk in chunks:
        for event in detector.feed(chunk):
            dispatch(event)
    for event in detector.close():
        dispatch(event)
    calls = []
    for handler in handlers:
        assert handler.call is not None and handler.error is None, handler.error
        calls.append([(r.unit.key, r.unit.value) for r in handler.call.records])
        handler.call.close()
    return calls, "".join(text)


@settings(max_examples=150, deadline=None)
@given(st.lists(ARGUMENTS, min_size=1, max_size=3), st.lists(st.integers(0, 10**4), max_size=12), STRINGS)
def test_any_chunking_gives_the_arguments_of_the_whole_text(calls, cuts, between):
    text = between.replace("<tool_call>", "").join(
        f'<tool_call>{json.dumps({"name": "record", "arguments": args}, ensure_ascii=False)}</tool_call>'
        for args in calls)
    whole = run([text])
    assert whole[0] == [list(args.items()) for args in calls]
    assert run(split(text, cuts)) == whole
    assert run(list(text)) == whole  # one character per delta
    assert run(["", text, ""]) == whole  # the whole message, and the call ends in the last delta


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200), st.lists(st.integers(0, 10**4), max_size=8))
def test_random_text_never_raises(text, cuts):
    detector = CallDetector([JSON_CALL])
    handler = JsonCallHandler(lambda name: None, ["record"])
    for chunk in split("<tool_call>" + text, cuts):
        for event in detector.feed(chunk):
            if event.kind == "body":
                handler.feed(event.text)
    handler.close(False)
    assert handler.failed or handler.call is None
