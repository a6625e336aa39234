"""The same recorded answer, replayed through the real model in lazy and partial mode.

Replay forces a fixed text token by token (real decode cost), so the two runs differ
only in when the tool work happens. The statements sleep, standing for slow I/O.

    python examples/lazy_vs_partial.py   # writes lazy-vs-partial.png
"""

import torch

from conveyor_hf import ConveyorGenerator, load_default_model
from conveyor_hf.tools import PythonTool

ANSWER = "I'll fetch the three reports:\n```python\nimport time\n" + "".join(
    f"time.sleep(2.5)  # fetch report {i} from the archive server and keep it for the summary\n"
    for i in range(3)
) + "print('fetched 3 reports')\n```\nAll three reports are in."


def main() -> None:
    torch.set_num_threads(1)
    model, tokenizer = load_default_model()
    messages = [{"role": "user", "content": "Fetch the three reports."}]
    timelines = {}
    for mode in ("lazy", "partial"):
        with ConveyorGenerator(model, tokenizer, tools=[PythonTool()], mode=mode) as gen:
            out = gen.generate(messages, replay=[ANSWER], max_new_tokens=300)
        timelines[mode] = out.timeline
        s = out.timeline.summary()
        print(f"{mode:8s} latency {s['latency']:.2f}s  exposed tool {s['exposed_tool']:.2f}s  ideal {s['ideal']:.2f}s")
    lazy, partial = (timelines[m].summary()["latency"] for m in ("lazy", "partial"))
    print(f"reduction {1 - partial / lazy:.0%}")
    timelines["lazy"].plot("lazy-vs-partial.png", others=[timelines["partial"]], title="lazy (top) vs partial")


if __name__ == "__main__":
    main()
