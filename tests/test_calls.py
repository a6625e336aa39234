"""CallDetector: tool-call openings and closings found in streamed text."""

import random

import pytest

from parsers.calls import CallDetector, fence_syntax, tag_syntax

SYNTAXES = [fence_syntax("python", "python", "py"), tag_syntax("", "<tool_call>", "</tool_call>"),
            tag_syntax("search", "<search>", "</search>")]

TEXT = (
    "Here:\n```python\nx = 1\nprint(x)\n```\nThen\n```bash\nls\n```\nand <tool_call>{\"a\": 1}</tool_call>"
    " done\n  ```py\ny=2\n  ```\n<search>\nMariana Trench\n</search>\nInline ```python is not a fence.\n"
)


def feed_in_chunks(text, seed):
    rnd = random.Random(seed)
    det = CallDetector(SYNTAXES)
    events, i = [], 0
    while i < len(text):
        k = rnd.randint(1, 7)
        events += det.feed(text[i:i + k])
        i += k
    return events + det.close()


def merged(events):
    out = []
    for e in events:
        if out and e.kind in ("text", "body") and out[-1][0] == e.kind:
            out[-1] = (e.kind, out[-1][1] + e.text, e.tool)
        else:
            out.append((e.kind, e.text, e.tool))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_chunking_does_not_change_events_and_text_is_preserved(seed):
    events = feed_in_chunks(TEXT, seed)
    assert "".join(e.text for e in events) == TEXT
    assert merged(events) == merged(feed_in_chunks(TEXT, 10_000))


def test_events_find_each_call_and_ignore_other_fences():
    events = merged(feed_in_chunks(TEXT, 1))
    calls = [(kind, text, tool) for kind, text, tool in events if kind != "text"]
    assert calls == [
        ("open", "```python\n", "python"), ("body", "x = 1\nprint(x)\n", "python"), ("close", "```", "python"),
        ("open", "<tool_call>", ""), ("body", '{"a": 1}', ""), ("close", "</tool_call>", ""),
        ("open", "  ```py\n", "python"), ("body", "y=2\n", "python"), ("close", "  ```", "python"),
        ("open", "<search>", "search"), ("body", "\nMariana Trench\n", "search"), ("close", "</search>", "search"),
    ]


def test_closer_is_reported_as_soon_as_its_backticks_arrive():
    det = CallDetector(SYNTAXES)
    det.feed("```python\nx = 1\n")
    assert det.in_call
    assert [e.kind for e in det.feed("``")] == []
    assert [e.kind for e in det.feed("`")] == ["close"]
    assert not det.in_call


def test_unclosed_call_is_closed_by_close_with_flag():
    det = CallDetector(SYNTAXES)
    body = det.feed("```python\nwhile True:\n    pass\n  ``")  # "  ``" may still become a closer
    assert "".join(e.text for e in body if e.kind == "body") == "while True:\n    pass\n"
    events = det.close()
    assert [(e.kind, e.text, e.closed) for e in events] == [("body", "  ``", True), ("close", "", False)]


def test_skip_keeps_line_start_state():
    det = CallDetector(SYNTAXES)
    det.feed("text")
    det.skip("\n```output\n1\n```\n")
    assert [e.kind for e in det.feed("```python\n")] == ["open"]


def test_bad_syntax_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="language"):
        fence_syntax("python")
    with pytest.raises(ValueError, match="opener"):
        tag_syntax("x", "", "</x>")
