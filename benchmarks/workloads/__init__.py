"""The benchmark workloads: what is asked, what is answered, which tools run it.

A workload is a small class. An :class:`ABWorkload` lists its :class:`Case` s (a
conversation and either a recorded answer to replay or ``None`` for live greedy
decoding), the :class:`Variant` s it compares (``lazy`` and ``partial`` at least), and
how to build and reset its tools; :meth:`ABWorkload.measure` runs every case in every
variant, variants alternating, for several repeats, in this process. Workloads that
measure something else (``overhead``, ``kv_reuse``) implement ``measure`` themselves
and return their JSON figures directly.

Register a workload by adding its class to :func:`registry` (name → class); the
harness runs them in that order.

Every answer is decoded by a generator from :meth:`BenchContext.generator`, the one place
that builds ``ConveyorGenerator(model, tokenizer, ...)``: pointing the suite at another
decoding engine means handing the context that engine instead of a model (workloads that
time ``model.generate`` or forward passes themselves set ``needs_local_model``).

Every case runs at least :data:`MIN_REPEATS` times per variant (variants alternating), so
each median has a min-max spread beside it (:data:`QUICK_REPEATS_SHORT` in ``--quick`` for
a case that decodes for only a few seconds); ``--quick`` takes fewer cases, leaves out the
workloads that set ``in_quick = False`` (nothing to overlap: the same conclusion as the
calculator's) unless they are named with ``--workloads``, and keeps only the
``quick_variants`` of a workload that lists them.
"""

from __future__ import annotations

import functools
import gc
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

__all__ = [
    "ABWorkload",
    "BenchContext",
    "Case",
    "RunRecord",
    "Variant",
    "Workload",
    "WorkloadResult",
    "available",
    "create",
    "registry",
    "consecutive_changes",
    "noise_figure",
    "value_range",
]


@dataclass
class Case:
    """One question and its answer.

    ``replay`` is the recorded answer forced token by token through the model (the
    model's own text only; tool results are appended by the loop), or ``None`` to let
    the model write the answer (greedy).
    """

    name: str
    messages: list[dict[str, Any]]
    replay: str | None
    source: str = ""
    max_new_tokens: int = 512
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """One way of running a case: generator ``mode`` and ``on_error``, plus tool settings
    the workload reads in :meth:`ABWorkload.make_tools`."""

    key: str
    mode: str
    on_error: str = "continue"
    label: str = ""


@dataclass
class RunRecord:
    """One timed ``generate`` call."""

    case: str
    variant: str
    repeat: int
    summary: dict[str, Any]
    timeline: Any
    text: str
    errors: list[str] = field(default_factory=list)


@dataclass
class WorkloadResult:
    """Everything an :class:`ABWorkload` measured, for :mod:`benchmarks.report`."""

    workload: "ABWorkload"
    cases: list[Case]
    runs: list[RunRecord]
    repeats: int
    seconds: float = 0.0

    def of(self, case: str, variant: str) -> list[RunRecord]:
        return [r for r in self.runs if r.case == case and r.variant == variant]


#: Repeats of every case and variant, full or ``--quick`` run, unless ``--repeats`` says
#: otherwise: three give a median and a spread around it.
MIN_REPEATS = 3
#: ``--quick`` repeats of a workload whose one quick case decodes for only a few seconds:
#: on a shared machine such a case's decode time changes by several percent from one run
#: to the next, so three repeats let two unlucky runs set the median of a 2% comparison
#: and give only two lazy-against-lazy pairs for its noise. Five need three unlucky runs
#: and give four pairs, at about 20 s more per workload.
QUICK_REPEATS_SHORT = 5


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class BenchContext:
    """What a workload gets from the harness.

    ``repeats`` and ``max_cases`` override the workload's own numbers when set;
    ``progress(label)`` is called after every timed run (the progress bar).
    ``model`` is what decodes: a transformers model, or anything ``ConveyorGenerator``
    accepts in its place (then set ``local_model=False``: workloads that need a local
    model are skipped with a reason).
    """

    model: Any
    tokenizer: Any
    quick: bool = False
    repeats: int | None = None
    max_cases: int | None = None
    progress: Callable[[str], None] = lambda label: None
    log: Callable[[str], None] = _stderr
    local_model: bool = True

    @property
    def can_replay(self) -> bool:
        """Whether recorded answers can be forced through this engine (it needs the
        logits); otherwise replayed cases are decoded live (greedy) instead."""
        from conveyor_hf.engines.base import Engine

        return not isinstance(self.model, Engine) or self.model.supports_replay

    def replay_of(self, case: "Case") -> list[str] | None:
        """``replay=`` for ``case`` on this engine."""
        return [case.replay] if case.replay is not None and self.can_replay else None

    def generator(self, tools: Sequence[Any] = (), **options: Any) -> Any:
        """The generator every timed answer goes through: ``ConveyorGenerator(model,
        tokenizer, tools=..., **options)`` (``mode``, ``on_error``, …)."""
        from conveyor_hf import ConveyorGenerator

        return ConveyorGenerator(self.model, self.tokenizer, tools=list(tools), **options)


