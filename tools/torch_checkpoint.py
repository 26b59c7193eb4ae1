#!/usr/bin/env python3
"""Convert wgpu-optim checkpoints to and from PyTorch, and write the interchange test fixture.

Commands
--------
::

    python3 tools/torch_checkpoint.py to-torch ours.safetensors out.pt
    python3 tools/torch_checkpoint.py from-torch in.pt ours.safetensors
    python3 tools/torch_checkpoint.py fixture [-o tests/data/checkpoint_torch]
    python3 tools/torch_checkpoint.py fixture-bf16 [-o tests/data/checkpoint_torch_bf16]

Needs PyTorch (CPU is enough; ``pip install torch``). The safetensors format is read and written
here directly (no ``safetensors`` package needed).

The PyTorch side: a checkpoint dict as training scripts usually save one
--------------------------------------------------------------------------
``to-torch`` writes, and ``from-torch`` reads, a ``torch.save``'d dict::

    {
      "model":     {name: tensor, ...},        # the parameters, in the checkpoint's tensor order
      "optimizer": opt.state_dict(),           # torch.optim's own format
      "scaler":    torch.amp.GradScaler(...).state_dict() or absent,
      "optimizer_class": "Adam" | "AdamW" | "SGD" | "RMSprop" | "Adagrad" | ...,   # optional on input
      "wgpu_optim": {"step": int, "max_grad_norm": float | None, "grad_norm_type": float,
                     "skip_nonfinite": bool, "grad_scaler_init_scale": float},  # optional on input
    }

so that ``opt.load_state_dict(ck["optimizer"])``, ``model.load_state_dict(ck["model"],
strict=False)`` and ``scaler.load_state_dict(ck["scaler"])`` resume in PyTorch.

* Parameter ids in ``state`` and ``param_groups[i]["params"]`` are 0..n in the checkpoint's tensor
  order; every group also carries ``param_names`` (PyTorch >= 2.6 understands them).
* Hyperparameters keep PyTorch's names; Adam's ``betas[0]``/``betas[1]`` become the ``betas``
  tuple; booleans (stored as 0/1 on our side) become bools. Adam with
  ``decoupled_weight_decay`` = 1 becomes ``torch.optim.AdamW``.
* State: our tensors ``state.<name>.<key>`` under PyTorch's keys (whichever the file holds).
  ``step`` is a scalar tensor where torch keeps one (Adam(W), RMSprop and Adagrad; PyTorch's SGD
  keeps none). An optimizer at step 0 gets an empty state, as PyTorch's lazy initialisation has,
  unless torch creates it eagerly (Adagrad). Both are asked of torch, by building the class on a
  one-element parameter (before and after one step). torch's other 0-dim state (ASGD's ``eta``
  and ``mu``, NAdam's ``mu_product``) is not stored on our side, since it follows from the step count and the
  hyperparameters: ``from-torch`` checks it against what that step count gives, ``to-torch``
  recomputes it (stepping a one-element probe, see ``derived_scalars``).
* The script knows of each optimizer only ``TORCH_CLASSES``, a row mapping our name to torch's
  class(es): hyperparameter names, order and types come from the file's ``param_groups``, from
  torch's state_dict and from the class's constructor; state keys from the file's tensors or
  from torch's state.
* On input (``from-torch``), parameter names come from the groups' ``param_names`` when present,
  otherwise the i-th id listed across the groups is the i-th tensor of ``model``. Parameters
  without state (never stepped) get PyTorch's initial state. The state keys written are those
  torch keeps for the configuration (a parameter's own state must hold the same ones). All parameters must have the same
  step (wgpu-optim keeps one step count); SGD's step is ``wgpu_optim.step`` when given, else 1
  when momentum buffers exist (SGD only needs to know whether the first step is done), else 0.
  Tensors keep their PyTorch shapes (wgpu-optim accepts any shape with the right element count).
  The GradScaler's ``init_scale`` is not in PyTorch's state_dict: it is
  ``wgpu_optim.grad_scaler_init_scale`` when present, else PyTorch's default 65536.

Storage dtypes
--------------
Tensors keep their dtype and shape both ways (F32, BF16, F16). ``to-torch``: each parameter in
its stored dtype, the state cast to the parameter's dtype as torch's ``load_state_dict`` does;
with master weights the torch model is the f32 master copy (f32 parameters and state: the
mixed-precision recipe), and ``wgpu_optim.param_dtypes`` / ``wgpu_optim.precision`` record the
stored dtypes and rounding so that ``from-torch`` restores them. ``from-torch``: parameters in
torch's dtype (or ``wgpu_optim.param_dtypes``; with master weights the stored parameter is the
master copy rounded to nearest even); the state in BF16 where torch kept all of it in bf16,
else F32 (or ``wgpu_optim.precision.state``). State keeps torch's shape: the parameter's, or
Adafactor's ``row_var`` [..., rows, 1] and ``col_var`` [..., 1, cols] (always F32 on our side);
Adafactor's ``eps`` of (None, x) is stored as f32's machine epsilon, what None means for f32
parameters.

Our side: a wgpu-optim checkpoint (see ``src/checkpoint/`` for the full format)
--------------------------------------------------------------------------------
safetensors: ``param.<name>``, ``state.<name>.<key>``, ``state.<name>.master``,
``state.<name>.step``; metadata ``format``, ``format_version``, ``optimizer``, ``step``,
``tensors``, ``param_groups``, ``max_grad_norm``, ``grad_norm_type``, ``skip_nonfinite``,
``grad_scaler``, ``precision`` (optional), ``written_by``.

``fixture``
-----------
Writes the data of ``tests/checkpoint.rs``'s PyTorch interchange test into
``tests/data/checkpoint_torch/`` (relative to the repository root): for each case (Adam with
amsgrad and two named groups, AdamW, SGD with momentum and two unnamed groups, RMSprop centered
with momentum, Adagrad, Adadelta, Rprop with two unnamed groups, ASGD with two unnamed groups
(one averaging), Adamax with two named groups, RAdam with decoupled decay, NAdam with two named
groups of different ``betas`` and ``momentum_decay``, Adafactor with two named groups, one
with ``eps`` (None, 1e-3)) it runs 10 steps in PyTorch (``foreach=False``, fixed seed), saves the
PyTorch checkpoint dict, converts it with ``from-torch`` into ``<case>.safetensors``, runs 10
more steps and records their gradients, the step torch kept at step 10 (``torch_step``, null
for SGD) and PyTorch's parameters and state after step 20 in ``expected.json``. As a self-check it also converts the file back with ``to-torch``, resumes a
fresh PyTorch optimizer from it and requires the same 20-step result bit for bit. Deterministic
for a given torch version and CPU.
"""

