#!/usr/bin/env python3
"""Generate PyTorch reference trajectories for the wgpu-optim test-suite.

What it does
------------
For a fixed list of optimizer configurations (SGD, Adam, AdamW, RMSprop,
Adagrad, Adadelta, Rprop, ASGD, Adamax, RAdam, NAdam; every boolean option and every
nonzero numeric option is covered by at least one case) this script:

* creates three float32 CPU tensors named ``w`` (7 elements), ``b`` (3) and
  ``e`` (70) initialised with ``randn``;
* builds the ``torch.optim`` optimizer with ``foreach=False`` (the
  single-tensor reference path) and every hyper-parameter passed explicitly
  as a Python float / bool literal;
* runs 12 steps; before each step fresh float32 gradients are drawn
  (``randn * grad_scale``; ``grad_scale`` is 1.0 for most cases and 1e-3 or
  1e3 for a few, to exercise ``eps``), then ``opt.step()`` is called and the
  gradients used and the parameters after the step are recorded;
* records the final optimizer state of every tensor with PyTorch's own state
  key names (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``,
  ``momentum_buffer``, ``square_avg``, ``grad_avg``, ``sum``, ``acc_delta``,
  ``prev``, ``step_size``, ``ax``, ``exp_inf``), ``step`` excluded; ASGD's 0-dim
  ``eta`` and ``mu`` as plain numbers among them, NAdam's 0-dim ``mu_product``
  separately, as a number, in ``final_scalar_state`` (``SCALAR_STATE_KEYS``).

The result is written to ``tests/data/torch_trajectories.json`` (relative to
the repository root, independent of the current directory) so that the Rust
tests can replay the exact same gradients and compare against PyTorch.

Output format (compact JSON; every number is ``tensor.tolist()``, i.e. the
exact float32 value printed as a Python float)::

    {
      "torch_version": "2.x.y",
      "generated_by": "tools/torch_trajectories.py",
      "cpu_capability": "AVX2",   # ATen CPU kernel dispatch used (informational)
      "cases": [
        {
          "name": "adam_amsgrad",
          "optimizer": "Adam" | "AdamW" | "SGD" | "RMSprop" | "Adagrad" | "Adadelta" | "Rprop" | "ASGD"
                       | "Adamax" | "RAdam" | "NAdam",
          "config": {...all options, PyTorch names...},
          "seed": 1234,           # torch.manual_seed used for this case
          "grad_scale": 1.0,      # gradients are randn * grad_scale
          "tensors": [{"name": "w", "init": [...]}, ...],
          "steps": [{"grads": {"w": [...], ...}, "params": {"w": [...], ...}}, ...],
          "final_state": {"w": {"exp_avg": [...], ...}, ...},
          # only where torch keeps per-parameter scalar tensors (NAdam):
          "final_scalar_state": {"w": {"mu_product": 0.0123}, ...}
        }, ...
      ]
    }

How to run
----------
Needs PyTorch (CPU is enough; ``pip install torch``)::

    python3 tools/torch_trajectories.py            # writes tests/data/torch_trajectories.json
    python3 tools/torch_trajectories.py -o out.json

The output is deterministic: every case seeds ``torch.manual_seed`` with its
own fixed seed (derived from the case's position in ``CASES``), so rerunning
with the same torch version on the same kind of CPU reproduces the file byte
for byte.

Precision note: the numbers are exact float32 results of PyTorch's CPU
kernels, which are *not* a plain sequence of correctly rounded float32 ops.
With the AVX2 dispatch, ``add(alpha=)``, ``lerp``, ``addcmul`` and
``mul().add()`` chains are evaluated with fused multiply-add, and float32
``sqrt`` goes through MKL and is not always correctly rounded (+-1 ulp).
Regenerating on a CPU with another ATen dispatch (``ATEN_CPU_CAPABILITY``)
changes results in the last bits, and a GPU implementation cannot match
bit for bit, so consumers should compare with a small tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

NUM_STEPS = 12
TENSOR_SHAPES = [("w", 7), ("b", 3), ("e", 70)]
BASE_SEED = 20240601

# (name, optimizer class name, explicit kwargs, grad_scale)
# Every numeric hyper-parameter is written as a Python float literal and every
# option of the optimizer is passed explicitly.
CASES = [
    # ---------------------------------------------------------------- SGD
    ("sgd_plain", "SGD",
     dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False), 1.0),
    ("sgd_momentum", "SGD",
     dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False), 1.0),
    ("sgd_momentum_dampening", "SGD",
     dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.0, nesterov=False, maximize=False), 1.0),
    ("sgd_nesterov", "SGD",
     dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True, maximize=False), 1.0),
    ("sgd_weight_decay_momentum", "SGD",
     dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=False, maximize=False), 1.0),
    ("sgd_maximize_momentum", "SGD",
     dict(lr=0.1, momentum=0.5, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=True), 1.0),
    # ---------------------------------------------------------------- Adam
    ("adam_default", "Adam",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, amsgrad=False, maximize=False), 1.0),
    ("adam_amsgrad", "Adam",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, amsgrad=True, maximize=False), 1.0),
    ("adam_weight_decay", "Adam",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.1, amsgrad=False, maximize=False), 1.0),
    ("adam_maximize", "Adam",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, amsgrad=False, maximize=True), 1000.0),
    ("adam_betas_eps", "Adam",
     dict(lr=0.01, betas=(0.8, 0.99), eps=1e-06, weight_decay=0.0, amsgrad=False, maximize=False), 0.001),
    ("adam_low_beta1", "Adam",
     dict(lr=0.01, betas=(0.3, 0.9), eps=1e-08, weight_decay=0.0, amsgrad=False, maximize=False), 1.0),
    # ---------------------------------------------------------------- AdamW
    ("adamw_default", "AdamW",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, amsgrad=False, maximize=False), 1.0),
    ("adamw_weight_decay_amsgrad", "AdamW",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.1, amsgrad=True, maximize=False), 1.0),
    ("adamw_maximize", "AdamW",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, amsgrad=False, maximize=True), 1000.0),
    # ---------------------------------------------------------------- RMSprop
    ("rmsprop_default", "RMSprop",
     dict(lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.0, centered=False, maximize=False), 1.0),
    ("rmsprop_centered", "RMSprop",
     dict(lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.0, centered=True, maximize=False), 1.0),
    ("rmsprop_momentum", "RMSprop",
     dict(lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.9, centered=False, maximize=False), 1.0),
    ("rmsprop_centered_momentum_weight_decay", "RMSprop",
     dict(lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.1, momentum=0.9, centered=True, maximize=False), 1.0),
    ("rmsprop_maximize", "RMSprop",
     dict(lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.0, centered=False, maximize=True), 0.001),
    ("rmsprop_low_alpha_centered", "RMSprop",
     dict(lr=0.01, alpha=0.3, eps=1e-08, weight_decay=0.0, momentum=0.0, centered=True, maximize=False), 1.0),
    # ---------------------------------------------------------------- Adagrad
    ("adagrad_default", "Adagrad",
     dict(lr=0.1, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, maximize=False), 1.0),
    ("adagrad_lr_decay", "Adagrad",
     dict(lr=0.1, lr_decay=0.01, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, maximize=False), 1.0),
    ("adagrad_initial_accumulator", "Adagrad",
     dict(lr=0.1, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.1, eps=1e-10, maximize=False), 1.0),
    ("adagrad_weight_decay", "Adagrad",
     dict(lr=0.1, lr_decay=0.0, weight_decay=0.1, initial_accumulator_value=0.0, eps=1e-10, maximize=False), 1.0),
    ("adagrad_maximize", "Adagrad",
     dict(lr=0.1, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, maximize=True), 1.0),
    ("adagrad_eps", "Adagrad",
     dict(lr=0.1, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=0.001, maximize=False), 0.001),
    # ---------------------------------------------------------------- Adadelta
    ("adadelta_default", "Adadelta",
     dict(lr=1.0, rho=0.9, eps=1e-06, weight_decay=0.0, maximize=False), 1.0),
    ("adadelta_rho_lr", "Adadelta",
     dict(lr=0.5, rho=0.3, eps=1e-06, weight_decay=0.0, maximize=False), 1.0),
    ("adadelta_weight_decay_maximize", "Adadelta",
     dict(lr=1.0, rho=0.9, eps=1e-06, weight_decay=0.1, maximize=True), 1.0),
    ("adadelta_eps", "Adadelta",
     dict(lr=1.0, rho=0.9, eps=0.001, weight_decay=0.0, maximize=False), 0.001),
    # ---------------------------------------------------------------- Rprop
    ("rprop_default", "Rprop",
     dict(lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-06, 50.0), maximize=False), 1.0),
    ("rprop_etas_clamped", "Rprop",
     dict(lr=0.01, etas=(0.3, 1.7), step_sizes=(0.001, 0.05), maximize=False), 1.0),
    ("rprop_maximize", "Rprop",
     dict(lr=0.1, etas=(0.5, 1.2), step_sizes=(1e-06, 50.0), maximize=True), 1000.0),
    # ---------------------------------------------------------------- ASGD
    # eta and mu are 0-dim tensors in torch's state: recorded as plain numbers.
    ("asgd_default", "ASGD",
     dict(lr=0.01, lambd=0.0001, alpha=0.75, t0=1000000.0, weight_decay=0.0, maximize=False), 1.0),
    ("asgd_averaging", "ASGD",
     dict(lr=0.05, lambd=0.5, alpha=0.75, t0=3.0, weight_decay=0.0, maximize=False), 1.0),
    ("asgd_weight_decay_maximize", "ASGD",
     dict(lr=0.05, lambd=0.0001, alpha=0.75, t0=5.0, weight_decay=0.1, maximize=True), 1.0),
    ("asgd_alpha", "ASGD",
     dict(lr=0.05, lambd=0.5, alpha=0.3, t0=1.0, weight_decay=0.0, maximize=False), 1.0),
    # ---------------------------------------------------------------- Adamax
    ("adamax_default", "Adamax",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, maximize=False), 1.0),
    ("adamax_weight_decay", "Adamax",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.1, maximize=False), 1.0),
    ("adamax_maximize_betas_eps", "Adamax",
     dict(lr=0.01, betas=(0.5, 0.9), eps=0.001, weight_decay=0.0, maximize=True), 0.001),
    # ---------------------------------------------------------------- RAdam
    ("radam_default", "RAdam",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, decoupled_weight_decay=False,
          maximize=False), 1.0),
    ("radam_weight_decay", "RAdam",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.1, decoupled_weight_decay=False,
          maximize=False), 1.0),
    ("radam_decoupled_maximize", "RAdam",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.1, decoupled_weight_decay=True,
          maximize=True), 1.0),
    ("radam_betas_eps", "RAdam",
     dict(lr=0.01, betas=(0.3, 0.9), eps=1e-06, weight_decay=0.0, decoupled_weight_decay=False,
          maximize=False), 0.001),
    # ---------------------------------------------------------------- NAdam
    ("nadam_default", "NAdam",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, momentum_decay=0.004,
          decoupled_weight_decay=False, maximize=False), 1.0),
    ("nadam_weight_decay", "NAdam",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.1, momentum_decay=0.004,
          decoupled_weight_decay=False, maximize=False), 1.0),
    ("nadam_decoupled_maximize", "NAdam",
     dict(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.1, momentum_decay=0.004,
          decoupled_weight_decay=True, maximize=True), 1000.0),
    ("nadam_momentum_decay_betas_eps", "NAdam",
     dict(lr=0.01, betas=(0.5, 0.9), eps=1e-06, weight_decay=0.0, momentum_decay=0.3,
          decoupled_weight_decay=False, maximize=False), 0.001),
]

# State keys PyTorch uses; anything else except "step" is reported as an error
# so a renamed key in a future torch version does not go unnoticed.
KNOWN_STATE_KEYS = {
    "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer",
    "square_avg", "grad_avg", "sum",
    "acc_delta", "prev", "step_size", "ax", "eta", "mu",
    "exp_inf", "mu_product",
}

# 0-dim state recorded apart, in ``final_scalar_state`` (NAdam's mu_product); other 0-dim
# state (ASGD's eta and mu) stays in ``final_state``, where ``tolist()`` makes it a number.
SCALAR_STATE_KEYS = {"mu_product"}

# Module holding the single-tensor implementation of each optimizer.
SINGLE_TENSOR_FN = {
    "SGD": ("torch.optim.sgd", "_single_tensor_sgd"),
    "Adam": ("torch.optim.adam", "_single_tensor_adam"),
    "AdamW": ("torch.optim.adam", "_single_tensor_adam"),
    "RMSprop": ("torch.optim.rmsprop", "_single_tensor_rmsprop"),
    "Adagrad": ("torch.optim.adagrad", "_single_tensor_adagrad"),
    "Adadelta": ("torch.optim.adadelta", "_single_tensor_adadelta"),
    "Rprop": ("torch.optim.rprop", "_single_tensor_rprop"),
    "ASGD": ("torch.optim.asgd", "_single_tensor_asgd"),
    "Adamax": ("torch.optim.adamax", "_single_tensor_adamax"),
    "RAdam": ("torch.optim.radam", "_single_tensor_radam"),
    "NAdam": ("torch.optim.nadam", "_single_tensor_nadam"),
}


class _CallCounter:
    """Wraps a module-level function to verify the single-tensor path ran."""

    def __init__(self, module_name: str, fn_name: str):
        self.module = sys.modules.get(module_name)
        self.fn_name = fn_name
        self.orig = getattr(self.module, fn_name, None) if self.module else None
        self.calls = 0

    def __enter__(self):
        if self.orig is not None:
            orig = self.orig

            def wrapper(*args, **kwargs):
                self.calls += 1
                return orig(*args, **kwargs)

            setattr(self.module, self.fn_name, wrapper)
        return self

    def __exit__(self, *exc):
        if self.orig is not None:
            setattr(self.module, self.fn_name, self.orig)
        return False


def config_for_json(kwargs: dict) -> dict:
    cfg = {}
    for k, v in kwargs.items():
        if isinstance(v, tuple):
            cfg[k] = [float(x) for x in v]
        elif isinstance(v, bool):
            cfg[k] = v
        else:
            cfg[k] = float(v)
    return cfg


# Adadelta/Rprop/ASGD and Adamax/RAdam/NAdam were added in parallel, both right after
# Adagrad, so each set was generated with the seeds of the same indices. The second set keeps
# its seeds (and so its recorded data): its seed index does not count the first set's cases.
SEED_SHARING = (("Adadelta", "Rprop", "ASGD"), ("Adamax", "RAdam", "NAdam"))


def seed_index(index: int, opt_name: str) -> int:
    first, second = SEED_SHARING
    if opt_name in second:
        return index - sum(c[1] in first for c in CASES[:index])
    return index


def run_case(index: int, name: str, opt_name: str, kwargs: dict, grad_scale: float) -> dict:
    seed = BASE_SEED + seed_index(index, opt_name)
    torch.manual_seed(seed)

    params = [torch.randn(n, dtype=torch.float32) for _, n in TENSOR_SHAPES]
    init = [p.tolist() for p in params]
    for p in params:
        p.requires_grad_(True)

    opt_cls = getattr(torch.optim, opt_name)
    opt = opt_cls(params, foreach=False, **kwargs)

    # Sanity: the optimizer must hold exactly the options we passed.
    group = opt.param_groups[0]
    for k, v in kwargs.items():
        got = group[k]
        if isinstance(v, tuple):
            got = tuple(got)
        if got != v:
            raise RuntimeError(f"{name}: option {k}={got!r}, expected {v!r}")

    steps = []
    mod_name, fn_name = SINGLE_TENSOR_FN[opt_name]
    with _CallCounter(mod_name, fn_name) as counter:
        for _ in range(NUM_STEPS):
            grads = []
            for p in params:
                g = torch.randn(p.shape, dtype=torch.float32)
                if grad_scale != 1.0:
                    g = g * grad_scale
                p.grad = g
                grads.append(g.clone())
            opt.step()
            steps.append({
                "grads": {tn: g.tolist() for (tn, _), g in zip(TENSOR_SHAPES, grads)},
                "params": {tn: p.detach().tolist() for (tn, _), p in zip(TENSOR_SHAPES, params)},
            })
    if counter.orig is None:
        print(f"warning: {mod_name}.{fn_name} not found; single-tensor path not verified",
              file=sys.stderr)
    elif counter.calls != NUM_STEPS:
        raise RuntimeError(f"{name}: {fn_name} called {counter.calls} times, expected {NUM_STEPS}")

    final_state = {}
    final_scalars = {}
    for (tn, _), p in zip(TENSOR_SHAPES, params):
        st = {}
        sc = {}
        for key, val in opt.state[p].items():
            if key == "step":
                continue
            if key not in KNOWN_STATE_KEYS:
                raise RuntimeError(f"{name}: unexpected state key {key!r}")
            if key in SCALAR_STATE_KEYS:
                # A per-parameter scalar such as NAdam's mu_product (float32 0-dim tensor).
                sc[key] = val.item()
            else:
                st[key] = val.detach().tolist()
        final_state[tn] = dict(sorted(st.items()))
        if sc:
            final_scalars[tn] = dict(sorted(sc.items()))

    return {
        "name": name,
        "optimizer": opt_name,
        "config": config_for_json(kwargs),
        "seed": seed,
        "grad_scale": float(grad_scale),
        "tensors": [{"name": tn, "init": v} for (tn, _), v in zip(TENSOR_SHAPES, init)],
        "steps": steps,
        "final_state": final_state,
        **({"final_scalar_state": final_scalars} if final_scalars else {}),
    }


def main() -> None:
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    default_out = os.path.join(repo_root, "tests", "data", "torch_trajectories.json")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=default_out, help="output JSON path")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    names = [c[0] for c in CASES]
    if len(set(names)) != len(names):
        raise RuntimeError("duplicate case names")

    cases = [run_case(i, *c) for i, c in enumerate(CASES)]
    doc = {
        "torch_version": torch.__version__.split("+")[0],
        "generated_by": "tools/torch_trajectories.py",
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
