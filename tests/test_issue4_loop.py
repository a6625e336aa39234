"""Plans and validation inside the tool loop: work starts while the call is decoded."""

import time

from transformers import LogitsProcessor

from conveyor_hf import ConveyorGenerator
from conveyor_hf.tools.plan import PlanTool
from conveyor_hf.tools.scripted import ScriptedTool
from conveyor_hf.tools.validation import LocationLookupTool

ASK = [{"role": "user", "content": "compare them"}]


class SlowDecoding(LogitsProcessor):
    """Paces the tiny model like a real one."""

    def __call__(self, input_ids, scores):
        time.sleep(0.02)
        return scores


def lookup():
    return ScriptedTool("lookup", respond=lambda q: f"{q} is 100", delay=0.6, max_concurrency=4)


PLAN = (
    "```plan\n"
    '$1 = lookup("Mariana Trench")\n'
    '$2 = lookup("Puerto Rico Trench")\n'
    "Thought: both depths are needed before comparing, so the third task waits for them.\n"
    '$3 = lookup("$1 vs $2")\n'
    "join()\n```\nDone."
)


def test_plan_tasks_overlap_each_other_and_decoding_and_respect_dependencies(tiny_model, tokenizer):
    plan = PlanTool(tools=[lookup()], lazy_sequential=True)
    with ConveyorGenerator(tiny_model, tokenizer, tools=[plan]) as gen:
        out = gen.generate(ASK, replay=[PLAN], max_new_tokens=300, logits_processor=[SlowDecoding()])
    [call] = out.tool_calls
    tasks = {u.unit.key: u for u in call.units if u.unit.key in ("$1", "$2", "$3")}
    one, two, three = tasks["$1"], tasks["$2"], tasks["$3"]
    assert max(one.start, two.start) < min(one.end, two.end)  # independent tasks overlap
    assert one.start < call.closed and two.start < call.closed  # ... while the plan is decoded
    assert three.start >= max(one.end, two.end)  # the dependent task waits for both
    assert "Mariana Trench is 100 vs Puerto Rico Trench is 100" in three.output
    assert out.text.endswith("Done.")
    summary = out.timeline.summary()
    assert summary["ideal"] <= summary["latency"]


def test_lazy_sequential_plan_runs_after_decoding_one_task_at_a_time(tiny_model, tokenizer):
    plan = PlanTool(tools=[lookup()], lazy_sequential=True)
    with ConveyorGenerator(tiny_model, tokenizer, tools=[plan], mode="lazy") as gen:
        out = gen.generate(ASK, replay=[PLAN], max_new_tokens=300)
    [call] = out.tool_calls
    ran = sorted((u for u in call.units if u.duration > 0), key=lambda u: u.start)
    assert all(u.start >= call.closed for u in ran)
    assert all(a.end <= b.start for a, b in zip(ran, ran[1:]))


def test_invalid_argument_is_rejected_before_the_call_is_fully_written(tiny_model, tokenizer):
    script = ('<locate>{"location": "Austin, Texas", "max_results": 2, "note": "'
              + "this call goes on for a while after the bad location " * 3 + '"}</locate>Let me fix it.')
    with ConveyorGenerator(tiny_model, tokenizer, tools=[LocationLookupTool()]) as gen:
        out = gen.generate(ASK, replay=[script], max_new_tokens=300, logits_processor=[SlowDecoding()])
    [call] = out.tool_calls
    bad = call.units[0]
    assert bad.unit.key == "location" and "Austin, TX" in bad.error
    assert bad.end < call.closed  # rejected while the rest of the call was still being decoded


def test_abort_stops_decoding_at_an_invalid_argument(tiny_model, tokenizer):
    script = ('<locate>{"location": "Austin, Texas", "note": "'
              + "more words " * 40 + '"}</locate>I will write it as City, ST.')
    with ConveyorGenerator(tiny_model, tokenizer, tools=[LocationLookupTool()], on_error="abort") as gen:
        out = gen.generate(ASK, replay=[script], max_new_tokens=400, logits_processor=[SlowDecoding()])
    [call] = out.tool_calls
    assert "stopped early" in call.error
    assert "more words " * 10 not in out.text  # the rest of the call was never decoded
    assert out.text.endswith("I will write it as City, ST.")
