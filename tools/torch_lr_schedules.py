"""Record torch.optim.lr_scheduler trajectories for wgpu-optim's scheduler parity tests.

How to run (from the repository root):

    pip install torch
    python3 tools/torch_lr_schedules.py

It writes tests/data/lr_schedules.json, which tests/schedulers.rs replays against the crate's
schedulers driving a real optimizer. The output is deterministic: no randomness, only PyTorch's
scheduler arithmetic on Python floats.

For every case it builds the optimizer (one or two parameter groups), builds the scheduler with
the given options (which is PyTorch's initial step), then records after construction and after
every `scheduler.step()` (preceded by an `optimizer.step()`, the documented order):
  * `lr`: `group["lr"]` of every group,
  * `momentum`: SGD's `group["momentum"]` or Adam's `group["betas"][0]` of every group, or null
    for optimizers without one (Adagrad),
  * `last_epoch`: the scheduler's `last_epoch` (null for ChainedScheduler, which has none).
ReduceLROnPlateau steps with `metrics[i]`. Option names are PyTorch's, so the Rust side maps them
one to one.

LambdaLR's and MultiplicativeLR's `lr_lambda` is given by name and parameters, e.g.
`{"lambda": "warmup_linear", "warmup": 5, "total": 30}` (or a list of those, one per group); the
functions are in LAMBDAS below and tests/schedulers.rs builds the same ones in Rust.
"""

import json
import math
import os
import sys

import torch
from torch.optim import SGD, Adagrad, Adam
from torch.optim import lr_scheduler as S

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "lr_schedules.json")


def make_optimizer(spec):
    """Two tiny tensors per group; numbers only matter for the hyperparameters recorded."""
    groups = []
    for i, lr in enumerate(spec["lrs"]):
        p = torch.nn.Parameter(torch.full((3,), 0.5 + i))
        p.grad = torch.full((3,), 0.1)
        groups.append({"params": [p], "lr": lr})
    kind = spec["kind"]
    if kind == "sgd":
        return SGD(groups, lr=spec["lrs"][0], momentum=spec.get("momentum", 0.0))
    if kind == "adam":
        return Adam(groups, lr=spec["lrs"][0], betas=tuple(spec.get("betas", (0.9, 0.999))))
    if kind == "adagrad":
        return Adagrad(groups, lr=spec["lrs"][0])
    raise ValueError(kind)


def _warmup_linear(warmup, total):
    # Hugging Face's get_linear_schedule_with_warmup.
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        return max(0.0, float(total - step) / float(max(1, total - warmup)))

    return f


def _warmup_cosine(warmup, total, cycles=0.5):
    # Hugging Face's get_cosine_schedule_with_warmup.
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(cycles) * 2.0 * progress)))

    return f


LAMBDAS = {
    "const": lambda value: (lambda epoch: value),
    "pow": lambda base: (lambda epoch: base**epoch),
    "step_factor": lambda gamma, every: (lambda epoch: gamma if epoch > 0 and epoch % every == 0 else 1.0),
    "warmup_linear": _warmup_linear,
    "warmup_cosine": _warmup_cosine,
}


def make_lambda(spec):
    if isinstance(spec, list):
        return [make_lambda(s) for s in spec]
    return LAMBDAS[spec["lambda"]](**{k: v for k, v in spec.items() if k != "lambda"})


def make_scheduler(opt, spec):
    kind = spec["kind"]
    o = {k: v for k, v in spec.items() if k != "kind"}
    if kind == "SequentialLR":
        subs = [make_scheduler(opt, s) for s in o["schedulers"]]
        return S.SequentialLR(opt, subs, milestones=o["milestones"])
    if kind == "ChainedScheduler":
        return S.ChainedScheduler([make_scheduler(opt, s) for s in o["schedulers"]])
    if "lr_lambda" in o:
        o["lr_lambda"] = make_lambda(o["lr_lambda"])
    return getattr(S, kind)(opt, **o)