from __future__ import annotations

import argparse
import json
import inspect
import os
import re
from collections import OrderedDict

import torch

import safetensors_io

FORMAT = "wgpu-optim-checkpoint"
FORMAT_VERSION = "1"

# Our optimizer name (OptimizerConfig::NAME) -> the torch.optim classes that implement it, each
# with the hyperparameter values it implies (torch's AdamW is its Adam with decoupled weight
# decay). This is all the script knows of any optimizer: hyperparameters, their types and order,
# and which state tensors exist are read from the checkpoint (its param_groups and tensors), from
# torch's state_dict, or from torch itself (`torch_class_info`, `probe`). A new optimizer whose
# hyperparameters and state keys carry PyTorch's names needs one row here.
TORCH_CLASSES = {
    "Adam": [("AdamW", {"decoupled_weight_decay": 1}), ("Adam", {})],
    "SGD": [("SGD", {})],
    "RMSprop": [("RMSprop", {})],
    "Adagrad": [("Adagrad", {})],
    "Adadelta": [("Adadelta", {})],
    "Rprop": [("Rprop", {})],
    "ASGD": [("ASGD", {})],
    "Adamax": [("Adamax", {})],
    "RAdam": [("RAdam", {})],
    "NAdam": [("NAdam", {})],
    "Adafactor": [("Adafactor", {})],
}

# torch's execution switches: the same numbers whichever way they are set, so not
# hyperparameters of ours (they are left at torch's defaults, with foreach=False).
TORCH_SWITCHES = {"foreach", "fused", "capturable", "differentiable"}

TUPLE_ENTRY = re.compile(r"^(\w+)\[(\d+)\]$")


def torch_class_info(cls_name: str) -> OrderedDict:
    """The hyperparameters of a torch.optim class in its constructor's order, with defaults."""
    cls = getattr(torch.optim, cls_name)
    sig = inspect.signature(cls)
    return OrderedDict((n, p.default) for n, p in sig.parameters.items()
                       if n != "params" and n not in TORCH_SWITCHES)


def probe(cls, kw: dict, shape) -> tuple[dict, dict]:
    """What torch keeps for one parameter of this configuration: the state of a fresh optimizer
    (non-empty where torch creates it eagerly, as Adagrad's) and the state after one step."""
    p = torch.zeros(shape, dtype=torch.float32, requires_grad=True)
    opt = cls([p], foreach=False, **kw)
    fresh = {k: v.clone() for k, v in opt.state[p].items() if v is not None}
    p.grad = torch.zeros_like(p)
    opt.step()
    return fresh, {k: v for k, v in opt.state[p].items() if v is not None}


def derived_scalars(cls, kw: dict, step: int, stepped: dict) -> dict:
    """torch's 0-dim state tensors other than ``step`` (ASGD's ``eta`` and ``mu``, NAdam's
    ``mu_product``) after ``step`` steps. wgpu-optim does not store them: they follow from the
    step count and the hyperparameters, so they are recomputed here by stepping a one-element
    probe ``step`` times (the gradient does not enter them)."""
    keys = [k for k, v in stepped.items() if k != "step" and v.dim() == 0]
    if not keys or step == 0:
        return {}
    p = torch.zeros((1,), dtype=torch.float32, requires_grad=True)
    opt = cls([p], foreach=False, **kw)
    for _ in range(step):
        p.grad = torch.zeros_like(p)
        opt.step()
    return {k: opt.state[p][k].clone() for k in keys}


