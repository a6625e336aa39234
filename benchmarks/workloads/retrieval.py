"""Search and planning on real multi-hop questions (ParallelQA, HotpotQA comparisons).

Queries are the question's entities by the rule in :mod:`benchmarks.workloads.data`
(corpus titles found in the question text, widened to the full capitalised name), never
written by hand. Search runs offline on the embedded backend (SQLite FTS5 over ~10k
Wikipedia summaries) with an **emulated** network latency per query, labelled as such
in the output and the JSON. Each query returns one hit (the entity's own article ranks
first), as LLMCompiler's Wikipedia tool returns one page summary per search.

- ``search``: a ``<search>`` block, one entity per line; :class:`SearchTool` runs the
  queries in parallel (4 at a time) in both modes, so partial execution only saves the
  time between a query's line and the end of the block.
- ``planning``: an LLMCompiler-style ```` ```plan ```` block (``$1 = search("…")`` per
  entity, then ``join()``) run by :class:`PlanTool`. Partial execution is compared with
  the Conveyor paper's lazy baseline, which runs the tasks one after another once the
  plan is decoded (``lazy_sequential=True``), and with a stronger lazy baseline that
  runs independent tasks in parallel after decoding (``vs_parallel_lazy``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from benchmarks.workloads import QUICK_REPEATS_SHORT, ABWorkload, Case, Variant, user
from benchmarks.workloads import data

#: Seconds added to every offline query to emulate a web search round trip.
EMULATED_LATENCY_S = 0.8


def entity_cases() -> list[data.EntityQuestion]:
    """The questions a retrieval workload uses, in the order they are taken: the first
    ParallelQA question with 4, 5, 2 and 3 entities (in data-set order), the first two
    HotpotQA comparison questions the entity rule resolves, in the order 4, 5, HotpotQA,
    2, 3, HotpotQA (runs take the first few)."""
    parallel = data.entity_questions("parallelqa")
    by_branch = {b: next((q for q in parallel if len(q.entities) == b), None) for b in (2, 3, 4, 5)}
    try:
        hotpot = data.entity_questions("hotpotqa")[:2]
    except data.DataUnavailable:
        hotpot = []
    order = [by_branch[4], by_branch[5], *hotpot[:1], by_branch[2], by_branch[3], *hotpot[1:]]
    return [q for q in order if q is not None]


class _RetrievalWorkload(ABWorkload):
    """Shares one offline backend (with emulated latency) across all variants."""

    emulated_latency_s: ClassVar[float] = EMULATED_LATENCY_S
    #: Hits per query: the entity's own article (exact title matches rank first), as
    #: LLMCompiler's Wikipedia tool returns one page summary per search.
    max_results: ClassVar[int] = 1
    case_count = (4, 1)
    repeats = (3, 3)

    def __init__(self) -> None:
        super().__init__()
        self._backend = None

    def backend(self):
        if self._backend is None:
            from conveyor_hf.tools.search_offline import OfflineSearchBackend

            self._backend = OfflineSearchBackend(latency=self.emulated_latency_s)
        return self._backend

    def search_tool(self):
        from conveyor_hf.tools.search import SearchTool

        return SearchTool(backend=self.backend(), max_results=self.max_results)

    def details(self) -> dict[str, Any]:
        backend = self.backend()
        backend.warm_up()
        return {
            "emulated_latency_s": self.emulated_latency_s,
            "search_backend": backend.describe(),
            "latency_is_emulated": True,
            "max_results": self.max_results,
            "data": "LLMCompiler ParallelQA + HotpotQA comparison questions; entities by the corpus-title rule "
                    "(benchmarks/workloads/data.py)",
        }

    def close(self) -> None:
        super().close()
        if self._backend is not None:
            self._backend.close()


class SearchWorkload(_RetrievalWorkload):
    name = "search"
    title = "parallel web search (emulated latency)"
    note = ("Offline corpus with emulated network latency per query. Queries run 4 at a time in both modes, "
            "so partial execution only hides each query's wait behind the decoding of the lines after it.")
    in_quick = False  # --quick keeps planning, which runs the same emulated searches

    def all_cases(self, ctx) -> list[Case]:
        cases = []
        for q in entity_cases():
            queries = "".join(f"{entity}\n" for entity in q.entities)
            answer = f"I will look these up.\n<search>\n{queries}</search>\nNow I can answer from these results."
            cases.append(Case(q.source.replace("/", "_"), user(q.question), answer, source=q.source,
                              max_new_tokens=300, info={"queries": list(q.entities)}))
        return cases

    def make_tools(self, variant: Variant) -> list[Any]:
        return [self.search_tool()]


def plan_text(entities: tuple[str, ...] | list[str]) -> str:
    """An LLMCompiler-style plan: one search task per entity, then ``join()``."""
    lines = [f'${i} = search("{entity}")' for i, entity in enumerate(entities, 1)]
    return "```plan\n" + "\n".join(lines) + "\njoin()\n```"


class PlanningWorkload(_RetrievalWorkload):
    name = "planning"
    title = "LLMCompiler-style plans (emulated search latency)"
    note = ("Partial starts each task as soon as its line is decoded. 'lazy' is the Conveyor paper's "
            "baseline (tasks one after another once the plan is decoded); 'vs_parallel_lazy' compares with "
            "a lazy baseline that runs independent tasks in parallel after decoding.")
    variants = (
        Variant("lazy", "lazy", label="lazy, tasks one after another (lazy_sequential=True)"),
        Variant("partial", "partial"),
        Variant("lazy_parallel", "lazy", label="lazy, independent tasks in parallel (lazy_sequential=False)"),
    )
    extra_baselines = {"vs_parallel_lazy": "lazy_parallel"}
    quick_variants = ("lazy", "partial")  # --quick leaves out the parallel-lazy baseline
    case_count = (3, 1)
    repeats = (3, QUICK_REPEATS_SHORT)  # its quick case decodes for 5 s

    def all_cases(self, ctx) -> list[Case]:
        cases = []
        for q in entity_cases():
            answer = f"I will plan the look-ups.\n{plan_text(q.entities)}\nNow I can answer from these results."
            cases.append(Case(q.source.replace("/", "_"), user(q.question), answer, source=q.source,
                              max_new_tokens=400, info={"tasks": len(q.entities)}))
        return cases

    def make_tools(self, variant: Variant) -> list[Any]:
        from conveyor_hf.tools.plan import PlanTool

        return [PlanTool(tools=[self.search_tool()], lazy_sequential=variant.key == "lazy")]
