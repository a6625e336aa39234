"""LLMCompiler-style plans: one task per line, each dispatched as soon as its line ends.

A planner writes a small dependency graph, one task per line, either as an assignment
(``$1 = search("Microsoft market cap")``) or in LLMCompiler's numbered form
(``1. search("Mariana Trench")``, ``3. math("…", ["$1", "$2"])``), and ends with
``join()`` (or ``finish(...)``, ``$N = join()``, ``join()<END_OF_PLAN>``). Arguments are
Python literals; they are read with ``ast`` and ``ast.literal_eval``, never evaluated.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from parsers.unit import Unit

_ID_PREFIX = re.compile(r"\s*(?:\$\{?(\d+)\}?\s*=(?!=)|(\d+)\s*[.)](?!\d))\s*")
_BARE_CALL = re.compile(r"\s*[A-Za-z_]\w*\s*\(")
_REF = re.compile(r"\$\{?(\d+)\}?")
_STRING_OR_REF = re.compile(r"""("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')|\$\{?(\d+)\}?""")
_END_MARK = "<END_OF_PLAN>"
_JOIN_TOOLS = frozenset(["join", "finish"])


@dataclass(frozen=True)
class PlanTask:
    """One parsed task line.

    ``id`` is normalised to ``"$N"``; ``args``/``kwargs`` are the call's literal
    arguments (a bare ``$2`` argument becomes the string ``"$2"``); ``deps`` are the other
    tasks the line mentions anywhere (``"$1"``, ``"${1}"``), sorted; ``is_join`` marks the
    plan's closing ``join()``/``finish(...)``; ``raw`` is the line as written.
    """

    id: str
    tool: str
    args: list[Any] = field(default_factory=list)
    deps: tuple[str, ...] = ()
    is_join: bool = False
    raw: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)


def _quote_refs(text: str) -> str:
    """Turn bare ``$N`` references outside string literals into ``"$N"``."""
    return _STRING_OR_REF.sub(lambda m: m.group(1) or f'"${m.group(2)}"', text)


def parse_task(line: str, default_id: int) -> tuple[str | None, PlanTask | None, str | None]:
    """Parse one line: (id or None, task or None, error or None).

    ``(None, None, None)`` means the line is not a task (blank, ``Thought: …``).
    """
    raw = line.rstrip("\r\n")
    text = raw.replace(_END_MARK, "")
    prefix = _ID_PREFIX.match(text)
    if prefix:
        number = int(prefix.group(1) or prefix.group(2))
        body = text[prefix.end() :]
    elif _BARE_CALL.match(text):
        number, body = default_id, text
    else:
        return None, None, None
    task_id = f"${number}"
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" and the like
            warnings.simplefilter("ignore", SyntaxWarning)
            node = ast.parse(_quote_refs(body).strip(), mode="eval").body
    except Exception as exc:  # SyntaxError, or RecursionError/MemoryError on odd input
        return task_id, None, f"task {task_id} is not a call: {exc.__class__.__name__}: {exc}"
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return task_id, None, f"task {task_id} is not a call of a tool name: {body.strip()!r}"
    try:
        args = [ast.literal_eval(arg) for arg in node.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        if len(kwargs) != len(node.keywords):
            raise ValueError("**kwargs are not allowed")
    except Exception as exc:
        return task_id, None, f"task {task_id}: arguments must be literals ({exc})"
    refs = {int(n) for n in _REF.findall(text)} - {number}
    task = PlanTask(
        id=task_id,
        tool=node.func.id,
        args=args,
        deps=tuple(f"${n}" for n in sorted(refs)),
        is_join=node.func.id.lower() in _JOIN_TOOLS,
        raw=raw,
        kwargs=kwargs,
    )
    return task_id, task, None


class PlanParser:
    """Emits one unit per task line of a plan, in the ``feed`` call that ends the line.

    ``Unit.key`` is the task id (``"$1"``), ``Unit.value`` a :class:`PlanTask`. A line
    without an id (``join()``) gets the next id after the largest seen. A line that looks
    like a task but does not parse becomes a unit with ``error`` set and ``value`` None.
    Lines that are not tasks (blank lines, ``Thought: …``) emit nothing: their text is
    carried in the next unit's ``text``, so concatenating all units gives back the fed
    text; text left at ``close()`` that is not a task comes out as a unit with ``key``
    None. ``close()`` also emits a last task line that has no newline.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all input; unit indices and task ids start again."""
        self.error: str | None = None
        self._index = 0
        self._carried = ""  # non-task lines waiting for the next unit
        self._partial = ""  # the current line, before its newline
        self._last_id = 0

    def feed(self, text: str) -> list[Unit]:
        """Consume ``text``; return the task lines it completed (maybe none)."""
        if not isinstance(text, str) or not text:
            return []
        if "\n" not in text:
            self._partial += text
            return []
        units: list[Unit] = []
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line + "\n", units)
        return units

    def close(self) -> list[Unit]:
        """End of input: emit an unterminated last task line and any carried text."""
        units: list[Unit] = []
        if self._partial:
            line, self._partial = self._partial, ""
            self._line(line, units)
        if self._carried:
            units.append(Unit(text=self._carried, index=self._index))
            self._index += 1
            self._carried = ""
        return units

    def _line(self, line: str, units: list[Unit]) -> None:
        try:
            task_id, task, error = parse_task(line, self._last_id + 1)
        except Exception as exc:  # never let a plan line take the decode loop down
            task_id, task, error = None, None, f"internal parser error: {exc!r}"
        if task_id is None and error is None:
            self._carried += line
            return
        if task_id is not None:
            self._last_id = max(self._last_id, int(task_id[1:]))
        if error is not None:
            self.error = error
        units.append(
            Unit(text=self._carried + line, index=self._index, key=task_id, value=task, error=error)
        )
        self._index += 1
        self._carried = ""
