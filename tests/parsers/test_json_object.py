"""JsonObjectParser against json.loads: values, the feed call that emits each, errors."""

from __future__ import annotations

import ast
import json
import pathlib
import random
import sysconfig

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers.json_object import JsonObjectParser


def feed_chunks(parser: JsonObjectParser, doc: str, seed: int = 0, sizes=(1, 8)):
    """Feed ``doc`` in random chunks: [(unit, first, last offset of its feed call)]."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(doc):
        size = rng.randint(*sizes)
        out += [(u, i, i + size - 1) for u in parser.feed(doc[i : i + size])]
        i += size
    out += [(u, len(doc), len(doc)) for u in parser.close()]
    return out


def by_char(doc: str, **options):
    """Feed one character at a time: [(key, value, parent, index of the character)]."""
    parser = JsonObjectParser(**options)
    out = []
    for i, char in enumerate(doc):
        out += [(u.key, u.value, u.parent, i) for u in parser.feed(char)]
    assert parser.close() == []
    return out, parser


def completing_chars(doc: str) -> list[tuple[str, int]]:
    """Oracle from the json module: for each top-level member, its name and the offset of
    the character that completes its value (the closing character, or for a number the
    character after it)."""
    decoder = json.JSONDecoder()
    ws = " \t\n\r"
    i = len(doc) - len(doc.lstrip(ws)) + 1
    out = []
    while True:
        while doc[i] in ws:
            i += 1
        if doc[i] == "}":
            return out
        key, i = json.decoder.scanstring(doc, i + 1)
        while doc[i] in ws + ":":
            i += 1
        start = i
        _, i = decoder.raw_decode(doc, start)
        out.append((key, i if doc[start] in "-0123456789" else i - 1))
        while doc[i] in ws + ",":
            i += 1


def check_document(doc: str, seed: int = 0) -> None:
    expected = json.loads(doc)
    top_keys = [k for k, _ in json.loads(doc, object_pairs_hook=lambda pairs: pairs)]
    parser = JsonObjectParser()
    emitted = feed_chunks(parser, doc, seed)
    assert parser.error is None and parser.done
    assert [u.key for u, _, _ in emitted] == top_keys
    assert {u.key: u.value for u, _, _ in emitted} == expected
    assert [u.index for u, _, _ in emitted] == list(range(len(emitted)))
    for (unit, first, last), (key, due) in zip(emitted, completing_chars(doc)):
        assert unit.key == key
        assert first <= due <= last, (key, due, first, last)  # exactly that feed call
        name, end = json.decoder.scanstring(unit.text, 1)
        value = unit.text[end:].lstrip(" \t\n\r")[1:]
        assert name == key and json.loads(value) == unit.value


# -- hand-written behaviour ------------------------------------------------------------------


def test_members_come_out_when_their_value_completes():
    doc = '{"s": "a}", "n": 12, "t": true, "z": null, "o": {"x": [1]}, "a": [], "e": -1.5e+3}'
    units, parser = by_char(doc)
    assert units == [
        ("s", "a}", None, doc.index('",')),
        ("n", 12, None, doc.index(", \"t\"")),  # the comma after 12
        ("t", True, None, doc.index("e,")),
        ("z", None, None, doc.index('l, "o"')),
        ("o", {"x": [1]}, None, doc.index('}, "a"')),
        ("a", [], None, doc.index('], "e"')),
        ("e", -1500.0, None, len(doc) - 1),
    ]
    assert parser.done and parser.error is None


def test_unit_text_is_the_member_source():
    parser = JsonObjectParser()
    units = parser.feed(' {\n  "a" : [1, 2] ,"b":"\\u00e9"\n}\n')
    assert [(u.text, u.key, u.value) for u in units] == [
        ('"a" : [1, 2]', "a", [1, 2]),
        ('"b":"\\u00e9"', "b", "é"),
    ]


def test_number_is_emitted_by_the_whitespace_after_it():
    units, _ = by_char('{"n": 123 }')
    assert units == [("n", 123, None, 9)]


def test_expand_streams_the_arguments_of_a_tool_call():
    doc = '{"name": "search", "arguments": {"query": "cats", "k": 3, "f": {"a": 1}}}'
    units, parser = by_char(doc, expand=("arguments",))
    assert units == [
        ("name", "search", None, doc.index('",')),
        ("query", "cats", "arguments", doc.index('", "k"')),
        ("k", 3, "arguments", doc.index(', "f"')),
        ("f", {"a": 1}, "arguments", len(doc) - 3),
        ("arguments", {"query": "cats", "k": 3, "f": {"a": 1}}, None, len(doc) - 2),
    ]
    assert parser.done


def test_expand_last_inner_number_and_outer_member_share_the_closing_brace():
    units, _ = by_char('{"arguments": {"k": 3}}', expand=["arguments"])
    assert units == [("k", 3, "arguments", 21), ("arguments", {"k": 3}, None, 21)]


def test_expand_ignores_non_object_values_and_other_keys():
    doc = '{"arguments": "{\\"q\\": 1}", "other": {"x": 1}, "args": [{"y": 2}]}'
    units, _ = by_char(doc, expand=("arguments", "args"))
    assert [(k, p) for k, _, p, _ in units] == [
        ("arguments", None), ("other", None), ("args", None)
    ]


def test_duplicate_keys_give_one_unit_each():
    parser = JsonObjectParser()
    units = parser.feed('{"a": 1, "a": 2}')
    assert [(u.key, u.value) for u in units] == [("a", 1), ("a", 2)]


def test_string_escapes_and_surrogate_pairs():
    doc = r'{"e": "\"\\\/\b\f\n\r\t", "u": "\u00e9\uD834\uDD1E", "lone": "\ud800", "r": "€𝄞"}'
    check_document(doc)
    units, _ = by_char(doc)
    assert units[1][1] == "é𝄞"


def test_text_after_the_object_is_ignored_and_noted():
    parser = JsonObjectParser()
    units = parser.feed('{"a": 1}  \n')
    assert parser.done and parser.error is None and len(units) == 1
    assert parser.feed("  garbage") == []
    assert parser.done and "position 13" in parser.error and "starts with 'g'" in parser.error
    assert parser.close() == []


def test_error_names_position_and_problem_and_stops_output():
    parser = JsonObjectParser()
    assert [u.key for u in parser.feed('{"a": 1, "b": tru')] == ["a"]
    assert parser.error is None
    assert parser.feed("x, ") == []
    assert parser.error == "invalid JSON at position 17: expected 'true', got 'x'"
    assert parser.feed('"c": 1}') == [] and parser.close() == []
    assert not parser.done


def test_unterminated_object_at_close_is_an_error():
    parser = JsonObjectParser()
    parser.feed('{"a": [1, 2')
    assert parser.close() == []
    assert "unterminated" in parser.error and "position 11" in parser.error


def test_empty_input_and_reset():
    parser = JsonObjectParser()
    assert parser.feed("") == [] and parser.close() == []
    assert "no JSON object" in parser.error
    parser.reset()
    assert parser.error is None and not parser.done
    assert [u.index for u in parser.feed('{"a":1,"b":2}')] == [0, 1]


def test_top_level_must_be_an_object():
    for doc in ('[1]', '"s"', "1", "\ufeff{}"):
        parser = JsonObjectParser()
        parser.feed(doc)
        assert parser.error and "position 0" in parser.error


def test_deep_nesting_does_not_recurse_in_the_parser():
    doc = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    parser = JsonObjectParser()
    units = parser.feed(doc) + parser.close()
    # json.loads itself cannot decode this much nesting: the parser reports, not raises
    assert units == [] and "cannot decode" in parser.error


# -- conformance: accepted and rejected documents --------------------------------------------
# No PyPI package ships nst/JSONTestSuite's files, so these object documents are written
# here in the style of its y_/n_ cases; CPython's own test_json fail/pass documents follow.

ACCEPT = [
    "{}",
    ' {"a":[]} ',
    '{"asd":"sdf", "dfg":"fgh"}',
    '{"a":"b","a":"c"}',
    '{"":0}',
    '{"foo\\u0000bar": 42}',
    '{"min": -1.0e+28, "max": 1.0e+28}',
    '{"x":[{"id": "x"}], "id": "y"}',
    '{"a":1E400, "b":-0, "c":1e-999, "d":0.5, "e":1E+2, "f":-123e-2, "g":20e1}',
    '{"big": 123456789012345678901234567890, "neg": -9223372036854775809}',
    '{\n"a"\t:\r1\n}',
    '{"a":{"b":{"c":[1,2,{"d":null}], "e": [[], {}]}}}',
    '{"\\uDFAA":0, "\\uD800\\uD800\\n":1}',
    '{"\u2028\u2029": "\u0080\u00ff\u0100"}',
    '{"a": "' + "x" * 5000 + '"}',
    '{"a":' + "[" * 500 + "]" * 500 + "}",
]

REJECT = [
    '{"a" b}', '{"a":"a" 123}', "{key: 'value'}", '{"id":0,,,,,}', '{"id":0,}',
    '{"a":"b"}/**/', '{"a":"b"}#', '{"a":"b"}/', '{"a" "b"}', '{"a":"b",,"c":"d"}',
    '{:"b"}', '{"x", null}', '{"x"::"b"}', '{"a":/*comment*/"b"}', "{null:null,null:null}",
    "{9999E9999:1}", "{1:1}", '{"a":"a', '{"a"', '{"a":', '{"a":1', "{'a':0}",
    '{"a":NaN}', '{"a":Infinity}', '{"a":-Infinity}', '{"a":+1}', '{"a":.1}', '{"a":1.}',
    '{"a":01}', '{"a":-01}', '{"a":-}', '{"a":1e}', '{"a":1e+}', '{"a":0x1}', '{"a":tru}',
    '{"a":True}', '{"a":nul}', '{"a":"\\u00G0"}', '{"a":"\\x15"}', '{"a":"\\\'"}',
    '{"a":"tab\there"}', '{"a":"new\nline"}', '{"a":[1,]}', '{"a":[,1]}', '{"a":]}',
    '{"a":{"b":1,}}', '{"a":1}x', '{"a":"b"}}', "{", "{]", '{"a":1]', '{"a":[1}',
    '{"a":[1 2]}', '{"a" : 1 "b": 2}', '{"a":"\\uD800\\u"}', '{"a":\'b\'}',
]


@pytest.mark.parametrize("doc", ACCEPT)
def test_accepts_what_json_accepts(doc):
    for seed in range(3):
        check_document(doc, seed)


@pytest.mark.parametrize("doc", REJECT)
def test_rejects_malformed_objects(doc):
    for seed in range(3):
        parser = JsonObjectParser()
        feed_chunks(parser, doc, seed)
        assert parser.error, doc


def _cpython_json_documents() -> tuple[list[str], list[str]]:
    """The json.org JSON_checker documents that CPython's test_json carries."""
    folder = pathlib.Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_json"
    if not (folder / "test_fail.py").exists():
        return [], []
    fail_tree = ast.parse((folder / "test_fail.py").read_text(encoding="utf-8"))
    values = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in fail_tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in ("JSONDOCS", "SKIPS")
    }
    fails = [doc for i, doc in enumerate(values["JSONDOCS"], 1) if i not in values["SKIPS"]]
    passes = []
    for name in ("test_pass1.py", "test_pass2.py", "test_pass3.py"):
        tree = ast.parse((folder / name).read_text(encoding="utf-8"))
        passes += [ast.literal_eval(node.value) for node in tree.body
                   if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "JSON"]
    return fails, passes


