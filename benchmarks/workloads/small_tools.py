"""Small, fast tools as in the Conveyor paper: argument validation, SQL, a calculator.

Their tool work takes milliseconds, so there is little to overlap with decoding: these
workloads show that partial execution gains little here and, above all, costs nothing.

- ``validation``: ``<tool_call>`` JSON calls of :class:`LocationLookupTool` with real
  places from the Wikipedia corpus: US cities as ``"City, ST"`` (the state code from the
  article's own description, e.g. "Largest city in Texas, United States"), and invalid
  ones the validator rejects as soon as the value's closing quote is decoded (a US city
  with its state's full name, a foreign capital with its country).
- ``database``: a ```` ```sql ```` block (the syntax :class:`SQLTool` reads) of queries
  against a real SQLite database built from the LLMCompiler ParallelQA and HotpotQA
  files (the schema of ``tests/test_sql_tool.py``), in a temporary file.
- ``calculator``: a ``<calculator>`` block of the scale factors a ParallelQA question
  names ("20% shallower" → ``1 - 20/100``, "2.5 times" → ``2.5``) and their ratio.
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.workloads import QUICK_REPEATS_SHORT, ABWorkload, Case, Variant, user
from benchmarks.workloads import data

SMALL_TOOL_NOTE = "small tool (milliseconds per unit): expect little gain; the point is that nothing is lost"


class ValidationWorkload(ABWorkload):
    name = "validation"
    title = "argument validation (JSON calls, US locations)"
    note = (f"{SMALL_TOOL_NOTE}. Invalid locations fail at their closing quote while the rest of the call "
            "is still being decoded (on_error='continue': decoding goes on).")
    case_count = (4, 1)
    repeats = (3, 3)
    in_quick = False  # milliseconds of tool work: --quick keeps calculator for "costs nothing"

    def all_cases(self, ctx) -> list[Case]:
        places = data.us_places()
        foreign = data.foreign_capitals()
        calls: list[tuple[str, str, bool]] = []  # (case name, location argument, valid)
        if len(places) >= 3:
            city, code, state = places[0]
            calls.append((f"valid_{_slug(city)}", f"{city}, {code}", True))
            city, code, state = places[1]
            calls.append((f"state_name_{_slug(city)}", f"{city}, {state}", False))
            city, code, state = places[2]
            calls.append((f"valid_{_slug(city)}", f"{city}, {code}", True))
        if foreign:
            city, country = foreign[0]
            calls.append((f"foreign_{_slug(city)}", f"{city}, {country}", False))
        cases = []
        for name, location, valid in calls:
            city = location.split(",")[0]
            answer = ('<tool_call>{"name": "locate", "arguments": {"location": "' + location
                      + '", "max_results": 1}}</tool_call>\nThat is what the encyclopedia has on it.')
            cases.append(Case(name, user(f"What does the encyclopedia say about {city}?"), answer,
                              source="ovos Wikipedia summaries (article description)", max_new_tokens=200,
                              info={"location": location, "valid": valid}))
        return cases

    def make_tools(self, variant: Variant) -> list[Any]:
        from conveyor_hf.tools.location import LocationLookupTool

        return [LocationLookupTool()]

    def details(self) -> dict[str, Any]:
        return {"data": "places from the ovos Wikipedia summaries; US state codes from their descriptions",
                "lookup": "offline Wikipedia summaries, no emulated latency"}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.casefold()).strip("_")


QUERIES = [
    ("parallelqa_branches",
     "How many ParallelQA questions need 2, 3, 4 or 5 look-ups, and which question is the longest?",
     "SELECT branch, COUNT(*) AS questions FROM questions WHERE dataset = 'parallelqa'\n"
     "GROUP BY branch ORDER BY branch;\n"
     "SELECT question FROM questions WHERE dataset = 'parallelqa' ORDER BY length(question) DESC LIMIT 1;\n"),
    ("hotpot_yes_no",
     "How many HotpotQA comparison questions have a yes/no answer, per difficulty level?",
     "SELECT q.level, COUNT(*) AS questions FROM questions q JOIN answers a ON a.question_id = q.id\n"
     "WHERE q.dataset = 'hotpotqa' AND a.answer IN ('yes', 'no') GROUP BY q.level;\n"
     "SELECT COUNT(*) AS same_questions FROM questions WHERE dataset = 'hotpotqa' AND question LIKE '%same%';\n"),
    ("mentions",
     "Which questions mention the Mariana Trench or Mount Everest, and what are their answers?",
     "SELECT q.id, a.answer FROM questions q JOIN answers a ON a.question_id = q.id\n"
     "WHERE q.question LIKE '%Mariana Trench%';\n"
     "SELECT q.id, a.answer FROM questions q JOIN answers a ON a.question_id = q.id\n"
     "WHERE q.question LIKE '%Mount Everest%';\n"),
]


def build_qa_database(path: Path) -> Path:
    """``questions(id, dataset, question, branch, level)`` and ``answers(question_id,
    answer)`` from the ParallelQA and HotpotQA-comparison files."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            "CREATE TABLE questions (id TEXT PRIMARY KEY, dataset TEXT NOT NULL, question TEXT NOT NULL,"
            " branch INTEGER, level TEXT);"
            "CREATE TABLE answers (question_id TEXT REFERENCES questions(id), answer TEXT);"
        )
        for item in data.parallelqa():
            qid = f"parallelqa-{item['id']}"
            conn.execute("INSERT INTO questions VALUES (?, 'parallelqa', ?, ?, NULL)",
                         (qid, item["question"], item["branch"]))
            conn.execute("INSERT INTO answers VALUES (?, ?)", (qid, str(item["answer"])))
        for item in data.hotpotqa_comparison():
            conn.execute("INSERT INTO questions VALUES (?, 'hotpotqa', ?, NULL, ?)",
                         (item["id"], item["question"], item["level"]))
            conn.execute("INSERT INTO answers VALUES (?, ?)", (item["id"], str(item["answer"])))
        conn.commit()
    finally:
        conn.close()
    return path


