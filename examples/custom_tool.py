"""A complete custom tool: unit conversion, one per line, each run as soon as its line ends.
Run: python examples/custom_tool.py (importing this file does not load the model)."""
import re

from conveyor_hf.tools import SideEffect, Tool, UnitOutput
from parsers.lines import LineParser

UNITS = {"m": ("length", 1.0), "km": ("length", 1e3), "mi": ("length", 1609.344), "ft": ("length", 0.3048),
         "g": ("mass", 1e-3), "kg": ("mass", 1.0), "lb": ("mass", 0.45359237)}
QUERY = re.compile(r"\s*([-+]?\d+(?:\.\d+)?)\s*([a-z]+)\s+(?:to|in)\s+([a-z]+)\s*")


class UnitConverter(Tool):
    name = "convert"
    description = f"Convert between units ({', '.join(UNITS)}). One per line, e.g. '42.195 km to mi'."
    parameters = {"type": "object", "required": ["query"],
                  "properties": {"query": {"type": "string", "description": "e.g. '42.195 km to mi'"}}}
    side_effect = SideEffect.PURE  # no side effects: each line may run at once, in parallel
    max_concurrency = 4

    def make_parser(self):
        return LineParser()  # one unit per line; unit.value is the stripped line

    def execute(self, unit):
        match = QUERY.fullmatch(str(unit.value).lower())
        if not match or match[2] not in UNITS or match[3] not in UNITS:
            return UnitOutput("", f"cannot read {unit.value!r}; write e.g. '42.195 km to mi' ({', '.join(UNITS)})")
        (kind, a), (other, b) = UNITS[match[2]], UNITS[match[3]]
        if kind != other:
            return UnitOutput("", f"cannot convert {kind} ({match[2]}) to {other} ({match[3]})")
        return UnitOutput(f"{match[1]} {match[2]} = {float(match[1]) * a / b:.6g} {match[3]}")


if __name__ == "__main__":
    from conveyor_hf import ConveyorGenerator, load_default_model

    with ConveyorGenerator(*load_default_model(), tools=[UnitConverter()]) as gen:
        out = gen.generate([{"role": "user", "content": "Use the convert tool: 42.195 km in miles?"}])
    print(out.text, "\n", out.timeline.summary())
