"""PythonStatementParser: exact units, the exact feed call that emits each, real code."""

from __future__ import annotations

import ast
import pathlib
import random
import sysconfig
import tokenize

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers.python_statements import PythonStatementParser


def emissions(source: str) -> list[tuple[str, int | None]]:
    """Feed ``source`` one character at a time: [(unit text, index of the character
    whose feed call emitted it, or None for close())]."""
    parser = PythonStatementParser()
    out: list[tuple[str, int | None]] = []
    for i, char in enumerate(source):
        out += [(unit.text, i) for unit in parser.feed(char)]
    out += [(unit.text, None) for unit in parser.close()]
    assert "".join(text for text, _ in out) == source
    return out


def at(source: str, needle: str, offset: int = 0, start: int = 0) -> int:
    """Index of ``needle`` in ``source`` (searching from ``start``) plus ``offset``."""
    index = source.index(needle, start)
    return index + offset


def parse_all(source: str, sizes=(1, 8), seed: int = 0):
    rng = random.Random(seed)
    parser = PythonStatementParser()
    units, i = [], 0
    while i < len(source):
        size = rng.randint(*sizes)
        units += parser.feed(source[i : i + size])
        i += size
    units += parser.close()
    return units, parser


# -- simple statements ----------------------------------------------------------------


def test_simple_statements_come_out_at_their_newline():
    src = "x = 1\ny = f(x)\nprint(y)\n"
    assert emissions(src) == [
        ("x = 1\n", at(src, "\n")),
        ("y = f(x)\n", at(src, "\n", start=6)),
        ("print(y)\n", len(src) - 1),
    ]


def test_last_statement_without_newline_comes_out_at_close():
    assert emissions("a = 1\nb = 2") == [("a = 1\n", 5), ("b = 2", None)]


def test_semicolons_make_one_unit():
    src = "a = 1; b = 2; print(a + b)\nc = 3\n"
    assert [text for text, _ in emissions(src)] == ["a = 1; b = 2; print(a + b)\n", "c = 3\n"]


def test_units_have_index_from_zero_and_no_value():
    parser = PythonStatementParser()
    units = parser.feed("a = 1\nb = 2\n") + parser.close()
    assert [(u.index, u.value, u.key, u.error) for u in units] == [
        (0, None, None, None),
        (1, None, None, None),
    ]
    assert parser.error is None


def test_blank_lines_and_comments_travel_with_the_next_statement():
    src = "\n# first\n\nx = 1\n\n  # indented comment\ny = 2\n# trailing\n"
    assert emissions(src) == [
        ("\n# first\n\nx = 1\n", at(src, "1\n", 1)),
        ("\n  # indented comment\ny = 2\n", at(src, "2\n", 1)),
        ("# trailing\n", None),
    ]


def test_comments_containing_quotes_and_brackets():
    src = "x = 1  # it's (not [a {bracket\ny = '#not a comment'  # \"\nz = 3\n"
    assert [text for text, _ in emissions(src)] == [
        "x = 1  # it's (not [a {bracket\n",
        "y = '#not a comment'  # \"\n",
        "z = 3\n",
    ]


# -- continuation lines -----------------------------------------------------------------


def test_brackets_spanning_lines():
    src = "total = sum([\n    1,\n    2,  # ]\n])\nprint(total)\n"
    assert emissions(src) == [
        ("total = sum([\n    1,\n    2,  # ]\n])\n", at(src, "])\n", 2)),
        ("print(total)\n", len(src) - 1),
    ]


def test_backslash_continuation():
    src = "x = 1 + \\\n    2\ny = 3 \\\r\n  + 4\r\n"
    assert emissions(src) == [
        ("x = 1 + \\\n    2\n", at(src, "2\n", 1)),
        ("y = 3 \\\r\n  + 4\r\n", len(src) - 1),
    ]


def test_stray_closing_bracket_does_not_block():
    assert [t for t, _ in emissions("x = 1)\ny = 2\n")] == ["x = 1)\n", "y = 2\n"]


# -- strings -----------------------------------------------------------------------------


