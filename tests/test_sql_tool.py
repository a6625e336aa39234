"""SQLTool: statement splitting, read-only enforcement, timeouts and trimmed results, on a
database built from the real LLMCompiler question sets (ParallelQA and HotpotQA)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from conveyor_hf.tools.base import SideEffect
from conveyor_hf.tools.sql import MAX_VALUE_BYTES, SQLTool, format_rows
from parsers.sql_statements import split_statements
from parsers.unit import Unit
from helpers import LLMCOMPILER_DATA, wait_until

DATA = LLMCOMPILER_DATA


@pytest.fixture(scope="module")
def datasets() -> tuple[list[dict], list[dict]]:
    parallel = json.loads((DATA / "parallelqa_dataset.json").read_text(encoding="utf-8"))
    hotpot = json.loads((DATA / "hotpotqa_comparison.json").read_text(encoding="utf-8"))
    return parallel, hotpot


@pytest.fixture(scope="module")
def qa_db(tmp_path_factory: pytest.TempPathFactory, datasets) -> Path:
    """``questions(id, dataset, question, branch, level)`` and ``answers(question_id, answer)``."""
    parallel, hotpot = datasets
    path = tmp_path_factory.mktemp("sql") / "qa.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE questions (id TEXT PRIMARY KEY, dataset TEXT NOT NULL, question TEXT NOT NULL,"
        " branch INTEGER, level TEXT);"
        "CREATE TABLE answers (question_id TEXT REFERENCES questions(id), answer TEXT);"
    )
    for item in parallel:
        qid = f"parallelqa-{item['id']}"
        conn.execute("INSERT INTO questions VALUES (?, 'parallelqa', ?, ?, NULL)",
                     (qid, item["question"], item["branch"]))
        conn.execute("INSERT INTO answers VALUES (?, ?)", (qid, str(item["answer"])))
    for item in hotpot:
        conn.execute("INSERT INTO questions VALUES (?, 'hotpotqa', ?, NULL, ?)",
                     (item["id"], item["question"], item["level"]))
        conn.execute("INSERT INTO answers VALUES (?, ?)", (item["id"], str(item["answer"])))
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def sql(qa_db: Path):
    tool = SQLTool(qa_db, max_rows=5, timeout=5)
    yield tool
    tool.close()


def count_rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# -- reading real data -----------------------------------------------------------------------
def test_declares_itself(sql):
    assert sql.name == "sql" and sql.fence_languages == ("sql",)
    assert sql.side_effect is SideEffect.READ_ONLY
    assert sql.schema()["function"]["parameters"]["required"] == ["query"]
    assert SQLTool(":memory:", read_only=False).side_effect is SideEffect.MUTATING


def test_queries_real_data_with_a_compact_table(sql, datasets):
    parallel, hotpot = datasets
    result = sql.run("SELECT dataset, count(*) AS n FROM questions GROUP BY dataset ORDER BY dataset;")
    assert result.error is None
    assert result.output == f"dataset | n\nhotpotqa | {len(hotpot)}\nparallelqa | {len(parallel)}"


def test_join_on_real_answers(sql):
    result = sql.run(
        "SELECT a.answer FROM questions q JOIN answers a ON a.question_id = q.id "
        "WHERE q.question LIKE '%Mariana Trench%' AND q.dataset = 'parallelqa' ORDER BY q.id LIMIT 1;"
    )
    assert result.error is None
    assert result.output.splitlines() == ["answer", "Mariana Trench"]


def test_results_are_trimmed_to_max_rows_with_a_count_of_the_rest(sql, datasets):
    parallel, _ = datasets
    result = sql.run("SELECT id, branch FROM questions WHERE dataset = 'parallelqa' ORDER BY rowid;")
    lines = result.output.splitlines()
    assert lines[0] == "id | branch"
    assert lines[1] == f"parallelqa-{parallel[0]['id']} | {parallel[0]['branch']}"
    assert len(lines) == 1 + 5 + 1
    assert lines[-1] == f"\u2026 {len(parallel) - 5} more rows"


def test_long_values_are_cut_and_nulls_shown():
    table = format_rows(["a", "b"], [("x" * 200, None), (b"\x00\x01", 1.5)], max_cell_chars=10)
    assert table.splitlines() == ["a | b", "xxxxxxxxx\u2026 | NULL", "<blob 2 bytes> | 1.5"]
    assert format_rows(["a"], []).splitlines() == ["a", "(no rows)"]


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"), reason="Connection.setlimit is Python 3.11+")
def test_huge_values_fail_in_sqlite_with_an_error_the_model_reads(sql):
    # Rows are fetched whole before cells are cut to 80 chars: 20 rows of 100 MB values
    # would make this process allocate 2 GB. SQLite now refuses to make such values.
    rows = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c LIMIT 20) "
    result = sql.run(rows + "SELECT randomblob(100000000) AS big FROM c;\n")
    assert "string or blob too big" in result.error
    assert f"at most {MAX_VALUE_BYTES // (1024 * 1024)} MiB" in result.error and "substr(" in result.error
    assert f"error: {result.error}" in result.output  # the re-prompt shows it to the model
    # printf() gives NULL past the limit (SQLite 3.40; newer ones may raise): bounded either way.
    printed = sql.run(rows + "SELECT printf('%.*c', 100000000, 'x') AS big FROM c;\n")
    assert "too big" in (printed.error or "") or printed.output.splitlines()[1:6] == ["NULL"] * 5
    # Values under the limit still work, and the tool stays usable.
    fine = sql.run(f"SELECT length(randomblob({MAX_VALUE_BYTES // 2})) AS n;\n")
    assert fine.error is None and fine.output == f"n\n{MAX_VALUE_BYTES // 2}"


def test_several_statements_are_echoed_and_an_error_names_the_statement(sql):
    result = sql.run("SELECT count(*) FROM answers;\nSELECT * FROM no_such_table;\n")
    assert result.output.startswith("sql> SELECT count(*) FROM answers;\ncount(*)\n1600")
    assert "sql> SELECT * FROM no_such_table;" in result.output
    assert "no such table: no_such_table" in result.error
    assert "SELECT * FROM no_such_table" in result.error


def test_json_call_units_carry_the_query(sql):
    call = sql.open_call()
    call.feed(Unit(text='"query": "SELECT count(*) FROM questions WHERE branch = 3;"', key="query",
                   value="SELECT count(*) FROM questions WHERE branch = 3;"))
    call.feed(Unit(text='"limit": 3', key="limit", value=3, index=1))
    result = call.finish()
    assert result.units[0].error is None and result.units[0].output.splitlines()[0] == "count(*)"
    assert "unknown argument 'limit'" in result.units[1].error


# -- partial execution ------------------------------------------------------------------------
def test_each_statement_runs_while_the_rest_is_still_being_written(sql, datasets):
    most = max(item["branch"] for item in datasets[0])
    parser = sql.make_parser()
    call = sql.open_call()
    units = parser.feed("SELECT count(*) FROM questions;\nSELECT max(br")
    assert len(units) == 1
    first = call.feed(units[0])
    assert wait_until(lambda: first.done)
    assert first.output == "count(*)\n1600"
    assert call.records == [first]  # the second statement is not complete yet
    for unit in parser.feed("anch) FROM questions;\n") + parser.close():
        call.feed(unit)
    result = call.finish()
    assert [r.output for r in result.units] == ["count(*)\n1600", f"max(branch)\n{most}"]
    assert first.end <= result.units[1].start


def test_connection_opens_on_the_call_worker_not_at_construction(qa_db, monkeypatch):
    threads = []
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    tool = SQLTool(qa_db)
    assert threads == []
    try:
        call = tool.open_call()
        call.feed(Unit(text="SELECT 1;", key="query", value="SELECT 1;"))
        assert call.finish().output == "1\n1"
        assert threads == ["conveyor-sql-warm"]
        assert tool.run("SELECT 2;").output == "2\n2"
        assert len(threads) == 1  # the connection is kept across calls
    finally:
        tool.close()


# -- read-only enforcement --------------------------------------------------------------------
@pytest.mark.parametrize(
    "statement, action",
    [
        ("INSERT INTO answers VALUES ('x', 'y');", "INSERT answers"),
        ("UPDATE answers SET answer = 'no';", "UPDATE answers"),
        ("DELETE FROM questions;", "DELETE questions"),
        ("DROP TABLE answers;", "DROP TABLE answers"),
        ("CREATE TABLE notes (x);", "CREATE TABLE notes"),
        ("CREATE INDEX qi ON questions(level);", "CREATE INDEX qi"),
        ("ALTER TABLE answers ADD COLUMN score REAL;", "ALTER TABLE answers"),
        ("ATTACH DATABASE 'other.db' AS other;", "ATTACH other.db"),
        ("PRAGMA user_version = 7;", "PRAGMA user_version = 7"),
        ("PRAGMA journal_mode = WAL;", "PRAGMA journal_mode = WAL"),
        ("VACUUM;", "VACUUM"),
    ],
)
def test_writes_are_refused_with_the_statement_and_the_fix(sql, qa_db, statement, action):
    before = count_rows(qa_db, "answers")
    result = sql.run(statement)
    assert result.error is not None
    assert f"refused {statement!r}" in result.error
    assert f"({action})" in result.error
    assert "read_only=False" in result.error
    assert count_rows(qa_db, "answers") == before


def test_reading_pragmas_are_allowed(sql):
    assert sql.run("PRAGMA table_info(answers);").output.splitlines()[1].startswith("0 | question_id | TEXT")
    assert sql.run("PRAGMA user_version;").output == "user_version\n0"


def test_a_missing_database_is_reported_with_the_fix(tmp_path):
    tool = SQLTool(tmp_path / "missing.db")
    result = tool.run("SELECT 1;")
    assert "does not exist" in result.error and "read_only=False" in result.error
    assert not (tmp_path / "missing.db").exists()


def test_writes_need_the_opt_in_and_then_wait_for_the_whole_call(tmp_path):
    path = tmp_path / "notes.db"
    tool = SQLTool(path, read_only=False)
    try:
        assert tool.side_effect is SideEffect.MUTATING and tool.stop_on_error
        call = tool.open_call(early=True)
        assert call.early is False  # mutating: buffered until the call closes
        for unit in split_statements(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n"
            "INSERT INTO notes (body) VALUES ('one'), ('two');\n"
            "SELECT count(*) FROM notes;\n"
        ):
            call.feed(unit)
        result = call.finish()
        assert result.error is None
        assert result.units[1].output == "OK, 2 rows changed"
        assert result.units[2].output == "count(*)\n2"
        assert count_rows(path, "notes") == 2  # committed (autocommit)
        early = SQLTool(path, read_only=False, allow_early=True)
        assert early.open_call(early=True).early is True
        early.close()
    finally:
        tool.close()


def test_a_failed_write_skips_the_rest_of_the_call(tmp_path):
    tool = SQLTool(":memory:", read_only=False)
    result = tool.run("CREATE TABLE t (a);\nINSERT INTO nope VALUES (1);\nINSERT INTO t VALUES (1);\n")
    assert "no such table: nope" in result.error
    assert result.units[2].skipped
    assert tool.run("SELECT count(*) FROM t;").output == "count(*)\n0"  # same connection
    fork = tool.fork()
    assert "no such table: t" in fork.run("SELECT * FROM t;").error  # its own :memory: db
    tool.close()
    fork.close()


# -- timeouts ---------------------------------------------------------------------------------
def test_a_long_query_is_interrupted_with_a_clear_error(qa_db):
    tool = SQLTool(qa_db, timeout=0.3)
    try:
        result = tool.run("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r;")
        assert "was stopped after 0.3s (timeout)" in result.error
        assert "SQLTool(timeout=...)" in result.error
        assert tool.run("SELECT count(*) FROM answers;").output == "count(*)\n1600"  # still usable
    finally:
        tool.close()


def test_constructor_errors_name_the_fix():
    with pytest.raises(ValueError, match="max_rows"):
        SQLTool(":memory:", max_rows=0)
    with pytest.raises(ValueError, match="timeout"):
        SQLTool(":memory:", timeout=0)