def test_cpython_json_checker_documents():
    fails, passes = _cpython_json_documents()
    if not fails:
        pytest.skip("this Python has no test/test_json")
    assert len(fails) >= 30 and len(passes) == 3
    for doc in fails:
        for wrapped in (doc, '{"doc": ' + doc + "}"):
            parser = JsonObjectParser()
            feed_chunks(parser, wrapped)
            assert parser.error, wrapped
    for doc in passes:
        check_document('{"doc": ' + doc + "}")
        if doc.strip().startswith("{"):
            check_document(doc)


# -- real documents: every object-valued *.json under site-packages (capped) ------------------


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _site_packages_objects(max_files: int = 400, max_chars: int = 60_000, budget: int = 2_500_000):
    root = pathlib.Path(sysconfig.get_paths()["purelib"])
    paths = sorted(root.rglob("*.json"))
    random.Random(7).shuffle(paths)
    docs, total = [], 0
    for path in paths:
        try:
            if path.stat().st_size > max_chars:
                continue
            doc = path.read_text(encoding="utf-8")
            value = json.loads(doc, parse_constant=_reject_constant)
        except (OSError, ValueError, TypeError, RecursionError):
            continue
        if isinstance(value, dict):
            docs.append((path, doc))
            total += len(doc)
        if len(docs) >= max_files or total >= budget:
            break
    return docs


