"""From measurements to figures: the JSON document, the console table, the pictures.

Figures of an A/B workload (``lazy`` vs ``partial``): for every case the **median** of
each metric over its repeats, then the sum over the workload's cases (the latency of
answering the whole case set once). From those sums:

- ``reduction = 1 - partial/lazy``, ``speedup = lazy/partial``;
- ``ideal_reduction = 1 - ideal/lazy``, with ``ideal`` the ``Timeline.summary()["ideal"]``
  of the lazy runs (measured decode and tool times, tools uncontended);
- ``efficiency = reduction / ideal_reduction`` (``None`` when the ideal reduction is
  under 2 %: nothing could be overlapped, and the ratio would be noise).

Every figure also gets a **spread**: the min-max over repeats of the same figure computed
from one repeat alone (each repeat answers every case once in each variant, the variants
alternating, so a repeat's lazy and partial runs are neighbours in time). A conclusion
holds when the whole range is on one side; one noisy run shows up as a wide range instead
of a flipped median. ``decode_change = partial decode / lazy decode - 1`` says how much
tool work running beside decoding slowed decoding down; ``decode_change_paired`` is the
median of that ratio taken within each repeat, which a machine that drifts through the
run (per-case medians may come from different repeats) moves less. ``decode_noise`` is
what the same comparison gives with no difference at all: the lazy decode of one repeat
against the lazy decode of the next (same tokens, same tools, same settings), so a
``decode_change`` inside its range is not resolved by this run. ``feed`` (per run, part
of ``decode``) is conveyor_hf's own work on each decoded token, timed where it happens.
``tool_slowdown`` is the same question asked step by step, with the machine's drift
between the runs taken out (:mod:`benchmarks.decode_steps`): what the decoding steps
that ran beside tool work cost beyond the same steps of the lazy run, at the partial
run's own pace, as a share of the lazy run's step time, with its own noise floor.
``efficiency_noise`` is how far the machine alone moves ``efficiency`` (``decode_noise``
in seconds of decoding, over the seconds the bound could hide); ``efficiency_steps`` is
the efficiency of each repeat with that drift taken out the same step-by-step way, the
tools' cost to decoding still counted (:mod:`benchmarks.decode_steps`).

Targets (measured here, never asserted by tests) are checked and printed plainly, with
the spread and the measured causes when one is missed. A target whose figure lies closer
to its threshold than the run's own noise is UNRESOLVED, not MET or MISSED: another run
could flip it. Each efficiency target is also judged on ``efficiency_steps``. codegen's
efficiency and the first stage's 40% reduction, which the workload's own bound can put
out of reach, are two targets (``codegen``, ``codegen (reduction)``); documents written
before hold them as one, whose ``value`` is the pair.

JSON (``--json``): ``format_version`` 2 adds ``spread`` (and ``decode_change``,
``per_repeat``, ``decode_change_paired``, ``decode_noise``, ``feed``, ``tool_slowdown``,
``efficiency_noise``, ``efficiency_steps``; a target's ``resolved`` and ``noise``) next to
the figures of version 1; no version-1 key changed meaning.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.decode_steps import efficiency_steps, repeat_costs, tool_slowdown
from benchmarks.workloads import WorkloadResult, consecutive_changes, noise_figure, value_range

METRICS = ("latency", "decode", "tool", "exposed_tool", "ideal", "wait", "feed", "new_tokens")
#: Below this ideal reduction there is nothing to overlap: efficiency is reported as None.
MIN_IDEAL_REDUCTION = 0.02
#: The JSON layout; 2 added the spreads (see the module docstring).
FORMAT_VERSION = 2
#: Comparison figures that get a spread.
COMPARISONS = ("reduction", "ideal_reduction", "efficiency", "speedup", "decode_change")


# -- figures -----------------------------------------------------------------------------
def _median_metrics(runs) -> dict[str, float]:
    return {m: statistics.median(float(r.summary[m]) for r in runs) for m in METRICS}


def _sum(dicts: list[dict[str, float]]) -> dict[str, float]:
    return {m: sum(d[m] for d in dicts) for m in METRICS}


def _compare(baseline: dict[str, float], contender: dict[str, float], ideal: float) -> dict[str, Any]:
    lazy, partial = baseline["latency"], contender["latency"]
    reduction = 1 - partial / lazy if lazy > 0 else None
    ideal_reduction = 1 - ideal / lazy if lazy > 0 else None
    efficiency = None
    if reduction is not None and ideal_reduction is not None and ideal_reduction >= MIN_IDEAL_REDUCTION:
        efficiency = reduction / ideal_reduction
    return {
        "reduction": reduction,
        "ideal_reduction": ideal_reduction,
        "efficiency": efficiency,
        "speedup": lazy / partial if partial > 0 else None,
        "decode_change": contender["decode"] / baseline["decode"] - 1 if baseline.get("decode", 0) > 0 else None,
    }


_range = value_range


def _per_repeat(result: WorkloadResult, variant: str, cases: list[str]) -> dict[int, dict[str, float]]:
    """Per repeat: each metric summed over ``cases`` (repeats in which every case ran)."""
    totals: dict[int, dict[str, float]] = {}
    for repeat in sorted({r.repeat for r in result.runs}):
        runs = {r.case: r for r in result.runs if r.variant == variant and r.repeat == repeat}
        if cases and all(c in runs for c in cases):
            totals[repeat] = {m: sum(float(runs[c].summary[m]) for c in cases) for m in METRICS}
    return totals


def _metric_spread(totals: dict[int, dict[str, float]]) -> dict[str, list[float] | None]:
    return {m: _range(t[m] for t in totals.values()) for m in METRICS}


def _compare_per_repeat(baseline: dict[int, dict[str, float]],
                        contender: dict[int, dict[str, float]]) -> list[dict[str, Any]]:
    """The comparison figures of each repeat alone (a repeat's baseline vs its contender)."""
    return [_compare(baseline[r], contender[r], baseline[r]["ideal"]) for r in sorted(set(baseline) & set(contender))]


def _compare_spread(baseline: dict[int, dict[str, float]],
                    contender: dict[int, dict[str, float]]) -> dict[str, list[float] | None]:
    """The min-max over repeats of each comparison figure."""
    paired = _compare_per_repeat(baseline, contender)
    return {k: _range(p[k] for p in paired) for k in COMPARISONS}


def _paired_decode_change(baseline: dict[int, dict[str, float]],
                          contender: dict[int, dict[str, float]]) -> float | None:
    """The median over repeats of one repeat's ``decode_change``."""
    changes = [p["decode_change"] for p in _compare_per_repeat(baseline, contender) if p["decode_change"] is not None]
    return _round(statistics.median(changes)) if changes else None


def _decode_noise(baseline: dict[int, dict[str, float]]) -> dict[str, Any] | None:
    """The baseline against itself: each repeat's decode time against the next repeat's.

    The two decode the same tokens beside the same (lazy) tool work, so their difference
    is the machine's own run-to-run change, the floor below which ``decode_change`` says
    nothing. Consecutive repeats lie further apart in time than a repeat's lazy and
    partial runs, so on a drifting machine this floor errs on the high side.
    """
    decodes = [baseline[r]["decode"] for r in sorted(baseline)]
    changes = consecutive_changes(decodes)
    return noise_figure(changes, f"{len(changes)} consecutive pairs of {len(decodes)} baseline repeats")


def _efficiency_noise(w: dict[str, Any]) -> float | None:
    """How far the machine alone moves ``efficiency``: the median decode change from one
    lazy repeat to the next (``decode_noise``), in seconds of the lazy decode, over the
    seconds the bound could hide (``lazy - ideal``). None without an efficiency."""
    noise, lazy = w.get("decode_noise"), w["lazy"]
    bound = lazy["latency"] - lazy["ideal"]
    if w.get("efficiency") is None or not noise or bound <= 0:
        return None
    return _round(noise["median_abs"] * lazy["decode"] / bound)


def _public(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def figures(result: WorkloadResult) -> dict[str, Any]:
    """The JSON entry of an A/B workload (see the module docstring)."""
    w = result.workload
    ran = {r.variant for r in result.runs}
    keys = [v.key for v in w.variants if v.key in ran or v.key in (w.baseline, w.contender)]
    per_case: dict[str, dict[str, dict[str, float]]] = {}
    units: dict[str, int] = {}
    cases_out = []
    for case in result.cases:
        per_case[case.name] = {}
        for key in keys:
            runs = result.of(case.name, key)
            if runs:
                per_case[case.name][key] = _median_metrics(runs)
        base_runs = result.of(case.name, w.baseline)
        units[case.name] = int(base_runs[0].summary["units"]) if base_runs else 0
        entry: dict[str, Any] = {"name": case.name, "source": case.source, "units": units[case.name]}
        for key in keys:
            if key in per_case[case.name]:
                entry[key] = _public(per_case[case.name][key])
        if w.baseline in per_case[case.name] and w.contender in per_case[case.name]:
            b, c = per_case[case.name][w.baseline], per_case[case.name][w.contender]
            entry.update({k: _round(v) for k, v in _compare(b, c, b["ideal"]).items()})
            entry["prefill_tokens"] = list(base_runs[0].summary.get("prefill_tokens", []))
        case_totals = {key: _per_repeat(result, key, [case.name]) for key in keys}
        entry["spread"] = {key: _metric_spread(case_totals[key]) for key in keys if case_totals[key]}
        if case_totals.get(w.baseline) and case_totals.get(w.contender):
            entry["spread"].update(_compare_spread(case_totals[w.baseline], case_totals[w.contender]))
        if case.info:
            entry["info"] = case.info
        cases_out.append(entry)

    totals = {key: _sum([per_case[c][key] for c in per_case if key in per_case[c]]) for key in keys}
    base, cont = totals[w.baseline], totals[w.contender]
    out: dict[str, Any] = {
        "title": w.title,
        "decoding": w.decoding,
        "lazy": _public(base),
        "partial": _public(cont),
        **{k: _round(v) for k, v in _compare(base, cont, base["ideal"]).items()},
        "units": sum(units.values()),
        "cases": cases_out,
        "repeats": result.repeats,
        "labels": {v.key: v.label or v.key for v in w.variants},
        "texts_match": _texts_match(result),
        "tool_errors": sorted({e for r in result.runs for e in r.errors})[:10],
        "note": w.note,
        "seconds": round(result.seconds, 1),
    }
    names = [c.name for c in result.cases]
    repeats = {key: _per_repeat(result, key, names) for key in keys}
    out["spread"] = {
        "lazy": _metric_spread(repeats[w.baseline]),
        "partial": _metric_spread(repeats[w.contender]),
        **_compare_spread(repeats[w.baseline], repeats[w.contender]),
        "over": f"{len(repeats[w.contender])} repeats, each answering all {len(names)} case(s) once per variant",
    }
    out["per_repeat"] = {key: [_public(repeats[key][r]) for r in sorted(repeats[key])] for key in keys}
    out["decode_change_paired"] = _paired_decode_change(repeats[w.baseline], repeats[w.contender])
    out["decode_noise"] = _decode_noise(repeats[w.baseline])
    out["efficiency_noise"] = _efficiency_noise(out)
    costs = repeat_costs(result)
    out["tool_slowdown"] = tool_slowdown(result, costs)
    out["efficiency_steps"] = efficiency_steps(costs, repeats[w.baseline], repeats[w.contender],
                                               MIN_IDEAL_REDUCTION)
    if w.baseline != "lazy" or w.contender != "partial":
        out["compares"] = f"{w.baseline} vs {w.contender}"
    for json_key, variant in w.extra_baselines.items():
        if variant not in ran:  # left out of this run (--quick)
            continue
        other = totals[variant]
        out[json_key] = {"lazy": _public(other), "label": out["labels"][variant],
                         **{k: _round(v) for k, v in _compare(other, cont, other["ideal"]).items()},
                         "spread": {"lazy": _metric_spread(repeats[variant]),
                                    **_compare_spread(repeats[variant], repeats[w.contender])}}
    for json_key, variant in w.extra_contenders.items():
        if variant not in ran:
            continue
        other = totals[variant]
        out[json_key] = {**_public(other), "label": out["labels"][variant],
                         **{k: _round(v) for k, v in _compare(base, other, base["ideal"]).items()},
                         "spread": {**_metric_spread(repeats[variant]),
                                    **_compare_spread(repeats[w.baseline], repeats[variant])}}
    out.update(w.details())
    return out


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _texts_match(result: WorkloadResult) -> bool:
    """Every run of a case gives the same text in all variants that do not abort early."""
    w = result.workload
    comparable = [v.key for v in w.variants if v.on_error == "continue"]
    for case in result.cases:
        texts = {r.text for key in comparable for r in result.of(case.name, key)}
        if len(texts) > 1:
            return False
    return True


# -- targets -----------------------------------------------------------------------------
def _get(doc: dict[str, Any], workload: str, *path: str) -> Any:
    value: Any = doc["workloads"].get(workload)
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


#: The first stage's target for codegen's reduction (README); the workload's own bound
#: (``ideal_reduction``) decides whether any schedule can reach it.
CODEGEN_REDUCTION_TARGET = 0.40


def _codegen_reduction_why(doc: dict[str, Any]) -> list[str]:
    """Why codegen's reduction stays under its target: the workload's bound, if that is
    below the target, else the efficiency's reasons."""
    w = doc["workloads"]["codegen"]
    lazy = w["lazy"]
    if (w.get("ideal_reduction") or 0) < CODEGEN_REDUCTION_TARGET and lazy["decode"] > 0:
        return [f"the workload's own bound is ideal_reduction {w['ideal_reduction']:.0%}: tool time is "
                f"{lazy['tool'] / lazy['decode']:.2f}x decode time, and no schedule can hide more than the "
                "shorter of the two"]
    return _codegen_why(doc)


def _codegen_why(doc: dict[str, Any]) -> list[str]:
    """Why codegen's efficiency stays under its target: slower decoding, slower tools."""
    w = doc["workloads"]["codegen"]
    lazy, partial = w["lazy"], w["partial"]
    why = []
    if lazy["decode"] > 0:
        slow = partial["decode"] / lazy["decode"] - 1
        why.append(f"decoding took {partial['decode']:.1f}s in partial vs {lazy['decode']:.1f}s in lazy ({slow:+.0%}): "
                   "tool work running beside decoding slows it (CPU cores, GIL, kernel messaging)")
    if lazy["tool"] > 0:
        why.append(f"tool busy time {partial['tool']:.1f}s in partial vs {lazy['tool']:.1f}s in lazy "
                   f"({partial['tool'] / lazy['tool'] - 1:+.0%}); exposed tool time left in partial: "
                   f"{partial['exposed_tool']:.2f}s")
    return why


def _planning_why(doc: dict[str, Any]) -> list[str]:
    w = doc["workloads"]["planning"]
    lazy = w["lazy"]
    bound = lazy["latency"] / lazy["ideal"] if lazy["ideal"] else float("nan")
    return [f"even a perfect pipeline only reaches lazy/ideal = {bound:.2f}x: decoding the answer and "
            f"re-prefilling the search results ({lazy['decode']:.1f}s of {lazy['latency']:.1f}s) stays in both modes"]


def _overhead_why(doc: dict[str, Any]) -> list[str]:
    w = doc["workloads"]["overhead"]
    why = [f"{w['overhead_ms_per_token']:+.2f} ms per token against plain generate ({w['new_tokens']} tokens); "
           f"median of the paired run ratios: {_figure(w.get('paired_ratio_median'))}"]
    hook = w.get("hook_ms_per_step")
    spread = _get(doc, "overhead", "spread", "ratio")
    if isinstance(spread, list):
        why.append(f"per repeat the ratio was {spread[0]:.4f}–{spread[1]:.4f}: a range wider than the 1% target "
                   "means this run cannot resolve it; run more tokens or repeats")
    if isinstance(hook, float):
        why.append(f"the per-step hook (detokenize + call detection) itself takes {hook:.3f} ms per step; "
                   "the rest of the difference is run-to-run noise on this shared machine unless it repeats")
    return why


def _kv_why(doc: dict[str, Any]) -> list[str]:
    w = doc["workloads"]["kv_reuse"]
    return [f"cached prefill of {row['appended_tokens']} tokens on {row['context_tokens']}: "
            f"{row['cached_ms']:.1f} ms vs {row['full_ms']:.1f} ms full" for row in w["by_length"].values()]


def _spread_of(doc: dict[str, Any], workload: str, key: str) -> list[float] | None:
    value = _get(doc, workload, "spread", key)
    return value if isinstance(value, list) else None


def _codegen_live_why(doc: dict[str, Any]) -> list[str]:
    w = doc["workloads"]["codegen_live"]
    lazy, partial = w["lazy"], w["partial"]
    why = [f"ideal_reduction is {_pct(w.get('ideal_reduction')).strip()}: the model's code has "
           f"{lazy['tool']:.2f}s of tool time against {lazy['decode']:.1f}s of decoding"]
    if lazy["decode"] > 0:
        why.append(f"decoding took {partial['decode']:.2f}s in partial vs {lazy['decode']:.2f}s in lazy "
                   f"({partial['decode'] / lazy['decode'] - 1:+.1%}); exposed tool time left in partial: "
                   f"{partial['exposed_tool']:.2f}s, waiting after decoding {partial['wait']:.2f}s")
    return why


@dataclass(frozen=True)
class Target:
    """One target: what it says, the measured value (median figures), its test, the same
    value at the two ends of the spread, the measured causes when it is missed, and whether
    the run's own noise lets it decide."""

    text: str
    value: Callable[[dict], Any]
    test: Callable[[Any], bool]
    why: Callable[[dict], list[str]]
    ends: Callable[[dict], tuple[Any, Any] | None] = lambda doc: None
    #: Why this run cannot decide the target either way (its noise reaches across the
    #: threshold), or None when it can.
    unresolved: Callable[[dict], str | None] = lambda doc: None
    #: How far the machine alone moves the value (printed beside it), or None.
    noise: Callable[[dict], float | None] = lambda doc: None
    #: The workload the target reads, where it is not the target's own name.
    workload: str | None = None


def _ends(doc: dict[str, Any], workload: str, key: str) -> tuple[Any, Any] | None:
    """``(low end, high end)`` of the spread of ``workload``'s ``key``."""
    spread = _spread_of(doc, workload, key)
    return None if spread is None else (spread[0], spread[1])


def _overhead_ends(doc: dict[str, Any]) -> tuple[Any, Any] | None:
    spread = _get(doc, "overhead", "spread", "ratio")
    return (spread[0], spread[1]) if isinstance(spread, list) else None


def _kv_ends(doc: dict[str, Any]) -> tuple[Any, Any] | None:
    at = _get(doc, "kv_reuse", "ratio_at_context_tokens")
    spread = _get(doc, "kv_reuse", "by_length", str(at), "ratio_spread")
    return (spread[0], spread[1]) if isinstance(spread, list) else None


def _within_noise(value: Any, threshold: float, noise: Any) -> bool:
    """Whether ``value`` lies no farther from ``threshold`` than ``noise``: the run cannot
    tell which side it is on (False when either figure is missing)."""
    return isinstance(value, float) and isinstance(noise, float) and abs(value - threshold) <= noise


#: The efficiency targets: the full codegen run, and code the model writes live.
EFFICIENCY_TARGETS = {"codegen": 0.95, "codegen_live": 0.9}


def _efficiency_unresolved(doc: dict[str, Any], workload: str) -> str | None:
    """Why ``workload``'s efficiency cannot decide its target in this run: the machine alone
    (``efficiency_noise``) moves it by more than its distance to the threshold."""
    value, noise = _get(doc, workload, "efficiency"), _get(doc, workload, "efficiency_noise")
    threshold = EFFICIENCY_TARGETS[workload]
    if not _within_noise(value, threshold, noise):
        return None
    w = doc["workloads"][workload]
    lazy = w["lazy"]
    return (f"the machine alone moves this efficiency by {noise:.2f} (decoding changed by "
            f"{w['decode_noise']['median_abs']:.1%} from one lazy repeat to the next, {lazy['decode']:.1f}s of "
            f"decoding against {lazy['latency'] - lazy['ideal']:.2f}s the bound could hide), more than its "
            f"distance to {threshold:g}; the step-by-step figure ('{workload} (steps)') takes that drift out")


#: ConveyorGenerator's answer time over plain ``model.generate``'s, no tool call.
OVERHEAD_TARGET = 1.01


def _overhead_unresolved(doc: dict[str, Any]) -> str | None:
    """Why the overhead ratio cannot decide its target in this run: plain ``generate``
    against itself (one repeat against the next) changes by more than the ratio's distance
    to the threshold."""
    value, noise = _get(doc, "overhead", "ratio"), _get(doc, "overhead", "noise", "median_abs")
    if not _within_noise(value, OVERHEAD_TARGET, noise):
        return None
    return (f"plain model.generate against itself changes by {noise:.1%} from one repeat to the next, more than "
            f"this ratio's distance to {OVERHEAD_TARGET:g}; the hook target (timed around the hook) resolves it")


def _efficiency_target(workload: str, why: Callable[[dict], list[str]]) -> Target:
    """``workload``'s efficiency against :data:`EFFICIENCY_TARGETS`, UNRESOLVED where the
    machine alone (``efficiency_noise``) moves it across the threshold."""
    threshold = EFFICIENCY_TARGETS[workload]
    return Target(f"efficiency >= {threshold:g}", lambda d: _get(d, workload, "efficiency"),
                  lambda v: v is not None and v >= threshold, why, lambda d: _ends(d, workload, "efficiency"),
                  lambda d: _efficiency_unresolved(d, workload), lambda d: _get(d, workload, "efficiency_noise"))


#: target name → target (see :class:`Target`); the name is the workload it reads unless
#: ``Target.workload`` says otherwise
TARGETS: dict[str, Target] = {
    "codegen": _efficiency_target("codegen", _codegen_why),
    "codegen (reduction)": Target(f"reduction >= {CODEGEN_REDUCTION_TARGET:.0%}",
                                  lambda d: _get(d, "codegen", "reduction"),
                                  lambda v: v is not None and v >= CODEGEN_REDUCTION_TARGET,
                                  _codegen_reduction_why, lambda d: _ends(d, "codegen", "reduction"),
                                  workload="codegen"),
    "codegen_live": _efficiency_target("codegen_live", _codegen_live_why),
    "planning": Target("lazy (sequential) / partial >= 2x",
                       lambda d: _get(d, "planning", "speedup"),
                       lambda v: v is not None and v >= 2.0,
                       _planning_why, lambda d: _ends(d, "planning", "speedup")),
    "codegen_abort": Target("reduction (on_error='abort' vs lazy) >= 55%",
                            lambda d: _get(d, "codegen_abort", "reduction"),
                            lambda v: v is not None and v >= 0.55,
                            lambda d: [], lambda d: _ends(d, "codegen_abort", "reduction")),
    "overhead": Target(f"ConveyorGenerator / model.generate <= {OVERHEAD_TARGET:g}",
                       lambda d: _get(d, "overhead", "ratio"),
                       lambda v: v is not None and v <= OVERHEAD_TARGET,
                       _overhead_why, _overhead_ends, _overhead_unresolved,
                       lambda d: _get(d, "overhead", "noise", "median_abs")),
    "kv_reuse": Target("cached / full prefill well below 1 on long contexts (<= 0.25 at the longest)",
                       lambda d: _get(d, "kv_reuse", "ratio"),
                       lambda v: v is not None and v <= 0.25,
                       _kv_why, _kv_ends),
}


def _check(workload: str, target: str, value: Any, met: bool, every: bool | None, spread: list | None,
           why: list[str], resolved: bool = True, **extra: Any) -> dict[str, Any]:
    """One entry of the document's ``targets`` list (``extra`` adds keys, e.g. ``by_workload``).

    ``met`` is the verdict of the medians; ``resolved`` False says the run's own noise
    reaches across the threshold, so that verdict could flip from one run to the next.
    """
    return {"workload": workload, "target": target, "value": value, "met": met, "in_every_repeat": every,
            "spread": spread, "why": why, "resolved": resolved, **extra}


#: The per-step hook may take at most this share of a decoding step (no tool call).
HOOK_SHARE_TARGET = 0.01


def _hook_check(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The hook's own work per step, timed around it, against the plain step time: what the
    end-to-end overhead ratio measures, resolved below the run-to-run noise of whole answers."""
    w = doc["workloads"].get("overhead")
    share = w.get("hook_share_of_step") if isinstance(w, dict) else None
    if not isinstance(share, float):
        return None
    met = share <= HOOK_SHARE_TARGET
    why = [] if met else [f"the hook takes {w['hook_ms_per_step']:.3f} ms per step; profile ConveyorHook.__call__"]
    return _check("hook", f"per-step hook work <= {HOOK_SHARE_TARGET:.0%} of a decoding step "
                  "(timed around the hook, no tool call)", share, met, None, None, why)


#: Decoding beside tool work may be this much slower than decoding alone (replayed answers).
DECODE_SLOWDOWN_TARGET = 0.02


def _workload_verdicts(values: dict[str, float], noise: dict[str, float], threshold: float,
                       ) -> tuple[bool, bool, list[str]]:
    """One verdict over several workloads' figures, each at most ``threshold``: whether
    all meet it, whether the run decides that, and the workloads it cannot decide.

    A workload whose figure lies within its own noise of the threshold is undecided
    (:func:`_within_noise`). One workload that misses by more than its noise decides the
    whole verdict (MISSED); otherwise one undecided workload leaves it UNRESOLVED.
    """
    undecided = [n for n, v in values.items() if _within_noise(v, threshold, noise.get(n))]
    missed = [n for n, v in values.items() if v > threshold and n not in undecided]
    return all(v <= threshold for v in values.values()), bool(missed) or not undecided, undecided


def _undecided_why(undecided: list[str], values: dict[str, float], noise: dict[str, float], threshold: float,
                   remedy: str) -> str:
    """Why a verdict over several workloads is UNRESOLVED: which figures lie within their
    noise of the threshold, and what would resolve them (``remedy``). More repeats do not:
    the noise is what one repeat moves by itself, which repeating does not shrink."""
    figures = ", ".join(f"{n} {values[n]:+.1%} (noise {noise[n]:.1%})" for n in undecided)
    verb = "lies within its" if len(undecided) == 1 else "lie within their"
    return f"not decided by this run: {figures} {verb} noise of {threshold:.0%}; {remedy}"



def _decode_check(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Partial decode within 2% of lazy on every replayed workload that decodes the same
    tokens in both variants (early abort decodes fewer on purpose); UNRESOLVED where a
    workload's change lies within its lazy-against-lazy noise of 2%."""
    changes: dict[str, float] = {}
    paired: dict[str, float] = {}
    ends: dict[str, list[float] | None] = {}
    noise: dict[str, dict[str, Any]] = {}
    why: list[str] = []
    for name, w in doc["workloads"].items():
        if not isinstance(w, dict) or w.get("decoding") != "replay" or not isinstance(w.get("partial"), dict):
            continue
        if w["lazy"].get("new_tokens") != w["partial"].get("new_tokens"):
            continue
        change = w.get("decode_change")
        if change is None and w["lazy"].get("decode"):  # format version 1
            change = w["partial"]["decode"] / w["lazy"]["decode"] - 1
        if isinstance(change, float):
            changes[name] = change
            ends[name] = _spread_of(doc, name, "decode_change")
            if isinstance(w.get("decode_change_paired"), float):
                paired[name] = w["decode_change_paired"]
            if isinstance(w.get("decode_noise"), dict):
                noise[name] = w["decode_noise"]
            if change > DECODE_SLOWDOWN_TARGET:
                why.append(_decode_why(name, w, change, ends[name], paired.get(name), noise.get(name)))
    if not changes:
        return None
    floors = {n: v["median_abs"] for n, v in noise.items()}
    met, resolved, undecided = _workload_verdicts(changes, floors, DECODE_SLOWDOWN_TARGET)
    if not resolved:
        why.append(_undecided_why(undecided, changes, floors, DECODE_SLOWDOWN_TARGET,
                                  "the step-by-step target (decode_steps) takes the machine's drift between the "
                                  "runs out"))
    every = all(sp is not None and sp[1] <= DECODE_SLOWDOWN_TARGET for sp in ends.values())
    return _check("decode", f"partial decode within {DECODE_SLOWDOWN_TARGET:.0%} of lazy on every replayed workload",
                  max(changes.values()), met, every and met, None, why, resolved,
                  by_workload={n: round(c, 4) for n, c in changes.items()}, paired_by_workload=paired,
                  noise_by_workload=floors)


def _decode_why(name: str, w: dict[str, Any], change: float, ends: list[float] | None, paired: float | None,
                noise: dict[str, Any] | None) -> str:
    """Why one workload's partial decoding was slower: by how much, how much of it is
    conveyor_hf's own token work, and whether the machine alone changes that much."""
    text = f"{name}: decoding {change:+.1%} in partial vs lazy (per repeat {_range_text(ends, 'signed_pct')}"
    if paired is not None:
        text += f"; median of the paired repeats {paired:+.1%}"
    text += ")"
    lazy, partial = w["lazy"], w["partial"]
    if isinstance(lazy.get("feed"), float) and isinstance(partial.get("feed"), float) and lazy["decode"] > 0:
        extra = partial["feed"] - lazy["feed"]
        text += f"; conveyor_hf's own token work {extra:+.3f}s = {extra / lazy['decode']:+.2%} of decode"
    if noise and noise.get("range"):
        bound = max(abs(v) for v in noise["range"])
        text += (f"; lazy against lazy (consecutive repeats) changes by {noise['median_abs']:.1%} in the median, "
                 f"up to {bound:.1%}")
        if _within_noise(change, DECODE_SLOWDOWN_TARGET, noise["median_abs"]):
            return text + (": within the machine's own change, not resolved by this run "
                           "(the last reason says what resolves it)")
    return text + ("; tool work beside decoding competes for the CPU cores, memory bandwidth or the GIL "
                   "(python -m benchmarks.contention shows which)")


def _beyond_bound_note(name: str, w: dict[str, Any]) -> str | None:
    """Why an efficiency above 1 (partial faster than the lazy runs' pipelined bound) is
    not a gain: the decoding time partial saved, if it covers the excess; otherwise the
    bound itself missed something, which is said plainly rather than explained away."""
    efficiency, change = w.get("efficiency"), w.get("decode_change")
    lazy, partial = w.get("lazy"), w.get("partial")
    if not (isinstance(efficiency, float) and efficiency > 1.05 and isinstance(change, float)
            and isinstance(lazy, dict) and isinstance(partial, dict)):
        return None
    excess = lazy["ideal"] - partial["latency"]  # seconds partial ran below the bound
    saved = lazy["decode"] - partial["decode"]
    head = f"{name}: efficiency {efficiency:.2f} > 1 beats the pipelined bound of the lazy runs by {excess:.2f}s"
    if saved >= 0.5 * excess:
        return (f"{head}: partial decoded {saved:.2f}s faster (decode P/L {change:+.1%}), i.e. machine load, "
                "not a gain")
    return (f"{head}, which their decoding change ({change:+.1%}, {saved:+.2f}s) does not explain: the bound "
            "(Timeline.ideal) starts some unit later than partial mode did; report it")


def _tool_cost_check(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The decode target asked step by step (``tool_slowdown``): what decoding beside tool
    work cost, with the machine's drift between the lazy and partial runs taken out."""
    slowdowns: dict[str, float] = {}
    noise: dict[str, float] = {}
    every = True
    why: list[str] = []
    for name, w in doc["workloads"].items():
        steps = w.get("tool_slowdown") if isinstance(w, dict) and w.get("decoding") == "replay" else None
        if not isinstance(steps, dict):
            continue
        slowdowns[name] = steps["median"]
        every = every and steps["range"][1] <= DECODE_SLOWDOWN_TARGET
        floor = steps.get("noise")
        if floor:
            noise[name] = floor["median_abs"]
        if steps["median"] > DECODE_SLOWDOWN_TARGET:
            text = (f"{name}: the steps decoded beside tool work ({steps['beside_share']:.0%} of the step time) "
                    f"cost {steps['median']:+.1%} of the lazy run's step time (per repeat "
                    f"{_range_text(steps['range'], 'signed_pct')})")
            if floor and floor.get("range"):
                text += f"; lazy against lazy gives {floor['median_abs']:.1%} ({_range_text(floor['range'], 'signed_pct')})"
            why.append(text + "; python -m benchmarks.contention shows which resource the tool competes for")
    if not slowdowns:
        return None
    met, resolved, undecided = _workload_verdicts(slowdowns, noise, DECODE_SLOWDOWN_TARGET)
    if not resolved:
        why.append(_undecided_why(undecided, slowdowns, noise, DECODE_SLOWDOWN_TARGET,
                                  "longer cases (more steps beside the tools) or a quieter machine would resolve it"))
    return _check("decode_steps", f"decoding beside tool work costs at most {DECODE_SLOWDOWN_TARGET:.0%} on every "
                  "replayed workload, step by step (the machine's drift between runs taken out)",
                  max(slowdowns.values()), met, every and met, None, why, resolved,
                  by_workload=slowdowns, noise_by_workload=noise)


def _efficiency_steps_check(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    """``name``'s efficiency target asked with the machine's drift taken out
    (``efficiency_steps``): what the tools cost decoding still counts, the run-to-run
    change of the machine not. None without that figure."""
    steps, threshold = _get(doc, name, "efficiency_steps"), EFFICIENCY_TARGETS[name]
    if not isinstance(steps, dict):
        return None
    value, spread, noise = steps["median"], steps["range"], (steps.get("noise") or {}).get("median_abs")
    met = value >= threshold
    why = [] if met else [f"{name}: with the drift taken out partial reached {value:.2f} of the bound "
                          f"(per repeat {_range_text(spread, 'x')}); the rest is tool work slowing decoding "
                          "or units that started later than the bound allows"]
    resolved = not _within_noise(value, threshold, noise)
    if not resolved:
        why.append(f"its own noise (lazy against the next lazy run, over the same bound) is {noise:.2f}, "
                   f"more than its distance to {threshold:g}")
    return _check(f"{name} (steps)", f"efficiency >= {threshold:g} with the machine's drift between the lazy "
                  "and partial runs taken out (step by step)", value, met, met and spread[0] >= threshold,
                  list(spread), why, resolved, noise=noise)


def check_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target's measured value, whether the medians meet it, and whether every single
    repeat does (``in_every_repeat``: both ends of the spread pass; None without a spread)."""
    checks = []
    for name, target in TARGETS.items():
        entry = doc["workloads"].get(target.workload or name)
        if not isinstance(entry, dict) or "error" in entry or "skipped" in entry:
            continue
        value = target.value(doc)
        met = bool(target.test(value))
        ends = target.ends(doc)
        every = None if ends is None else bool(met and target.test(ends[0]) and target.test(ends[1]))
        unresolved = target.unresolved(doc)
        why = ([] if met else target.why(doc)) + ([unresolved] if unresolved else [])
        checks.append(_check(name, target.text, value, met, every, list(ends) if ends is not None else None,
                             why, unresolved is None, noise=target.noise(doc)))
        steps = _efficiency_steps_check(doc, name) if name in EFFICIENCY_TARGETS else None
        if steps is not None:
            checks.append(steps)
    for check in (_hook_check(doc), _decode_check(doc), _tool_cost_check(doc)):
        if check is not None:
            checks.append(check)
    return checks


# -- the document --------------------------------------------------------------------------
def document(machine: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """``{"machine", "workloads", "targets"}``: everything ``--json`` writes."""
    workloads = {}
    for name, result in results.items():
        workloads[name] = figures(result) if isinstance(result, WorkloadResult) else result
    doc = {"format_version": FORMAT_VERSION, "machine": machine, "workloads": workloads}
    doc["targets"] = check_targets(doc)
    return doc


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


# -- the console table -----------------------------------------------------------------------
def _pct(value: Any) -> str:
    return f"{value:6.1%}" if isinstance(value, (int, float)) else "   n/a"


def _num(value: Any, fmt: str = "6.2f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "n/a".rjust(len(format(0.0, fmt)))


#: How a kind of figure is written alone and as a range.
_FORMATS: dict[str, tuple[Callable[[float], str], Callable[[float], str]]] = {
    "s": (lambda v: f"{v:.2f}", lambda v: f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"),
    "pct": (lambda v: f"{v:.1%}", lambda v: f"{v:.1%}"),
    "signed_pct": (lambda v: f"{v:+.1%}", lambda v: f"{v:+.1%}"),
    "x": (lambda v: f"{v:.2f}", lambda v: f"{v:.2f}"),
    "x3": (lambda v: f"{v:.3f}", lambda v: f"{v:.3f}"),
    "x4": (lambda v: f"{v:.4f}", lambda v: f"{v:.4f}"),
    "ms": (lambda v: f"{v:+.2f}", lambda v: f"{v:+.2f}"),
}


def _cell(value: Any, kind: str) -> str:
    return _FORMATS[kind][0](value) if isinstance(value, (int, float)) else "n/a"


def _range_text(spread: Any, kind: str) -> str:
    if not (isinstance(spread, (list, tuple)) and len(spread) == 2 and all(isinstance(v, (int, float))
                                                                           for v in spread)):
        return "n/a"
    short = _FORMATS[kind][1]
    return f"{short(spread[0])}–{short(spread[1])}"


#: (header, kind, where the value is: "lazy"/"partial" metric or "cmp" comparison, key)
_LATENCY_COLUMNS = (
    ("lazy s", "s", "lazy", "latency"), ("partial s", "s", "partial", "latency"),
    ("reduction", "pct", "cmp", "reduction"), ("ideal red.", "pct", "cmp", "ideal_reduction"),
    ("efficiency", "x", "cmp", "efficiency"), ("speedup", "x", "cmp", "speedup"),
)
_TIME_COLUMNS = (
    ("decode L", "s", "lazy", "decode"), ("decode P", "s", "partial", "decode"),
    ("decode P/L", "signed_pct", "cmp", "decode_change"),
    ("tool L", "s", "lazy", "tool"), ("tool P", "s", "partial", "tool"),
    ("exposed L", "s", "lazy", "exposed_tool"), ("exposed P", "s", "partial", "exposed_tool"),
    ("wait L", "s", "lazy", "wait"), ("wait P", "s", "partial", "wait"),
    ("feed L", "s", "lazy", "feed"), ("feed P", "s", "partial", "feed"),
)


def _comparisons(name: str, w: dict[str, Any]) -> list[tuple[str, dict, dict, dict, dict, dict, dict]]:
    """``(label, lazy, lazy spread, partial, partial spread, comparison, comparison spread)``
    for a workload's headline row and its extra rows (``vs_*`` baselines, extra contenders)."""
    spread = w.get("spread") or {}
    rows = [(name, w["lazy"], spread.get("lazy") or {}, w["partial"], spread.get("partial") or {}, w, spread)]
    for key, extra in w.items():
        if not isinstance(extra, dict) or "label" not in extra:
            continue
        extra_spread = extra.get("spread") or {}
        if key.startswith("vs_") and isinstance(extra.get("lazy"), dict):
            rows.append((f"  {key}", extra["lazy"], extra_spread.get("lazy") or {}, w["partial"],
                         spread.get("partial") or {}, extra, extra_spread))
        elif "latency" in extra:
            rows.append((f"  {key}", w["lazy"], spread.get("lazy") or {}, extra, extra_spread, extra, extra_spread))
    return rows


def _grid(title: str, columns, entries: list[tuple[str, str, tuple, str]]) -> list[str]:
    """A table: per comparison a row of medians and, below it, a row of ranges."""
    head = ["workload", "dec.", "cases×reps"] + [c[0] for c in columns]
    body: list[list[str]] = []
    for label, dec, (lazy, lazy_sp, partial, partial_sp, cmp, cmp_sp), shape in entries:
        if "decode_change" not in cmp and lazy.get("decode"):  # format version 1
            cmp = {**cmp, "decode_change": partial["decode"] / lazy["decode"] - 1}
        sources = {"lazy": (lazy, lazy_sp), "partial": (partial, partial_sp), "cmp": (cmp, cmp_sp)}
        body.append([label, dec, shape] + [_cell(sources[where][0].get(key), kind)
                                           for _, kind, where, key in columns])
        ranges = [_range_text(sources[where][1].get(key), kind) for _, kind, where, key in columns]
        if any(r != "n/a" for r in ranges):  # documents of format version 1 have no spreads
            body.append(["  (min–max)", "", ""] + ranges)
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        left = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        return " ".join(left + [c.rjust(w) for c, w in zip(cells[2:], widths[2:])]).rstrip()

    return [title, line(head)] + [line(row) for row in body]


def table(doc: dict[str, Any]) -> str:
    """The figures as text: latency and time tables (medians, each with its min–max over
    repeats on the line below), then overhead, KV reuse, targets."""
    m = doc["machine"]
    lines = [
        f"machine: {m.get('cpu')} · {m.get('cores')} cores · decode {m.get('torch_threads')} torch thread(s) on "
        f"{m.get('device')} · {m.get('model')}",
        f"torch {m.get('torch')} · transformers {m.get('transformers')} · {m.get('date')}"
        + (f" · load average at start {m['load_average_at_start']}" if "load_average_at_start" in m else "")
        + (f", at end {m['load_average_at_end']}" if "load_average_at_end" in m else ""),
        f"tools: {m.get('tools')}",
        "figures: per case the median over repeats, summed over the workload's cases (seconds); below each row, "
        "(min–max): the range of the same figure over repeats, one repeat answering every case once per variant",
        "",
    ]
    entries: list[tuple[str, str, tuple, str]] = []
    notes, problems = [], []
    for name, w in doc["workloads"].items():
        if not isinstance(w, dict):
            continue
        if "skipped" in w or "error" in w:
            problems.append(f"{name:24s} {'SKIPPED: ' + w['skipped'] if 'skipped' in w else 'ERROR: ' + w['error']}")
            continue
        if "lazy" not in w or "partial" not in w or "latency" not in w.get("partial", {}):
            continue
        shape = f"{len(w.get('cases', []))}×{w.get('repeats', '?')}"
        for label, *values in _comparisons(name, w):
            entries.append((label, w.get("decoding", ""), tuple(values), shape))
        if w.get("emulated_latency_s"):
            notes.append(f"{name}: search latency EMULATED ({w['emulated_latency_s']} s per query, offline corpus)")
        if w.get("texts_match") is False:
            notes.append(f"{name}: WARNING lazy and partial texts differ")
        note = _beyond_bound_note(name, w)
        if note:
            notes.append(note)
    if entries:
        lines += _grid("latency (L = lazy, P = partial):", _LATENCY_COLUMNS, entries)
        lines.append("")
        lines += _grid("where the time went (seconds; decode P/L = partial decode / lazy decode - 1; "
                       "feed = conveyor_hf's own work on the decoded tokens, part of decode):",
                       _TIME_COLUMNS, entries)
    lines += problems
    overhead = doc["workloads"].get("overhead")
    if isinstance(overhead, dict) and "ratio" in overhead:
        sp = overhead.get("spread") or {}
        lines.append("")
        lines.append(f"overhead (live, no tool call): ConveyorGenerator / model.generate = "
                     f"{_num(overhead['ratio'], '.4f')} (per repeat {_range_text(sp.get('ratio'), 'x4')}; "
                     f"{_num(overhead['conveyor']['latency'], '.2f')}s vs "
                     f"{_num(overhead['plain']['latency'], '.2f')}s, "
                     f"{overhead['new_tokens']} tokens, {_num(overhead['overhead_ms_per_token'], '+.2f')} ms/token "
                     f"[{_range_text(sp.get('overhead_ms_per_token'), 'ms')}]; "
                     f"hook {_num(overhead.get('hook_ms_per_step'), '.3f')} ms/step = "
                     f"{_pct(overhead.get('hook_share_of_step')).strip()} of a step; "
                     f"identical tokens: {overhead.get('identical_tokens')})")
    kv = doc["workloads"].get("kv_reuse")
    if isinstance(kv, dict) and "by_length" in kv:
        lines.append("")
        parts = [f"{row['context_tokens']}: {row['ratio']:.3f} [{_range_text(row.get('ratio_spread'), 'x3')}] "
                 f"({row['cached_ms']:.0f}/{row['full_ms']:.0f} ms)" for row in kv["by_length"].values()]
        lines.append(f"kv_reuse (cached / full prefill of {next(iter(kv['by_length'].values()))['appended_tokens']} "
                     f"appended tokens, by context length; [min–max over repeats]): " + " · ".join(parts))
        lines.append(f"  generator's prefill per round in a one-call answer: {kv.get('generator_prefill_tokens')}")
    if notes:
        lines.append("")
        lines += notes
    if doc.get("targets"):
        lines.append("")
        lines.append("targets (MET/MISSED on the medians; 'every repeat': the whole min–max range meets it too; "
                     "UNRESOLVED: the run's own noise reaches across the threshold):")
        for t in doc["targets"]:
            value = t["value"]
            shown = ", ".join(_figure(v) for v in value) if isinstance(value, (list, tuple)) else _figure(value)
            spread = t.get("spread")
            if spread:
                shown += f"; per repeat {_ends_text(spread)}"
            if t.get("by_workload"):
                paired, noise = t.get("paired_by_workload") or {}, t.get("noise_by_workload") or {}
                shown = ", ".join(f"{n} {c:+.1%}" + _decode_notes(paired.get(n), noise.get(n))
                                  for n, c in t["by_workload"].items())
            robust = {True: ", in every repeat", False: ", not in every repeat", None: ""}[t.get("in_every_repeat")]
            verdict = ("MET" if t["met"] else "MISSED") if t.get("resolved", True) else "UNRESOLVED"
            lines.append(f"  {verdict:6s} {t['workload']}: {t['target']} "
                         f"(measured {shown}{robust if t['met'] else ''}{_noise_text(t.get('noise'))})")
            for reason in t["why"]:
                lines.append(f"         why: {reason}")
    return "\n".join(lines)


def _noise_text(noise: Any) -> str:
    """``, noise x`` beside a target's figure, or nothing."""
    return f", noise {_figure(noise)}" if isinstance(noise, float) else ""


def _decode_notes(paired: float | None, noise: float | None) -> str:
    """`` (paired +x%, noise y%)`` beside one workload's decode change, or nothing."""
    notes = []
    if paired is not None:
        notes.append(f"paired {paired:+.1%}")
    if noise is not None:
        notes.append(f"noise {noise:.1%}")
    return f" ({', '.join(notes)})" if notes else ""


def _ends_text(spread: list[Any]) -> str:
    """``low … high`` ends of a target's spread (tuples for several values, as documents
    written before codegen's reduction and efficiency became two targets hold)."""
    def one(end: Any) -> str:
        return ", ".join(_figure(v) for v in end) if isinstance(end, (list, tuple)) else _figure(end)

    return f"{one(spread[0])} … {one(spread[1])}"


def _figure(value: Any) -> str:
    """A figure as text: a float to three decimals, anything else as ``str`` gives it."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# -- pictures ---------------------------------------------------------------------------------
def pictures(doc: dict[str, Any], results: dict[str, Any], out: Path) -> list[Path]:
    """A timeline PNG and Chrome traces per A/B workload, and ``summary.png``."""
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, result in results.items():
        if isinstance(result, WorkloadResult) and result.runs:
            paths += timeline_pictures(name, result, out)
    summary = summary_chart(doc, out / "summary.png")
    if summary is not None:
        paths.append(summary)
    return paths


def representative(result: WorkloadResult, case: str, variant: str):
    """The run with the median latency (the lower middle one for an even count)."""
    runs = sorted(result.of(case, variant), key=lambda r: r.summary["latency"])
    return runs[(len(runs) - 1) // 2] if runs else None


def timeline_pictures(name: str, result: WorkloadResult, out: Path) -> list[Path]:
    """``NAME.png`` (baseline above, then the other variants) for the first case, and
    ``NAME.VARIANT.trace.json`` per variant."""
    w = result.workload
    case = result.cases[0].name
    order = [w.baseline] + [v.key for v in w.variants if v.key != w.baseline]
    runs = [(key, representative(result, case, key)) for key in order]
    runs = [(key, run) for key, run in runs if run is not None]
    if not runs:
        return []
    paths = []
    for key, run in runs:
        trace = out / f"{name}.{key}.trace.json"
        run.timeline.to_chrome_trace(trace)
        paths.append(trace)
    labels = " | ".join(f"{key} {run.summary['latency']:.1f}s" for key, run in runs)
    title = f"{name} · {case} ({w.decoding})\ntop to bottom: {labels}"
    first, rest = runs[0][1].timeline, [run.timeline for _, run in runs[1:]]
    paths.append(first.plot(out / f"{name}.png", title=title, others=rest))
    return paths


def _relative_range(w: dict[str, Any]) -> list[float] | None:
    """Min–max over repeats of one repeat's partial / lazy latency (None without repeats)."""
    per = w.get("per_repeat") or {}
    lazy, partial = per.get("lazy") or [], per.get("partial") or []
    ratios = [p["latency"] / b["latency"] for b, p in zip(lazy, partial) if b.get("latency")]
    return value_range(ratios)


def summary_chart(doc: dict[str, Any], path: Path) -> Path | None:
    """Bars: lazy and partial latency per workload (relative to lazy, seconds printed),
    with the ideal marked; a second panel for KV reuse and the overhead ratio."""
    rows = [(name, w) for name, w in doc["workloads"].items()
            if isinstance(w, dict) and isinstance(w.get("lazy"), dict) and "latency" in w.get("partial", {})]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kv = doc["workloads"].get("kv_reuse")
    has_kv = isinstance(kv, dict) and "by_length" in kv
    fig, axes = plt.subplots(1, 2 if has_kv else 1, figsize=(14 if has_kv else 10, 5.2),
                             gridspec_kw={"width_ratios": [3, 1]} if has_kv else None, squeeze=False)
    ax = axes[0, 0]
    x = range(len(rows))
    lazy = [1.0 for _ in rows]
    partial = [w["partial"]["latency"] / w["lazy"]["latency"] for _, w in rows]
    ideal = [w["lazy"]["ideal"] / w["lazy"]["latency"] for _, w in rows]
    width = 0.38
    ax.bar([i - width / 2 for i in x], lazy, width, label="lazy", color="#8C8C8C")
    ax.bar([i + width / 2 for i in x], partial, width, label="partial", color="#4C72B0")
    ranges = [_relative_range(w) for _, w in rows]  # partial / lazy of each repeat alone
    shown = [(i + width / 2, partial[i], r) for i, r in zip(x, ranges) if r is not None]
    if shown:
        ax.errorbar([s[0] for s in shown], [s[1] for s in shown],
                    yerr=[[max(0.0, s[1] - s[2][0]) for s in shown], [max(0.0, s[2][1] - s[1]) for s in shown]],
                    fmt="none", ecolor="black", elinewidth=1, capsize=3, label="min–max over repeats", zorder=4)
    ax.scatter([i + width / 2 for i in x], ideal, marker="_", s=900, color="#C44E52", linewidths=2.5,
               label="ideal (pipelined bound)", zorder=3)
    for i, (_, w) in enumerate(rows):
        ax.text(i - width / 2, 1.01, f"{w['lazy']['latency']:.1f}s", ha="center", va="bottom", fontsize=7)
        ax.text(i + width / 2, partial[i] + 0.01, f"{w['partial']['latency']:.1f}s", ha="center", va="bottom",
                fontsize=7)
        red = w.get("reduction")
        if isinstance(red, float):
            ax.text(i, -0.1, f"{-red:+.0%}", ha="center", va="top", fontsize=8, color="#4C72B0")
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"{n.replace('_', chr(10))}\n({w.get('decoding')})" for n, w in rows], fontsize=8)
    ax.set_ylabel("latency relative to lazy")
    ax.set_ylim(-0.18, 1.3)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(loc="upper right", fontsize=8, ncol=4, frameon=False)
    m = doc["machine"]
    overhead = doc["workloads"].get("overhead")
    extra = (f" · overhead ratio {overhead['ratio']:.3f}" if isinstance(overhead, dict)
             and isinstance(overhead.get("ratio"), float) else "")
    ax.set_title(f"lazy vs partial (medians; latency change below each pair){extra}\n"
                 f"{m.get('model')} · {m.get('cpu')} · {m.get('torch_threads')} decode thread(s)", fontsize=9)
    if has_kv:
        ax2 = axes[0, 1]
        rows_kv = list(kv["by_length"].values())
        ax2.plot([r["context_tokens"] for r in rows_kv], [r["ratio"] for r in rows_kv], "o-", color="#55A868")
        for r in rows_kv:
            ax2.annotate(f"{r['ratio']:.3f}", (r["context_tokens"], r["ratio"]), textcoords="offset points",
                         xytext=(0, 6), ha="center", fontsize=7)
        ax2.set_xscale("log", base=2)
        ax2.set_xlabel("context tokens")
        ax2.set_ylabel("cached / full prefill time")
        ax2.set_ylim(0, max(0.05, max(r["ratio"] for r in rows_kv) * 1.4))
        ax2.set_title(f"KV reuse: resume after a {rows_kv[0]['appended_tokens']}-token tool result", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