def test_triple_quoted_strings_hide_code():
    src = 'doc = """\nif x:\n    pass\n"""\ns = \'\'\'it\'s \\\'\'\' \'\'\'\nz = 1\n'
    assert [t for t, _ in emissions(src)] == [
        'doc = """\nif x:\n    pass\n"""\n',
        "s = '''it's \\''' '''\n",
        "z = 1\n",
    ]


def test_string_prefixes():
    src = (
        "a = rb'\\'' + br\"x\"\n"
        "b = r'\\\\'\n"
        "c = u'(' + B\"[\" + Rb'{'\n"
        "d = 1\n"
    )
    assert [t for t, _ in emissions(src)] == [
        "a = rb'\\'' + br\"x\"\n",
        "b = r'\\\\'\n",
        "c = u'(' + B\"[\" + Rb'{'\n",
        "d = 1\n",
    ]


def test_empty_strings():
    src = "a = ''\nb = \"\" + ''\nc = ''''''\nd = 1\n"
    assert [t for t, _ in emissions(src)] == [
        "a = ''\n", "b = \"\" + ''\n", "c = ''''''\n", "d = 1\n"
    ]


def test_f_strings_with_nested_quotes_fields_and_escapes():
    lines = [
        'a = f"{x["key"]}"\n',  # 3.12: the same quote inside a field
        "b = f'{x!r:>{width}} {{literal}} {y:\"^10}'\n",
        'c = f"""{\n    "\\n".join(items)\n}"""\n',
        'd = f"\\N{BULLET} {x}" + rf"\\{x}"\n',
        "e = f'{a if b else \"c\"}' f\"{d['(']}\"\n",
        'g = f"{f"{1}"}"\n',
        "h = 1\n",
    ]
    assert [t for t, _ in emissions("".join(lines))] == lines


def test_unterminated_single_quoted_string_ends_at_newline():
    src = "x = 'abc\ny = 2\n"
    assert [t for t, _ in emissions(src)] == ["x = 'abc\n", "y = 2\n"]


def test_string_line_continuation():
    src = "x = 'abc\\\ndef'\ny = 2\n"
    assert [t for t, _ in emissions(src)] == ["x = 'abc\\\ndef'\n", "y = 2\n"]


# -- compound statements -------------------------------------------------------------------


def test_if_block_is_emitted_when_the_next_line_rules_out_elif_or_else():
    src = "if x:\n    y = 1\nelif z:\n    y = 2\nelapsed = 1\n"
    body = src[: src.index("elapsed")]
    assert emissions(src) == [
        (body, at(src, "elapsed", 2)),  # the "a": "e" and "el" may begin elif/else
        ("elapsed = 1\n", len(src) - 1),
    ]


def test_if_else_is_final():
    src = "if x:\n    y = 1\nelse:\n    y = 3\nelapsed = 1\n"
    assert emissions(src)[0] == (src[: src.index("elapsed")], at(src, "elapsed"))


def test_keyword_prefix_that_is_a_name():
    src = "if x:\n    pass\nelse_value = 3\n"
    assert emissions(src)[0] == ("if x:\n    pass\n", at(src, "_value"))


def test_if_followed_by_other_code_is_emitted_at_its_first_character():
    src = "if x:\n    pass\n\n# comment\nprint(1)\n"
    assert emissions(src) == [
        ("if x:\n    pass\n", at(src, "print")),
        ("\n# comment\nprint(1)\n", len(src) - 1),
    ]


def test_one_line_compound_statements():
    src = "if x: y = 1\nelse: y = 2\nwhile y: y -= 1\nz = 0\n"
    assert emissions(src) == [
        ("if x: y = 1\nelse: y = 2\n", at(src, "while")),
        ("while y: y -= 1\n", at(src, "z = 0")),
        ("z = 0\n", len(src) - 1),
    ]


def test_def_and_class_are_emitted_at_the_first_character_of_the_next_line():
    src = (
        "def f(a,\n      b):\n    return a\n\n"
        "class A(Base):\n    x = 1\n\n# not the end\n    def m(self):\n        pass\n"
        "else_ = 1\n"
    )
    assert emissions(src) == [
        ("def f(a,\n      b):\n    return a\n", at(src, "class")),
        (
            "\nclass A(Base):\n    x = 1\n\n# not the end\n    def m(self):\n        pass\n",
            at(src, "else_"),  # nothing continues a class: "e" decides
        ),
        ("else_ = 1\n", len(src) - 1),
    ]


