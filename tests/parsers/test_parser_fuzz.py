"""Every incremental parser under fuzzing: any chunking of a valid input gives the same units
(and arguments) as feeding it whole, and random text never raises.

Streaming tool-call parsers elsewhere lose or garble arguments when one delta carries
several tokens, when a call ends in the last delta, or when a string argument holds braces
(vLLM #10395/#21544, SGLang #37634/#35564). So the chunkings here include one chunk for
the whole message, many calls in one chunk, single characters, and cuts inside escapes;
the strings hold ``{``, ``}``, ``"``, ``\\u`` escapes, ``</tool_call>`` and fences.
"""

from __future__ import annotations

import ast
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers.calls import CallDetector, fence_syntax, tag_syntax
from parsers.json_object import JsonObjectParser
from parsers.lines import LineParser
from parsers.plan import PlanParser
from parsers.python_statements import PythonStatementParser
from parsers.sql_statements import SQLStatementParser

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Characters that break naive streaming parsers, mixed into every string.
NASTY = ["{", "}", '"', "\\", "\\u00e9", "\u00e9", "\u4e2d", "\U0001f600", "</tool_call>", "```", "'", "\n",
         "$1", ";", "--", "/*", ":", ",", "[", "]", "<tool_call>", "\t"]


def nasty_text(max_size: int = 12) -> st.SearchStrategy[str]:
    pieces = st.one_of(st.sampled_from(NASTY), st.text(st.characters(codec="utf-8"), max_size=4))
    return st.lists(pieces, max_size=max_size).map("".join)


@st.composite
def chunkings(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` cut into pieces: whole, token-sized, single characters, or at random points."""
    kind = draw(st.sampled_from(["whole", "tokens", "chars", "random"]))
    if kind == "whole" or not text:
        return [text]
    if kind == "chars":
        return list(text)
    if kind == "tokens":
        pieces, i = [], 0
        while i < len(text):
            size = draw(st.integers(1, 8))
            pieces.append(text[i:i + size])
            i += size
        return pieces
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=12))))
    bounds = [0] + cuts + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def run(parser, pieces: list[str]) -> list[tuple]:
    units = []
    for piece in pieces:
        units += parser.feed(piece)
    units += parser.close()
    return [(u.text, u.index, u.key, _comparable(u.value), u.error, u.parent) for u in units]


def _comparable(value):
    return repr(value) if not isinstance(value, (str, int, float, bool, type(None), list, dict)) else value


# -- Python statements ----------------------------------------------------------------------------
def raw_text(text: str) -> str:
    """``text`` as the inside of a ``'''`` string: no quote, no backslash, no NUL."""
    for bad in ("'", "\\", "\x00", "\r"):
        text = text.replace(bad, "")
    return text


def fstring_text(text: str) -> str:
    """``text`` as the literal part of a one-line double-quoted f-string: braces doubled."""
    text = raw_text(text).replace('"', "").replace("\n", "")
    return text.replace("{", "{{").replace("}", "}}")


@st.composite
def python_programs(draw: st.DrawFn) -> str:
    def literal() -> str:
        return repr(draw(nasty_text(6)))

    templates = [
        lambda: f"x = {literal()}\n",
        lambda: f"print({literal()}, {{'k': [1, 2]}})\n",
        lambda: f"d = {{{literal()}: ({literal()},\n     {literal()})}}\n",
        lambda: f"s = '''{raw_text(draw(nasty_text(4)))}\n{raw_text(draw(nasty_text(4)))}'''\n",
        lambda: f"f = f\"{{1 + 2}} {fstring_text(draw(nasty_text(3)))}\"\n",
        lambda: "def g(a, b=2):\n    '''doc {x}'''\n    return a + b\n",
        lambda: "if x:\n    y = 1\nelif y:\n    y = 2\nelse:\n    y = 3\n",
        lambda: "for i in range(3):\n    pass\nelse:\n    done = True\n",
        lambda: "try:\n    1 / 0\nexcept ZeroDivisionError:\n    pass\nfinally:\n    z = 0\n",
        lambda: "@decorator\nclass C:\n    a = {'}': '{'}\n\n    def m(self):\n        return 1\n",
        lambda: "# a comment with ``` and </tool_call>\n",
        lambda: "\n",
        lambda: "total = (1 +\n         2)  # trailing\n",
        lambda: "a = 1; b = 2\n",
        lambda: "value = 1 + \\\n    2\n",
    ]
    picks = draw(st.lists(st.sampled_from(range(len(templates))), min_size=1, max_size=6))
    return "".join(templates[i]() for i in picks)


