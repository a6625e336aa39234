"""Deprecated: this module is now :mod:`conveyor_hf.call_log`, and ``Scheduler`` is
:class:`~conveyor_hf.call_log.CallLog`.

It never scheduled anything: it opens tool calls in the run's mode and records them in
the timeline (each call runs its own units; a plan's tasks are scheduled by
:class:`~conveyor_hf.tools.plan_scheduler.PlanCall`). Importing it still gives the old
names, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import warnings

from conveyor_hf.call_log import MODES, CallLog, Mode

__all__ = ["MODES", "Mode", "Scheduler"]

#: The old name of :class:`~conveyor_hf.call_log.CallLog`.
Scheduler = CallLog

warnings.warn(
    "conveyor_hf.scheduler is deprecated: import CallLog (formerly Scheduler), Mode and MODES "
    "from conveyor_hf.call_log",
    DeprecationWarning,
    stacklevel=2,
)