def test_decorated_definitions():
    src = "@dec\n@other(\n    1)\ndef f():\n    pass\n@dec\nclass C: pass\nx = 1\n"
    assert emissions(src) == [
        ("@dec\n@other(\n    1)\ndef f():\n    pass\n", at(src, "@dec", start=5)),
        ("@dec\nclass C: pass\n", at(src, "x = 1")),
        ("x = 1\n", len(src) - 1),
    ]


def test_for_and_while_else():
    src = "for i in r:\n    pass\nelse:\n    done()\nwhile 1:\n    break\nelse:\n    pass\n"
    assert emissions(src) == [
        ("for i in r:\n    pass\nelse:\n    done()\n", at(src, "while")),
        ("while 1:\n    break\nelse:\n    pass\n", None),
    ]


def test_for_else_is_final():
    src = "for i in r:\n    pass\nelse:\n    pass\nelse_ = 1\n"
    assert emissions(src)[0][1] == at(src, "else_")  # no second else after for-else


def test_try_except_else_finally():
    src = (
        "try:\n    a()\nexcept (E, F) as e:\n    b()\nexcept* G:\n    c()\n"
        "else:\n    d()\nfinally:\n    e()\nexcept_ = 1\n"
        "try:\n    pass\nfinally:\n    pass\nfin = 2\n"
    )
    first = src[: src.index("except_")]
    assert emissions(src) == [
        (first, at(src, "except_")),  # a finally clause is the last one
        ("except_ = 1\n", at(src, "except_ = 1\n", 11)),
        ("try:\n    pass\nfinally:\n    pass\n", at(src, "fin =")),
        ("fin = 2\n", len(src) - 1),
    ]


def test_try_else_then_finally_is_awaited():
    src = "try:\n    pass\nexcept E:\n    pass\nelse:\n    pass\nfi = 1\n"
    assert emissions(src)[0] == (src[: src.index("fi =")], at(src, "fi =", 2))


def test_with_and_async_statements():
    src = (
        "with open(p) as f, lock:\n    data = f.read()\n"
        "async def g():\n    async with s:\n        pass\n    async for x in y:\n        pass\n"
        "async for a in b:\n    pass\nelse:\n    pass\n"
        "async with c:\n    pass\n"
        "e = 1\n"
    )
    assert [(t, i) for t, i in emissions(src)] == [
        ("with open(p) as f, lock:\n    data = f.read()\n", at(src, "async def")),
        (
            "async def g():\n    async with s:\n        pass\n"
            "    async for x in y:\n        pass\n",
            at(src, "async for a"),
        ),
        ("async for a in b:\n    pass\nelse:\n    pass\n", at(src, "async with c")),
        ("async with c:\n    pass\n", at(src, "e = 1")),
        ("e = 1\n", len(src) - 1),
    ]


def test_match_statement_and_soft_keyword():
    src = (
        "match = 3\n"
        "match(x)\n"
        "match.group(1)\n"
        "match command.split():\n"
        "    case [action]:\n"
        "        pass\n"
        "    case _:\n"
        "        pass\n"
        "case = 1\n"
    )
    assert emissions(src) == [
        ("match = 3\n", at(src, "\n")),
        ("match(x)\n", at(src, "(x)\n", 3)),
        ("match.group(1)\n", at(src, "(1)\n", 3)),
        ("match command.split():\n    case [action]:\n        pass\n    case _:\n        pass\n",
         at(src, "case = 1")),
        ("case = 1\n", len(src) - 1),
    ]


def test_compound_statement_at_end_of_input_comes_out_at_close():
    src = "def f():\n    return 1\n\n# done\n"
    assert emissions(src) == [(src, None)]


def test_partial_first_word_at_close_is_split_off():
    assert emissions("if x:\n    pass\nel") == [("if x:\n    pass\n", None), ("el", None)]


