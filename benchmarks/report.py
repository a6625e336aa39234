"""From measurements to figures: the JSON document, the console table, the pictures.

Figures of an A/B workload (``lazy`` vs ``partial``): for every case the **median** of
each metric over its repeats, then the sum over the workload's cases (the latency of
answering the whole case set once). From those sums:

- ``reduction = 1 - partial/lazy``, ``speedup = lazy/partial``;
- ``ideal_reduction = 1 - ideal/lazy``, with ``ideal`` the ``Timeline.summary()["ideal"]``
  of the lazy runs (measured decode and tool times, tools uncontended);
- ``efficiency = reduction / ideal_reduction`` (``None`` when the ideal reduction is
  under 2 %: nothing could be overlapped, and the ratio would be noise).

Targets (measured here, never asserted by tests) are checked and printed plainly, with
the measured causes when one is missed.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable

from benchmarks.workloads import WorkloadResult

METRICS = ("latency", "decode", "tool", "exposed_tool", "ideal", "wait", "new_tokens")
#: Below this ideal reduction there is nothing to overlap: efficiency is reported as None.
MIN_IDEAL_REDUCTION = 0.02


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
    }


def _public(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def figures(result: WorkloadResult) -> dict[str, Any]:
    """The JSON entry of an A/B workload (see the module docstring)."""
    w = result.workload
    keys = [v.key for v in w.variants]
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
    if w.baseline != "lazy" or w.contender != "partial":
        out["compares"] = f"{w.baseline} vs {w.contender}"
    for json_key, variant in w.extra_baselines.items():
        other = totals[variant]
        out[json_key] = {"lazy": _public(other), "label": out["labels"][variant],
                         **{k: _round(v) for k, v in _compare(other, cont, other["ideal"]).items()}}
    for json_key, variant in w.extra_contenders.items():
        other = totals[variant]
        out[json_key] = {**_public(other), "label": out["labels"][variant],
                         **{k: _round(v) for k, v in _compare(base, other, base["ideal"]).items()}}
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


def _codegen_why(doc: dict[str, Any]) -> list[str]:
    w = doc["workloads"]["codegen"]
    lazy, partial = w["lazy"], w["partial"]
    why = []
    if (w.get("ideal_reduction") or 0) < 0.40:
        why.append(f"the workload's own bound is ideal_reduction {w['ideal_reduction']:.0%}: tool time is "
                   f"{lazy['tool'] / lazy['decode']:.2f}x decode time, and no schedule can hide more than the "
                   "shorter of the two")
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
           f"median of the paired run ratios: {_short(w.get('paired_ratio_median'))}"]
    hook = w.get("hook_ms_per_step")
    if isinstance(hook, float):
        why.append(f"the per-step hook (detokenize + call detection) itself takes {hook:.3f} ms per step; "
                   "the rest of the difference is run-to-run noise on this shared machine unless it repeats")
    return why


def _kv_why(doc: dict[str, Any]) -> list[str]:
    w = doc["workloads"]["kv_reuse"]
    return [f"cached prefill of {row['appended_tokens']} tokens on {row['context_tokens']}: "
            f"{row['cached_ms']:.1f} ms vs {row['full_ms']:.1f} ms full" for row in w["by_length"].values()]


#: workload → (description, value getter, test, diagnosis when missed)
TARGETS: dict[str, tuple[str, Callable[[dict], Any], Callable[[Any], bool], Callable[[dict], list[str]]]] = {
    "codegen": ("reduction >= 40% and efficiency >= 0.95",
                lambda d: (_get(d, "codegen", "reduction"), _get(d, "codegen", "efficiency")),
                lambda v: v[0] is not None and v[0] >= 0.40 and v[1] is not None and v[1] >= 0.95,
                _codegen_why),
    "planning": ("lazy (sequential) / partial >= 2x",
                 lambda d: _get(d, "planning", "speedup"),
                 lambda v: v is not None and v >= 2.0,
                 _planning_why),
    "codegen_abort": ("reduction (on_error='abort' vs lazy) >= 55%",
                      lambda d: _get(d, "codegen_abort", "reduction"),
                      lambda v: v is not None and v >= 0.55,
                      lambda d: []),
    "overhead": ("ConveyorGenerator / model.generate <= 1.01",
                 lambda d: _get(d, "overhead", "ratio"),
                 lambda v: v is not None and v <= 1.01,
                 _overhead_why),
    "kv_reuse": ("cached / full prefill well below 1 on long contexts (<= 0.25 at the longest)",
                 lambda d: _get(d, "kv_reuse", "ratio"),
                 lambda v: v is not None and v <= 0.25,
                 _kv_why),
}


def check_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for name, (text, value_of, test, why) in TARGETS.items():
        entry = doc["workloads"].get(name)
        if not isinstance(entry, dict) or "error" in entry or "skipped" in entry:
            continue
        value = value_of(doc)
        met = bool(test(value))
        checks.append({"workload": name, "target": text, "value": value, "met": met,
                       "why": [] if met else why(doc)})
    return checks


# -- the document --------------------------------------------------------------------------
def document(machine: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """``{"machine", "workloads", "targets"}``: everything ``--json`` writes."""
    workloads = {}
    for name, result in results.items():
        workloads[name] = figures(result) if isinstance(result, WorkloadResult) else result
    doc = {"machine": machine, "workloads": workloads}
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


def table(doc: dict[str, Any]) -> str:
    """The figures as text: one row per comparison, then overhead, KV reuse, targets."""
    m = doc["machine"]
    lines = [
        f"machine: {m.get('cpu')} · {m.get('cores')} cores · decode {m.get('torch_threads')} torch thread(s) on "
        f"{m.get('device')} · {m.get('model')}",
        f"torch {m.get('torch')} · transformers {m.get('transformers')} · {m.get('date')}"
        + (f" · load average at start {m['load_average_at_start']}" if "load_average_at_start" in m else ""),
        f"tools: {m.get('tools')}",
        "figures: per case the median over repeats, summed over the workload's cases (seconds)",
        "",
        f"{'workload':24s} {'dec.':6s} {'cases':>5s} {'lazy':>7s} {'partial':>7s} {'reduct':>7s} {'ideal':>7s} "
        f"{'effic':>6s} {'speedup':>7s} {'exposed L/P':>12s} {'decode L/P':>12s} {'tool L/P':>11s} {'units':>5s}",
    ]
    notes = []
    for name, w in doc["workloads"].items():
        if not isinstance(w, dict):
            continue
        if "skipped" in w or "error" in w:
            lines.append(f"{name:24s} {'SKIPPED: ' + w['skipped'] if 'skipped' in w else 'ERROR: ' + w['error']}")
            continue
        if "lazy" not in w or "partial" not in w or "latency" not in w.get("partial", {}):
            continue
        lines.append(_row(name, w, w["lazy"], w["partial"], w))
        for key, extra in w.items():
            if isinstance(extra, dict) and key.startswith("vs_"):
                lines.append(_row(f"  {key}", w, extra["lazy"], w["partial"], extra))
            elif isinstance(extra, dict) and key in ("partial_continue",):
                lines.append(_row(f"  {key}", w, w["lazy"], extra, extra))
        if w.get("emulated_latency_s"):
            notes.append(f"{name}: search latency EMULATED ({w['emulated_latency_s']} s per query, offline corpus)")
        if w.get("texts_match") is False:
            notes.append(f"{name}: WARNING lazy and partial texts differ")
    overhead = doc["workloads"].get("overhead")
    if isinstance(overhead, dict) and "ratio" in overhead:
        lines.append("")
        lines.append(f"overhead (live, no tool call): ConveyorGenerator / model.generate = "
                     f"{_num(overhead['ratio'], '.4f')} ({_num(overhead['conveyor']['latency'], '.2f')}s vs "
                     f"{_num(overhead['plain']['latency'], '.2f')}s, "
                     f"{overhead['new_tokens']} tokens, {_num(overhead['overhead_ms_per_token'], '+.2f')} ms/token; "
                     f"hook {_num(overhead.get('hook_ms_per_step'), '.3f')} ms/step; "
                     f"identical tokens: {overhead.get('identical_tokens')})")
    kv = doc["workloads"].get("kv_reuse")
    if isinstance(kv, dict) and "by_length" in kv:
        lines.append("")
        parts = [f"{row['context_tokens']}: {row['ratio']:.3f} ({row['cached_ms']:.0f}/{row['full_ms']:.0f} ms)"
                 for row in kv["by_length"].values()]
        lines.append(f"kv_reuse (cached / full prefill of {next(iter(kv['by_length'].values()))['appended_tokens']} "
                     f"appended tokens, by context length): " + " · ".join(parts))
        lines.append(f"  generator's prefill per round in a one-call answer: {kv.get('generator_prefill_tokens')}")
    if notes:
        lines.append("")
        lines += notes
    if doc.get("targets"):
        lines.append("")
        lines.append("targets:")
        for t in doc["targets"]:
            value = t["value"]
            shown = ", ".join(_short(v) for v in value) if isinstance(value, (list, tuple)) else _short(value)
            lines.append(f"  {'MET   ' if t['met'] else 'MISSED'} {t['workload']}: {t['target']} (measured {shown})")
            for reason in t["why"]:
                lines.append(f"         why: {reason}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _row(name: str, w: dict[str, Any], lazy: dict[str, Any], partial: dict[str, Any], cmp: dict[str, Any]) -> str:
    return (
        f"{name:24s} {w.get('decoding', ''):6s} {len(w.get('cases', [])):5d} {lazy['latency']:7.2f} "
        f"{partial['latency']:7.2f} {_pct(cmp.get('reduction'))} {_pct(cmp.get('ideal_reduction'))} "
        f"{_num(cmp.get('efficiency'))} {_num(cmp.get('speedup'), '7.2f')} "
        f"{lazy['exposed_tool']:5.2f}/{partial['exposed_tool']:<6.2f} {lazy['decode']:5.1f}/{partial['decode']:<6.1f} "
        f"{lazy['tool']:5.1f}/{partial['tool']:<5.1f} {w.get('units', 0):5d}"
    )


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
    ax.legend(loc="upper right", fontsize=8, ncol=3, frameon=False)
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