def state_keys_of(tensors, name: str) -> list[str]:
    """The state keys a checkpoint holds for tensor `name` (its `state.<name>.<key>` tensors)."""
    prefix = f"state.{name}."
    return [k[len(prefix):] for k in tensors
            if k.startswith(prefix) and k[len(prefix):] != "step"]


# ---------------------------------------------------------------------------- safetensors

# safetensors dtype names <-> torch dtypes (the storage dtypes wgpu-optim writes).
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def read_safetensors(path: str):
    """(OrderedDict name -> tensor in file order; metadata dict), in this script's dtypes."""
    return safetensors_io.read_safetensors(path, DTYPES)


def write_safetensors(path: str, tensors, meta: dict) -> None:
    """Write (name, tensor) pairs in order, atomically, in this script's dtypes."""
    safetensors_io.write_safetensors(path, tensors, meta, DTYPES)


# ---------------------------------------------------------------------------- to-torch

def torch_kwargs(kind: str, hp: dict) -> tuple[type, dict]:
    """Our hyperparameters of one group -> (torch class, constructor kwargs). Every name is
    torch's; `x[i]` entries become the tuple `x`; booleans (0/1 on our side) are those whose
    torch default is a bool."""
    if kind not in TORCH_CLASSES:
        raise SystemExit(f"no torch class for optimizer {kind!r}: add a row to TORCH_CLASSES")
    ours = {k: v for k, v in hp.items() if k != "params"}
    for cls_name, fixed in TORCH_CLASSES[kind]:
        if all(ours.get(k) == v for k, v in fixed.items()):
            break
    else:
        raise SystemExit(f"no torch class for {kind} with {ours}")
    info = torch_class_info(cls_name)
    kw, tuples = {}, {}
    for name, v in ours.items():
        if name in fixed:
            continue
        m = TUPLE_ENTRY.match(name)
        if m:
            tuples.setdefault(m.group(1), {})[int(m.group(2))] = float(v)
            continue
        if name not in info:
            raise SystemExit(f"torch.optim.{cls_name} has no hyperparameter {name!r}")
        kw[name] = bool(v) if isinstance(info[name], bool) else float(v)
    for name, entries in tuples.items():
        if name not in info:
            raise SystemExit(f"torch.optim.{cls_name} has no hyperparameter {name!r}")
        kw[name] = tuple(entries[i] for i in range(len(entries)))
    return getattr(torch.optim, cls_name), kw


def to_torch(src: str, dst: str) -> None:
    tensors, meta = read_safetensors(src)
    if meta.get("format") != FORMAT:
        raise SystemExit(f"{src}: not a wgpu-optim checkpoint")
    kind = meta["optimizer"]
    names = json.loads(meta["tensors"])
    groups = json.loads(meta["param_groups"])
    step = int(meta["step"])
    scaler = json.loads(meta["grad_scaler"])

    precision = json.loads(meta.get("precision", "null"))
    master = bool(precision and precision["master_weights"])
    param_dtypes = {n: DTYPE_NAMES[tensors[f"param.{n}"].dtype] for n in names}
    # With master weights the torch model is the f32 master copy (the mixed-precision recipe:
    # f32 parameters and state); otherwise each parameter keeps its dtype.
    params = OrderedDict()
    for n in names:
        t = tensors.get(f"state.{n}.master") if master else None
        t = tensors[f"param.{n}"] if t is None else t
        params[n] = t.clone().requires_grad_(True)
    cls = None
    torch_groups = []
    for g in groups:
        c, kw = torch_kwargs(kind, g)
        if cls is not None and c is not cls:
            raise SystemExit("groups disagree on decoupled_weight_decay")
        cls = c
        torch_groups.append({"params": [(n, params[n]) for n in g["params"]], **kw})
    opt = cls(torch_groups, foreach=False)

    for g in groups:
        _, kw = torch_kwargs(kind, g)
        # Whether torch creates this state before the first step, and whether it keeps a step.
        fresh, stepped = probe(cls, kw, (1,))
        derived = derived_scalars(cls, kw, step, stepped)
        for n in g["params"]:
            p = params[n]
            st = {}
            if step > 0 or fresh:
                for key in state_keys_of(tensors, n):
                    if key == "master":
                        continue
                    # As torch's load_state_dict does: floating state in the parameter's dtype.
                    # State of the parameter's size takes its shape; other state (Adafactor's
                    # row_var [..., rows, 1] and col_var [..., 1, cols]) keeps the file's.
                    t = tensors[f"state.{n}.{key}"]
                    if t.numel() == p.numel():
                        t = t.reshape(p.shape)
                    st[key] = t.to(p.dtype).clone()
                if "step" in stepped:
                    st["step"] = torch.tensor(float(step), dtype=stepped["step"].dtype)
                st.update({k: v.clone() for k, v in derived.items()})
            opt.state[p] = st

    sd = opt.state_dict()
    # torch numbers ids in group order; renumber them 0..n in the checkpoint's tensor order.
    chain = [n for g in sd["param_groups"] for n in g["param_names"]]
    to_ours = {torch_id: names.index(n) for torch_id, n in enumerate(chain)}
    sd["state"] = {to_ours[i]: v for i, v in sd["state"].items()}
    sd["state"] = dict(sorted(sd["state"].items()))
    for g in sd["param_groups"]:
        g["params"] = [to_ours[i] for i in g["params"]]

    out = {
        "model": OrderedDict((n, p.detach()) for n, p in params.items()),
        "optimizer": sd,
        "optimizer_class": cls.__name__,
        "wgpu_optim": {
            "step": step,
            "max_grad_norm": json.loads(meta["max_grad_norm"]),
            "grad_norm_type": float(meta["grad_norm_type"]),
            "skip_nonfinite": meta["skip_nonfinite"] == "true",
            "param_dtypes": param_dtypes,
        },
    }
    if precision is not None:
        out["wgpu_optim"]["precision"] = precision
    if scaler is not None:
        out["scaler"] = {
            "scale": float(scaler["scale"]),
            "growth_factor": float(scaler["growth_factor"]),
            "backoff_factor": float(scaler["backoff_factor"]),
            "growth_interval": int(scaler["growth_interval"]),
            "_growth_tracker": int(scaler["growth_tracker"]),
        }
        out["wgpu_optim"]["grad_scaler_init_scale"] = float(scaler["init_scale"])
    torch.save(out, dst)


