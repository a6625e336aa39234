"""Where decoding loses time while tools run beside it: per-step decode time and thread wake-ups.

Decodes the same fixed-length greedy answer (``model.generate`` with ``min_new_tokens =
max_new_tokens``, so every run has the same number of steps) while one background
*activity* runs: an idle kernel, a kernel that sleeps, prints, burns CPU or streams memory,
the calculator's child, offline search and plan threads, a ``ToolCall.finish`` waiting on a
slow unit (blocking on the call's state lock, and the polling loop it replaced), the
``codegen`` benchmark's data work in the kernel, and three references (a busy Python thread
in this process, a busy child process, and that data work in a plain child process). Every
activity is paired with a baseline decode (nothing running) right before or after it,
alternating, for several repeats; figures are the ratio of the mean step time to its
paired baseline (median and min-max over repeats).

While each decode runs it records, from ``/proc``, what every thread of this process (by
Python thread name, or the OS name of native threads such as libzmq's ``ZMQbg/IO/0``) and of
the tool's child processes did: CPU seconds per second and wake-ups per second (voluntary
context switches), and how much CPU other processes on the machine used meanwhile (the load
the figures were measured under). With ``--py-spy`` it also samples which thread holds the
GIL during one decode of each activity (``py-spy record --gil --nonblocking``).

    python -m benchmarks.contention                                  # all activities
    python -m benchmarks.contention --activities kernel_sleep,finish_polling --repeats 5
    python -m benchmarks.contention --py-spy --json contention.json

A diagnostic for issue 12, not part of ``conveyor-hf bench``: the figures say which
activity slows decoding and through which thread, so a fix can go where the time is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.standalone import script_parser, spread  # noqa: E402  (after the checkout is on sys.path)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# -- /proc accounting ---------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def task_counters(pid: int | str = "self") -> dict[int, dict[str, Any]]:
    """Per thread of ``pid``: OS name, CPU ticks (user + system), voluntary and involuntary
    context switches. Threads that ended meanwhile are simply missing."""
    out: dict[int, dict[str, Any]] = {}
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        stat, status = _read(f"{base}/{tid}/stat"), _read(f"{base}/{tid}/status")
        if stat is None or status is None:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        switches = {}
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                switches[key] = int(value)
        sched = (_read(f"{base}/{tid}/schedstat") or "").split()
        out[int(tid)] = {
            "comm": comm,
            # on-CPU and run-queue nanoseconds (schedstat); CPU ticks as a fallback
            "cpu_s": int(sched[0]) / 1e9 if sched else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            "queued_s": int(sched[1]) / 1e9 if len(sched) > 1 else 0.0,
            "voluntary": switches.get("voluntary_ctxt_switches", 0),
            "involuntary": switches.get("nonvoluntary_ctxt_switches", 0),
        }
    return out


def machine_busy_ticks() -> tuple[int, int]:
    """``(busy, total)`` jiffies of all CPUs since boot, from ``/proc/stat``."""
    text = _read("/proc/stat") or "cpu 0 0 0 0"
    values = [int(v) for v in text.splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def python_thread_names() -> dict[int, str]:
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


class Accounting:
    """What every thread of this process and of ``children`` did between ``start`` and
    ``stop``: CPU seconds per second and wake-ups (voluntary switches) per second."""

    def __init__(self, children: Callable[[], list[int]]) -> None:
        self.children = children
        self.decode_tid = threading.get_native_id()

    def start(self) -> None:
        self._names = python_thread_names()
        self._own = task_counters()
        self._kids = {pid: task_counters(pid) for pid in self.children()}
        self._machine = machine_busy_ticks()
        self._began = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._began
        own_after, names = task_counters(), {**self._names, **python_thread_names()}
        kids_after = {pid: task_counters(pid) for pid in self._kids}
        busy, total = machine_busy_ticks()
        threads: dict[str, dict[str, float]] = {}
        own_cpu = 0.0
        zero = {"cpu_s": 0.0, "queued_s": 0.0, "voluntary": 0, "involuntary": 0}

        def add(label: str, before: dict[str, Any] | None, after: dict[str, Any]) -> float:
            before = before or zero
            cpu = after["cpu_s"] - before["cpu_s"]
            row = threads.setdefault(label, {"threads": 0, "cpu_per_s": 0.0, "wakeups_per_s": 0.0,
                                             "preempted_per_s": 0.0})
            row["threads"] += 1
            row["cpu_per_s"] += cpu / elapsed
            row["wakeups_per_s"] += (after["voluntary"] - before["voluntary"]) / elapsed
            row["preempted_per_s"] += (after["involuntary"] - before["involuntary"]) / elapsed
            return cpu

        decode: dict[str, float] = {}
        for tid, after in own_after.items():
            if tid == self.decode_tid:
                label = "decode (main thread)"
                before = self._own.get(tid, zero)
                on_cpu, queued = after["cpu_s"] - before["cpu_s"], after["queued_s"] - before["queued_s"]
                # the rest of the wall time the thread slept: waiting for the GIL, a lock or I/O
                decode = {"on_cpu_s": on_cpu, "runqueue_s": queued, "sleeping_s": max(0.0, elapsed - on_cpu - queued),
                          "wakeups": after["voluntary"] - before["voluntary"],
                          "preempted": after["involuntary"] - before["involuntary"]}
            else:
                label = names.get(tid) or f"native: {after['comm']}"
            own_cpu += add(_generic(label), self._own.get(tid), after)
        for pid, after_tasks in kids_after.items():
            for tid, after in after_tasks.items():
                own_cpu += add(f"child {pid}: {after['comm']}", self._kids[pid].get(tid), after)
        machine_busy = (busy - self._machine[0]) / CLOCK_TICKS / elapsed
        cores = (total - self._machine[1]) / CLOCK_TICKS / elapsed  # jiffies count every CPU
        for row in threads.values():
            for key in ("cpu_per_s", "wakeups_per_s", "preempted_per_s"):
                row[key] = round(row[key], 3 if key == "cpu_per_s" else 1)
        return {
            "seconds": elapsed,
            "decode_thread": decode,
            "threads": dict(sorted(threads.items())),
            "machine_busy_cores": round(machine_busy, 2),
            "others_busy_cores": round(max(0.0, machine_busy - own_cpu / elapsed), 2),
            "cores": round(cores),
        }


def _generic(label: str) -> str:
    """Fold per-call thread names (``conveyor-search-3``, ``Thread-12 (run)``) into one row."""
    head, _, tail = label.rpartition("-")
    if head.startswith("conveyor-") and tail.isdigit():
        return f"{head}-N"
    if label.startswith("Thread-"):
        return "Thread-N " + label.split(" ", 1)[1] if " " in label else "Thread-N"
    return label


# -- decoding -----------------------------------------------------------------------------
class StepClock:
    """Forward-hook timestamps of one ``generate``: step times exclude the prefill."""

    def __init__(self, model: Any) -> None:
        self.stamps: list[float] = []
        self._handle = model.register_forward_hook(lambda module, args, output: self.stamps.append(
            time.perf_counter()))

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps[:-1], self.stamps[1:])]

    def close(self) -> None:
        self._handle.remove()


def decode(model: Any, inputs: dict[str, Any], tokens: int, pad: int | None) -> list[float]:
    """Seconds per decoding step of one greedy answer of exactly ``tokens`` tokens."""
    clock = StepClock(model)
    try:
        model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                       pad_token_id=pad)
    finally:
        clock.close()
    return clock.steps()


# -- activities ---------------------------------------------------------------------------
class Activity:
    """Background work beside decoding: ``start`` returns once it really runs."""

    name: ClassVar[str] = ""
    what: ClassVar[str] = ""

    def setup(self) -> None:
        """Untimed, once: start kernels or children."""

    def start(self) -> None:
        """Begin the background work; return when it is running."""

    def stop(self) -> None:
        """End it and wait until it has ended."""

    def children(self) -> list[int]:
        """Child process ids whose threads are accounted too."""
        return []

    def close(self) -> None:
        """Release what ``setup`` made."""


class Nothing(Activity):
    name = "none"
    what = "nothing beside decoding (the baseline)"


class _Background(Activity):
    """Runs ``body(stop_event)`` on a thread from ``start`` to ``stop``."""

    def start(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"activity-{self.name}", daemon=True)
        self._thread.start()
        self._running.wait(60)

    def _main(self) -> None:
        self.body(self._stop, self._running)

    def body(self, stop: threading.Event, running: threading.Event) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


class _Kernel(Activity):
    """A ``PythonTool`` kernel; ``loop`` is one statement run until a flag file appears."""

    loop: ClassVar[str] = ""
    setup_code: ClassVar[str] = "import os, time\n"
    #: Nice value given to every thread of the kernel while the activity runs (0: as started).
    nice: ClassVar[int] = 0
    #: Pin the kernel to the last CPU and the decoding thread to the first while it runs.
    pin: ClassVar[bool] = False

    def setup(self) -> None:
        from conveyor_hf.tools import PythonTool

        self.dir = tempfile.mkdtemp(prefix="conveyor-contention-")
        self.tool = PythonTool(timeout=600, cwd=self.dir)
        self.tool.warm_up()
        self.tool.run(self.setup_code)

    def children(self) -> list[int]:
        pid = self.tool.kernel_pid
        return [pid] if pid else []

    def start(self) -> None:
        if not self.loop:
            return
        began, ended = Path(self.dir, "began"), Path(self.dir, "stop")
        for flag in (began, ended):
            flag.unlink(missing_ok=True)
        code = f"open({str(began)!r}, 'w').close()\nwhile not os.path.exists({str(ended)!r}):\n" + "".join(
            f"    {line}\n" for line in self.loop.splitlines())
        self._thread = threading.Thread(target=self.tool.run, args=(code,), name=f"activity-{self.name}",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not began.exists() and time.monotonic() < deadline:  # set-up only, never during decode
            time.sleep(0.01)
        self._place(self.nice, self.pin)

    def stop(self) -> None:
        if not self.loop:
            return
        self._place(0, False)
        Path(self.dir, "stop").touch()
        self._thread.join(120)

    def _place(self, nice: int, pin: bool) -> None:
        """Set the kernel's nice value / CPU placement. Linux keeps both per thread, and a
        kernel runs in a session of its own (jupyter_client starts it with
        ``start_new_session``), so with autogroup scheduling its session's group nice
        (``/proc/PID/autogroup``) is what weighs it against the decoding process."""
        if not (self.nice or self.pin):
            return
        every = set(range(os.cpu_count() or 1))
        for pid in self.children():
            if self.nice:
                try:
                    Path(f"/proc/{pid}/autogroup").write_text(str(nice))
                except OSError:
                    pass
            for tid in task_counters(pid):
                try:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                    if self.pin:
                        os.sched_setaffinity(tid, {max(every)} if pin else every)
                except OSError:
                    pass
        if self.pin:
            os.sched_setaffinity(0, {min(every)} if pin else every)  # 0: the calling (decoding) thread

    def close(self) -> None:
        self.tool.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _kernel_pid(tool: Any) -> int | None:
    for value in vars(tool).values():
        pid = getattr(value, "pid", None)
        if isinstance(pid, int):
            return pid
    return None


class KernelIdle(_Kernel):
    name = "kernel_idle"
    what = "a warm PythonTool kernel, not running code (its client thread and heartbeat alive)"


class KernelSleep(_Kernel):
    name = "kernel_sleep"
    what = "the kernel runs time.sleep(0.005) in a loop (tool waits on I/O: no tool CPU)"
    loop = "time.sleep(0.005)"


class KernelPrint(_Kernel):
    name = "kernel_print"
    what = "the kernel prints a line every 2 ms (iopub stream messages to the client in this process)"
    loop = "print('x' * 60)\ntime.sleep(0.002)"


class KernelCPU(_Kernel):
    name = "kernel_cpu"
    what = "the kernel runs a pure-Python loop (one core of tool CPU, little memory traffic)"
    loop = "sum(range(20000))"


class KernelMemory(_Kernel):
    name = "kernel_memory"
    what = "the kernel copies a 256 MB numpy array in a loop (one core streaming memory)"
    setup_code = "import os, time\nimport numpy as np\n_a = np.ones(32 * 2**20)\n"
    loop = "_b = _a.copy()"


class KernelObjects(_Kernel):
    name = "kernel_objects"
    what = "the kernel builds and drops lists of 200k tuples (allocation-heavy Python, like codegen's data work)"
    loop = "_rows = [(i, i % 24, i * 0.5) for i in range(200_000)]"


class KernelCPUNice(KernelCPU):
    name = "kernel_cpu_nice"
    what = "kernel_cpu with the kernel at nice 10, threads and session autogroup (decoding wins a shared core)"
    nice = 10


class KernelObjectsNice(KernelObjects):
    name = "kernel_objects_nice"
    what = "kernel_objects with the kernel at nice 10 (threads and session autogroup)"
    nice = 10


class KernelObjectsPinned(KernelObjects):
    name = "kernel_objects_pin"
    what = "kernel_objects with the kernel pinned to the last CPU and decoding to the first"
    pin = True


class _CallStream(_Background):
    """Calls of ``tool`` as partial mode makes them: one unit of ``text`` fed every
    ``interval`` seconds (as its line is decoded), then ``finish()``; call after call."""

    text: ClassVar[str] = ""
    interval: ClassVar[float] = 0.1

    def make_tool(self) -> Any:
        raise NotImplementedError

    def setup(self) -> None:
        self.tool = self.make_tool()
        self.tool.warm_up()
        self.tool.run(self.text)

    def body(self, stop: threading.Event, running: threading.Event) -> None:
        running.set()
        while not stop.is_set():
            parser = self.tool.make_parser()
            call = self.tool.open_call(early=True)
            for unit in parser.feed(self.text) + parser.close():
                call.feed(unit)
                if stop.wait(self.interval):
                    break
            call.finish()

    def children(self) -> list[int]:
        pid = _kernel_pid(self.tool)
        return [pid] if pid else []

    def close(self) -> None:
        self.tool.close()


class Calculator(_CallStream):
    name = "calculator"
    what = "CalculatorTool calls, one big-integer expression every 50 ms (sympy child process)"
    text = "factorial(3000) / factorial(2990)\n2**30000 % 12345\n(1 - 20/100) / (1 + 35/100)\n"
    interval = 0.05

    def make_tool(self) -> Any:
        from conveyor_hf.tools.calculator import CalculatorTool

        return CalculatorTool(time_limit=10)


class Search(_CallStream):
    name = "search"
    what = "SearchTool calls on the offline corpus (0.8 s emulated latency), one query every 0.3 s"
    text = "Mariana Trench\nMount Everest\nSahara\nAmazon River\n"
    interval = 0.3

    def make_tool(self) -> Any:
        from conveyor_hf.tools.search import SearchTool
        from conveyor_hf.tools.search_offline import OfflineSearchBackend

        self.backend = OfflineSearchBackend(latency=0.8)
        return SearchTool(backend=self.backend, max_results=1)

    def close(self) -> None:
        super().close()
        self.backend.close()


class Plan(Search):
    name = "plan"
    what = "PlanTool calls: 4 search tasks (0.8 s emulated latency) and join(), one line every 0.3 s"
    text = ('$1 = search("Mariana Trench")\n$2 = search("Mount Everest")\n$3 = search("Sahara")\n'
            '$4 = search("Amazon River")\njoin()\n')

    def make_tool(self) -> Any:
        from conveyor_hf.tools.plan import PlanTool

        return PlanTool(tools=[super().make_tool()])


class _SlowUnitCalls(_Background):
    """A thread that keeps one ``ToolCall`` of a 2 s unit open and waits in ``finish()``."""

    call_class: ClassVar[Any] = None

    def setup(self) -> None:
        from conveyor_hf.tools.scripted import ScriptedTool

        self.tool = ScriptedTool("slow", delay=2.0)

    def body(self, stop: threading.Event, running: threading.Event) -> None:
        from parsers.unit import Unit

        running.set()
        while not stop.is_set():
            call = self.call_class(self.tool)
            call.feed(Unit(text="unit\n"))
            call.finish()


class FinishBlocking(_SlowUnitCalls):
    name = "finish_blocking"
    what = "ToolCall.finish() waiting for a 2 s unit (blocks on the call's state lock)"

    @property
    def call_class(self):
        from conveyor_hf.tools.base import ToolCall

        return ToolCall


class FinishPolling(_SlowUnitCalls):
    name = "finish_polling"
    what = "the same wait with the polling loop ToolCall.finish() used before (sleeps of 5-50 ms)"

    @property
    def call_class(self):
        return polling_call_class()


def polling_call_class() -> type:
    """A ``ToolCall`` whose ``finish`` polls as it did before (for comparison only)."""
    from conveyor_hf.tools.base import ToolCall

    class PollingToolCall(ToolCall):
        def _wait_all(self, limit: float) -> None:
            poll = 0.005
            while True:
                now = time.perf_counter()
                with self._lock:
                    waiting = [r for r in self.records if r.end is None]
                    if not waiting:
                        return
                    for record in waiting:
                        if record.start is not None and now - record.start > limit:
                            self._abandon(now, limit)
                            return
                    if not self._warm_done.is_set() and now - self.opened > limit:
                        self._abandon(now, limit)
                        return
                time.sleep(poll)
                poll = min(poll * 1.5, 0.05)

    return PollingToolCall


class GilHog(_Background):
    name = "ref_gil_thread"
    what = "reference: a pure-Python busy loop on a thread of this process (full GIL contention)"

    def body(self, stop: threading.Event, running: threading.Event) -> None:
        running.set()
        while not stop.is_set():
            sum(range(1000))


class CpuHog(Activity):
    name = "ref_cpu_process"
    what = "reference: a busy child process (CPU contention, no GIL)"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])

    def children(self) -> list[int]:
        proc = getattr(self, "proc", None)
        return [proc.pid] if proc is not None and proc.poll() is None else []

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def codegen_work() -> str:
    """The ``codegen`` benchmark's data_pipeline program without its sleeps: the tool work
    that ran beside decoding when the benchmark measured partial decode slower than lazy."""
    from benchmarks.workloads.codegen import DATA_PIPELINE

    return "".join(line + "\n" for line in DATA_PIPELINE.splitlines() if not line.startswith("time.sleep"))


class KernelCodegen(_Kernel):
    name = "kernel_codegen"
    what = "the kernel runs codegen's data_pipeline program (sleeps removed) in a loop, at nice 10 as PythonTool does"
    nice = 10

    @property
    def loop(self) -> str:  # type: ignore[override]
        return codegen_work()


class CodegenHog(CpuHog):
    name = "ref_codegen_process"
    what = ("reference: the same program in a plain child process at nice 10 (no kernel, no conveyor_hf): "
            "what the machine's shared caches, memory and disk cost decoding")

    def start(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="conveyor-contention-")
        body = "".join(f"    {line}\n" for line in codegen_work().splitlines())
        self.proc = subprocess.Popen([sys.executable, "-c", f"import os\nos.nice(10)\nwhile True:\n{body}"],
                                     cwd=self.dir, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


ACTIVITIES: tuple[type[Activity], ...] = (
    KernelIdle, KernelSleep, KernelPrint, KernelCPU, KernelCPUNice, KernelMemory, KernelObjects, KernelObjectsNice,
    KernelObjectsPinned, Calculator, Search, Plan, FinishBlocking, FinishPolling, GilHog, CpuHog, KernelCodegen,
    CodegenHog,
)


# -- py-spy ---------------------------------------------------------------------------------
def gil_sampler(rate: int) -> subprocess.Popen | None:
    """``py-spy record --gil`` on this process until stopped (None if py-spy is missing)."""
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    out = tempfile.NamedTemporaryFile(prefix="conveyor-gil-", suffix=".txt", delete=False)
    out.close()
    proc = subprocess.Popen(
        [exe, "record", "--pid", str(os.getpid()), "--nonblocking", "--gil", "--threads", "--rate", str(rate),
         "--format", "raw", "--output", out.name],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    proc.output = out.name  # type: ignore[attr-defined]
    time.sleep(0.5)  # attach before decoding starts
    return proc


def gil_shares(proc: subprocess.Popen) -> dict[str, Any]:
    """Stop the sampler; share of GIL-holding samples per thread and the top frames."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    path = proc.output  # type: ignore[attr-defined]
    counts: dict[str, int] = {}
    frames: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        thread, _, rest = stack.partition(";")
        label = _generic(thread.split(":", 1)[1].strip() if ":" in thread else thread)
        counts[label] = counts.get(label, 0) + int(count)
        leaf = rest.rsplit(";", 1)[-1] if rest else "?"
        key = f"{label} :: {leaf}"
        frames[key] = frames.get(key, 0) + int(count)
    os.unlink(path)
    total = sum(counts.values()) or 1
    return {
        "samples": sum(counts.values()),
        "share_by_thread": {k: round(v / total, 3) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])},
        "top_frames": {k: v for k, v in sorted(frames.items(), key=lambda kv: -kv[1])[:8]},
    }