class Workload:
    """Base of every workload: a name, a title, and ``measure``."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    #: Said next to the figures (e.g. "small tool: expect little gain").
    note: ClassVar[str] = ""
    decoding: ClassVar[str] = "replay"
    #: Repeats in a full run and in a ``--quick`` run (at least ``MIN_REPEATS`` either way).
    repeats: ClassVar[tuple[int, int]] = (3, 3)
    #: Whether ``--quick`` runs it when no ``--workloads`` are named.
    in_quick: ClassVar[bool] = True
    #: It times ``model.generate`` or forward passes itself (not only through the context's generator).
    needs_local_model: ClassVar[bool] = False
    #: Why, said when a remote engine skips it.
    local_model_reason: ClassVar[str] = "it times the local model itself (model.generate or forward passes)"

    def repeat_count(self, ctx: BenchContext) -> int:
        if ctx.repeats is not None:
            return max(1, ctx.repeats)
        return max(MIN_REPEATS, self.repeats[1] if ctx.quick else self.repeats[0])

    def planned_runs(self, ctx: BenchContext) -> int:
        """Timed runs ``measure`` will make (for the progress bar)."""
        return 0

    def measure(self, ctx: BenchContext) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Release tools (kernels, child processes)."""


class ABWorkload(Workload):
    """Cases answered in each :class:`Variant`, alternating, several repeats.

    ``baseline`` and ``contender`` name the two variants the headline figures compare
    (reduction = 1 - contender/baseline). ``extra_baselines`` and ``extra_contenders``
    map a JSON key to another variant compared the same way (e.g. planning's
    ``vs_parallel_lazy``, early abort's ``partial_continue``).
    """

    variants: ClassVar[tuple[Variant, ...]] = (Variant("lazy", "lazy"), Variant("partial", "partial"))
    baseline: ClassVar[str] = "lazy"
    contender: ClassVar[str] = "partial"
    extra_baselines: ClassVar[dict[str, str]] = {}
    extra_contenders: ClassVar[dict[str, str]] = {}
    #: Variant keys a ``--quick`` run keeps (empty: all); baseline and contender always stay.
    quick_variants: ClassVar[tuple[str, ...]] = ()
    #: Cases in a full run and in a ``--quick`` run.
    case_count: ClassVar[tuple[int, int]] = (3, 1)
    #: Names of the cases a ``--quick`` run takes instead of the first ``case_count[1]``
    #: (a shorter case that asks the same question keeps ``--quick`` within its time). A
    #: case listed after the first ``case_count[0]`` of :meth:`all_cases` runs in ``--quick`` only.
    quick_cases: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._tools: dict[str, list[Any]] = {}

    # -- what subclasses provide -------------------------------------------------------
    def all_cases(self, ctx: BenchContext) -> list[Case]:
        """Every case this workload has, in the order they are taken."""
        raise NotImplementedError

    def make_tools(self, variant: Variant) -> list[Any]:
        """Fresh tool instances for ``variant`` (built once, reused across its runs)."""
        raise NotImplementedError

    def prepare(self, tools: list[Any], variant: Variant, case: Case) -> None:
        """Untimed set-up before each run: by default warm every tool (open indexes,
        wait for kernels) so no run pays a start-up cost the other did not."""
        for tool in tools:
            tool.warm_up()

    def warm_up(self, tools: list[Any], case: Case) -> None:
        """Untimed, once before the timed runs (e.g. fill the page cache)."""

    def warm_up_model(self, ctx: BenchContext, tools: list[Any], case: Case) -> None:
        """Untimed: the first tokens of ``case`` with this workload's tools, so that no
        timed run pays for a first prefill of this system prompt (allocations, caches)."""
        self.prepare(tools, self.variants[0], case)
        ctx.generator(tools, mode=self.variants[0].mode).generate(
            case.messages, replay=ctx.replay_of(case), max_new_tokens=12, do_sample=False,
        )

    def details(self) -> dict[str, Any]:
        """Extra JSON fields for this workload (data sources, emulated latencies)."""
        return {}

    # -- the engine --------------------------------------------------------------------
    def cases(self, ctx: BenchContext) -> list[Case]:
        every = self.all_cases(ctx)
        count = self.case_count[1] if ctx.quick else self.case_count[0]
        if ctx.quick and self.quick_cases:
            every = [c for c in every if c.name in self.quick_cases]
            count = len(every)
        if ctx.max_cases is not None:
            count = min(count, max(1, ctx.max_cases))
        return every[:count]

    def variants_for(self, ctx: BenchContext) -> tuple[Variant, ...]:
        """The variants this run compares (``quick_variants`` in a ``--quick`` run)."""
        if not ctx.quick or not self.quick_variants:
            return self.variants
        keep = {*self.quick_variants, self.baseline, self.contender}
        return tuple(v for v in self.variants if v.key in keep)

    def planned_runs(self, ctx: BenchContext) -> int:
        return len(self.cases(ctx)) * len(self.variants_for(ctx)) * self.repeat_count(ctx)

    def tools_for(self, variant: Variant) -> list[Any]:
        if variant.key not in self._tools:
            self._tools[variant.key] = self.make_tools(variant)
        return self._tools[variant.key]

    def run_once(self, ctx: BenchContext, case: Case, variant: Variant, repeat: int) -> RunRecord:
        """One timed answer (set-up untimed)."""
        tools = self.tools_for(variant)
        self.prepare(tools, variant, case)
        gc.collect()
        gen = ctx.generator(tools, mode=variant.mode, on_error=variant.on_error)
        out = gen.generate(
            case.messages,
            replay=ctx.replay_of(case),
            max_new_tokens=case.max_new_tokens,
            do_sample=False,
        )
        errors = [f"{c.tool}: {c.error}" for c in out.tool_calls if c.error]
        return RunRecord(case.name, variant.key, repeat, out.timeline.summary(), out.timeline, out.text, errors)

    def measure(self, ctx: BenchContext) -> WorkloadResult:
        started = time.perf_counter()
        cases = self.cases(ctx)
        repeats = self.repeat_count(ctx)
        variants = self.variants_for(ctx)
        if cases:
            self.warm_up(self.tools_for(variants[-1]), cases[0])
            self.warm_up_model(ctx, self.tools_for(self.variants[0]), cases[0])
        runs: list[RunRecord] = []
        n = len(variants)
        for repeat in range(repeats):
            for index, case in enumerate(cases):
                shift = (repeat + index) % n  # alternate which variant goes first
                for variant in variants[shift:] + variants[:shift]:
                    runs.append(self.run_once(ctx, case, variant, repeat))
                    ctx.progress(f"{self.name}:{case.name}:{variant.key}")
        return WorkloadResult(self, cases, runs, repeats, time.perf_counter() - started)

    def close(self) -> None:
        for tools in self._tools.values():
            for tool in tools:
                try:
                    tool.close()
                except Exception:  # closing is best effort; a stuck tool must not stop the report
                    pass
        self._tools.clear()