def test_crlf_line_endings():
    src = "if x:\r\n    y = 1\r\nz = 2\r\n"
    assert [t for t, _ in emissions(src)] == ["if x:\r\n    y = 1\r\n", "z = 2\r\n"]


# -- indentation and broken code -------------------------------------------------------------


def test_block_indented_as_a_whole_splits_at_its_own_indentation():
    src = "    x = 1\n    if y:\n        z = 2\n    w = 3\n"
    assert emissions(src) == [
        ("    x = 1\n", at(src, "\n")),
        ("    if y:\n        z = 2\n", at(src, "w = 3")),
        ("    w = 3\n", len(src) - 1),
    ]


def test_dedent_below_the_first_line_is_top_level_too():
    src = "    if y:\n        z = 2\nw = 3\n"
    assert [t for t, _ in emissions(src)] == ["    if y:\n        z = 2\n", "w = 3\n"]


def test_unexpected_indent_after_a_simple_statement_starts_a_new_unit():
    src = "x = 1\n    y = 2\nz = 3\n"
    assert [t for t, _ in emissions(src)] == ["x = 1\n", "    y = 2\n", "z = 3\n"]


def test_orphan_clause_and_missing_body_are_still_emitted():
    src = "else:\n    pass\nif x:\ny = 1\n"
    assert [t for t, _ in emissions(src)] == ["else:\n    pass\n", "if x:\n", "y = 1\n"]


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("x = (1,\n2\n", "unclosed bracket"),
        ('s = """never\nends\n', "unterminated string"),
        ("x = f'{a\n", None),  # the newline ends the single-quoted f-string
        ("x = 1 + \\", "backslash"),
        ("x = f'{", "unterminated string"),
    ],
)
def test_unfinished_input_comes_out_at_close_with_an_error(source, problem):
    parser = PythonStatementParser()
    units = parser.feed(source) + parser.close()
    assert "".join(u.text for u in units) == source
    if problem is None:
        assert parser.error is None
    else:
        assert problem in units[-1].error and problem in parser.error


def test_reset_and_empty_feeds():
    parser = PythonStatementParser()
    assert parser.feed("") == []
    parser.feed("if x:\n    pass\n")
    parser.reset()
    assert [u.text for u in parser.feed("y = 1\n")] == ["y = 1\n"]
    assert parser.feed("y = 1\n")[0].index == 1
    assert parser.close() == []


def test_chunking_does_not_change_units():
    src = 'if a:\n    s = f"{x["k"]:{w}}"\nelif b: pass\nelse:\n    t = """\n"""\nz = (1,\n 2)\n'
    expected = [t for t, _ in emissions(src)]
    for seed in range(20):
        units, _ = parse_all(src, seed=seed)
        assert [u.text for u in units] == expected
    whole = PythonStatementParser()
    assert [u.text for u in whole.feed(src) + whole.close()] == expected


# -- never raises --------------------------------------------------------------------------

_PIECES = st.sampled_from(
    ["if x:", "else:", "elif", "try:", "except", "finally:", "def f():", "@d", "match y:",
     "case 1:", "\n", "    ", "\t", "\r\n", "'", '"', "'''", '"""', "f'", 'rb"', "{", "}",
     "{{", "(", ")", "[", "]", "\\", "#", ":", ";", "x = 1", "el", "e", "\\N{", "async ", "é"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES), st.lists(st.integers(1, 8), min_size=1))
def test_random_code_like_text_never_raises_and_reconstructs(pieces, sizes):
    source = "".join(pieces)
    parser = PythonStatementParser()
    units, i, k = [], 0, 0
    while i < len(source):
        size = sizes[k % len(sizes)]
        units += parser.feed(source[i : i + size])
        i, k = i + size, k + 1
    units += parser.close()
    assert "".join(u.text for u in units) == source
    assert [u.index for u in units] == list(range(len(units)))
    assert all(u.text for u in units)
    whole = PythonStatementParser()  # how the text is cut into chunks changes nothing
    assert [u.text for u in whole.feed(source) + whole.close()] == [u.text for u in units]


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(1, 8))
def test_random_text_never_raises_and_reconstructs(source, size):
    parser = PythonStatementParser()
    units = []
    for i in range(0, len(source), size):
        units += parser.feed(source[i : i + size])
    units += parser.close()
    assert "".join(u.text for u in units) == source