# -- the run --------------------------------------------------------------------------------
def measure(model: Any, tokenizer: Any, activities: Sequence[Activity], *, tokens: int, repeats: int,
            py_spy: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Every activity, paired with a baseline decode, ``repeats`` times, alternating."""
    messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    pad = tokenizer.eos_token_id
    decode(model, inputs, 8, pad)  # warm, untimed
    nothing = Nothing()
    rows: dict[str, dict[str, Any]] = {a.name: {"what": a.what, "runs": []} for a in activities}
    for activity in activities:
        log(f"contention: set up {activity.name}")
        activity.setup()
    try:
        for repeat in range(repeats):
            gil = py_spy and repeat == repeats - 1
            for index, activity in enumerate(activities):
                order = (nothing, activity) if (repeat + index) % 2 == 0 else (activity, nothing)
                pair = {side.name: decode_beside(side, model, inputs, tokens, pad, gil=gil) for side in order}
                run = paired_figures(repeat, base=pair["none"], busy=pair[activity.name])
                rows[activity.name]["runs"].append(run)
                log(f"contention: repeat {repeat + 1}/{repeats} {activity.name}: {run['ratio']:.3f}x "
                    f"({run['ms']:.1f} vs {run['baseline_ms']:.1f}"
                    f" ms/step, others used {run['usage']['others_busy_cores']:.2f} cores)")
    finally:
        for activity in activities:
            try:
                activity.close()
            except Exception as exc:  # closing is best effort; report and go on
                log(f"contention: closing {activity.name} failed: {exc}")
    for row in rows.values():
        _summarise(row)
    return rows


def decode_beside(side: Activity, model: Any, inputs: dict[str, Any], tokens: int, pad: int | None, *,
                  gil: bool) -> dict[str, Any]:
    """One measured decode while ``side`` runs: its step times, what every thread did meanwhile
    (:class:`Accounting`) and, with ``gil``, who held the GIL (py-spy)."""
    side.start()
    sampler = gil_sampler(100) if gil else None
    accounting = Accounting(side.children)
    accounting.start()
    steps = decode(model, inputs, tokens, pad)
    usage = accounting.stop()
    shares = gil_shares(sampler) if sampler is not None else None
    side.stop()
    return {"steps": steps, "usage": usage, "gil": shares}


def paired_figures(repeat: int, *, base: dict[str, Any], busy: dict[str, Any]) -> dict[str, Any]:
    """The figures of one repeat of an activity (``busy``) against its paired baseline decode."""
    mean, baseline_mean = statistics.fmean(busy["steps"]), statistics.fmean(base["steps"])
    return {
        "repeat": repeat, "ratio": mean / baseline_mean, "baseline_ms": 1000 * baseline_mean, "ms": 1000 * mean,
        "split_ms": _split(busy), "baseline_split_ms": _split(base),
        "median_ms": 1000 * statistics.median(busy["steps"]),
        "p95_ms": 1000 * _quantile(busy["steps"], 0.95),
        "usage": busy["usage"], "baseline_usage": base["usage"], "gil": busy["gil"],
        "baseline_gil": base["gil"],
    }


def _summarise(row: dict[str, Any]) -> None:
    """Add to an activity's ``row`` the figures over its repeats (ratio spread, mean threads, …)."""
    runs = row["runs"]
    ratios = spread([r["ratio"] for r in runs])
    row["ratio_median"], row["ratio_min"], row["ratio_max"] = ratios["median"], ratios["min"], ratios["max"]
    row["threads"] = _mean_threads([r["usage"] for r in runs])
    row["baseline_threads"] = _mean_threads([r["baseline_usage"] for r in runs])
    row["others_busy_cores"] = [r["usage"]["others_busy_cores"] for r in runs]
    row["gil"] = next((r["gil"] for r in runs if r["gil"]), None)
    for key in ("split_ms", "baseline_split_ms"):
        row[key] = {part: round(statistics.median(r[key][part] for r in runs), 2)
                    for part in ("on_cpu", "runqueue", "sleeping")}


def _split(side: dict[str, Any]) -> dict[str, float]:
    """The decode thread's wall time per step: on a CPU, waiting for one (run queue), asleep."""
    thread = side["usage"]["decode_thread"]
    steps = max(1, len(side["steps"]) + 1)  # the prefill ran inside the accounted window too
    return {key.removesuffix("_s"): round(1000 * thread[key] / steps, 2)
            for key in ("on_cpu_s", "runqueue_s", "sleeping_s")}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _mean_threads(usages: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per thread label, the mean over runs of CPU/s and wake-ups/s."""
    labels = sorted({label for u in usages for label in u["threads"]})
    out = {}
    for label in labels:
        rows = [u["threads"].get(label) for u in usages]
        rows = [r for r in rows if r is not None]
        out[label] = {key: round(statistics.fmean(r[key] for r in rows), 3 if key == "cpu_per_s" else 1)
                      for key in ("cpu_per_s", "wakeups_per_s", "preempted_per_s")}
        out[label]["threads"] = max(r["threads"] for r in rows)
    return out


def table(rows: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        f"decode: {machine['tokens']} tokens per run, {machine['torch_threads']} torch thread(s); "
        f"{machine['repeats']} repeats, each activity paired with a baseline decode, alternating",
        f"load average at start {machine['load_average_at_start']}, at end {machine['load_average_at_end']}",
        "",
        f"{'activity':18s} {'decode step vs baseline':>25s} {'ms/step':>14s} {'others cores':>13s}  decode thread "
        "per step, ms: on CPU / run queue / asleep (vs baseline)",
    ]
    for name, row in rows.items():
        runs = row["runs"]
        ms = statistics.median(r["ms"] for r in runs)
        base = statistics.median(r["baseline_ms"] for r in runs)
        others = row["others_busy_cores"]
        busy = sorted(row["threads"].items(), key=lambda kv: -(kv[1]["cpu_per_s"] + kv[1]["wakeups_per_s"] / 1e4))
        shown = ", ".join(f"{label} {t['cpu_per_s']:.2f}/{t['wakeups_per_s']:.0f}" for label, t in busy[:5])
        split, split0 = row["split_ms"], row["baseline_split_ms"]
        lines.append(
            f"{name:18s} {row['ratio_median']:8.3f}x ({row['ratio_min']:.3f}-{row['ratio_max']:.3f}) "
            f"{ms:6.1f}/{base:<6.1f} {min(others):5.2f}-{max(others):<5.2f}  "
            f"{split['on_cpu']:5.1f}/{split['runqueue']:4.1f}/{split['sleeping']:4.1f} "
            f"(vs {split0['on_cpu']:.1f}/{split0['runqueue']:.1f}/{split0['sleeping']:.1f})")
        lines.append(f"{'':18s} threads (CPU s/s / wake-ups/s): {shown}")
        if row.get("gil"):
            gil = row["gil"]["share_by_thread"]
            lines.append(f"{'':18s} GIL held (py-spy, {row['gil']['samples']} samples): "
                         + ", ".join(f"{k} {v:.0%}" for k, v in list(gil.items())[:4]))
    lines.append("")
    lines.append("what each activity is:")
    lines += [f"  {name:18s} {row['what']}" for name, row in rows.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = script_parser(__doc__, prog="python -m benchmarks.contention")
    parser.add_argument("--activities", default=None,
                        help="comma-separated activities (default: all): " + ", ".join(a.name for a in ACTIVITIES))
    parser.add_argument("--tokens", type=int, default=96, help="decoding steps per run (default 96)")
    parser.add_argument("--repeats", type=int, default=3, help="pairs per activity (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for decoding (default 1)")
    parser.add_argument("--py-spy", action="store_true", help="also sample the GIL holder with py-spy")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every figure here")
    args = parser.parse_args(argv)
    by_name = {a.name: a for a in ACTIVITIES}
    wanted = [w.strip() for w in args.activities.split(",")] if args.activities else list(by_name)
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        print(f"unknown activities {unknown}; choose from {', '.join(by_name)}", file=sys.stderr)
        return 2
    if args.tokens < 8 or args.repeats < 1:
        print(f"--tokens must be >= 8 and --repeats >= 1 (got {args.tokens}, {args.repeats})", file=sys.stderr)
        return 2
    import torch

    from conveyor_hf.models import load_default_model

    torch.set_num_threads(max(1, args.threads))
    model, tokenizer = load_default_model()
    machine = {"tokens": args.tokens, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
               "cores": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    started = time.perf_counter()
    rows = measure(model, tokenizer, [by_name[w]() for w in wanted], tokens=args.tokens, repeats=args.repeats,
                   py_spy=args.py_spy, log=lambda m: print(m, file=sys.stderr, flush=True))
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["seconds"] = round(time.perf_counter() - started, 1)
    print(table(rows, machine))
    if args.json:
        for row in rows.values():
            for run in row["runs"]:
                run.pop("steps", None)
        Path(args.json).write_text(json.dumps({"machine": machine, "activities": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
