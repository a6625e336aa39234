"""``conveyor-hf bench``: lazy vs partial tool execution on real workloads, in one process.

Each workload answers its cases in every variant (lazy and partial at least), the
variants alternating, at least three repeats (five in ``--quick`` for a case that decodes
for only a few seconds); figures are medians, each printed with
its min–max over the repeats. Decoding uses one torch
thread by default (``--threads``), so on a 2-core machine decoding and tool work each
have a core. Prints a table, writes ``--json``, and draws a timeline picture and a
Chrome trace per workload plus a summary chart into ``--out``::

    conveyor-hf bench --quick                       # ~7 min on an idle 2-core machine
    conveyor-hf bench --json bench.json             # the full run (38 minutes measured on 2 cores)
    conveyor-hf bench --workloads codegen,search --repeats 5
    python -m benchmarks.harness --list

Workloads: see ``benchmarks/workloads`` (and ``--list``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import report  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    ABWorkload, BenchContext, Workload, WorkloadResult, available, create, registry,
)
from benchmarks.workloads.data import DataUnavailable  # noqa: E402


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="conveyor-hf bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one case per workload, 3-5 repeats, the workloads with something to overlap (~7 minutes)")
    parser.add_argument("--workloads", default=None,
                        help="comma-separated workloads to run (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--repeats", type=int, default=None,
                        help="repeats per case and variant (default: per workload)")
    parser.add_argument("--cases", type=int, default=None, help="at most this many cases per workload")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    parser.add_argument("--out", default="bench-out", metavar="DIR",
                        help="folder for timeline pictures, Chrome traces and the summary chart (default: bench-out)")
    parser.add_argument("--no-plots", action="store_true", help="skip pictures and traces")
    parser.add_argument("--model", default=None,
                        help="model folder, .gguf file or cached hub id (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for decoding (default 1: tools get the other cores)")
    parser.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda if available)")
    parser.add_argument("--engine", default=None, metavar="URL",
                        help="decode on an OpenAI-compatible server (vLLM, SGLang, TGI, transformers serve) at URL, "
                             "e.g. http://127.0.0.1:8000/v1; answers are decoded live (greedy), --model then names "
                             "the tokenizer; default workloads: " + ", ".join(ENGINE_WORKLOADS))
    parser.add_argument("--engine-model", default=None, metavar="NAME",
                        help="the model name the server serves (default: the only one it lists)")
    argv = list(argv)
    if argv[:1] == ["--"]:  # `conveyor-hf bench -- --quick`
        argv = argv[1:]
    return parser.parse_args(argv)


#: What ``--engine URL`` runs unless ``--workloads`` says otherwise.
ENGINE_WORKLOADS = ("codegen_live", "planning")


def selected(spec: str | None, quick: bool = False) -> list[str]:
    """Workload names from ``--workloads`` (in run order); KeyError names a bad one.

    Without ``--workloads``, a ``--quick`` run leaves out the workloads that set
    ``in_quick = False``; naming one runs it anyway.
    """
    names = available()
    if not spec:
        return [n for n in names if registry()[n].in_quick] if quick else names
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise KeyError(f"unknown workload(s) {', '.join(unknown)}; choose from: {', '.join(names)}")
    return [n for n in names if n in wanted]


def load_model(args: argparse.Namespace):
    """``(model, tokenizer)`` like ``conveyor-hf run``; sets the decode thread count first.

    This and :meth:`BenchContext.generator` are the two places that decide who decodes:
    another engine (e.g. a remote OpenAI-compatible server) is returned here in place of
    the model and the context is built with ``local_model=False``.
    """
    import torch

    from conveyor_hf.models import load_default_model, load_model as load_named

    torch.set_num_threads(max(1, args.threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran
        pass
    if args.engine:
        from conveyor_hf.cli import engine_from_args

        args.api_key = None
        return engine_from_args(args)
    if args.model:
        return load_named(args.model, device=args.device)
    return load_default_model(device=args.device)


def machine_info(model: Any, args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Where and how the figures were measured."""
    import torch
    import transformers

    device = str(getattr(model, "device", "cpu"))
    threads = torch.get_num_threads()
    name = getattr(model, "name_or_path", "") or ""
    if not args.model:
        from conveyor_hf.models import DEFAULT_MODEL_NAME

        name = f"{DEFAULT_MODEL_NAME} (embedded default, {Path(name).name})" if name else DEFAULT_MODEL_NAME
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "decode": f"main process, {threads} torch thread(s) on {device}",
        "tools": ("python: a Jupyter kernel child process; calculator: a sympy child process; search, plan, "
                  "sql, locate: worker threads of the main process (sharing the GIL with decoding); "
                  "no CPU pinning: the OS scheduler places them on the cores"),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "model": name,
        "dtype": str(getattr(model, "dtype", "")),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "command": "conveyor-hf bench " + " ".join(argv),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _Progress:
    """A tqdm bar on stderr (a plain counter when tqdm is missing)."""

    def __init__(self, total: int) -> None:
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=sys.stderr, desc="bench", unit="run", dynamic_ncols=True)
        except ImportError:
            self.bar = None
        self.done = 0
        self.total = total

    def __call__(self, label: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)
        else:
            print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_workloads(workloads: list[Workload], ctx: BenchContext) -> dict[str, Any]:
    """Measure each workload; a failing one is reported, never fatal to the rest."""
    results: dict[str, Any] = {}
    for workload in workloads:
        ctx.log(f"bench: {workload.name} — {workload.title}")
        if workload.needs_local_model and not ctx.local_model:
            results[workload.name] = {"skipped": f"{workload.local_model_reason}; not measurable on this engine"}
            continue
        if not ctx.can_replay and workload.decoding == "replay":
            workload.decoding = "live (the engine cannot replay)"  # replayed cases are decoded greedily instead
        try:
            results[workload.name] = workload.measure(ctx)
        except DataUnavailable as exc:
            results[workload.name] = {"skipped": str(exc)}
            ctx.log(f"bench: {workload.name} skipped: {exc}")
        except Exception as exc:  # one broken workload must not lose the others' figures
            results[workload.name] = {"error": f"{type(exc).__name__}: {exc}"}
            ctx.log(f"bench: {workload.name} failed:\n{traceback.format_exc()}")
        finally:
            workload.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.list:
        for name in available():
            workload = create(name)
            print(f"{name:18s} {workload.title}")
        return 0
    try:
        names = selected(args.workloads or (",".join(ENGINE_WORKLOADS) if args.engine else None), quick=args.quick)
    except KeyError as exc:
        print(f"conveyor-hf bench: {exc.args[0]}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    model, tokenizer = load_model(args)
    machine = machine_info(model, args, argv)
    ctx = BenchContext(model, tokenizer, quick=args.quick, repeats=args.repeats, max_cases=args.cases,
                       local_model=not args.engine)
    if args.engine:
        machine["engine"] = model.describe()
        machine["decode"] = f"remote engine {model.describe()}; answers decoded live (greedy)"
    _warm_model(ctx)
    workloads = [create(name) for name in names]
    planned = 0
    for workload in workloads:
        try:
            planned += workload.planned_runs(ctx)
        except DataUnavailable:
            pass
    progress = _Progress(planned)
    ctx.progress = progress
    try:
        results = run_workloads(workloads, ctx)
    finally:
        progress.close()
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["total_seconds"] = round(time.perf_counter() - started, 1)
    doc = report.document(machine, results)
    print(report.table(doc))
    if args.json:
        report.write_json(doc, args.json)
        print(f"\nfigures: {args.json}", file=sys.stderr)
    if not args.no_plots:
        paths = report.pictures(doc, results, Path(args.out))
        if paths:
            print(f"pictures and traces: {args.out}/ ({len(paths)} files)", file=sys.stderr)
    failed = [name for name, r in results.items() if isinstance(r, dict) and "error" in r]
    return 1 if failed else 0


def _warm_model(ctx: BenchContext) -> None:
    """One short untimed generate, so no workload pays the first forward's set-up."""
    ctx.generator().generate([{"role": "user", "content": "Hello"}], max_new_tokens=32, do_sample=False)


__all__ = ["main", "parse_args", "run_workloads", "selected", "ABWorkload", "WorkloadResult"]

if __name__ == "__main__":
    raise SystemExit(main())
