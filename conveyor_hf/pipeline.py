"""The ``"conveyor-text-generation"`` pipeline task: ``text-generation`` with tool partial execution.

Importing :mod:`conveyor_hf` registers the task with transformers' pipeline registry (as
soon as ``transformers.pipelines`` is imported), so::

    from transformers import pipeline
    import conveyor_hf
    from conveyor_hf.tools import PythonTool

    with pipeline("conveyor-text-generation", model=model, tokenizer=tok,
                  tools=[PythonTool()], mode="partial") as pipe:
        pipe([{"role": "user", "content": "Use Python to compute 2**100."}], max_new_tokens=200)

The class also works as ``pipeline("text-generation", ..., pipeline_class=ConveyorTextGenerationPipeline)``.
Outputs are what ``TextGenerationPipeline`` returns (``generated_text``: for chat input
the messages followed by the answer's assistant and tool turns; for prompts the text),
plus ``tool_calls`` (the row's call records) and ``timeline`` (the summary of the
``generate`` call that produced it; a batch shares one). The pipeline's tools (kernels)
are closed by ``close()``, by leaving its ``with`` block, or when it is garbage-collected.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from transformers import AutoModelForCausalLM, TextGenerationPipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.text_generation import ReturnType
from transformers.utils.chat_template_utils import Chat

from conveyor_hf.generator import ConveyorGenerator

TASK = "conveyor-text-generation"

#: ``pipeline(...)`` keywords that configure the tool loop rather than the pipeline.
_GENERATOR_OPTIONS = ("mode", "max_tool_rounds", "tool_prompt", "on_error", "json_calls", "parallel_tool_calls")


class ConveyorTextGenerationPipeline(TextGenerationPipeline):
    """``TextGenerationPipeline`` whose generation runs tool calls while they are decoded.

    Extra constructor keywords: ``tools`` (conveyor_hf tool instances) and the
    :class:`~conveyor_hf.generator.ConveyorGenerator` options ``mode``,
    ``max_tool_rounds``, ``tool_prompt``, ``on_error``, ``json_calls``,
    ``parallel_tool_calls``. Every generation keyword works as for ``text-generation``.
    """

    def __init__(self, *args: Any, tools: Any = (), **kwargs: Any) -> None:
        options = {key: kwargs.pop(key) for key in _GENERATOR_OPTIONS if key in kwargs}
        super().__init__(*args, **kwargs)
        self.generator = ConveyorGenerator(self.model, self.tokenizer, tools=list(tools or ()), **options)
        self._results: dict[int, dict[str, Any]] = {}
        self._next_key = 0
        self._finalizer = weakref.finalize(self, self.generator.close)

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        """Close the pipeline's tools (kernels, connections). Idempotent."""
        self._finalizer()

    def __enter__(self) -> "ConveyorTextGenerationPipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pipeline steps ----------------------------------------------------------
    def preprocess(self, prompt_text, prefix="", continue_final_message=None, **kwargs):
        if isinstance(prompt_text, Chat):
            messages = list(prompt_text.messages)
            if continue_final_message or (continue_final_message is None and messages[-1]["role"] == "assistant"):
                raise ValueError(
                    "continuing a final assistant message (prefill) is not supported with tool calls; end the "
                    "chat with a user message, or pass the prefilled text as a prompt string"
                )
            ids, mask = self.generator.encode(messages)
        else:
            ids, mask = self.generator.encode(prefix + prompt_text)
        return {"input_ids": ids, "attention_mask": mask, "prompt_text": prompt_text}

    def _forward(self, model_inputs, **generate_kwargs):
        ids, mask = model_inputs["input_ids"], model_inputs.get("attention_mask")
        prompt_text = model_inputs.pop("prompt_text")
        generate_kwargs.pop("prefix_length", None)
        generate_kwargs.pop("tokenizer", None)  # stop_sequence: the loop passes its tokenizer itself
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs)
        out = self.generator.generate(ids, attention_mask=mask, **generate_kwargs)
        rows = ids.shape[0]
        n = len(out.texts) // rows
        summary = out.timeline.summary()
        keys = []
        for i in range(rows):  # per-input results, found again in postprocess by a key tensor
            self._next_key += 1
            rows_of_input = range(i * n, (i + 1) * n)
            self._results[self._next_key] = {
                "texts": [out.texts[j] for j in rows_of_input],
                "messages": [out.messages[j] for j in rows_of_input],
                "calls": [[c for c in out.tool_calls if c.row == j] for j in rows_of_input],
                "summary": summary,
            }
            keys.append(self._next_key)
        return {
            "generated_sequence": out.sequences.reshape(rows, n, -1),
            "input_ids": ids,
            "prompt_text": prompt_text,
            "conveyor_key": torch.tensor(keys),
        }

    def postprocess(self, model_outputs, return_type=ReturnType.FULL_TEXT, clean_up_tokenization_spaces=None,
                    continue_final_message=None, skip_special_tokens=None, tools=None):
        prompt_text = model_outputs["prompt_text"]
        found = self._results.pop(int(model_outputs["conveyor_key"].reshape(-1)[0]))
        texts, messages, calls, summary = found["texts"], found["messages"], found["calls"], found["summary"]
        sequences = model_outputs["generated_sequence"][0].tolist()
        records = []
        for idx, sequence in enumerate(sequences):
            if return_type == ReturnType.TENSORS:
                record: dict[str, Any] = {"generated_token_ids": sequence}
            elif return_type == ReturnType.FULL_TEXT and isinstance(prompt_text, Chat):
                record = {"generated_text": list(prompt_text.messages) + messages[idx]}
            elif return_type == ReturnType.FULL_TEXT:
                record = {"generated_text": prompt_text + texts[idx]}
            else:
                record = {"generated_text": texts[idx]}
            record["tool_calls"] = calls[idx]
            record["timeline"] = summary
            records.append(record)
        return records


def register() -> None:
    """Register :data:`TASK` with transformers' pipeline registry (idempotent)."""
    if PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl") is ConveyorTextGenerationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=ConveyorTextGenerationPipeline, pt_model=AutoModelForCausalLM, type="text",
    )


register()