def value_range(values: Iterable[Any]) -> list[float] | None:
    """``[min, max]`` of the finite numbers among ``values``, rounded (None when there are none):
    the spread printed beside every median."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return [round(min(numbers), 4), round(max(numbers), 4)] if numbers else None


def consecutive_changes(values: Sequence[float]) -> list[float]:
    """Each value's relative change from the one before (``b / a - 1``), skipping a zero
    ``a``: one repeat of a no-difference measurement against the next, the input of
    :func:`noise_figure`."""
    return [b / a - 1 for a, b in zip(values, values[1:]) if a > 0]


def noise_figure(changes: Sequence[float], over: str) -> dict[str, Any] | None:
    """The noise floor of a comparison from its no-difference changes (e.g. one baseline
    repeat against the next): the median of their sizes, their range and what they are
    (``over``); None without any."""
    if not changes:
        return None
    return {"median_abs": round(statistics.median(abs(c) for c in changes), 4), "range": value_range(changes),
            "over": over}


def user(text: str) -> list[dict[str, Any]]:
    """A one-message conversation."""
    return [{"role": "user", "content": text}]


@functools.lru_cache(maxsize=None)
def registry() -> dict[str, type[Workload]]:
    """Workload name → class, in the order the harness runs them (imported on first use,
    so importing this package stays cheap)."""
    from benchmarks.workloads.codegen import AbortWorkload, CodegenWorkload, HumanEvalWorkload, LiveCodegenWorkload
    from benchmarks.workloads.model_costs import KVReuseWorkload, OverheadWorkload
    from benchmarks.workloads.retrieval import PlanningWorkload, SearchWorkload
    from benchmarks.workloads.bfcl_calls import BfclWorkload
    from benchmarks.workloads.small_tools import CalculatorWorkload, DatabaseWorkload, ValidationWorkload

    classes: Sequence[type[Workload]] = (
        CodegenWorkload, HumanEvalWorkload, LiveCodegenWorkload, AbortWorkload,
        SearchWorkload, PlanningWorkload, BfclWorkload,
        ValidationWorkload, DatabaseWorkload, CalculatorWorkload,
        OverheadWorkload, KVReuseWorkload,
    )
    return {cls.name: cls for cls in classes}


def available() -> list[str]:
    """The workload names, in run order."""
    return list(registry())


def create(name: str) -> Workload:
    """A new instance of the workload called ``name``."""
    workloads = registry()
    if name not in workloads:
        raise KeyError(f"no workload named {name!r}; choose from: {', '.join(workloads)}")
    return workloads[name]()
