"""``conveyor-hf serve``: an OpenAI-compatible chat server that runs tools while the model decodes.

The server runs its own tools (the code-interpreter pattern): a Python kernel per
conversation from a pool of started kernels, units run while the call is decoded, and
the content a client receives is the answer with the tool results included, streamed as
they are appended. Many requests at once: admission control (``--max-concurrency``, a
bounded queue, then 429), a decoding engine shared by all (continuous batching, one
request at a time, or a remote vLLM/SGLang/TGI/``transformers serve``), cancellation on
disconnect. Start it from the command line::

    conveyor-hf serve --port 8000 --tools python --max-concurrency 4 --kernel-pool 4

or from Python::

    from conveyor_hf.server import ServerSettings, serve
    serve(ServerSettings(port=8000))

and talk to it with any OpenAI client::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    for chunk in client.chat.completions.create(model="SmolLM2-135M-Instruct", stream=True,
            messages=[{"role": "user", "content": "Use Python to compute 2**100."}]):
        print(chunk.choices[0].delta.content or "", end="") if chunk.choices else None

Modules: ``settings`` (the options), ``serving_engine`` (which engine), ``serial_engine``
(one request decodes at a time), ``kernel_pool``, ``admission``, ``validation`` (the
request against the ``openai`` types), ``prompts`` (render, tokenize, context check),
``generation_run`` (one answer on its thread), ``chunks`` (response bodies from the
``openai`` types), ``chat_completion`` (the handler), ``metrics``, ``runtime`` (what the
requests share), ``app`` (the FastAPI routes), ``main`` (``serve``).
"""

from __future__ import annotations

from conveyor_hf.server.main import serve
from conveyor_hf.server.settings import ServerSettings

__all__ = ["ServerSettings", "serve", "create_app"]


def create_app(runtime):
    """The FastAPI app of a started :class:`~conveyor_hf.server.runtime.ServerRuntime`
    (imports FastAPI only when called)."""
    from conveyor_hf.server.app import create_app as build

    return build(runtime)
