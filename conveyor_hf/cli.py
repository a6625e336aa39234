"""``conveyor-hf``: run a tool-using answer live, list tools, run the benchmarks.

    conveyor-hf run "Use Python to find the 30th Fibonacci number."
    conveyor-hf run --mode lazy --tools python,calculator --timeline t.png "…"
    conveyor-hf run --engine http://127.0.0.1:8000/v1 "…"   # decode on a vLLM/SGLang/TGI server
    conveyor-hf tools
    conveyor-hf bench --quick --json out.json
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Sequence, TextIO

from conveyor_hf.text import shorten

DEFAULT_PROMPT = (
    "Use Python to compute the sum of the squares of the integers from 1 to 100, "
    "then tell me the result."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conveyor-hf", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="answer a prompt, streaming text and tool outputs live")
    run.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help="the user message")
    _model_args(run)
    _engine_args(run)
    run.add_argument("--mode", choices=("partial", "lazy"), default="partial")
    run.add_argument("--tools", default="python", help="comma-separated tool names (see `conveyor-hf tools`)")
    run.add_argument("--max-new-tokens", type=int, default=300)
    run.add_argument("--max-tool-rounds", type=int, default=4)
    run.add_argument("--sample", action="store_true", help="sample (temperature 0.7) instead of greedy decoding")
    run.add_argument("--system", default=None, help="a system message to put before the prompt")
    run.add_argument("--timeline", default=None, metavar="PNG", help="save the timeline picture here")
    run.add_argument("--trace", default=None, metavar="JSON", help="save a Chrome trace (Perfetto) here")
    run.add_argument("--no-color", action="store_true")

    serve = sub.add_parser("serve", help="an OpenAI-compatible chat server that runs tools while the model decodes")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", default=None,
                       help="model folder, .gguf file or cached hub id, or 'default' (the embedded "
                            "SmolLM2-135M-Instruct); with --engine URL it names the tokenizer")
    serve.add_argument("--engine", default="local", metavar="local|URL",
                       help="local (continuous batching when available, else one request at a time), continuous, "
                            "generate, or an OpenAI-compatible server URL such as http://127.0.0.1:8001/v1")
    serve.add_argument("--engine-model", default=None, metavar="NAME",
                       help="the model name the --engine server serves (default: the only one it lists)")
    serve.add_argument("--api-key", default=None, help="API key for --engine URL (or set OPENAI_API_KEY)")
    serve.add_argument("--tools", default="python", help="comma-separated tool names (see `conveyor-hf tools`)")
    serve.add_argument("--mode", choices=("partial", "lazy"), default="partial")
    serve.add_argument("--max-concurrency", type=int, default=4, help="requests decoding at once")
    serve.add_argument("--max-queue", type=int, default=None,
                       help="requests waiting for a slot before 429 (default: twice --max-concurrency)")
    serve.add_argument("--kernel-pool", type=int, default=4, help="started Python kernels kept ready")
    serve.add_argument("--max-tokens", type=int, default=256, help="completion tokens when a request sets none")
    serve.add_argument("--max-tool-rounds", type=int, default=4)
    serve.add_argument("--served-model-name", default=None, help="the model id clients send (default: its name)")
    serve.add_argument("--threads", type=int, default=None, help="torch CPU threads for decoding")
    serve.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")

    sub.add_parser("tools", help="list the tools that can be named in --tools")

    sub.add_parser("bench", help="lazy vs partial benchmarks; `conveyor-hf bench --help` for options",
                   add_help=False)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after it belongs to the benchmark harness
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "serve":
        return _serve(args)
    return _list_tools()


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="model folder, .gguf file or cached hub id (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for decoding")
    parser.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda if available)")


def _engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", default=None, metavar="URL",
                        help="decode on an OpenAI-compatible server (vLLM, SGLang, TGI, transformers serve), "
                             "e.g. http://127.0.0.1:8000/v1; --model then names the tokenizer (default: embedded)")
    parser.add_argument("--engine-model", default=None, metavar="NAME",
                        help="the model name the server serves (default: the only one GET /v1/models lists)")
    parser.add_argument("--api-key", default=None, help="API key for --engine (or set OPENAI_API_KEY)")


def engine_from_args(args: argparse.Namespace):
    """``(engine or model, tokenizer)``: a RemoteEngine for ``--engine URL``, else the local model."""
    if not getattr(args, "engine", None):
        return load_from_args(args)
    import os

    from conveyor_hf.engines.remote import RemoteEngine
    from conveyor_hf.models import load_tokenizer

    api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
    name = args.engine_model
    if name is None:
        served = RemoteEngine.served_models(args.engine, api_key=api_key)
        if len(served) != 1:
            raise SystemExit(f"conveyor-hf: {args.engine} serves {served or 'no models'}; "
                             "name one with --engine-model")
        name = served[0]
    return RemoteEngine(args.engine, model=name, api_key=api_key), load_tokenizer(args.model, verbose=False)


def load_from_args(args: argparse.Namespace):
    """``(model, tokenizer)`` from ``--model``/``--threads``/``--device``."""
    import torch

    from conveyor_hf.models import load_default_model, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        return load_model(args.model, device=args.device)
    return load_default_model(device=args.device)


def _run(args: argparse.Namespace) -> int:
    from conveyor_hf.generator import ConveyorGenerator
    from conveyor_hf.tools.registry import make_tools

    try:
        tools = make_tools([name.strip() for name in args.tools.split(",") if name.strip()])
    except (KeyError, ValueError) as exc:
        print(f"conveyor-hf: {exc}", file=sys.stderr)
        return 2
    from conveyor_hf.engines.remote import RemoteEngineError

    try:
        model, tokenizer = engine_from_args(args)
    except RemoteEngineError as exc:
        print(f"conveyor-hf: {exc}", file=sys.stderr)
        return 2
    printer = _Printer(sys.stdout, sys.stderr, color=not args.no_color and sys.stdout.isatty())
    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    messages.append({"role": "user", "content": args.prompt})
    sampling = {"do_sample": True, "temperature": 0.7} if args.sample else {"do_sample": False}
    with ConveyorGenerator(model, tokenizer, tools=tools, mode=args.mode, max_tool_rounds=args.max_tool_rounds) as gen:
        print(f"[engine: {gen.engine.describe()}]", file=sys.stderr)
        if any(t.name in ("python", "calculator") for t in tools):
            from conveyor_hf.tools.sandbox import describe

            print(f"[{describe()}]", file=sys.stderr)
        try:
            out = gen.generate(messages, max_new_tokens=args.max_new_tokens, stream=printer, **sampling)
        except RemoteEngineError as exc:
            printer.done()
            print(f"conveyor-hf: {exc}", file=sys.stderr)
            return 2
    printer.done()
    if out.errors and out.errors[0]:
        print(f"conveyor-hf: the answer ended early: {out.errors[0]}", file=sys.stderr)
    summary = out.timeline.summary()
    print(
        f"\n[{args.mode}] latency {summary['latency']:.2f}s · decode {summary['decode']:.2f}s · "
        f"tool {summary['tool']:.2f}s · exposed tool {summary['exposed_tool']:.2f}s · "
        f"ideal {summary['ideal']:.2f}s · {summary['units']} units in {summary['rounds']} rounds",
        file=sys.stderr,
    )
    if args.timeline:
        print(f"timeline: {out.timeline.plot(args.timeline)}", file=sys.stderr)
    if args.trace:
        out.timeline.to_chrome_trace(args.trace)
        print(f"trace: {args.trace}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    try:
        from conveyor_hf.server import ServerSettings, serve
    except ImportError as exc:
        print(f"conveyor-hf serve: {exc}; install the server with: pip install 'conveyor_hf[serve]'", file=sys.stderr)
        return 2
    try:
        settings = ServerSettings(
            host=args.host, port=args.port, model=args.model, engine=args.engine, engine_model=args.engine_model,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), tools=args.tools.split(","), mode=args.mode,
            max_concurrency=args.max_concurrency, max_queue=args.max_queue, kernel_pool=args.kernel_pool,
            max_tokens=args.max_tokens, max_tool_rounds=args.max_tool_rounds,
            served_model_name=args.served_model_name, threads=args.threads, device=args.device,
        )
        serve(settings)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        print(f"conveyor-hf serve: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    return 0


class _Printer:
    """Streams model text to ``out`` and tool activity to ``err`` as it happens."""

    def __init__(self, out: TextIO, err: TextIO, *, color: bool) -> None:
        self.out, self.err, self.color = out, err, color
        self.lock = threading.Lock()  # unit events come from tool worker threads
        self.pending: list[str] = []  # unit notices wait for the current line to end
        self.at_line_start = True

    def __call__(self, event) -> None:
        with self.lock:
            if event.kind == "text":
                head, newline, tail = event.text.rpartition("\n")
                self._write(head + newline)
                if newline:
                    self._flush_notices()
                self._write(tail)
            elif event.kind == "unit" and event.record is not None:
                rec = event.record
                status = "error" if rec.error and not rec.skipped else ("skipped" if rec.skipped else "ok")
                first = (rec.error if status == "error" else rec.output).strip().splitlines()
                detail = f": {first[0][:70]}" if first else ""
                self.pending.append(self._dim(f"  ⚙ {event.tool} ran `{shorten(rec.unit.text, 40)}` "
                                              f"({rec.duration:.2f}s, {status}){detail}\n"))
            elif event.kind == "result":
                self._flush_notices()
                self._write(event.shown, self._cyan)

    def done(self) -> None:
        with self.lock:
            self._write("\n")
            self._flush_notices()

    def _write(self, text: str, style=None) -> None:
        if text:
            self.out.write(style(text) if style else text)
            self.out.flush()
            self.at_line_start = text.endswith("\n")

    def _flush_notices(self) -> None:
        if self.pending and not self.at_line_start:
            self._write("\n")
        for notice in self.pending:
            self.err.write(notice)
        self.err.flush()
        self.pending.clear()

    def _dim(self, text: str) -> str:
        return f"\033[2m{text}\033[0m" if self.color else text

    def _cyan(self, text: str) -> str:
        return f"\033[36m{text}\033[0m" if self.color else text


def _list_tools() -> int:
    from conveyor_hf.tools.registry import available_tools

    for name, target in sorted(available_tools().items()):
        print(f"{name:12s} {target}")
    return 0


def _bench(rest: Sequence[str]) -> int:
    try:
        from benchmarks.harness import main as bench_main
    except ImportError as exc:
        print(
            f"conveyor-hf bench: the benchmarks package is not importable ({exc}); "
            "run from a checkout of the repository (pip install -e .)",
            file=sys.stderr,
        )
        return 2
    return bench_main(list(rest))


if __name__ == "__main__":
    raise SystemExit(main())