class DatabaseWorkload(ABWorkload):
    name = "database"
    title = "SQL queries on a real SQLite database"
    note = SMALL_TOOL_NOTE
    case_count = (3, 1)
    repeats = (3, 3)
    in_quick = False  # milliseconds of tool work: --quick keeps calculator for "costs nothing"

    def __init__(self) -> None:
        super().__init__()
        self._dir: tempfile.TemporaryDirectory | None = None
        self._db: Path | None = None

    def database(self) -> Path:
        if self._db is None:
            self._dir = tempfile.TemporaryDirectory(prefix="conveyor-bench-sql-")
            self._db = build_qa_database(Path(self._dir.name) / "qa.db")
        return self._db

    def all_cases(self, ctx) -> list[Case]:
        cases = []
        for name, ask, sql in QUERIES:
            answer = f"I will query the database.\n```sql\n{sql}```\nThe rows above answer the question."
            cases.append(Case(name, user(ask), answer, source="LLMCompiler ParallelQA + HotpotQA as SQLite",
                              max_new_tokens=300))
        return cases

    def make_tools(self, variant: Variant) -> list[Any]:
        from conveyor_hf.tools.sql import SQLTool

        return [SQLTool(self.database())]

    def details(self) -> dict[str, Any]:
        return {"data": "SQLite file built from LLMCompiler parallelqa_dataset.json and hotpotqa_comparison.json "
                        "(tables questions, answers)",
                "call_syntax": "```sql block (SQLTool's syntax)"}

    def close(self) -> None:
        super().close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = self._db = None


_UP = ("deeper", "taller", "higher", "faster", "larger", "bigger", "longer", "more", "increas", "grow", "grew",
       "expand", "extend", "lengthen", "enlarg", "swell", "rise", "rais", "boost", "magnif", "improv", "gain",
       "deepen", "accelerat", "elevat", "enhanc", "add", "up")
_DOWN = ("shallower", "slower", "shorter", "smaller", "less", "fewer", "decreas", "shrink", "shrank", "shrunk",
         "reduc", "shorten", "contract", "diminish", "drop", "los", "lower", "subtract", "cut", "down")
_PERCENT_AFTER = re.compile(r"(\d+(?:\.\d+)?)\s*%\s+(\w+)")
_PERCENT_BY = re.compile(r"\bby\s+(\d+(?:\.\d+)?)\s*%")
_TIMES = re.compile(r"(\d+(?:\.\d+)?)\s+times")


def _direction(word: str) -> str | None:
    word = word.casefold()
    if word.startswith(_DOWN):
        return "-"
    if word.startswith(_UP):
        return "+"
    return None


def scale_factors(question: str) -> list[str]:
    """Calculator expressions for the scale factors a question states, in order.

    ``20% shallower`` / ``reduced by 20%`` → ``1 - 20/100``; ``deeper``/``increased``
    → ``1 + 20/100``; ``2.5 times`` → ``2.5``. Percentages without a direction word are
    skipped.
    """
    found: list[tuple[int, str]] = []
    for match in _PERCENT_AFTER.finditer(question):
        sign = _direction(match.group(2))
        if sign:
            found.append((match.start(), f"1 {sign} {match.group(1)}/100"))
    for match in _PERCENT_BY.finditer(question):
        before = re.findall(r"[A-Za-z]+", question[: match.start()])[-4:]  # "increased in height by 2%"
        signs = [_direction(word) for word in reversed(before)]
        sign = next((s for s in signs if s), None)
        if sign:
            found.append((match.start(), f"1 {sign} {match.group(1)}/100"))
    for match in _TIMES.finditer(question):
        found.append((match.start(), match.group(1)))
    found.sort()
    return [expr for _, expr in found]


class CalculatorWorkload(ABWorkload):
    name = "calculator"
    title = "calculator (sympy in a child process)"
    note = SMALL_TOOL_NOTE
    case_count = (3, 1)
    repeats = (3, QUICK_REPEATS_SHORT)  # its quick case decodes for 4 s

    def all_cases(self, ctx) -> list[Case]:
        cases = []
        for item in data.parallelqa():
            factors = scale_factors(item["question"])
            if len(factors) < 2:
                continue
            lines = factors + [f"({factors[0]}) / ({factors[1]})"]
            body = "".join(f"{line}\n" for line in lines)
            answer = (f"Let me work out the scale factors.\n<calculator>\n{body}</calculator>\n"
                      "These are the factors to apply.")
            cases.append(Case(f"parallelqa_{item['id']}", user(item["question"]), answer,
                              source=f"parallelqa/{item['id']}", max_new_tokens=300, info={"expressions": lines}))
        return cases

    def make_tools(self, variant: Variant) -> list[Any]:
        from conveyor_hf.tools.calculator import CalculatorTool

        return [CalculatorTool()]

    def details(self) -> dict[str, Any]:
        return {"data": "scale factors stated in LLMCompiler ParallelQA questions (first questions with >= 2)"}
