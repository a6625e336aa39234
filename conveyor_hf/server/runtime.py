"""``ServerRuntime``: what every request of one server shares, built once at start-up.

The engine (model loaded, or remote server reached), the tool templates and a kernel
pool for each stateful one (the Python kernel), admission control, metrics, the prompt builder and the chat
handler. :meth:`ServerRuntime.start` fails loudly — a model that does not load, a
kernel that cannot start — before the server accepts a request; :meth:`close` stops the
pool (every kernel) and the engine.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import asdict, dataclass
from typing import Any

from conveyor_hf.server.admission import Admission
from conveyor_hf.server.chat_completion import ChatCompletionHandler
from conveyor_hf.server.conversation_tools import is_stateful
from conveyor_hf.server.kernel_pool import KernelPool
from conveyor_hf.server.metrics import ServerMetrics
from conveyor_hf.server.prompts import PromptBuilder
from conveyor_hf.server.serving_engine import ServingEngine, build_engine
from conveyor_hf.server.settings import ServerSettings
from conveyor_hf.tools.base import Tool

logger = logging.getLogger("conveyor_hf.server")

#: Seconds the pool may take to start its kernels before start-up fails.
POOL_START_TIMEOUT = 180.0


@dataclass
class ServerRuntime:
    """The shared parts of a running server (see the module docstring)."""

    settings: ServerSettings
    serving: ServingEngine
    templates: list[Tool]
    pools: dict[str, KernelPool]
    admission: Admission
    metrics: ServerMetrics
    handler: ChatCompletionHandler

    @classmethod
    def start(cls, settings: ServerSettings, serving: ServingEngine | None = None,
              templates: list[Tool] | None = None) -> "ServerRuntime":
        """Load the engine (unless given), start the kernel pools and wait until they are ready.

        ``templates``: configured tool instances to serve instead of ``settings.tools``
        (tools with settings of their own; a stateful one built with ``prestart=False``).
        """
        templates = make_templates(settings.tools) if templates is None else list(templates)
        pools: dict[str, KernelPool] = {}
        try:
            serving = serving or build_engine(settings)
            for tool in templates:
                if is_stateful(tool):
                    pools[tool.name] = KernelPool(tool, settings.kernel_pool)
            for pool in pools.values():
                pool.wait_ready(POOL_START_TIMEOUT)
        except BaseException:
            for pool in pools.values():
                pool.close()
            for tool in templates:
                if tool.name not in pools:
                    tool.close()
            raise
        admission = Admission(settings.max_concurrency, settings.max_queue)
        metrics = ServerMetrics()
        prompts = PromptBuilder(serving, templates, mode=settings.mode, default_max_tokens=settings.max_tokens)
        handler = ChatCompletionHandler(settings=settings, serving=serving, templates=templates, pools=pools,
                                        admission=admission, metrics=metrics, prompts=prompts)
        return cls(settings, serving, templates, pools, admission, metrics, handler)

    def sandbox_line(self) -> str | None:
        """How tool processes are contained here (None when no tool starts a process)."""
        for tool in self.templates:
            description = getattr(tool, "sandbox_description", None)
            if isinstance(description, str):
                return description
        try:
            from conveyor_hf.tools.sandbox import describe
        except ImportError:
            return None
        return describe() if self.templates else None

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` shows."""
        pools = {name: pool.stats() for name, pool in self.pools.items()}
        # Degraded only while a pool cannot start instances: a busy pool that recovered
        # from a failed start has none ready for a moment, which is normal load.
        healthy = all(p.ready > 0 or p.size == 0 or not p.failing for p in pools.values())
        return {
            "status": "ok" if healthy else "degraded",
            "model": self.serving.model_id,
            "engine": self.serving.kind,
            "engine_detail": self.serving.describe(),
            "mode": self.settings.mode,
            "tools": [t.name for t in self.templates],
            "sandbox": self.sandbox_line(),
            "max_concurrency": self.admission.max_running,
            "max_queue": self.admission.max_queue,
            "running": self.admission.running,
            "queued": self.admission.queued,
            "kernel_pools": {name: asdict(stats) for name, stats in pools.items()},
        }

    def gauges(self) -> dict[str, tuple[str, float]]:
        """The live gauges of ``GET /metrics``."""
        gauges = {
            "conveyor_requests_in_flight": ("Requests holding a slot (decoding or running tools).",
                                            self.admission.running),
            "conveyor_queue_length": ("Requests waiting for a slot.", self.admission.queued),
            "conveyor_max_concurrency": ("Slots (--max-concurrency).", self.admission.max_running),
        }
        if self.pools:
            stats = [pool.stats() for pool in self.pools.values()]
            gauges["conveyor_kernel_pool_ready"] = ("Started kernels ready to hand out.", sum(s.ready for s in stats))
            gauges["conveyor_kernel_pool_starting"] = ("Kernels being started.", sum(s.starting for s in stats))
            gauges["conveyor_kernel_pool_started"] = ("Kernels started since the server started.",
                                                      sum(s.started for s in stats))
            gauges["conveyor_kernel_pool_closed"] = ("Used kernels closed (never reused).",
                                                     sum(s.closed for s in stats))
        return gauges

    def close(self) -> None:
        self.handler.close()
        for pool in self.pools.values():
            pool.close()  # closes its template too
        for tool in self.templates:
            if tool.name not in self.pools:
                tool.close()
        self.serving.close()


def make_templates(names: list[str]) -> list[Tool]:
    """One instance per tool name, to be forked per conversation; tools that start a
    process on construction (``prestart``) are told not to: the pool starts forks."""
    from conveyor_hf.tools.registry import load_tool_class

    tools: list[Tool] = []
    try:
        for name in names:
            cls = load_tool_class(name)
            kwargs = {"prestart": False} if "prestart" in inspect.signature(cls).parameters else {}
            try:
                tools.append(cls(**kwargs))
            except TypeError as exc:
                raise ValueError(f"tool {name!r} needs settings ({exc}); it cannot be served by name") from exc
    except BaseException:
        for tool in tools:
            tool.close()
        raise
    return tools
