#!/usr/bin/env python3
"""Time torch.optim.Adam (fused=True and foreach=True) for the sizes of our throughput table.

What it does
------------
For each size n (default 2^20, 2^22, 2^24 elements: those of ``examples/throughput.rs``) one
float32 parameter of n elements gets a fixed random gradient, and each variant
(``Adam(fused=True)``, ``Adam(foreach=True)``) takes ``--warmup`` untimed steps and then
``--iters`` timed steps. Each step is timed on its own:

* on CUDA with a pair of CUDA events recorded around ``opt.step()`` (GPU time, like our
  timestamp queries; one synchronisation at the end);
* on CPU with ``time.perf_counter`` (for a smoke test of the script: ``--device cpu``).

It prints the median time per step, the effective bandwidth (28 bytes per element, as
``bench::Workload::bytes_per_element`` counts Adam) and the fraction of a plain copy's
bandwidth (``dst.copy_(src)``, 8 bytes per element, timed the same way), so the numbers line
up with our table column for column.

Given ``--ours PATH`` (the JSON that ``cargo run --release --example throughput -- --json PATH``
writes on the same machine), it also prints ours/torch: our median Adam step time divided by
torch's, per size and variant (below 1: ours is faster).

Usage::

    python tools/bench_torch.py                       # CUDA, default sizes
    python tools/bench_torch.py --ours ours.json      # and the ratio to our results
    python tools/bench_torch.py --device cpu --sizes 65536 --iters 5   # smoke test
    python tools/bench_torch.py --json torch.json     # machine-readable results

Needs torch (pip install torch); nothing else.
"""

import argparse
import json
import statistics
import sys
import time

import torch

ADAM_BYTES = 28  # param, grad, exp_avg, exp_avg_sq read; param, exp_avg, exp_avg_sq written
COPY_BYTES = 8


def parse_sizes(text):
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or any(n <= 0 for n in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive integers")
    return sizes


def timer(device):
    """Return (time_one, finish): time_one(fn) records one timed call; finish() returns seconds."""
    if device.type == "cuda":
        pairs = []

        def time_one(fn):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))

        def finish():
            torch.cuda.synchronize(device)
            return [s.elapsed_time(e) / 1e3 for s, e in pairs]

        return time_one, finish

    times = []

    def time_one(fn):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)

    return time_one, lambda: times


def median_time(fn, device, warmup, iters):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    time_one, finish = timer(device)
    for _ in range(iters):
        time_one(fn)
    return statistics.median(finish())


def bench_size(n, device, variants, warmup, iters):
    gen = torch.Generator(device="cpu").manual_seed(n)
    src = torch.randn(n, generator=gen).to(device)
    dst = torch.empty_like(src)
    copy_s = median_time(lambda: dst.copy_(src), device, warmup, iters)
    rows = [{"variant": "copy", "n": n, "bytes_per_elem": COPY_BYTES, "s": copy_s}]
    for name, kwargs in variants:
        p = torch.nn.Parameter(torch.randn(n, generator=gen).to(device))
        p.grad = torch.randn(n, generator=gen).to(device)
        opt = torch.optim.Adam([p], lr=1e-3, **kwargs)
        s = median_time(opt.step, device, warmup, iters)
        rows.append({"variant": name, "n": n, "bytes_per_elem": ADAM_BYTES, "s": s})
        del opt, p
    for r in rows:
        r["gb_per_s"] = r["bytes_per_elem"] * n / r["s"] / 1e9
        r["copy_fraction"] = r["gb_per_s"] / (COPY_BYTES * n / copy_s / 1e9)
    return rows


def load_ours(path):
    with open(path) as f:
        doc = json.load(f)
    ours = {}
    for r in doc.get("results", []):
        if r.get("optimizer") == "Adam":
            ours[int(r["n"])] = float(r["gpu_s"])
    return doc, ours


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--sizes", type=parse_sizes, default=[1 << 20, 1 << 22, 1 << 24])
    ap.add_argument("--iters", type=int, default=None, help="timed steps (200 on CUDA, 10 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (20 on CUDA, 2 on CPU)")
    ap.add_argument("--ours", help="JSON written by examples/throughput.rs --json")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available here; use --device cpu for a smoke test")
    cuda = device.type == "cuda"
    iters = args.iters if args.iters is not None else (200 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 2)
    variants = [("Adam fused", {"fused": True}), ("Adam foreach", {"foreach": True})]

    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"torch {torch.__version__} on {name} ({device}); median of {iters} steps after {warmup}")
    print(f"timer: {'CUDA events' if cuda else 'time.perf_counter'}")
    print()
    print("| variant | size | B/elem | ms/step | GB/s | copy fraction |")
    print("|---|---:|---:|---:|---:|---:|")
    results = []
    for n in args.sizes:
        rows = bench_size(n, device, variants, warmup, iters)
        for r in rows:
            print(
                f"| {r['variant']} | {n} | {r['bytes_per_elem']} | {r['s'] * 1e3:.4f} "
                f"| {r['gb_per_s']:.1f} | {r['copy_fraction']:.2f} |"
            )
        results.extend(rows)

    if args.ours:
        doc, ours = load_ours(args.ours)
        print()
        print(f"ours: {doc.get('adapter')} ({doc.get('backend')}), timer {doc.get('timer')}")
        print("| size | ours ms/step | variant | torch ms/step | ours/torch |")
        print("|---:|---:|---|---:|---:|")
        for r in results:
            if r["variant"] == "copy":
                continue
            mine = ours.get(r["n"])
            if mine is None:
                print(f"| {r['n']} | - | {r['variant']} | {r['s'] * 1e3:.4f} | - |")
                continue
            r["ours_s"] = mine
            r["ours_over_torch"] = mine / r["s"]
            print(
                f"| {r['n']} | {mine * 1e3:.4f} | {r['variant']} | {r['s'] * 1e3:.4f} "
                f"| {mine / r['s']:.2f} |"
            )

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "torch_version": torch.__version__,
                    "device": str(device),
                    "device_name": name,
                    "timer": "cuda events" if cuda else "perf_counter",
                    "iters": iters,
                    "warmup": warmup,
                    "results": results,
                },
                f,
                indent=2,
            )
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
