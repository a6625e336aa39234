"""The ``sql`` tool: SQLite queries, each statement run the moment its ``;`` is written.

A call is a ```` ```sql ```` block (or a JSON call with a ``query`` argument). The body
is split into statements by :class:`~parsers.sql_statements.SQLStatementParser`: a
statement is complete at its terminating ``;`` outside strings, quoted names and comments
(a ``CREATE TRIGGER`` body included, as :func:`sqlite3.complete_statement` decides), or at
the end of the block.

Read-only by default, twice over: the database is opened with ``?mode=ro`` and an
authorizer refuses every write (``INSERT``, ``UPDATE``, ``DELETE``, ``CREATE``, ``DROP``,
``ALTER``, ``ATTACH``, ``VACUUM``, setting ``PRAGMA`` s, …) before SQLite does any work,
with a message naming the statement and the fix. ``SQLTool(read_only=False)`` allows
writes; the tool is then ``mutating``, so its statements wait for the whole call to be
decoded unless ``allow_early=True``.

A statement that runs longer than ``timeout`` seconds is stopped with
``Connection.interrupt()``; results are cut to ``max_rows`` rows for the re-prompt. No
string, blob or row may exceed :data:`MAX_VALUE_BYTES` (a statement that would make one
fails with "string or blob too big"), so one query cannot make this process allocate
gigabytes.

Example::

    from conveyor_hf.tools.sql import SQLTool

    tool = SQLTool("shop.db")
    print(tool.run("SELECT name, price FROM products ORDER BY price DESC;").output)
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

from conveyor_hf.text import shorten
from conveyor_hf.tools.base import SideEffect, Tool, ToolResult, UnitOutput, UnitRecord
from parsers.sql_statements import SQLStatementParser, complete_statement, split_statements
from parsers.unit import Unit

__all__ = ["SQLTool", "format_rows"]

#: Rows counted past ``max_rows`` for the "… N more rows" line before giving up counting.
COUNT_LIMIT = 100_000
#: Largest string, blob or row SQLite may make (``SQLITE_LIMIT_LENGTH``; its default is
#: 1e9 bytes). Rows are fetched whole before a cell is cut for the model, so without it one
#: SELECT of ``max_rows`` huge values (``randomblob(1e9)``) makes this process allocate
#: gigabytes. Past the limit SQLite refuses to make the value: the statement fails with
#: "string or blob too big" (``printf()`` gives NULL instead).
MAX_VALUE_BYTES = 4 * 1024 * 1024


# -- result formatting ----------------------------------------------------------------
def _cell(value: Any, limit: int) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<blob {len(value)} bytes>"
    return shorten(str(value), limit)


def format_rows(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], more: int = 0, *,
    more_is_lower_bound: bool = False, max_cell_chars: int = 80,
) -> str:
    """A compact table: a header line, one ``a | b | c`` line per row, then
    ``… N more rows`` when rows were cut (``(no rows)`` when there are none)."""
    lines = [" | ".join(columns)]
    lines += [" | ".join(_cell(v, max_cell_chars) for v in row) for row in rows]
    if not rows:
        lines.append("(no rows)")
    if more:
        plural = "row" if more == 1 else "rows"
        lines.append(f"\u2026 {'at least ' if more_is_lower_bound else ''}{more} more {plural}")
    return "\n".join(lines)


# -- the authorizer -----------------------------------------------------------------------
_WRITE_ACTIONS = {
    getattr(sqlite3, name): name.removeprefix("SQLITE_").replace("_", " ")
    for name in (
        "SQLITE_INSERT", "SQLITE_UPDATE", "SQLITE_DELETE", "SQLITE_ALTER_TABLE",
        "SQLITE_ATTACH", "SQLITE_DETACH", "SQLITE_REINDEX", "SQLITE_ANALYZE",
        "SQLITE_CREATE_INDEX", "SQLITE_CREATE_TABLE", "SQLITE_CREATE_TEMP_INDEX",
        "SQLITE_CREATE_TEMP_TABLE", "SQLITE_CREATE_TEMP_TRIGGER", "SQLITE_CREATE_TEMP_VIEW",
        "SQLITE_CREATE_TRIGGER", "SQLITE_CREATE_VIEW", "SQLITE_CREATE_VTABLE",
        "SQLITE_DROP_INDEX", "SQLITE_DROP_TABLE", "SQLITE_DROP_TEMP_INDEX",
        "SQLITE_DROP_TEMP_TABLE", "SQLITE_DROP_TEMP_TRIGGER", "SQLITE_DROP_TEMP_VIEW",
        "SQLITE_DROP_TRIGGER", "SQLITE_DROP_VIEW", "SQLITE_DROP_VTABLE",
    )
    if hasattr(sqlite3, name)
}
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_temp_master", "sqlite_schema", "sqlite_temp_schema"})
#: PRAGMAs that only read, whatever their argument (the argument names a table or index).
_QUERY_PRAGMAS = frozenset(
    "table_info table_xinfo table_list index_list index_info index_xinfo foreign_key_list "
    "foreign_key_check database_list collation_list function_list module_list pragma_list "
    "compile_options integrity_check quick_check".split()
)
#: PRAGMAs that read when given no value (``PRAGMA user_version;``) and write when given one.
_SETTING_PRAGMAS = frozenset(
    "user_version schema_version application_id page_count page_size max_page_count encoding "
    "journal_mode foreign_keys freelist_count data_version auto_vacuum cache_size synchronous "
    "recursive_triggers case_sensitive_like busy_timeout temp_store locking_mode".split()
)


class _ReadOnlyAuthorizer:
    """``Connection.set_authorizer`` callback that denies writes and remembers why."""

    def __init__(self) -> None:
        self.denied: str | None = None

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
        what = _WRITE_ACTIONS.get(action)
        if what in ("INSERT", "UPDATE", "DELETE") and (arg1 or "").lower() in _SCHEMA_TABLES:
            # CREATE/DROP/ALTER write the schema table first; allow that step so the
            # statement's own action (asked next, and denied) names what was refused.
            return sqlite3.SQLITE_OK
        if what is None and action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in _QUERY_PRAGMAS or (name in _SETTING_PRAGMAS and arg2 is None):
                return sqlite3.SQLITE_OK
            what = f"PRAGMA {name}" + (f" = {arg2}" if arg2 is not None else "")
        elif action == sqlite3.SQLITE_ALTER_TABLE:
            what = f"ALTER TABLE {arg2}"  # arg1 is the database name here
        elif what == "ATTACH" and not arg1:
            what = "VACUUM"  # VACUUM attaches a temporary database
        elif what is not None and arg1:
            what = f"{what} {arg1}"
        if what is None:
            return sqlite3.SQLITE_OK
        if self.denied is None:
            self.denied = what
        return sqlite3.SQLITE_DENY


# -- the tool ---------------------------------------------------------------------------
class SQLTool(Tool):
    """SQLite queries; each statement of a ```` ```sql ```` block runs as soon as it ends.

    Args:
      database: a file path, a ``file:`` URI, or ``":memory:"`` (only useful with
        ``read_only=False``).
      read_only: refuse writes (default). ``False`` allows them and makes the tool
        ``mutating``: its statements then wait for the whole call unless ``allow_early``.
      max_rows: rows of a result shown to the model; the rest is counted.
      timeout: seconds one statement may run before it is interrupted.
      allow_early: let a writing tool run each statement as soon as it is complete.
      max_cell_chars: each shown value is cut to this many characters.

    The connection opens when the first call opens (on the call's worker thread) and is
    kept for the tool's life, so a ``:memory:`` database or a temp table persists across
    rounds of one conversation; ``fork()`` gives another conversation its own connection.
    Statements run one at a time, in order, in autocommit mode.
    """

    name = "sql"
    description = (
        "Run SQLite SQL against the database and show the result rows. Write one or more "
        "statements, each ending with ';'; each runs as soon as it is written."
    )
    parameters = {
        "type": "object",
        "properties": {
            "query": {
                "type": "string",
                "description": "SQLite statements, each ending with ';', e.g. 'SELECT count(*) FROM t;'.",
            }
        },
        "required": ["query"],
    }
    side_effect = SideEffect.READ_ONLY
    fence_languages = ("sql",)
    max_concurrency = 1

    def __init__(
        self,
        database: str | os.PathLike[str],
        read_only: bool = True,
        max_rows: int = 20,
        timeout: float = 10.0,
        *,
        allow_early: bool = False,
        max_cell_chars: int = 80,
    ) -> None:
        if int(max_rows) < 1:
            raise ValueError(f"SQLTool(max_rows={max_rows!r}) must be at least 1")
        if not timeout or float(timeout) <= 0:
            raise ValueError(f"SQLTool(timeout={timeout!r}) must be > 0 seconds")
        self.database = os.fspath(database)
        self.read_only = bool(read_only)
        self.max_rows = int(max_rows)
        self.timeout = float(timeout)
        self.allow_early = bool(allow_early)
        self.max_cell_chars = int(max_cell_chars)
        self.side_effect = SideEffect.READ_ONLY if self.read_only else SideEffect.MUTATING
        # A failed write can leave later statements meaningless; reads are independent.
        self.stop_on_error = not self.read_only
        self._uri = _connect_uri(self.database, self.read_only)
        self._conn: sqlite3.Connection | None = None
        self._authorizer = _ReadOnlyAuthorizer()
        self._lock = threading.Lock()

    # -- connection --------------------------------------------------------------------
    def warm_up(self) -> None:
        """Open the connection (on the call's worker thread; reused by later calls)."""
        with self._lock:
            self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        path = _plain_path(self.database)
        if self.read_only and path is not None and not Path(path).exists():
            raise FileNotFoundError(
                f"database {self.database!r} does not exist; check the path, or pass "
                "SQLTool(..., read_only=False) to create it"
            )
        try:
            conn = sqlite3.connect(
                self._uri, uri=True, check_same_thread=False, isolation_level=None,
                timeout=min(self.timeout, 5.0),
            )
        except sqlite3.Error as exc:
            raise sqlite3.OperationalError(f"cannot open database {self.database!r}: {exc}") from exc
        _limit_value_size(conn)
        if self.read_only:
            conn.set_authorizer(self._authorizer)
        self._conn = conn
        return conn

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def fork(self) -> "SQLTool":
        return SQLTool(
            self.database, self.read_only, self.max_rows, self.timeout,
            allow_early=self.allow_early, max_cell_chars=self.max_cell_chars,
        )

    # -- Tool interface ----------------------------------------------------------------
    def make_parser(self) -> SQLStatementParser:
        return SQLStatementParser()

    def statements_of(self, unit: Unit) -> tuple[list[str], str | None]:
        """The statement(s) a unit carries, or an error sentence."""
        if unit.key is not None and unit.key != "query":
            return [], (
                f"sql got an unknown argument {unit.key!r}; its only argument is 'query', "
                'e.g. {"query": "SELECT count(*) FROM t;"}'
            )
        value = unit.argument
        if not isinstance(value, str):
            return [], f'sql query must be a string, got {value!r}; write {{"query": "SELECT …;"}}'
        statements = []
        for part in split_statements(value):
            if part.error is not None:
                return [], part.error
            statements.append(part.value)
        if not statements:
            return [], f"sql got an empty query ({value!r}); write a statement ending with ';'"
        return statements, None

    def execute(self, unit: Unit) -> UnitOutput:
        statements, error = self.statements_of(unit)
        if error is not None:
            return UnitOutput("", error)
        blocks = []
        for statement in statements:
            output, error = self.run_statement(statement)
            if output:
                blocks.append(output)
            if error is not None:
                return UnitOutput("\n".join(blocks), error)
        return UnitOutput("\n".join(blocks))

    def run_statement(self, statement: str) -> tuple[str, str | None]:
        """Run one statement; ``(table or status line, error sentence or None)``."""
        text = statement if statement.rstrip().endswith(";") else statement.rstrip() + ";"
        if not complete_statement(text):
            return "", f"incomplete SQL statement {shorten(statement, 80)!r}; finish it and end it with ';'"
        with self._lock:
            conn = self._connect()
            self._authorizer.denied = None
            stopped = threading.Event()

            def interrupt() -> None:
                stopped.set()
                conn.interrupt()

            timer = threading.Timer(self.timeout, interrupt)
            timer.daemon = True
            timer.start()
            try:
                cursor = conn.execute(statement)
                if cursor.description is None:
                    changed = cursor.rowcount
                    if changed < 0:
                        return "OK", None
                    return f"OK, {changed} row{'' if changed == 1 else 's'} changed", None
                columns = [d[0] for d in cursor.description]
                rows = cursor.fetchmany(self.max_rows)
                more, capped = 0, False
                if len(rows) == self.max_rows:
                    while cursor.fetchone() is not None:
                        more += 1
                        if more >= COUNT_LIMIT:
                            capped = True
                            break
                cursor.close()
                table = format_rows(
                    columns, rows, more, more_is_lower_bound=capped, max_cell_chars=self.max_cell_chars
                )
                return table, None
            except sqlite3.Error as exc:
                return "", self._explain(statement, exc, stopped.is_set())
            finally:
                timer.cancel()

    def _explain(self, statement: str, exc: sqlite3.Error, timed_out: bool) -> str:
        short = shorten(statement, 80)
        if timed_out:
            return (
                f"SQL statement {short!r} was stopped after {self.timeout:g}s (timeout); make it "
                "cheaper (a WHERE clause, a LIMIT, an indexed column) or raise SQLTool(timeout=...)"
            )
        denied = self._authorizer.denied
        if self.read_only and (denied is not None or "readonly" in str(exc)):
            what = f" ({denied})" if denied else ""
            return (
                f"refused {short!r}: it writes to the database{what} and this sql tool is "
                "read-only; use SELECT queries, or create the tool with "
                "SQLTool(..., read_only=False) to allow writes"
            )
        if getattr(exc, "sqlite_errorname", None) == "SQLITE_TOOBIG":
            return (
                f"SQL error in {short!r}: {exc} (this tool allows values of at most "
                f"{MAX_VALUE_BYTES // (1024 * 1024)} MiB); select a part of the value, e.g. "
                "substr(x, 1, 200), or its length(x), instead of the whole value"
            )
        return f"SQL error in {short!r}: {exc}"

    def format_result(self, records: list[UnitRecord]) -> ToolResult:
        """Each statement's table or status; statements are echoed when there are several."""
        echo = len(records) > 1
        blocks = []
        for record in records:
            lines = []
            if echo:
                value = record.unit.value if isinstance(record.unit.value, str) else record.unit.text
                lines.append(f"sql> {shorten(value, 100)}")
            if record.output:
                lines.append(record.output.rstrip("\n"))
            if record.error:
                lines.append(f"error: {record.error}")
            blocks.append("\n".join(lines))
        return self.make_result(records, (b for b in blocks if b))

    def __repr__(self) -> str:
        return f"SQLTool({self.database!r}, read_only={self.read_only}, max_rows={self.max_rows})"


def _limit_value_size(conn: sqlite3.Connection) -> None:
    """Cap the strings, blobs and rows ``conn`` may make at :data:`MAX_VALUE_BYTES`.

    ``Connection.setlimit`` is Python 3.11+; on 3.10 SQLite's own limit (1e9 bytes) stays.
    """
    setlimit = getattr(conn, "setlimit", None)
    if setlimit is not None:
        setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)


def _plain_path(database: str) -> str | None:
    """The file path of a plain (non-URI, non-memory) database name, else None."""
    if database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _connect_uri(database: str, read_only: bool) -> str:
    """A ``file:`` URI for ``database`` with ``mode=ro`` (read-only) or ``mode=rwc``."""
    mode = "ro" if read_only else "rwc"
    if database == ":memory:":
        return "file::memory:" if not read_only else "file::memory:?mode=ro"
    if database.startswith("file:"):
        base, _, query = database.partition("?")
        params = [(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if k != "mode"]
        if read_only or not any(k == "mode" for k, _ in urllib.parse.parse_qsl(query)):
            params.append(("mode", mode))
        else:
            params = urllib.parse.parse_qsl(query, keep_blank_values=True)
        return f"{base}?{urllib.parse.urlencode(params)}"
    return f"{Path(database).expanduser().resolve().as_uri()}?mode={mode}"
