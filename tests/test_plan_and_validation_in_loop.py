"""Plans and validation inside the tool loop: work starts while the call is decoded.

Orderings are made certain with event gates (see ``gates.py``): decoding waits at a
chosen point until the tool has signalled, so no test depends on how fast anything runs.
"""

from conveyor_hf import ConveyorGenerator
from conveyor_hf.tools import LocationLookupTool
from conveyor_hf.tools.plan import PlanTool
from conveyor_hf.tools.scripted import ScriptedTool
from gates import DecodeGate, GatedTool, Signals, unit_end_signals

ASK = [{"role": "user", "content": "compare them"}]
MARIANA, PUERTO_RICO = "Mariana Trench", "Puerto Rico Trench"


def respond(query: str) -> str:
    return f"{query} is 100"


PLAN = (
    "```plan\n"
    f'$1 = lookup("{MARIANA}")\n'
    f'$2 = lookup("{PUERTO_RICO}")\n'
    "Thought: both depths are needed before comparing, so the third task waits for them.\n"
    '$3 = lookup("$1 vs $2")\n'
    "join()\n```\nDone."
)


def test_plan_tasks_overlap_each_other_and_decoding_and_respect_dependencies(tiny_model, tokenizer):
    signals = Signals()
    # $1 and $2 can only end once both have started; decoding waits in the Thought line
    # (before the plan closes) until both have started.
    lookup = GatedTool("lookup", respond=respond, max_concurrency=4, signals=signals,
                       hold={MARIANA: [f"started {PUERTO_RICO}"], PUERTO_RICO: [f"started {MARIANA}"]})
    gate = DecodeGate(tokenizer, "Thought:", signals, f"started {MARIANA}", f"started {PUERTO_RICO}")
    plan = PlanTool(tools=[lookup], lazy_sequential=True)
    with ConveyorGenerator(tiny_model, tokenizer, tools=[plan]) as gen:
        out = gen.generate(ASK, replay=[PLAN], max_new_tokens=300, logits_processor=[gate])
    assert gate.reached and not signals.missed
    [call] = out.tool_calls
    tasks = {u.unit.key: u for u in call.units if u.unit.key in ("$1", "$2", "$3")}
    one, two, three = tasks["$1"], tasks["$2"], tasks["$3"]
    assert max(one.start, two.start) < min(one.end, two.end)  # independent tasks overlap
    assert one.start < call.closed and two.start < call.closed  # ... while the plan is decoded
    assert three.start >= max(one.end, two.end)  # the dependent task waits for both
    assert f"{MARIANA} is 100 vs {PUERTO_RICO} is 100" in three.output
    assert out.text.endswith("Done.")
    summary = out.timeline.summary()
    assert summary["ideal"] <= summary["latency"]


def test_lazy_sequential_plan_runs_after_decoding_one_task_at_a_time(tiny_model, tokenizer):
    # Each task takes a little while, so tasks run at the same time would overlap in the records.
    plan = PlanTool(tools=[ScriptedTool("lookup", respond=respond, delay=0.05, max_concurrency=4)],
                    lazy_sequential=True)
    with ConveyorGenerator(tiny_model, tokenizer, tools=[plan], mode="lazy") as gen:
        out = gen.generate(ASK, replay=[PLAN], max_new_tokens=300)
    [call] = out.tool_calls
    ran = sorted((u for u in call.units if u.duration > 0), key=lambda u: u.start)
    assert len(ran) == 3
    assert all(u.start >= call.closed for u in ran)
    assert all(a.end <= b.start for a, b in zip(ran, ran[1:]))


def test_invalid_argument_is_rejected_before_the_call_is_fully_written(tiny_model, tokenizer):
    script = ('<locate>{"location": "Austin, Texas", "max_results": 2, "note": "'
              + "this call goes on for a while after the bad location " * 3 + '"}</locate>Let me fix it.')
    signals = Signals()
    # Decoding waits inside the note (the call is still open) until "location" has ended.
    gate = DecodeGate(tokenizer, "after the bad location", signals, "ended location")
    with ConveyorGenerator(tiny_model, tokenizer, tools=[LocationLookupTool()]) as gen:
        out = gen.generate(ASK, replay=[script], max_new_tokens=300, logits_processor=[gate],
                           stream=unit_end_signals(signals))
    assert gate.reached and not signals.missed
    [call] = out.tool_calls
    bad = call.units[0]
    assert bad.unit.key == "location" and "Austin, TX" in bad.error
    assert bad.end < call.closed  # rejected while the rest of the call was still being decoded


def test_abort_stops_decoding_at_an_invalid_argument(tiny_model, tokenizer):
    script = ('<locate>{"location": "Austin, Texas", "note": "'
              + "more words " * 40 + '"}</locate>I will write it as City, ST.')
    signals = Signals()
    # Decoding cannot go past the first "more words" before "location" has failed; the next
    # token aborts (or an earlier one did, and decoding never got there).
    gate = DecodeGate(tokenizer, '"note": "more', signals, "ended location")
    with ConveyorGenerator(tiny_model, tokenizer, tools=[LocationLookupTool()], on_error="abort") as gen:
        out = gen.generate(ASK, replay=[script], max_new_tokens=400, logits_processor=[gate],
                           stream=unit_end_signals(signals))
    assert not signals.missed
    [call] = out.tool_calls
    assert "stopped early" in call.error
    assert "more words " * 10 not in out.text  # the rest of the call was never decoded
    assert out.text.endswith("I will write it as City, ST.")
