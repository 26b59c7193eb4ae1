#!/usr/bin/env python3
"""Record torch.optim.Adafactor trajectories for the wgpu-optim test-suite.

For each case the script creates float32 CPU tensors of ranks 1 to 3 from
``randn`` (``w`` [6, 7], ``b`` [3], ``k`` [2, 3, 5], ``r`` [1, 9], ``c`` [9, 1],
``e`` [70], ``m`` [16, 40]: matrices, a batch of matrices, a single row and a
single column, vectors), runs 8 steps of ``torch.optim.Adafactor`` with fresh
``randn * grad_scale`` gradients, and records the shapes, the initial values,
the gradients, the final parameters and the final state (``row_var`` and
``col_var`` of the matrices, ``variance`` of the vectors), all flattened row
major. ``tests/adafactor.rs`` (``matches_torch_trajectories``) replays them.

``options`` uses the crate's hyperparameter names (``eps[0]``, ``eps[1]``;
``maximize`` as 0 or 1); an absent ``eps[0]`` is torch's ``None``.

Run (needs ``pip install torch``)::

    python3 tools/torch_adafactor_trajectory.py     # writes tests/data/adafactor_trajectory.json
    python3 tools/torch_adafactor_trajectory.py -o out.json

Deterministic: each case seeds ``torch.manual_seed`` with its own seed.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

NUM_STEPS = 8
SHAPES = [
    ("w", [6, 7]),
    ("b", [3]),
    ("k", [2, 3, 5]),
    ("r", [1, 9]),
    ("c", [9, 1]),
    ("e", [70]),
    ("m", [16, 40]),
]
BASE_SEED = 20261203

# (name, torch.optim.Adafactor keyword arguments, grad_scale, param_scale)
CASES = [
    ("adafactor_default", dict(), 1.0, 1.0),
    ("adafactor_weight_decay", dict(lr=0.05, weight_decay=0.1), 1.0, 1.0),
    ("adafactor_maximize", dict(maximize=True), 1000.0, 1.0),
    ("adafactor_eps_d", dict(lr=0.03, eps=(1e-4, 1e-3), d=2.0), 1e-3, 1.0),
    ("adafactor_beta2_decay", dict(lr=0.2, beta2_decay=-0.5), 1.0, 1.0),
    ("adafactor_small_params", dict(), 1.0, 1e-5),
    ("adafactor_tiny_grads", dict(), 1e-6, 1.0),
]


def options(kwargs: dict) -> dict:
    out = {}
    for k, v in kwargs.items():
        if k == "eps":
            if v[0] is not None:
                out["eps[0]"] = float(v[0])
            out["eps[1]"] = float(v[1])
        elif k == "maximize":
            out[k] = 1.0 if v else 0.0
        else:
            out[k] = float(v)
    return out


def flat(t: torch.Tensor) -> list:
    # Each f32 as its shortest decimal form, which reads back to the same f32.
    return [float(str(x)) for x in t.detach().reshape(-1).numpy()]


def run_case(index: int, name: str, kwargs: dict, grad_scale: float, param_scale: float) -> dict:
    seed = BASE_SEED + index
    torch.manual_seed(seed)
    params = [torch.randn(s, dtype=torch.float32) * param_scale for _, s in SHAPES]
    init = {n: flat(p) for (n, _), p in zip(SHAPES, params)}
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adafactor(params, foreach=False, **kwargs)
    grads = []
    for _ in range(NUM_STEPS):
        step = {}
        for (n, _), p in zip(SHAPES, params):
            g = torch.randn(p.shape, dtype=torch.float32) * grad_scale
            p.grad = g
            step[n] = flat(g)
        opt.step()
        grads.append(step)
    state = {}
    for (n, shape), p in zip(SHAPES, params):
        st = opt.state[p]
        keys = ["row_var", "col_var"] if len(shape) >= 2 else ["variance"]
        for k in keys:
            if st.get(k) is None:
                raise RuntimeError(f"{name}: {n} has no {k}")
        state[n] = {k: flat(st[k]) for k in keys}
    return {
        "name": name,
        "seed": seed,
        "options": options(kwargs),
        "shapes": {n: s for n, s in SHAPES},
        "init": init,
        "grads": grads,
        "params": {n: flat(p) for (n, _), p in zip(SHAPES, params)},
        "state": state,
    }


def main() -> None:
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    default_out = os.path.join(repo_root, "tests", "data", "adafactor_trajectory.json")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=default_out, help="output JSON path")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    cases = [run_case(i, *c) for i, c in enumerate(CASES)]
    doc = {
        "torch_version": torch.__version__.split("+")[0],
        "generated_by": "tools/torch_adafactor_trajectory.py",
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