@FUZZ
@given(st.data())
def test_python_statements_any_chunking_gives_the_same_units(data):
    program = data.draw(python_programs())
    ast.parse(program)  # the generator writes valid Python
    whole = run(PythonStatementParser(), [program])
    chunked = run(PythonStatementParser(), data.draw(chunkings(program)))
    assert chunked == whole
    assert "".join(u[0] for u in whole) == program
    code_units = [u[0] for u in whole if ast.parse(u[0]).body]
    assert sum(len(ast.parse(text).body) for text in code_units) == len(ast.parse(program).body)
    assert all(u[4] is None for u in whole)


@FUZZ
@given(nasty_text(30), st.data())
def test_python_statements_random_text_never_raises(text, data):
    parser = PythonStatementParser()
    units = run(parser, data.draw(chunkings(text)))
    assert "".join(u[0] for u in units) == text


# -- JSON objects ---------------------------------------------------------------------------------
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                         st.floats(allow_nan=False, allow_infinity=False), nasty_text(8))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(nasty_text(4), inner, max_size=4)),
    max_leaves=10,
)
json_objects = st.dictionaries(nasty_text(5), json_values, max_size=5)


def dumps(value, data) -> str:
    style = data.draw(st.sampled_from(["compact", "spaced", "indented", "unicode"]))
    if style == "compact":
        return json.dumps(value, separators=(",", ":"))
    if style == "indented":
        return json.dumps(value, indent=2)
    return json.dumps(value, ensure_ascii=style != "unicode")


@FUZZ
@given(json_objects, st.data())
def test_json_object_any_chunking_gives_the_same_members_and_values(obj, data):
    text = dumps(obj, data)
    whole = run(JsonObjectParser(), [text])
    parser = JsonObjectParser()
    chunked = run(parser, data.draw(chunkings(text)))
    assert chunked == whole
    assert parser.error is None and parser.done
    assert [(u[2], u[3]) for u in whole] == list(obj.items())  # values are json.loads's
    for unit in whole:
        assert json.loads("{" + unit[0] + "}") == {unit[2]: obj[unit[2]]}


@FUZZ
@given(nasty_text(5), json_objects, st.data())
def test_a_json_tool_call_streams_its_arguments_under_any_chunking(name, arguments, data):
    text = dumps({"name": name, "arguments": arguments}, data)
    whole = run(JsonObjectParser(expand=("arguments",)), [text])
    chunked = run(JsonObjectParser(expand=("arguments",)), data.draw(chunkings(text)))
    assert chunked == whole
    inner = [(u[2], u[3]) for u in whole if u[5] == "arguments"]
    assert inner == list(arguments.items())
    assert [(u[2], u[3]) for u in whole if u[5] is None] == [("name", name), ("arguments", arguments)]


@FUZZ
@given(nasty_text(30), st.data())
def test_json_object_random_text_never_raises(text, data):
    parser = JsonObjectParser(expand=("arguments",))
    run(parser, data.draw(chunkings(text)))
    try:
        json.loads(text)
        valid = True
    except ValueError:
        valid = False
    if not valid:
        assert parser.error is not None  # invalid input is reported, never raised


# -- plans --------------------------------------------------------------------------------------
@st.composite
def plans(draw: st.DrawFn) -> str:
    lines = []
    count = draw(st.integers(1, 5))
    for n in range(1, count + 1):
        argument = json.dumps(draw(nasty_text(6)))  # a valid Python string literal too
        refs = ", ".join(f"${m}" for m in draw(st.lists(st.integers(1, n), max_size=2)) if m < n)
        args = argument + (", " + refs if refs else "")
        form = draw(st.sampled_from(["assign", "numbered"]))
        lines.append(f"${n} = search({args})\n" if form == "assign" else f"{n}. calculator({args})\n")
        if draw(st.booleans()):
            lines.append("Thought: the next step {uses} \"$1\".\n")
    lines.append(draw(st.sampled_from(["join()\n", "join()<END_OF_PLAN>", f"${count + 1} = join()\n"])))
    return "".join(lines)


@FUZZ
@given(plans(), st.data())
def test_plan_any_chunking_gives_the_same_tasks(plan, data):
    whole = run(PlanParser(), [plan])
    chunked = run(PlanParser(), data.draw(chunkings(plan)))
    assert chunked == whole
    assert "".join(u[0] for u in whole) == plan
    tasks = [u for u in whole if u[2] is not None]
    assert all(u[4] is None for u in tasks)
    assert tasks[-1][3].startswith("PlanTask(") and "is_join=True" in tasks[-1][3]


@FUZZ
@given(nasty_text(30), st.data())
def test_plan_random_text_never_raises(text, data):
    run(PlanParser(), data.draw(chunkings(text)))