def test_site_packages_json_corpus():
    docs = _site_packages_objects()
    if len(docs) < 20:
        pytest.skip("too few JSON documents installed")
    for k, (path, doc) in enumerate(docs):
        try:
            check_document(doc, seed=k)
        except AssertionError as exc:
            raise AssertionError(f"{path}: {exc}") from exc


# -- never raises ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(1, 8))
def test_random_text_never_raises(text, size):
    parser = JsonObjectParser(expand=("a",))
    for i in range(0, len(text), size):
        for unit in parser.feed(text[i : i + size]):
            assert unit.text
    assert parser.close() == []


_SCALARS = st.none() | st.booleans() | st.integers() | st.text() | st.floats(
    allow_nan=False, allow_infinity=False
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(max_size=6), _VALUES, max_size=6),
    st.sampled_from([None, 0, 2]),
    st.booleans(),
    st.integers(0, 10_000),
)
def test_random_objects_match_json_loads(obj, indent, ascii_only, seed):
    doc = json.dumps(obj, indent=indent, ensure_ascii=ascii_only)
    check_document(doc, seed)
    expanded = JsonObjectParser(expand=obj.keys())
    units = [u for u, _, _ in feed_chunks(expanded, doc, seed)]
    assert expanded.error is None
    for key, value in obj.items():
        if isinstance(value, dict):
            inner = [(u.key, u.value) for u in units if u.parent == key]
            assert inner == list(value.items())
    assert [(u.key, u.value) for u in units if u.parent is None] == list(obj.items())