# ---------------------------------------------------------------------------- from-torch

def torch_class_of(group: dict, declared: str | None) -> str:
    """The torch class of a state_dict group: `declared` when given, else the one class of
    TORCH_CLASSES whose constructor takes exactly the group's hyperparameters."""
    if declared is not None:
        return declared
    keys = {k for k in group if k not in TORCH_SWITCHES and k not in ("params", "param_names")}
    found = {c for rows in TORCH_CLASSES.values() for c, _ in rows
             if set(torch_class_info(c)) <= keys}
    # Classes that imply a value (AdamW) fit a group of their base class too; prefer the base.
    if len(found) > 1:
        found = {c for c in found if not any(c == r and fixed for rows in TORCH_CLASSES.values()
                                             for r, fixed in rows)}
    if len(found) != 1:
        raise SystemExit("cannot tell the optimizer; add 'optimizer_class' to the checkpoint")
    return found.pop()


def our_name(cls_name: str) -> tuple[str, dict]:
    """(our optimizer name, the hyperparameter values the torch class implies)."""
    for kind, rows in TORCH_CLASSES.items():
        for c, fixed in rows:
            if c == cls_name:
                return kind, fixed
    raise SystemExit(f"no row for torch.optim.{cls_name} in TORCH_CLASSES")


def our_hyperparameters(cls_name: str, group: dict) -> dict:
    """A state_dict group's hyperparameters under our names: torch's, in its constructor's
    order (then any the group adds), tuples as `x[i]`, booleans as 0/1; torch's execution
    switches left out; missing ones from the class row or torch's defaults."""
    _, fixed = our_name(cls_name)
    info = torch_class_info(cls_name)
    names = list(info) + [k for k in group if k not in info and k not in TORCH_SWITCHES
                          and k not in ("params", "param_names")]
    names += [k for k in fixed if k not in names]
    hp = {}
    for name in names:
        v = group.get(name, fixed.get(name, info.get(name)))
        if isinstance(v, torch.Tensor):
            v = v.item()
        if isinstance(v, (tuple, list)):
            for i, x in enumerate(v):
                if x is None:
                    # Adafactor's eps1 of None: the parameters' machine epsilon, which is
                    # what torch uses for f32 parameters (and what our None stands for).
                    x = torch.finfo(torch.float32).eps
                hp[f"{name}[{i}]"] = float(x.item() if isinstance(x, torch.Tensor) else x)
        elif isinstance(v, bool):
            hp[name] = 1 if v else 0
        elif isinstance(v, (int, float)):
            hp[name] = float(v)
        else:
            raise SystemExit(f"hyperparameter {name!r} = {v!r} is not a number")
    return hp