def momenta(opt):
    out = []
    for g in opt.param_groups:
        if "betas" in g:
            out.append(g["betas"][0])
        elif "momentum" in g:
            out.append(g["momentum"])
        else:
            return None
    return out


def record(case):
    opt = make_optimizer(case["optimizer"])
    sched = make_scheduler(opt, case["scheduler"])
    metrics = case.get("metrics")
    lrs = [[g["lr"] for g in opt.param_groups]]
    moms = [momenta(opt)]
    epochs = [getattr(sched, "last_epoch", None)]
    for i in range(case["steps"]):
        opt.step()
        if metrics is not None:
            sched.step(metrics[i])
        else:
            sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
        moms.append(momenta(opt))
        epochs.append(getattr(sched, "last_epoch", None))
    for row in lrs:
        assert all(isinstance(x, float) or isinstance(x, int) for x in row), row
    out = dict(case)
    out["lr"] = lrs
    out["momentum"] = None if moms[0] is None else moms
    out["last_epoch"] = epochs
    return out


def plateau_metrics(n):
    """A loss that improves, plateaus, improves a little (below and above the threshold), and
    gets worse: every branch of ReduceLROnPlateau (bad epochs, cooldown, min_lr, eps)."""
    m = []
    v = 1.0
    for i in range(n):
        phase = (i // 6) % 4
        if phase == 0:
            v *= 0.8  # clear improvement
        elif phase == 1:
            v *= 1.0  # flat
        elif phase == 2:
            v *= 1.0 - 5e-5  # improvement below the default relative threshold 1e-4
        else:
            v *= 1.02  # worse
        m.append(v)
    return m


def accuracy_metrics(n):
    """A metric to maximise with an absolute threshold of 0.01."""
    m = []
    for i in range(n):
        m.append(0.5 + 0.3 * (1 - math.exp(-i / 6)) + (0.005 if i % 5 == 0 else 0.0))
    return m


SGD2 = {"kind": "sgd", "lrs": [0.1, 0.01], "momentum": 0.9}
SGD1 = {"kind": "sgd", "lrs": [0.05], "momentum": 0.9}
SGD_PLAIN = {"kind": "sgd", "lrs": [0.1, 0.02]}
ADAM2 = {"kind": "adam", "lrs": [0.001, 0.003]}
ADAM1 = {"kind": "adam", "lrs": [0.002], "betas": [0.8, 0.99]}
ADAGRAD = {"kind": "adagrad", "lrs": [0.01, 0.05]}

N = 40

CASES = [
    # StepLR
    {"name": "step_two_groups", "optimizer": SGD2, "scheduler": {"kind": "StepLR", "step_size": 3, "gamma": 0.5}},
    {"name": "step_default_gamma", "optimizer": ADAM1, "scheduler": {"kind": "StepLR", "step_size": 7}},
    {"name": "step_gamma_gt1", "optimizer": SGD_PLAIN, "scheduler": {"kind": "StepLR", "step_size": 1, "gamma": 1.1}},
    # MultiStepLR (a repeated milestone multiplies by gamma twice, as PyTorch's Counter does)
    {"name": "multistep", "optimizer": SGD2, "scheduler": {"kind": "MultiStepLR", "milestones": [5, 12, 12, 30], "gamma": 0.2}},
    {"name": "multistep_zero", "optimizer": ADAM2, "scheduler": {"kind": "MultiStepLR", "milestones": [0, 3, 39]}},
    # ExponentialLR
    {"name": "exponential", "optimizer": SGD2, "scheduler": {"kind": "ExponentialLR", "gamma": 0.9}},
    {"name": "exponential_up", "optimizer": ADAGRAD, "scheduler": {"kind": "ExponentialLR", "gamma": 1.05}},
    # CosineAnnealingLR (recursive form, through two and a half periods)
    {"name": "cosine", "optimizer": SGD2, "scheduler": {"kind": "CosineAnnealingLR", "T_max": 10, "eta_min": 0.001}},
    {"name": "cosine_long", "optimizer": ADAM2, "scheduler": {"kind": "CosineAnnealingLR", "T_max": 40}},
    {"name": "cosine_tmax1", "optimizer": SGD_PLAIN, "scheduler": {"kind": "CosineAnnealingLR", "T_max": 1}},
    {"name": "cosine_tmax7", "optimizer": SGD1, "scheduler": {"kind": "CosineAnnealingLR", "T_max": 7, "eta_min": 0.01}},
    # CosineAnnealingWarmRestarts
    {"name": "warm_restarts", "optimizer": SGD2, "scheduler": {"kind": "CosineAnnealingWarmRestarts", "T_0": 5, "eta_min": 0.001}},
    {"name": "warm_restarts_mult", "optimizer": ADAM2, "scheduler": {"kind": "CosineAnnealingWarmRestarts", "T_0": 3, "T_mult": 2}},
    # LinearLR
    {"name": "linear_default", "optimizer": SGD2, "scheduler": {"kind": "LinearLR"}},
    {"name": "linear_down", "optimizer": ADAM2, "scheduler": {"kind": "LinearLR", "start_factor": 0.5, "end_factor": 0.1, "total_iters": 10}},
    {"name": "linear_long", "optimizer": ADAGRAD, "scheduler": {"kind": "LinearLR", "start_factor": 0.25, "end_factor": 1.0, "total_iters": 37}},
    # OneCycleLR
    {"name": "onecycle_sgd", "optimizer": SGD2, "scheduler": {"kind": "OneCycleLR", "max_lr": [0.1, 0.05], "total_steps": N}},
    {"name": "onecycle_adam_linear_three", "optimizer": ADAM2, "scheduler": {"kind": "OneCycleLR", "max_lr": 0.01, "total_steps": N, "pct_start": 0.25, "anneal_strategy": "linear", "div_factor": 10.0, "final_div_factor": 100.0, "three_phase": True}},
    {"name": "onecycle_adam_cos_three", "optimizer": ADAM1, "scheduler": {"kind": "OneCycleLR", "max_lr": 0.02, "total_steps": 33, "pct_start": 0.4, "three_phase": True, "base_momentum": 0.8, "max_momentum": 0.9}},
    {"name": "onecycle_adagrad", "optimizer": ADAGRAD, "scheduler": {"kind": "OneCycleLR", "max_lr": [0.3, 0.2], "total_steps": 30, "pct_start": 0.1, "cycle_momentum": False}},
    # CyclicLR
    {"name": "cyclic_triangular", "optimizer": SGD2, "scheduler": {"kind": "CyclicLR", "base_lr": [0.01, 0.001], "max_lr": [0.1, 0.01], "step_size_up": 5, "step_size_down": 3}},
    {"name": "cyclic_triangular2_adam", "optimizer": ADAM2, "scheduler": {"kind": "CyclicLR", "base_lr": 0.0001, "max_lr": 0.001, "step_size_up": 4, "mode": "triangular2"}},
    {"name": "cyclic_exp_range", "optimizer": SGD1, "scheduler": {"kind": "CyclicLR", "base_lr": 0.001, "max_lr": 0.006, "step_size_up": 3, "step_size_down": 6, "mode": "exp_range", "gamma": 0.95, "base_momentum": 0.85, "max_momentum": 0.95}},
    {"name": "cyclic_adagrad", "optimizer": ADAGRAD, "scheduler": {"kind": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2, "step_size_down": 5, "cycle_momentum": False}},
    # ReduceLROnPlateau
    {"name": "plateau_min_rel", "optimizer": SGD2, "scheduler": {"kind": "ReduceLROnPlateau", "factor": 0.5, "patience": 2, "cooldown": 1, "min_lr": [0.001, 0.0005]}, "metrics": plateau_metrics(N)},
    {"name": "plateau_defaults", "optimizer": ADAM2, "scheduler": {"kind": "ReduceLROnPlateau", "patience": 4}, "metrics": plateau_metrics(N)},
    {"name": "plateau_max_abs", "optimizer": SGD1, "scheduler": {"kind": "ReduceLROnPlateau", "mode": "max", "factor": 0.3, "patience": 0, "threshold": 0.01, "threshold_mode": "abs", "cooldown": 2, "min_lr": 0.004, "eps": 0.0005}, "metrics": accuracy_metrics(N)},
    {"name": "plateau_min_abs", "optimizer": ADAGRAD, "scheduler": {"kind": "ReduceLROnPlateau", "factor": 0.7, "patience": 1, "threshold": 0.001, "threshold_mode": "abs"}, "metrics": plateau_metrics(N)},
    # SequentialLR
    {"name": "sequential_warmup_cosine", "optimizer": SGD2, "scheduler": {"kind": "SequentialLR", "schedulers": [
        {"kind": "LinearLR", "start_factor": 0.1, "end_factor": 1.0, "total_iters": 5},
        {"kind": "CosineAnnealingLR", "T_max": 30, "eta_min": 0.0001}], "milestones": [5]}},
    {"name": "sequential_three", "optimizer": ADAM2, "scheduler": {"kind": "SequentialLR", "schedulers": [
        {"kind": "LinearLR", "start_factor": 0.2, "total_iters": 4},
        {"kind": "ExponentialLR", "gamma": 0.9},
        {"kind": "StepLR", "step_size": 4, "gamma": 0.5}], "milestones": [4, 15]}},
    {"name": "sequential_warmup_restarts", "optimizer": SGD1, "scheduler": {"kind": "SequentialLR", "schedulers": [
        {"kind": "LinearLR", "start_factor": 0.5, "total_iters": 3},
        {"kind": "CosineAnnealingWarmRestarts", "T_0": 6, "T_mult": 2, "eta_min": 0.001}], "milestones": [3]}},
    {"name": "sequential_cyclic_multistep", "optimizer": SGD2, "scheduler": {"kind": "SequentialLR", "schedulers": [
        {"kind": "CyclicLR", "base_lr": 0.01, "max_lr": 0.05, "step_size_up": 3},
        {"kind": "MultiStepLR", "milestones": [3, 8], "gamma": 0.5}], "milestones": [10]}},
    # ConstantLR
    {"name": "constant_default", "optimizer": SGD2, "scheduler": {"kind": "ConstantLR"}},
    {"name": "constant_half", "optimizer": ADAM1, "scheduler": {"kind": "ConstantLR", "factor": 0.5, "total_iters": 12}},
    {"name": "constant_one_step", "optimizer": ADAGRAD, "scheduler": {"kind": "ConstantLR", "factor": 0.1, "total_iters": 1}},
    # PolynomialLR (reaches 0 at total_iters and stays there)
    {"name": "polynomial_default", "optimizer": SGD2, "scheduler": {"kind": "PolynomialLR"}},
    {"name": "polynomial_square", "optimizer": ADAM2, "scheduler": {"kind": "PolynomialLR", "total_iters": 30, "power": 2.0}},
    {"name": "polynomial_sqrt", "optimizer": SGD1, "scheduler": {"kind": "PolynomialLR", "total_iters": 37, "power": 0.5}},
    # LambdaLR: Hugging Face's warm-up schedules, one function for all groups or one each
    {"name": "lambda_warmup_linear", "optimizer": SGD2, "scheduler": {"kind": "LambdaLR", "lr_lambda": {"lambda": "warmup_linear", "warmup": 5, "total": 30}}},
    {"name": "lambda_per_group", "optimizer": ADAM2, "scheduler": {"kind": "LambdaLR", "lr_lambda": [
        {"lambda": "warmup_cosine", "warmup": 4, "total": 36}, {"lambda": "pow", "base": 0.95}]}},
    {"name": "lambda_pow_one_group", "optimizer": SGD1, "scheduler": {"kind": "LambdaLR", "lr_lambda": {"lambda": "pow", "base": 0.9}}},
    # MultiplicativeLR
    {"name": "multiplicative_const", "optimizer": SGD2, "scheduler": {"kind": "MultiplicativeLR", "lr_lambda": {"lambda": "const", "value": 0.95}}},
    {"name": "multiplicative_per_group", "optimizer": ADAGRAD, "scheduler": {"kind": "MultiplicativeLR", "lr_lambda": [
        {"lambda": "step_factor", "gamma": 0.5, "every": 7}, {"lambda": "pow", "base": 0.99}]}},
    # ChainedScheduler (PyTorch's example; a warm-up chained with a decay; momentum cycling)
    {"name": "chained_constant_exponential", "optimizer": SGD2, "scheduler": {"kind": "ChainedScheduler", "schedulers": [
        {"kind": "ConstantLR", "factor": 0.1, "total_iters": 2},
        {"kind": "ExponentialLR", "gamma": 0.9}]}},
    {"name": "chained_three", "optimizer": ADAM2, "scheduler": {"kind": "ChainedScheduler", "schedulers": [
        {"kind": "LinearLR", "start_factor": 0.2, "total_iters": 6},
        {"kind": "MultiStepLR", "milestones": [10, 25], "gamma": 0.5},
        {"kind": "CosineAnnealingLR", "T_max": 15, "eta_min": 0.0001}]}},
    {"name": "chained_cyclic_exponential", "optimizer": SGD1, "scheduler": {"kind": "ChainedScheduler", "schedulers": [
        {"kind": "CyclicLR", "base_lr": 0.01, "max_lr": 0.05, "step_size_up": 4},
        {"kind": "ExponentialLR", "gamma": 0.98}]}},
    # The new schedulers inside SequentialLR (their closed forms, or get_lr, at the milestone)
    {"name": "sequential_constant_polynomial", "optimizer": SGD2, "scheduler": {"kind": "SequentialLR", "schedulers": [
        {"kind": "ConstantLR", "factor": 0.25, "total_iters": 10},
        {"kind": "PolynomialLR", "total_iters": 20, "power": 1.5}], "milestones": [4]}},
    {"name": "sequential_linear_constant", "optimizer": ADAM1, "scheduler": {"kind": "SequentialLR", "schedulers": [
        {"kind": "LinearLR", "start_factor": 0.5, "total_iters": 5},
        {"kind": "ConstantLR", "factor": 0.5, "total_iters": 8}], "milestones": [6]}},
    {"name": "sequential_lambda_multiplicative", "optimizer": ADAM2, "scheduler": {"kind": "SequentialLR", "schedulers": [
        {"kind": "LambdaLR", "lr_lambda": {"lambda": "warmup_linear", "warmup": 8, "total": 8}},
        {"kind": "MultiplicativeLR", "lr_lambda": {"lambda": "const", "value": 0.9}}], "milestones": [8]}},
    {"name": "sequential_chained_first", "optimizer": SGD2, "scheduler": {"kind": "SequentialLR", "schedulers": [
        {"kind": "ChainedScheduler", "schedulers": [
            {"kind": "ConstantLR", "factor": 0.5, "total_iters": 3},
            {"kind": "ExponentialLR", "gamma": 0.9}]},
        {"kind": "CosineAnnealingLR", "T_max": 20}], "milestones": [10]}},
]


def main():
    cases = []
    for c in CASES:
        c = dict(c)
        kind = c["scheduler"]["kind"]
        if "steps" not in c:
            c["steps"] = c["scheduler"].get("total_steps", N) if kind == "OneCycleLR" else N
        cases.append(record(c))
    doc = {
        "generator": "tools/torch_lr_schedules.py",
        "torch_version": torch.__version__.split("+")[0],
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
