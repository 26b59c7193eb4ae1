#!/usr/bin/env python3
"""Record LAMB trajectories from optax.

    pip install optax
    python3 tools/optax_lamb_trajectory.py [-o tests/data/optax_lamb_trajectory.json]

``optax.lamb`` (float32, CPU) on two tensors from a fixed seed, for each case 20 steps with
recorded gradients, then the parameters. ``tests/lamb.rs`` replays the gradients and compares.
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

SHAPES = [("w", (5, 7)), ("b", (7,))]
STEPS = 20
CASES = [
    ("default", dict(lr=1e-3)),
    ("decay", dict(lr=0.01, weight_decay=0.05)),
    ("betas_eps", dict(lr=0.005, b1=0.8, b2=0.99, eps=1e-8, weight_decay=0.01)),
]
OURS = {"lr": "lr", "b1": "betas[0]", "b2": "betas[1]", "eps": "eps", "weight_decay": "weight_decay"}


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output",
                    default=os.path.join(root, "tests", "data", "optax_lamb_trajectory.json"))
    args = ap.parse_args()
    jax.config.update("jax_platform_name", "cpu")
    cases = []
    for index, (name, kw) in enumerate(CASES):
        rng = np.random.default_rng(20261202 + index)
        params = {n: jnp.asarray(rng.standard_normal(s), dtype=jnp.float32) for n, s in SHAPES}
        init = {n: np.asarray(p).reshape(-1).tolist() for n, p in params.items()}
        lr = kw.pop("lr")
        opt = optax.lamb(learning_rate=lr, **kw)
        state = opt.init(params)
        grads = []
        for _ in range(STEPS):
            g = {n: jnp.asarray(rng.standard_normal(s), dtype=jnp.float32) for n, s in SHAPES}
            grads.append({n: np.asarray(v).reshape(-1).tolist() for n, v in g.items()})
            updates, state = opt.update(g, state, params)
            params = optax.apply_updates(params, updates)
        options = {"lr": lr, **{OURS[k]: v for k, v in kw.items()}}
        cases.append({"name": name, "options": options, "init": init, "grads": grads,
                      "params": {n: np.asarray(p).reshape(-1).tolist()
                                 for n, p in params.items()}})
        print(f"{name}: ok")
    doc = {"optax_version": optax.__version__, "jax_version": jax.__version__,
           "generated_by": "python3 tools/optax_lamb_trajectory.py", "cases": cases}
    with open(args.output, "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