def from_torch(src: str, dst: str) -> None:
    ck = torch.load(src, weights_only=True)
    if "optimizer" not in ck or "model" not in ck:
        raise SystemExit(f"{src}: expected a dict with 'optimizer' (a state_dict) and 'model'")
    sd, model = ck["optimizer"], ck["model"]
    declared = ck.get("optimizer_class")
    extra = ck.get("wgpu_optim", {}) or {}
    groups = sd["param_groups"]
    cls_name = torch_class_of(groups[0], declared)
    kind, _ = our_name(cls_name)

    # Parameter id -> name.
    ids = [i for g in groups for i in g["params"]]
    if all("param_names" in g for g in groups):
        id_name = {i: n for g in groups for i, n in zip(g["params"], g["param_names"])}
    else:
        keys = list(model.keys())
        if len(keys) < len(ids):
            raise SystemExit("fewer model tensors than optimizer parameters")
        id_name = dict(zip(ids, keys))
    wanted = set(id_name.values())
    missing = wanted - set(model.keys())
    if missing:
        raise SystemExit(f"optimizer parameters missing from 'model': {sorted(missing)}")
    names = [n for n in model.keys() if n in wanted]
    name_id = {n: i for i, n in id_name.items()}

    our_groups = []
    for g in groups:
        hp = our_hyperparameters(cls_name, g)
        our_groups.append({"params": [id_name[i] for i in g["params"]], **hp})

    # Which state tensors exist: those torch keeps for the configuration (a one-step probe;
    # what a parameter's own state holds must agree), with a parameter's initial state where
    # it has none (never stepped): torch's eager one (Adagrad's sum), else zeros.
    cls = getattr(torch.optim, cls_name)
    probes = []
    for g in our_groups:
        _, kw = torch_kwargs(kind, g)
        probes.append(probe(cls, kw, (1,)))
    # 0-dim state other than step (ASGD's eta, mu; NAdam's mu_product) is derived, not stored:
    # see derived_scalars.
    scalar_keys = {k for k, v in probes[0][1].items() if k != "step" and v.dim() == 0}
    keys = [k for k in probes[0][1] if k != "step" and k not in scalar_keys]  # torch's order
    for _, stepped in probes[1:]:
        if sorted(k for k in stepped if k != "step" and k not in scalar_keys) != sorted(keys):
            raise SystemExit("groups disagree on boolean options; wgpu-optim needs them equal")
    probe_of = {n: pr for g, pr in zip(our_groups, probes) for n in g["params"]}
    # The state keys (torch's order) and shapes of each parameter, from a probe of its shape:
    # they may depend on it (Adafactor keeps row_var and col_var for a matrix, variance for a
    # vector).
    kw_of = {n: torch_kwargs(kind, g)[1] for g in our_groups for n in g["params"]}
    probed, state_shapes = {}, {}
    for gi, g in enumerate(our_groups):
        for n in g["params"]:
            at = (gi, tuple(model[n].shape))
            if at not in probed:
                _, stepped = probe(cls, kw_of[n], at[1])
                probed[at] = {k: v.shape for k, v in stepped.items()
                              if k != "step" and k not in scalar_keys}
            state_shapes[n] = probed[at]
    all_keys = {k for shapes in state_shapes.values() for k in shapes}

    # One step count for all.
    steps = set()
    for n in names:
        st = sd["state"].get(name_id[n], {})
        if "step" in st:
            s = st["step"]
            steps.add(int(s.item() if isinstance(s, torch.Tensor) else s))
    if len(steps) > 1:
        raise SystemExit(f"parameters have different step counts {sorted(steps)}; "
                         "wgpu-optim keeps one")
    if steps:
        step = steps.pop()
    elif "step" in extra:
        step = int(extra["step"])
    elif any(sd["state"].get(name_id[n], {}).get(k) is not None for n in names
             for k in all_keys):
        # torch keeps no step for this optimizer (SGD), but it has stepped: all it needs to
        # know is that the first step is done.
        step = 1
    else:
        step = 0

    # The derived scalars must be what the step count gives, or the resume would not be exact.
    # Storage dtypes. Parameters keep torch's dtype unless `wgpu_optim.param_dtypes` names one
    # (a file that to-torch wrote); with master weights (`wgpu_optim.precision`) the torch
    # parameters are the f32 master copies and the stored parameters their rounding to nearest
    # even. The state is BF16 where torch kept all of it in bf16 (torch keeps state in the
    # parameter's dtype), else F32 (exact for bf16 and f16 values).
    precision = extra.get("precision")
    master = bool(precision and precision["master_weights"])
    wanted_dtypes = extra.get("param_dtypes", {})
    param_dtype = {}
    for n in names:
        d = DTYPES.get(wanted_dtypes.get(n)) or model[n].dtype
        if d not in DTYPE_NAMES:
            raise SystemExit(f"parameter {n} is {d}, not one of {sorted(DTYPES)}")
        param_dtype[n] = d
    if master and not any(d != torch.float32 for d in param_dtype.values()):
        raise SystemExit("master weights need 16-bit parameters (wgpu_optim.param_dtypes)")
    state_dtypes = {v.dtype for n in names for k, v in sd["state"].get(name_id[n], {}).items()
                    if k in all_keys and v is not None}
    state_dtype = "BF16" if state_dtypes == {torch.bfloat16} else "F32"
    if precision is not None:
        state_dtype = precision["state"]
    out = [(f"param.{n}", model[n].detach().to(param_dtype[n])) for n in names]
    for n in names:
        p = model[n]
        st = {k: v for k, v in sd["state"].get(name_id[n], {}).items() if v is not None}
        if scalar_keys and st:
            want = derived_scalars(cls, kw_of[n], step, probe_of[n][1])
            for k in scalar_keys:
                got = st.pop(k, None)
                if got is None or not torch.equal(torch.as_tensor(got, dtype=want[k].dtype),
                                                  want[k]):
                    raise SystemExit(f"state {k} of {n} is {got}, step {step} gives "
                                     f"{want[k].item()}; wgpu-optim derives it from the step")
        shapes = state_shapes[n]
        if st and sorted(k for k in st if k != "step") != sorted(shapes):
            raise SystemExit(f"state of {n} holds {sorted(st)}, torch keeps {list(shapes)} for "
                             "its configuration")
        fresh = probe_of[n][0]
        for key, shape in shapes.items():
            t = st.get(key)
            if t is None:
                init = fresh[key].reshape(-1)[0].item() if key in fresh else 0.0
                t = torch.full(shape, init, dtype=torch.float32)
            if t.numel() != shape.numel():
                raise SystemExit(f"state {key} of {n} has {t.numel()} elements, "
                                 f"torch keeps {shape.numel()} ({list(shape)})")
            # Adafactor's factored second moment is f32 on our side, whatever the state dtype.
            dtype = "F32" if kind == "Adafactor" else state_dtype
            out.append((f"state.{n}.{key}", t.detach().to(DTYPES[dtype]).reshape(shape)))
        if master and param_dtype[n] != torch.float32:
            out.append((f"state.{n}.master", p.detach().to(torch.float32)))
        out.append((f"state.{n}.step", torch.tensor(float(step), dtype=torch.float32)))

    scaler = None
    sc = ck.get("scaler")
    if sc:
        scaler = {
            "scale": float(sc["scale"]),
            "growth_tracker": int(sc["_growth_tracker"]),
            "init_scale": float(extra.get("grad_scaler_init_scale", 65536.0)),
            "growth_factor": float(sc["growth_factor"]),
            "backoff_factor": float(sc["backoff_factor"]),
            "growth_interval": int(sc["growth_interval"]),
        }
    norm_type = float(extra.get("grad_norm_type", 2.0))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "optimizer": kind,
        "step": str(step),
        "tensors": json.dumps(names),
        "param_groups": json.dumps(our_groups),
        "max_grad_norm": json.dumps(extra.get("max_grad_norm")),
        "grad_norm_type": "inf" if norm_type == float("inf") else str(int(norm_type)),
        "skip_nonfinite": "true" if extra.get("skip_nonfinite", False) else "false",
        "grad_scaler": json.dumps(scaler),
        "written_by": f"tools/torch_checkpoint.py (torch {torch.__version__.split('+')[0]})",
    }
    if precision is not None or state_dtype != "F32":
        meta["precision"] = json.dumps(precision or {
            "state": state_dtype, "master_weights": False, "stochastic_rounding": False,
            "rounding_seed": 0, "rounding_counter": step})
    write_safetensors(dst, out, meta)


