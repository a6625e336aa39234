"""PlanParser: LLMCompiler plans in both styles, incl. plans for ParallelQA questions."""

from __future__ import annotations

import json
import pathlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers.plan import PlanParser, PlanTask, parse_task

DATASET = pathlib.Path(__file__).resolve().parents[2] / "benchmarks/data/llmcompiler/parallelqa_dataset.json"


def by_char(text: str):
    parser = PlanParser()
    out = []
    for i, char in enumerate(text):
        out += [(u, i) for u in parser.feed(char)]
    out += [(u, None) for u in parser.close()]
    assert "".join(u.text for u, _ in out) == text
    return out, parser


def chunked(text: str, seed: int):
    rng = random.Random(seed)
    parser = PlanParser()
    units, i = [], 0
    while i < len(text):
        size = rng.randint(1, 8)
        units += parser.feed(text[i : i + size])
        i += size
    return units + parser.close(), parser


# ParallelQA question 1, planned the way LLMCompiler's planner writes it.
NUMBERED = (
    'Thought: I need the depth of both trenches.\n'
    '1. search("Mariana Trench")\n'
    '2. search("Puerto Rico Trench")\n'
    '3. math("What is 20% shallower than the depth of the Mariana Trench?", ["$1"])\n'
    '4. math("What is 20% deeper than the depth of the Puerto Rico Trench?", ["$2"])\n'
    "Thought: I can answer the question now.\n"
    "5. join()<END_OF_PLAN>\n"
)
ASSIGNED = (
    '$1 = search("Mariana Trench")\n'
    '$2 = search("Puerto Rico Trench")\n'
    '$3 = math("What is 20% shallower than the depth of the Mariana Trench?", [$1])\n'
    '$4 = math("What is 20% deeper than the depth of the Puerto Rico Trench?", ["$2"])  # ${2}\n'
    "$5 = join()\n"
)


def test_numbered_plan_units_come_out_at_each_newline():
    units, parser = by_char(NUMBERED)
    newlines = [i for i, c in enumerate(NUMBERED) if c == "\n"]
    assert [(u.key, at) for u, at in units] == [
        ("$1", newlines[1]),
        ("$2", newlines[2]),
        ("$3", newlines[3]),
        ("$4", newlines[4]),
        ("$5", newlines[6]),
    ]
    first, _ = units[0]
    assert first.text == NUMBERED.split("\n", 2)[0] + "\n" + '1. search("Mariana Trench")\n'
    assert first.value == PlanTask(
        id="$1", tool="search", args=["Mariana Trench"], raw='1. search("Mariana Trench")'
    )
    third = units[2][0].value
    assert (third.tool, third.deps, third.is_join) == ("math", ("$1",), False)
    assert third.args[1] == ["$1"]
    join = units[4][0]
    assert join.text.startswith("Thought: I can answer")
    assert (join.value.tool, join.value.is_join, join.value.args) == ("join", True, [])
    assert [u.index for u, _ in units] == [0, 1, 2, 3, 4]
    assert parser.error is None and all(u.error is None for u, _ in units)


def test_both_styles_give_the_same_tasks():
    numbered = [u.value for u, _ in by_char(NUMBERED)[0]]
    assigned = [u.value for u, _ in by_char(ASSIGNED)[0]]
    strip = lambda t: (t.id, t.tool, t.args, t.deps, t.is_join, t.kwargs)  # noqa: E731
    assert [strip(t) for t in numbered] == [strip(t) for t in assigned]


def test_join_forms_and_automatic_ids():
    text = '$1 = search("a")\njoin()\n$7 = join()\nfinish("the answer")\n'
    units = [u for u, _ in by_char(text)[0]]
    assert [(u.key, u.value.tool, u.value.is_join) for u in units] == [
        ("$1", "search", False),
        ("$2", "join", True),
        ("$7", "join", True),
        ("$8", "finish", True),
    ]
    assert units[3].value.args == ["the answer"]


def test_deps_come_from_anywhere_in_the_line_but_not_the_task_itself():
    _, task, error = parse_task('$4 = math("$1 + ${2} + $4", context=[$3, "$1"])  # $9', 5)
    assert error is None
    assert task.deps == ("$1", "$2", "$3", "$9")
    assert task.kwargs == {"context": ["$3", "$1"]}
    assert task.args == ["$1 + ${2} + $4"]


