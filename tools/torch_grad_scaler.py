"""Record torch.amp.GradScaler's scale sequence over an overflow/growth pattern.

Writes tests/data/grad_scaler.json, replayed by tests/clipping.rs. Needs torch
(`pip install torch`); run `python3 tools/torch_grad_scaler.py`.

Each step sets one gradient to the given value times the current scale (so `inf` entries
overflow), runs scaler.unscale_/step/update around an SGD optimizer, and records whether the
step was applied and the scale after update().
"""
import json
import math
import pathlib

import torch

PATTERN = [1, 1, 1, math.inf, 1, 1, 1, 1, math.nan, math.inf, 1, 1, 1, 1, 1, 1, 1, -math.inf, 1, 1]
CONFIG = dict(init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)


def main():
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", **CONFIG)
    steps = []
    for v in PATTERN:
        opt.zero_grad()
        scaler.scale(torch.ones(()))  # initialises the scale tensor, as scaling a loss does
        scale = scaler.get_scale()
        p.grad = torch.full((4,), float(v) * scale if math.isfinite(v) else v)
        before = p.detach().clone()
        scaler.step(opt)
        scaler.update()
        applied = not torch.equal(before, p.detach())
        steps.append(dict(grad=v if math.isfinite(v) else str(v), applied=applied,
                          scale=scaler.get_scale(), growth_tracker=int(scaler._growth_tracker.item())))
    out = dict(torch_version=torch.__version__.split("+")[0], config=CONFIG, steps=steps)
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "grad_scaler.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