# ---------------------------------------------------------------------------- fixture

SHAPES = [("fc1.weight", (5, 7)), ("fc1.bias", (5,)), ("fc2.weight", (3, 5)), ("fc2.bias", (3,))]
STEPS_BEFORE = 10
STEPS_AFTER = 10
BASE_SEED = 20240917
# 0-dim state written to expected.json (as a number); other 0-dim state is left out.
RECORDED_SCALARS = {"mu_product"}

# (case, torch class, groups as (tensor names, kwargs), use named params)
FIXTURE_CASES = [
    ("adam_amsgrad", "Adam",
     [(["fc1.weight", "fc2.weight"], dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8,
                                          weight_decay=0.01, amsgrad=True)),
      (["fc1.bias", "fc2.bias"], dict(lr=0.02, betas=(0.8, 0.999), eps=1e-8,
                                      weight_decay=0.0, amsgrad=True))], True),
    ("adamw", "AdamW",
     [(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
       dict(lr=0.005, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05))], False),
    ("sgd_momentum", "SGD",
     [(["fc1.weight", "fc1.bias"], dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
      (["fc2.weight", "fc2.bias"], dict(lr=0.02, momentum=0.8, dampening=0.0,
                                        weight_decay=0.0))], False),
    ("rmsprop_centered_momentum", "RMSprop",
     [(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
       dict(lr=0.01, alpha=0.95, eps=1e-8, weight_decay=0.01, momentum=0.9, centered=True))],
     False),
    ("adagrad", "Adagrad",
     [(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
       dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1,
            eps=1e-10))], False),
    ("adadelta", "Adadelta",
     [(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
       dict(lr=0.5, rho=0.8, eps=1e-6, weight_decay=0.01))], False),
    ("rprop_groups", "Rprop",
     [(["fc1.weight", "fc1.bias"], dict(lr=0.02, etas=(0.4, 1.3), step_sizes=(1e-4, 0.5))),
      (["fc2.weight", "fc2.bias"], dict(lr=0.005, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)))],
     False),
    ("asgd_averaging", "ASGD",
     [(["fc1.weight", "fc1.bias"], dict(lr=0.05, lambd=0.5, alpha=0.75, t0=4.0,
                                        weight_decay=0.01)),
      (["fc2.weight", "fc2.bias"], dict(lr=0.02, lambd=1e-4, alpha=0.75, t0=1e6,
                                        weight_decay=0.0))], False),
    ("adamax", "Adamax",
     [(["fc1.weight", "fc1.bias"], dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)),
      (["fc2.weight", "fc2.bias"], dict(lr=0.02, betas=(0.8, 0.999), eps=1e-8,
                                        weight_decay=0.0))], True),
    ("radam_decoupled", "RAdam",
     [(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
       dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05,
            decoupled_weight_decay=True))], False),
    ("nadam", "NAdam",
     [(["fc1.weight", "fc2.weight"], dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8,
                                          weight_decay=0.01, momentum_decay=0.004)),
      (["fc1.bias", "fc2.bias"], dict(lr=0.02, betas=(0.8, 0.99), eps=1e-8,
                                      weight_decay=0.0, momentum_decay=0.1))], True),
    ("adafactor_groups", "Adafactor",
     [(["fc1.weight", "fc2.weight"], dict(lr=0.02, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                                          weight_decay=0.01)),
      (["fc1.bias", "fc2.bias"], dict(lr=0.05, beta2_decay=-0.5, eps=(1e-4, 1e-3), d=2.0,
                                      weight_decay=0.0))], True),
]