# -- real code: the standard library ----------------------------------------------------------

_COMPOUND = (
    ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.AsyncWith,
    ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Match,
) + ((ast.TryStar,) if hasattr(ast, "TryStar") else ())
_TRY = (ast.Try,) + ((ast.TryStar,) if hasattr(ast, "TryStar") else ())


def _open_clauses(node: ast.stmt, lines: list[str]) -> tuple[str, ...]:
    """The clause keywords that could still follow ``node``'s last clause (from ast)."""
    if isinstance(node, ast.If):
        while (
            len(node.orelse) == 1
            and isinstance(node.orelse[0], ast.If)
            and lines[node.orelse[0].lineno - 1].lstrip().startswith("elif")
        ):
            node = node.orelse[0]
        return () if node.orelse else ("elif", "else")
    if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
        return () if node.orelse else ("else",)
    if isinstance(node, _TRY):
        if node.finalbody:
            return ()
        return ("finally",) if node.orelse else ("except", "else", "finally")
    return ()


def _stdlib_sample(count: int = 260, max_chars: int = 80_000) -> list[pathlib.Path]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    rng = random.Random(1234)
    rng.shuffle(files)
    chosen = []
    for path in files:
        try:
            with tokenize.open(path) as handle:
                source = handle.read()
            if len(source) > max_chars:
                continue
            ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        chosen.append(path)
        if len(chosen) == count:
            break
    return chosen


def _expected_units(source: str):
    """From ``ast``: for each unit, (first line, offset of the character whose feed call
    must emit it, or None for close())."""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    groups: list[list[ast.stmt]] = []
    for node in ast.parse(source).body:
        line = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        col = node.col_offset if line == node.lineno else 0
        if groups and lines[line - 1][:col].strip():
            groups[-1].append(node)  # after a ";" on a line already taken
        else:
            groups.append([node])
            node.first_line = line  # type: ignore[attr-defined]
    expected = []
    for k, group in enumerate(groups):
        first = group[0].first_line
        if isinstance(group[0], _COMPOUND):
            if k + 1 == len(groups):
                expected.append((first, None))
                continue
            nxt = starts[groups[k + 1][0].first_line - 1]
            text = source[nxt : nxt + 12]
            decided = 0
            for keyword in _open_clauses(group[0], lines):
                common = 0
                while common < min(len(text), len(keyword)) and text[common] == keyword[common]:
                    common += 1
                decided = max(decided, common)
            expected.append((first, nxt + decided))
        else:
            end = starts[max(node.end_lineno for node in group)] - 1
            ok = end < len(source) and source[end] == "\n"
            expected.append((first, end if ok else None))
    return expected


def test_standard_library_corpus():
    paths = _stdlib_sample()
    assert len(paths) >= 150
    rng = random.Random(99)
    for path in paths:
        with tokenize.open(path) as handle:
            source = handle.read()
        parser = PythonStatementParser()
        units: list[tuple[str, int, int]] = []  # text, first and last offset of its feed
        i = 0
        while i < len(source):
            size = rng.randint(1, 8)
            units += [(u.text, i, i + size - 1) for u in parser.feed(source[i : i + size])]
            i += size
        units += [(u.text, len(source), len(source)) for u in parser.close()]
        # (a) exact reconstruction
        assert "".join(text for text, _, _ in units) == source, path
        assert parser.error is None, path
        # (b) unit boundaries are ast's top-level statement boundaries
        code_units, line = [], 1
        for text, first, last in units:
            for offset, physical in enumerate(text.splitlines()):
                stripped = physical.strip()
                if stripped and not stripped.startswith("#"):
                    code_units.append((line + offset, first, last))
                    break
            line += text.count("\n")
        expected = _expected_units(source)
        assert [u[0] for u in code_units] == [e[0] for e in expected], path
        # (c) eagerness: out in exactly the feed call that delivers the deciding character
        for (_, first, last), (start, due) in zip(code_units, expected):
            if due is None:
                assert first == len(source), (path, start, "not at close")
            else:
                assert first <= due, (path, start, "late")
                assert due <= last, (path, start, "early")