def test_literal_arguments_of_all_kinds():
    _, task, _ = parse_task("2. lookup('x', 3, -1.5, None, True, {'k': (1, 2)}, b'z')", 1)
    assert task.args == ["x", 3, -1.5, None, True, {"k": (1, 2)}, b"z"]


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ('2. search("unterminated\n', "$2", "not a call"),
        ("3. search(query)\n", "$3", "literals"),
        ("4. 1 + 2\n", "$4", "not a call of a tool name"),
        ("$5 = search(**options)\n", "$5", "literals"),
        ("6. __import__('os').system('x')\n", "$6", "not a call of a tool name"),
        ("7. search(" + "(" * 300 + "\n", "$7", "not a call"),
        ("search(1 +\n", "$1", "not a call"),
    ],
)
def test_malformed_task_lines_become_error_units(line, key, problem):
    units, parser = by_char(line)
    assert len(units) == 1
    unit, _ = units[0]
    assert (unit.key, unit.value) == (key, None)
    assert problem in unit.error and parser.error == unit.error


def test_non_task_lines_are_carried_and_trailing_text_comes_out_at_close():
    text = "Plan:\n\n1. search('a')\nThought: done"
    units, _ = by_char(text)
    assert [(u.text, u.key, at) for u, at in units] == [
        ("Plan:\n\n1. search('a')\n", "$1", text.index("\nThought")),
        ("Thought: done", None, None),
    ]


def test_last_line_without_newline_comes_out_at_close():
    units, _ = by_char("1. search('a')\n2. join()")
    assert [(u.key, at) for u, at in units] == [("$1", 14), ("$2", None)]


def test_reset():
    parser = PlanParser()
    parser.feed("3. search('a')\n")
    parser.reset()
    units = parser.feed("join()\n")
    assert (units[0].index, units[0].key) == (0, "$1")


def _plans(question: dict) -> tuple[str, str, list[tuple]]:
    """A plan for a ParallelQA question in both styles, and the tasks it must give."""
    branch, text = question["branch"], question["question"]
    searches = [f"{text} [entity {k}]" for k in range(1, branch + 1)]
    refs = [f"${k}" for k in range(1, branch + 1)]
    numbered, assigned, expected = ["Thought: search each entity in parallel.\n"], [], []
    for k, query in enumerate(searches, 1):
        literal = repr(query) if k % 2 else json.dumps(query)
        numbered.append(f"{k}. search({literal})\n")
        assigned.append(f"${k} = search({literal})\n")
        expected.append((f"${k}", "search", [query], ()))
    math_id = branch + 1
    numbered.append(f"{math_id}. math({text!r}, {json.dumps(refs)})\n")
    assigned.append(f"${math_id} = math({text!r}, [{', '.join(refs)}])\n")
    expected.append((f"${math_id}", "math", [text, refs], tuple(refs)))
    numbered.append(f"Thought: I can answer now.\n{math_id + 1}. join()<END_OF_PLAN>\n")
    assigned.append(f"${math_id + 1} = join()\n")
    expected.append((f"${math_id + 1}", "join", [], ()))
    return "".join(numbered), "".join(assigned), expected


def test_parallelqa_questions_in_both_styles():
    questions = json.loads(DATASET.read_text(encoding="utf-8"))
    assert len(questions) > 100
    for k, question in enumerate(questions):
        for plan in _plans(question)[:2]:
            units, parser = chunked(plan, seed=k)
            assert "".join(u.text for u in units) == plan
            assert parser.error is None
            got = [(u.key, u.value.tool, u.value.args, u.value.deps) for u in units]
            assert got == _plans(question)[2]
            assert units[-1].value.is_join


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["1. ", "$2 = ", "search(", ")", "'", '"', "[", "]", "$1", "${3}",
                         "\n", "join()", "<END_OF_PLAN>", "Thought: ", "x", ",", "\\", "é"])
        | st.text(max_size=5)
    ),
    st.integers(1, 8),
)
def test_random_text_never_raises_and_reconstructs(pieces, size):
    text = "".join(pieces)
    parser = PlanParser()
    units = []
    for i in range(0, len(text), size):
        units += parser.feed(text[i : i + size])
    units += parser.close()
    assert "".join(u.text for u in units) == text
    for unit in units:
        assert unit.value is None or isinstance(unit.value, PlanTask)
