#!/usr/bin/env python3
"""Record Schedule-Free AdamW trajectories from the reference implementation.

    pip install torch schedulefree
    python3 tools/schedulefree_trajectory.py [-o tests/data/schedulefree_trajectory.json]

facebookresearch/schedule_free's ``AdamWScheduleFree`` (``foreach=False``) on two tensors from a
fixed seed, for each case: ``train()``, 20 steps with recorded gradients, then the training
sequence ``y`` (the parameters), the state ``z`` and ``exp_avg_sq``, and the average ``x`` after
``eval()``. ``tests/schedule_free.rs`` replays the gradients and compares.
"""

import argparse
import json
import os

import schedulefree
import torch

SHAPES = [("w", (5, 7)), ("b", (7,))]
STEPS = 20
CASES = [
    ("default", dict(lr=0.01)),
    ("warmup_decay", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05,
                          warmup_steps=6)),
    ("polynomial_weights", dict(lr=0.005, warmup_steps=3, r=1.0, weight_lr_power=1.0)),
]


def flat(t):
    return t.detach().reshape(-1).tolist()


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output",
                    default=os.path.join(root, "tests", "data", "schedulefree_trajectory.json"))
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    cases = []
    for index, (name, kw) in enumerate(CASES):
        torch.manual_seed(20261202 + index)
        params = {n: torch.randn(s, dtype=torch.float32).requires_grad_(True) for n, s in SHAPES}
        init = {n: flat(p) for n, p in params.items()}
        opt = schedulefree.AdamWScheduleFree(list(params.values()), foreach=False, **kw)
        opt.train()
        grads = []
        for _ in range(STEPS):
            g = {n: torch.randn(s, dtype=torch.float32) for n, s in SHAPES}
            grads.append({n: flat(v) for n, v in g.items()})
            for n, p in params.items():
                p.grad = g[n].clone()
            opt.step()
        y = {n: flat(p) for n, p in params.items()}
        state = {n: {k: flat(v) for k, v in opt.state[p].items()} for n, p in params.items()}
        opt.eval()
        x = {n: flat(p) for n, p in params.items()}
        cases.append({"name": name, "options": kw, "init": init, "grads": grads, "y": y,
                      "state": state, "x": x})
        print(f"{name}: ok")
    doc = {"schedulefree_version": getattr(schedulefree, "__version__", "unknown"),
           "torch_version": torch.__version__.split("+")[0],
           "generated_by": "python3 tools/schedulefree_trajectory.py",
           "cases": cases}
    with open(args.output, "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
