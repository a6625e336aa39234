"""The "conveyor-text-generation" pipeline task on a tiny model."""

from transformers import pipeline

import conveyor_hf  # noqa: F401  (registers the task)
from conveyor_hf.pipeline import ConveyorTextGenerationPipeline
from conveyor_hf.tools.scripted import ScriptedTool

ASK = [{"role": "user", "content": "say hello"}]
SCRIPT = "Sure.\n```echo\nhello\n```\nDone."


class Echo(ScriptedTool):
    def __init__(self):
        super().__init__("echo", fence_languages=("echo",), respond=lambda line: f"ECHO {line}")
        self.closed = False

    def close(self):
        self.closed = True


def test_chat_input_returns_the_messages_and_the_answer_turns(tiny_model, tokenizer):
    tool = Echo()
    with pipeline("conveyor-text-generation", model=tiny_model, tokenizer=tokenizer, tools=[tool]) as pipe:
        assert isinstance(pipe, ConveyorTextGenerationPipeline)
        [record] = pipe(ASK, replay=[SCRIPT], max_new_tokens=80)
    assert record["generated_text"] == ASK + [
        {"role": "assistant", "content": "Sure.\n```echo\nhello\n```\n```output\nECHO hello\n```\n\nDone."}]
    [call] = record["tool_calls"]
    assert call.tool == "echo" and call.result.output == "ECHO hello"
    assert record["timeline"]["units"] == 1 and record["timeline"]["rounds"] == 2
    assert tool.closed  # the pipeline's tools are closed with it


def test_batches_prompts_and_return_full_text_work_as_for_text_generation(tiny_model, tokenizer):
    chats = [[{"role": "user", "content": "one"}], [{"role": "user", "content": "two, longer"}]]
    plain = pipeline("text-generation", model=tiny_model, tokenizer=tokenizer)
    with pipeline("conveyor-text-generation", model=tiny_model, tokenizer=tokenizer, tools=[Echo()],
                  tool_prompt=False) as pipe:
        batched = pipe(chats, batch_size=2, max_new_tokens=8, do_sample=False)
        single = [pipe(c, max_new_tokens=8, do_sample=False) for c in chats]
        reference = [plain(c, max_new_tokens=8, do_sample=False) for c in chats]
        new_text = pipe("Hello there", max_new_tokens=6, do_sample=False, return_full_text=False)
        full = pipe("Hello there", max_new_tokens=6, do_sample=False)
    assert [b[0]["generated_text"] for b in batched] == [s[0]["generated_text"] for s in single]
    assert [s[0]["generated_text"] for s in single] == [r[0]["generated_text"] for r in reference]
    assert full[0]["generated_text"] == "Hello there" + new_text[0]["generated_text"]
    assert full[0]["generated_text"] == plain("Hello there", max_new_tokens=6, do_sample=False)[0]["generated_text"]


def test_the_class_works_as_a_pipeline_class_of_text_generation(tiny_model, tokenizer):
    with pipeline("text-generation", model=tiny_model, tokenizer=tokenizer, tools=[Echo()],
                  pipeline_class=ConveyorTextGenerationPipeline, mode="lazy") as pipe:
        assert pipe.generator.mode == "lazy"
        [record] = pipe(ASK, replay=[SCRIPT], max_new_tokens=80)
    assert "```output\nECHO hello\n```" in record["generated_text"][-1]["content"]


def test_num_return_sequences_gives_several_answers(tiny_model, tokenizer):
    with pipeline("conveyor-text-generation", model=tiny_model, tokenizer=tokenizer) as pipe:
        records = pipe("Hello", max_new_tokens=5, do_sample=True, num_return_sequences=3)
    assert len(records) == 3 and all(r["generated_text"].startswith("Hello") for r in records)