# Adadelta/Rprop/ASGD and Adamax/RAdam/NAdam were added in parallel, both right after Adagrad,
# so each set was generated with the seeds of the same indices. The second set keeps its seeds
# (and so its committed files): its seed index does not count the first set's cases.
SEED_SHARING = (("Adadelta", "Rprop", "ASGD"), ("Adamax", "RAdam", "NAdam"))


def seed_index(index: int, cls_name: str) -> int:
    first, second = SEED_SHARING
    if cls_name in second:
        return index - sum(c[1] in first for c in FIXTURE_CASES[:index])
    return index


def make_optimizer(cls_name, groups, params, named):
    cls = getattr(torch.optim, cls_name)
    torch_groups = []
    for names, kw in groups:
        ps = [(n, params[n]) for n in names] if named else [params[n] for n in names]
        torch_groups.append({"params": ps, **kw})
    return cls(torch_groups, foreach=False)


def fixture(out_dir: str) -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(out_dir, exist_ok=True)
    cases = []
    for index, (case, cls_name, groups, named) in enumerate(FIXTURE_CASES):
        torch.manual_seed(BASE_SEED + seed_index(index, cls_name))
        params = OrderedDict((n, torch.randn(s, dtype=torch.float32).requires_grad_(True))
                             for n, s in SHAPES)
        init = {n: p.detach().clone() for n, p in params.items()}
        opt = make_optimizer(cls_name, groups, params, named)
        grads = [{n: torch.randn(s, dtype=torch.float32) for n, s in SHAPES}
                 for _ in range(STEPS_BEFORE + STEPS_AFTER)]

        def step(opt, params, g):
            for n, p in params.items():
                p.grad = g[n].clone()
            opt.step()

        for k in range(STEPS_BEFORE):
            step(opt, params, grads[k])
        pt = os.path.join(out_dir, f".{case}.pt")
        torch.save({"model": OrderedDict((n, p.detach().clone()) for n, p in params.items()),
                    "optimizer": opt.state_dict(), "optimizer_class": cls_name}, pt)
        # The step torch itself keeps (None where it keeps none, as SGD).
        first = opt.state[next(iter(params.values()))]
        torch_step = int(first["step"].item()) if "step" in first else None
        ours = os.path.join(out_dir, f"{case}.safetensors")
        from_torch(pt, ours)
        os.remove(pt)
        for k in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER):
            step(opt, params, grads[k])

        # Self-check: back to torch, resume, same bits as the uninterrupted run.
        back = os.path.join(out_dir, f".{case}.back.pt")
        to_torch(ours, back)
        ck = torch.load(back, weights_only=True)
        os.remove(back)
        params2 = OrderedDict((n, t.clone().requires_grad_(True)) for n, t in ck["model"].items())
        opt2 = make_optimizer(cls_name, groups, params2, True)
        sd = ck["optimizer"]
        opt2.load_state_dict(sd)
        for k in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER):
            step(opt2, params2, grads[k])
        for n in params:
            if not torch.equal(params[n], params2[n]):
                raise SystemExit(f"{case}: to-torch round trip differs on {n}")

        state = {}
        for n, p in params.items():
            st = opt.state[p]
            # 0-dim state: NAdam's mu_product as a number (the Rust replay checks it against
            # NAdamConfig::mu_product); ASGD's eta and mu left out (derived from the step).
            state[n] = {k: v.item() if v.dim() == 0 else v.reshape(-1).tolist()
                        for k, v in sorted(st.items())
                        if k != "step" and (v.dim() > 0 or k in RECORDED_SCALARS)}
        cases.append({
            "name": case,
            "optimizer_class": cls_name,
            "checkpoint": f"{case}.safetensors",
            "steps_before": STEPS_BEFORE,
            "torch_step": torch_step,
            "init": {n: v.reshape(-1).tolist() for n, v in init.items()},
            "grads": [{n: g[n].reshape(-1).tolist() for n in g}
                      for g in grads[STEPS_BEFORE:]],
            "params": {n: p.detach().reshape(-1).tolist() for n, p in params.items()},
            "state": state,
        })
        print(f"{case}: ok")
    doc = {
        "torch_version": torch.__version__.split("+")[0],
        "generated_by": "python3 tools/torch_checkpoint.py fixture",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cases": cases,
    }
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {out_dir}")


BF16_CASES = ("adamw_bf16", "adamw_master")


