#!/usr/bin/env python3
"""Record Lion reference trajectories for the wgpu-optim test-suite.

Lion is not part of torch.optim; the reference is lucidrains' ``lion-pytorch``
(PyPI ``lion-pytorch``, class ``lion_pytorch.Lion``, its plain torch
``update_fn``, ``use_triton=False``), which steps each tensor as::

    p.data.mul_(1. - lr * wd)
    update = exp_avg.clone().mul_(beta1).add(grad, alpha=1. - beta1).sign_()
    p.add_(update, alpha=-lr)
    exp_avg.mul_(beta2).add_(grad, alpha=1. - beta2)

For each case the script creates three float32 CPU tensors ``w`` (7), ``b``
(3), ``e`` (70) from ``randn``, runs 12 steps with fresh ``randn * grad_scale``
gradients, and records the gradients, the parameters after every step and the
final ``exp_avg``. The format is that of ``tests/data/torch_trajectories.json``
(see ``tools/torch_trajectories.py``), plus ``lion_pytorch_version``.

``maximize`` is not an option of lion-pytorch. A case with ``maximize: true``
hands lion-pytorch the negated gradient, which is what torch.optim's
``maximize`` means (``grad = -grad`` first); the JSON records the gradient
before negation, the one the crate is given.

Run (needs ``pip install torch lion-pytorch``)::

    python3 tools/lion_trajectory.py           # writes tests/data/lion_trajectory.json
    python3 tools/lion_trajectory.py -o out.json

Deterministic: each case seeds ``torch.manual_seed`` with its own seed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os

import torch
from lion_pytorch import Lion

NUM_STEPS = 12
TENSOR_SHAPES = [("w", 7), ("b", 3), ("e", 70)]
BASE_SEED = 20261201

# (name, explicit options with lion-pytorch's names (+ maximize), grad_scale)
CASES = [
    ("lion_default_betas", dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.0, maximize=False), 1.0),
    ("lion_weight_decay", dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1, maximize=False), 1.0),
    ("lion_betas", dict(lr=0.003, betas=(0.95, 0.98), weight_decay=0.0, maximize=False), 1.0),
    ("lion_maximize_weight_decay", dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.5, maximize=True), 1.0),
    ("lion_small_grads", dict(lr=0.0001, betas=(0.9, 0.99), weight_decay=0.01, maximize=False), 0.001),
    ("lion_low_beta1", dict(lr=0.01, betas=(0.3, 0.9), weight_decay=0.0, maximize=False), 1000.0),
]


def run_case(index: int, name: str, kwargs: dict, grad_scale: float) -> dict:
    seed = BASE_SEED + index
    torch.manual_seed(seed)
    params = [torch.randn(n, dtype=torch.float32) for _, n in TENSOR_SHAPES]
    init = [p.tolist() for p in params]
    for p in params:
        p.requires_grad_(True)
    maximize = kwargs["maximize"]
    lion_kwargs = {k: v for k, v in kwargs.items() if k != "maximize"}
    opt = Lion(params, use_triton=False, decoupled_weight_decay=False, **lion_kwargs)
    group = opt.param_groups[0]
    for k, v in lion_kwargs.items():
        got = tuple(group[k]) if isinstance(v, tuple) else group[k]
        if got != v:
            raise RuntimeError(f"{name}: option {k}={got!r}, expected {v!r}")

    steps = []
    for _ in range(NUM_STEPS):
        grads = []
        for p in params:
            g = torch.randn(p.shape, dtype=torch.float32)
            if grad_scale != 1.0:
                g = g * grad_scale
            grads.append(g.clone())
            p.grad = -g if maximize else g
        opt.step()
        steps.append({
            "grads": {tn: g.tolist() for (tn, _), g in zip(TENSOR_SHAPES, grads)},
            "params": {tn: p.detach().tolist() for (tn, _), p in zip(TENSOR_SHAPES, params)},
        })

    final_state = {}
    for (tn, _), p in zip(TENSOR_SHAPES, params):
        st = {k: v.detach().tolist() for k, v in opt.state[p].items()}
        if set(st) != {"exp_avg"}:
            raise RuntimeError(f"{name}: unexpected state keys {sorted(st)}")
        final_state[tn] = st

    cfg = {k: ([float(x) for x in v] if isinstance(v, tuple) else v if isinstance(v, bool) else float(v))
           for k, v in kwargs.items()}
    return {
        "name": name,
        "optimizer": "Lion",
        "config": cfg,
        "seed": seed,
        "grad_scale": float(grad_scale),
        "tensors": [{"name": tn, "init": v} for (tn, _), v in zip(TENSOR_SHAPES, init)],
        "steps": steps,
        "final_state": final_state,
    }


def main() -> None:
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    default_out = os.path.join(repo_root, "tests", "data", "lion_trajectory.json")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=default_out, help="output JSON path")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    cases = [run_case(i, *c) for i, c in enumerate(CASES)]
    doc = {
        "torch_version": torch.__version__.split("+")[0],
        "lion_pytorch_version": importlib.metadata.version("lion-pytorch"),
        "generated_by": "tools/lion_trajectory.py",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.output} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
