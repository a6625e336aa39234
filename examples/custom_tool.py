"""Two ways to write a tool: unit conversion, as a Tool class (one query per line, each run as
soon as its line ends) and as a plain function (JSON arguments, each checked as it is written).
Run: python examples/custom_tool.py (importing this file does not load the model)."""
import re
from typing import Literal

from conveyor_hf.tools import SideEffect, Tool, UnitOutput, tool
from parsers.lines import LineParser

UNITS = {"m": ("length", 1.0), "km": ("length", 1e3), "mi": ("length", 1609.344), "ft": ("length", 0.3048),
         "g": ("mass", 1e-3), "kg": ("mass", 1.0), "lb": ("mass", 0.45359237)}
QUERY = re.compile(r"\s*([-+]?\d+(?:\.\d+)?)\s*([a-z]+)\s+(?:to|in)\s+([a-z]+)\s*")
UnitName = Literal["m", "km", "mi", "ft", "g", "kg", "lb"]


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


# The function version: its JSON schema comes from the type hints and the docstring; the model
# calls it as <tool_call>{"name": "units.convert", "arguments": {"value": 42.195, "unit": "km", "to": "mi"}}
# </tool_call>; a unit outside the Literal is rejected the moment its closing quote is written.
@tool(name="units.convert", side_effect="pure")  # pure: may start as soon as its arguments are in
def convert_units(value: float, unit: UnitName, to: UnitName) -> str:
    """Convert a quantity from one unit to another (m, km, mi, ft, g, kg, lb).

    Args:
        value: the quantity, e.g. 42.195
        unit: its unit, e.g. km
        to: the unit wanted, e.g. mi
    """
    (kind, a), (other, b) = UNITS[unit], UNITS[to]
    if kind != other:
        raise ValueError(f"cannot convert {kind} ({unit}) to {other} ({to}); pick units of the same kind")
    return f"{value} {unit} = {value * a / b:.6g} {to}"


if __name__ == "__main__":
    from conveyor_hf import ConveyorGenerator, load_default_model

    print(convert_units.run('{"value": 42.195, "unit": "km", "to": "mi"}').output)  # the tool, called directly
    with ConveyorGenerator(*load_default_model(), tools=[UnitConverter(), convert_units]) as gen:
        out = gen.generate([{"role": "user", "content": "Use the convert tool: 42.195 km in miles?"}])
    print(out.text, "\n", out.timeline.summary())
