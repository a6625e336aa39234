"""Answer a question with Python run while the model writes it, then show the timeline.

    python examples/quickstart.py "Use Python to find the 20th Fibonacci number."
"""

import sys

import torch

from conveyor_hf import ConveyorGenerator, load_default_model
from conveyor_hf.tools import PythonTool


def main() -> None:
    prompt = sys.argv[1] if len(sys.argv) > 1 else "Use Python to compute the 20th Fibonacci number."
    torch.set_num_threads(1)  # decoding on one core; the kernel gets the other
    model, tokenizer = load_default_model()
    with ConveyorGenerator(model, tokenizer, tools=[PythonTool()], mode="partial") as gen:
        out = gen.generate([{"role": "user", "content": prompt}], max_new_tokens=250)
    print(out.text)
    for call in out.tool_calls:
        for unit in call.units:
            print(f"{call.tool}: {unit.unit.text.strip()[:50]!r} ran {unit.duration:.3f}s error={unit.error}")
    print(out.timeline.summary())
    out.timeline.plot("quickstart-timeline.png")


if __name__ == "__main__":
    main()
