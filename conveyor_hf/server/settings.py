"""``ServerSettings``: everything ``conveyor-hf serve`` is configured with, checked once.

One dataclass, filled from the command line (or by a script calling
:func:`conveyor_hf.server.serve` directly); every other part of the server reads it and
never re-validates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: ``--engine`` names that decode in-process; anything else must be an http(s) URL.
LOCAL_ENGINES = ("local", "continuous", "generate")


@dataclass
class ServerSettings:
    """How the server decodes, which tools it runs, and how much work it takes at once.

    Args:
      host, port: where uvicorn listens (loopback by default).
      model: a model folder, ``.gguf`` file or cached hub id; None is the embedded default.
        With a remote engine it names the tokenizer (the server renders chat templates).
      engine: ``"local"`` (continuous batching when ``conveyor_hf.engines.continuous``
        works, else ``model.generate`` one request at a time), ``"continuous"`` or
        ``"generate"`` to force one, or the URL of an OpenAI-compatible server
        (``http://127.0.0.1:8001/v1``).
      engine_model: the model name a remote engine serves (default: the only one listed).
      api_key: sent to a remote engine.
      tools: tool names (``conveyor-hf tools``); empty runs no tools.
      mode: ``"partial"`` (tool units run while the call is decoded) or ``"lazy"``.
      max_concurrency: requests decoding (and running tools) at once.
      max_queue: requests waiting for a slot; beyond it the server answers 429.
      kernel_pool: pre-started tool sets (a Python kernel each) kept ready.
      max_tokens: completion tokens of a request that sets none.
      max_tool_rounds: tool calls per answer.
      threads, device: torch CPU threads and device for a local model.
      served_model_name: the id ``/v1/models`` lists (default: the model's name).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None
    engine: str = "local"
    engine_model: str | None = None
    api_key: str | None = None
    tools: list[str] = field(default_factory=lambda: ["python"])
    mode: str = "partial"
    max_concurrency: int = 4
    max_queue: int | None = None
    kernel_pool: int = 4
    max_tokens: int = 256
    max_tool_rounds: int = 4
    threads: int | None = None
    device: str | None = None
    served_model_name: str | None = None

    def __post_init__(self) -> None:
        if self.model == "default":
            self.model = None
        if self.engine not in LOCAL_ENGINES and not self.engine.startswith(("http://", "https://")):
            raise ValueError(f"--engine {self.engine!r}: use local, continuous, generate or an http(s) URL "
                             "such as http://127.0.0.1:8001/v1")
        if self.mode not in ("partial", "lazy"):
            raise ValueError(f"--mode {self.mode!r}: use partial or lazy")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port {self.port}: use a port between 1 and 65535")
        if self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency {self.max_concurrency}: at least 1 request must be able to run")
        if self.max_queue is None:
            self.max_queue = 2 * self.max_concurrency
        if self.max_queue < 0:
            raise ValueError(f"--max-queue {self.max_queue}: use 0 (no waiting) or more")
        if self.kernel_pool < 0:
            raise ValueError(f"--kernel-pool {self.kernel_pool}: use 0 (start tools per request) or more")
        if self.max_tokens < 1:
            raise ValueError(f"--max-tokens {self.max_tokens}: use at least 1")
        if self.max_tool_rounds < 0:
            raise ValueError(f"--max-tool-rounds {self.max_tool_rounds}: use 0 or more")
        self.tools = [name.strip() for name in self.tools if name.strip()]
        if len(set(self.tools)) != len(self.tools):
            raise ValueError(f"--tools {','.join(self.tools)}: name each tool once")

    @property
    def remote(self) -> bool:
        """Whether decoding happens on another server."""
        return self.engine not in LOCAL_ENGINES
