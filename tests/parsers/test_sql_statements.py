"""SQLStatementParser: statements split at semicolons outside strings and comments, for any chunking."""

from __future__ import annotations

import pytest

from parsers.sql_statements import SQLStatementParser, split_statements

SCRIPT = (
    "SELECT 'a;b', \"odd;name\" FROM t; -- a comment; with a semicolon\n"
    "/* block ; comment */ SELECT [x;y], `z;w` FROM t WHERE s = 'it''s; fine';\n"
    ";;\n"
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 1; DELETE FROM u; END;\n"
    "SELECT 4 - 2 / 1\n"
)


def test_parser_splits_at_semicolons_outside_strings_and_comments():
    units = split_statements(SCRIPT)
    assert [u.value for u in units] == [
        "SELECT 'a;b', \"odd;name\" FROM t;",
        "SELECT [x;y], `z;w` FROM t WHERE s = 'it''s; fine';",
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 1; DELETE FROM u; END;",
        "SELECT 4 - 2 / 1",
    ]
    assert "".join(u.text for u in units) == SCRIPT
    assert [u.index for u in units] == [0, 1, 2, 3]
    assert all(u.key == "query" and u.error is None for u in units)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_parser_gives_the_same_units_for_any_chunking(size):
    parser = SQLStatementParser()
    units = []
    for i in range(0, len(SCRIPT), size):
        units += parser.feed(SCRIPT[i : i + size])
    units += parser.close()
    assert units == split_statements(SCRIPT)


def test_parser_emits_a_statement_with_the_feed_that_delivers_its_semicolon():
    parser = SQLStatementParser()
    assert parser.feed("SELECT 1") == []
    assert parser.feed(" -- not yet;") == []
    assert parser.feed("\n") == []
    [unit] = parser.feed(";  SELECT")
    assert unit.value == "SELECT 1 -- not yet;\n;"
    assert parser.feed(" 2") == []
    assert [u.value for u in parser.close()] == ["SELECT 2"]


def test_parser_reports_an_unterminated_string_at_close_and_never_raises():
    parser = SQLStatementParser()
    assert parser.feed("SELECT 'unfinished; still a string") == []
    [unit] = parser.close()
    assert unit.error is not None and "never closed" in unit.error
    assert parser.error == unit.error
    assert SQLStatementParser().close() == []
    assert split_statements("  -- only a comment\n /* and this */ ;; ") == []
