"""Deprecated: the old home of validated tools; import from the modules named below.

This module held four things, now each in its own module:

- JSON-schema checks (``check_value``, ``compile_schema``, ``describe_schema_error``):
  :mod:`conveyor_hf.tools.json_schema`;
- the validated-tool framework (``ValidatedTool``, ``ValidatedCall``, ``ActionRun``,
  ``ReportingJsonParser``, ``Validator``, ``ACTION``, ``START``):
  :mod:`conveyor_hf.tools.validated`;
- US state data (``US_STATES``, ``check_us_location``, ``split_us_location``):
  :mod:`conveyor_hf.tools.us_states`;
- the demo tool ``LocationLookupTool``: :mod:`conveyor_hf.tools.location` (also
  ``conveyor_hf.tools.LocationLookupTool``).

Importing this module still gives every old name, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import warnings

from conveyor_hf.tools.json_schema import check_value, compile_schema, describe_schema_error
from conveyor_hf.tools.location import LocationLookupTool
from conveyor_hf.tools.us_states import US_STATES, check_us_location, split_us_location
from conveyor_hf.tools.validated import (
    ACTION,
    START,
    ActionPolicy,
    ActionRun,
    ReportingJsonParser,
    ValidatedCall,
    ValidatedTool,
    Validator,
)

__all__ = [
    "ACTION",
    "START",
    "US_STATES",
    "ActionPolicy",
    "ActionRun",
    "LocationLookupTool",
    "ReportingJsonParser",
    "ValidatedCall",
    "ValidatedTool",
    "Validator",
    "check_us_location",
    "check_value",
    "compile_schema",
    "describe_schema_error",
    "split_us_location",
]

warnings.warn(
    "conveyor_hf.tools.validation is deprecated: import ValidatedTool from conveyor_hf.tools.validated, "
    "schema checks from conveyor_hf.tools.json_schema, US_STATES and check_us_location from "
    "conveyor_hf.tools.us_states, LocationLookupTool from conveyor_hf.tools (or conveyor_hf.tools.location)",
    DeprecationWarning,
    stacklevel=2,
)