# -- lines and SQL statements ---------------------------------------------------------------------
@FUZZ
@given(nasty_text(30), st.data())
def test_lines_any_chunking_gives_the_same_lines(text, data):
    whole = run(LineParser(), [text])
    assert run(LineParser(), data.draw(chunkings(text))) == whole
    assert [u[3] for u in whole] == [line.strip() for line in text.split("\n") if line.strip()]


@st.composite
def sql_scripts(draw: st.DrawFn) -> str:
    statements = []
    for _ in range(draw(st.integers(1, 4))):
        literal = "'" + draw(nasty_text(5)).replace("'", "''") + "'"
        statements.append(draw(st.sampled_from([
            f"SELECT {literal} AS a;",
            f"-- comment ; {literal.replace(chr(10), ' ')}\nSELECT 1;",
            f"/* ; */ SELECT \"col;x\" FROM [t;1] WHERE b = {literal};",
            f"INSERT INTO t VALUES ({literal}, 2);",
            ";",
        ])))
        statements.append(draw(st.sampled_from(["\n", " ", "\n\n"])))
    return "".join(statements)


def _no_nul(text: str) -> str:
    return text.replace("\x00", " ")  # NUL: see test_sql_statements_survive_a_nul_character


@FUZZ
@given(sql_scripts(), st.data())
def test_sql_statements_any_chunking_gives_the_same_statements(script, data):
    script = _no_nul(script)
    whole = run(SQLStatementParser(), [script])
    assert run(SQLStatementParser(), data.draw(chunkings(script))) == whole
    assert all(u[3].endswith(";") and u[4] is None for u in whole)


@FUZZ
@given(nasty_text(30), st.data())
def test_sql_statements_random_text_never_raises(text, data):
    run(SQLStatementParser(), data.draw(chunkings(_no_nul(text))))


def test_sql_statements_survive_a_nul_character():  # found by the fuzzing above
    assert [u.value for u in SQLStatementParser().feed("SELECT '\x00';")] == ["SELECT '\x00';"]


# -- the call detector --------------------------------------------------------------------------
SYNTAXES = [
    fence_syntax("python", "python", "py"),
    tag_syntax("", "<tool_call>", "</tool_call>", json_body=True),
    tag_syntax("search", "<search>", "</search>"),
]


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    """A model message with several calls: its text and the (tool, body) of each call."""
    prose = st.text(st.characters(codec="utf-8", exclude_characters="`<"), max_size=20)
    parts, calls = [], []
    for _ in range(draw(st.integers(0, 4))):
        parts.append(draw(prose))
        kind = draw(st.sampled_from(["python", "json", "search"]))
        if kind == "python":
            # A line starting with ``` closes a fence, as in markdown, even inside a string.
            body = draw(python_programs()).replace("```", "``")
            so_far = "".join(parts)
            if so_far and not so_far.endswith("\n"):
                parts.append("\n")  # a fence opens at a line start
            parts.append("```python\n" + body + "```\n")
            calls.append(("python", body))
        elif kind == "json":
            body = json.dumps({"name": "search", "arguments": {"query": draw(nasty_text(6))}},
                              ensure_ascii=draw(st.booleans()))
            parts.append("<tool_call>" + body + "</tool_call>")
            calls.append(("", body))
        else:
            body = draw(st.text(st.characters(codec="utf-8", exclude_characters="<"), max_size=20))
            parts.append("<search>" + body + "</search>")
            calls.append(("search", body))
    parts.append(draw(prose))
    return "".join(parts), calls


def detect(pieces: list[str]) -> list[tuple[str, str, str]]:
    """Events with adjacent text (or body) pieces merged: chunk boundaries are not events."""
    detector = CallDetector(SYNTAXES)
    events = []
    for piece in pieces:
        events += detector.feed(piece)
    events += detector.close()
    merged: list[list[str]] = []
    for event in events:
        if merged and event.kind in ("text", "body") and merged[-1][0] == event.kind:
            merged[-1][1] += event.text
        else:
            merged.append([event.kind, event.text, event.tool])
    return [tuple(event) for event in merged]


@FUZZ
@given(messages(), st.data())
def test_call_detector_any_chunking_finds_the_same_calls(message, data):
    text, calls = message
    whole = detect([text])
    assert detect(data.draw(chunkings(text))) == whole
    assert "".join(event[1] for event in whole) == text
    found, body = [], None
    for kind, piece, tool in whole:
        if kind == "open":
            body = ""
        elif kind == "body":
            body += piece
        elif kind == "close":
            found.append((tool, body or ""))
            body = None
    assert found == calls  # every call, whole: no closer inside a string cut one short


@FUZZ
@given(nasty_text(40), st.data())
def test_call_detector_random_text_never_raises(text, data):
    events = detect(data.draw(chunkings(text)))
    assert "".join(event[1] for event in events) == text