def fixture_bf16(out_dir: str) -> None:
    """The 16-bit interchange fixture (``tests/data/checkpoint_torch_bf16``): ``adamw_bf16``,
    torch's AdamW on bf16 parameters (torch keeps its state in bf16), and ``adamw_master``,
    torch's AdamW on f32 parameters saved as bf16 parameters with f32 master weights and
    stochastic rounding. Each: 10 steps in torch, ``from-torch``, then the self-checks: the file
    converted back (``to-torch``) resumes torch bit for bit, and converting that back again
    (``from-torch``) gives the same tensors. ``expected.json`` holds each tensor's dtype, shape
    and values at the save."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(out_dir, exist_ok=True)
    groups = [(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
               dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05))]
    cases = []
    for index, case in enumerate(BF16_CASES):
        torch.manual_seed(BASE_SEED + 100 + index)
        dtype = torch.bfloat16 if case == "adamw_bf16" else torch.float32
        params = OrderedDict((n, torch.randn(s).to(dtype).requires_grad_(True))
                             for n, s in SHAPES)
        opt = make_optimizer("AdamW", groups, params, True)
        grads = [{n: torch.randn(s).to(dtype) for n, s in SHAPES}
                 for _ in range(STEPS_BEFORE + STEPS_AFTER)]

        def step(opt, params, g):
            for n, p in params.items():
                p.grad = g[n].clone()
            opt.step()

        for k in range(STEPS_BEFORE):
            step(opt, params, grads[k])
        extra = {}
        if case == "adamw_master":
            extra = {"precision": {"state": "F32", "master_weights": True,
                                   "stochastic_rounding": True, "rounding_seed": 5,
                                   "rounding_counter": STEPS_BEFORE},
                     "param_dtypes": {n: "BF16" for n, _ in SHAPES}}
        pt = os.path.join(out_dir, f".{case}.pt")
        torch.save({"model": OrderedDict((n, p.detach().clone()) for n, p in params.items()),
                    "optimizer": opt.state_dict(), "optimizer_class": "AdamW",
                    "wgpu_optim": extra}, pt)
        ours = os.path.join(out_dir, f"{case}.safetensors")
        from_torch(pt, ours)
        os.remove(pt)
        saved, _ = read_safetensors(ours)
        at_save = {n: {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                       "values": t.to(torch.float32).reshape(-1).tolist()}
                   for n, t in saved.items() if not n.endswith(".step")}
        uninterrupted = OrderedDict((n, p.detach().clone()) for n, p in params.items())
        for k in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER):
            step(opt, params, grads[k])

        # Self-checks: back to torch resumes bit for bit; back to ours gives the same tensors.
        back = os.path.join(out_dir, f".{case}.back.pt")
        to_torch(ours, back)
        ck = torch.load(back, weights_only=True)
        for n, t in ck["model"].items():
            if t.dtype != dtype or not torch.equal(t, uninterrupted[n]):
                raise SystemExit(f"{case}: to-torch gives another {n}")
        params2 = OrderedDict((n, t.clone().requires_grad_(True)) for n, t in ck["model"].items())
        opt2 = make_optimizer("AdamW", groups, params2, True)
        opt2.load_state_dict(ck["optimizer"])
        for k in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER):
            step(opt2, params2, grads[k])
        for n in params:
            if not torch.equal(params[n], params2[n]):
                raise SystemExit(f"{case}: the torch resume differs on {n}")
        again = os.path.join(out_dir, f".{case}.again.safetensors")
        from_torch(back, again)
        os.remove(back)
        round_trip, meta2 = read_safetensors(again)
        os.remove(again)
        for n, t in saved.items():
            u = round_trip[n]
            if (t.dtype, t.shape) != (u.dtype, u.shape) or not torch.equal(t, u):
                raise SystemExit(f"{case}: from-torch(to-torch(..)) changes {n}")
        cases.append({"name": case, "checkpoint": f"{case}.safetensors",
                      "steps_before": STEPS_BEFORE, "tensors": at_save})
        print(f"{case}: ok")
    doc = {"torch_version": torch.__version__.split("+")[0],
           "generated_by": "python3 tools/torch_checkpoint.py fixture-bf16",
           "cases": cases}
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {out_dir}")


def main() -> None:
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("to-torch", help="wgpu-optim .safetensors -> torch checkpoint dict .pt")
    a.add_argument("src")
    a.add_argument("dst")
    b = sub.add_parser("from-torch", help="torch checkpoint dict .pt -> wgpu-optim .safetensors")
    b.add_argument("src")
    b.add_argument("dst")
    c = sub.add_parser("fixture", help="write the interchange test fixture")
    c.add_argument("-o", "--output",
                   default=os.path.join(repo_root, "tests", "data", "checkpoint_torch"))
    d = sub.add_parser("fixture-bf16", help="write the 16-bit interchange test fixture")
    d.add_argument("-o", "--output",
                   default=os.path.join(repo_root, "tests", "data", "checkpoint_torch_bf16"))
    args = ap.parse_args()
    if args.command == "fixture-bf16":
        fixture_bf16(args.output)
    elif args.command == "to-torch":
        to_torch(args.src, args.dst)
    elif args.command == "from-torch":
        from_torch(args.src, args.dst)
    else:
        fixture(args.output)


if __name__ == "__main__":
    main()
