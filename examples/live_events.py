"""A terminal view of a tool-using answer: the model's text on the left as it is decoded,
each tool unit's output on the right the moment it finishes (while decoding goes on).

    python examples/live_events.py "Use Python to compute the sum of the squares of 1 to 100."
"""

import shutil
import sys

from conveyor_hf import ConveyorGenerator, load_default_model
from conveyor_hf.tools import PythonTool

DIM, CYAN, RESET = "\033[2m", "\033[36m", "\033[0m"


def main() -> None:
    prompt = sys.argv[1] if len(sys.argv) > 1 else "Use Python to compute the sum of the squares of 1 to 100."
    column = shutil.get_terminal_size((100, 20)).columns // 2
    model, tokenizer = load_default_model(device="cpu")
    with ConveyorGenerator(model, tokenizer, tools=[PythonTool()]) as gen:
        stream = gen.stream([{"role": "user", "content": prompt}], max_new_tokens=200, do_sample=False)
        line = ""
        for event in stream:
            if event.kind == "text":  # the model's text, as decoded
                for char in event.text:
                    if char == "\n":
                        print(line)
                        line = ""
                    else:
                        line += char
            elif event.kind == "unit" and event.record is not None:  # a statement finished running
                result = (event.record.error or event.record.output or "ok").strip().splitlines()[0]
                print(f"{line:<{column}}{DIM}⚙ {event.record.unit.text.strip()[:30]} → {result[:40]}{RESET}")
                line = ""
            elif event.kind == "result":  # what was appended for the model to read
                print(line + f"{CYAN}{event.text}{RESET}", end="")
                line = ""
        print(line)
        print(stream.output.timeline.summary())


if __name__ == "__main__":
    main()
