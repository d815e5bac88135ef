"""Training-step benchmark: samples/s, peak memory, crop-loading share, the time the paper's
full protocol would take at that speed, and the step against this machine's conv3d limit.

Run: ``.venv/bin/python benchmarks/train.py [--cache DIR] [--steps N]`` (this machine's CPU), or
on a GPU ``.venv/bin/python benchmarks/train.py --device cuda --bf16 --configs paper`` (the
paper's crop 16 x 64 x 96 x 96 in bfloat16 autocast; ``--compile`` adds ``torch.compile``).

Each configuration runs in a fresh child process (so its peak RSS is its own): a few warm-up
steps, then ``--steps`` timed steps of Adam on ``masked_dice_loss`` with crops cut from a cached
case (``--cache``: a case cache folder from ``lvtl preprocess``; default: a synthetic beating
sphere of the small phantom's size). Loading = making the crop (``lvtl.data.random_crop`` +
augmentation), measured inside the same loop. Results: stdout (markdown) and
``benchmarks/results/train.json`` (``train-<device>.json`` off the CPU).

The limit: the step's convolution work in FLOP, computed from the network (every Conv4d
layer's multiply-adds over the input frames that exist, x 2; the backward pass twice that —
input and weight gradients — or once where the input needs no gradient, the first layer),
divided by this machine's conv3d throughput measured in the same process: forward plus both
gradients of the configuration's own level-0 convolution (T frames as the batch, f -> f
channels, 3x3x3, the crop's size) in ``channels_last_3d`` (oneDNN's fast layout), mean of 3
after a warm-up. ``ratio`` = step time / limit (goal: at most 1.5). The steps use the
measured tree's training optimiser (``make_optimizer``) and allocator setting
(``reuse_freed_memory``) where it has them; the conv3d reference always runs with freed memory
kept (without, each of its 300 MB outputs at the paper's crop is paged in afresh: 114 against
190 GFLOP/s), so every tree is held to the same limit. ``--lvtl-src DIR``
measures the lvtl package of another source tree (e.g. a ``git worktree`` of an older
commit), for before/after tables.

The protocol estimate counts training crops only: the paper trains 500 epochs with one crop per
training case and epoch, for the nested sizes 5, 10, ..., 30 (105 cases in all) in the random
and the transfer arm, i.e. 500 x 105 x 2 = 105,000 crops at Site 2; validation and test
inference are not included.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

PAPER_PROTOCOL_CROPS = 500 * sum(range(5, 31, 5)) * 2  # epochs x training cases x arms

CONFIGS = {
    "demo": {"filters": 4, "blocks": [1, 1, 1], "crop": [4, 24, 32, 32]},
    "paper-small-crop": {"filters": 8, "blocks": [1, 2, 4], "crop": [8, 32, 48, 48]},
    "paper": {"filters": 8, "blocks": [1, 2, 4], "crop": [16, 64, 96, 96]},
}


def conv_flops(model, crop: tuple[int, ...]) -> float:
    """FLOP of one training step's convolutions (see the module docstring), from the layers'
    shapes seen in one forward pass of a ``crop`` input (any lvtl version's Conv4d)."""
    import torch

    total = [0.0]

    def count(mod, args, _out):
        x = args[0]
        n, cin, t = x.shape[:3]
        kt, st, pt = mod.kernel_size[0], mod.stride[0], mod.padding[0]
        t_out, d, h, w = mod.output_shape(*x.shape[2:])
        pairs = sum(1 for t_o in range(t_out) for k in range(kt) if 0 <= t_o * st + k - pt < t)
        fwd = 2.0 * n * pairs * mod.out_channels * cin * math.prod(mod.kernel_size[1:]) * d * h * w
        total[0] += fwd * (3 if x.requires_grad else 2)

    # the stem's input needs no gradient; every later layer's input does (it depends on the
    # weights)
    hooks = [m.register_forward_hook(count) for m in model.modules()
             if type(m).__name__ == "Conv4d"]
    model(torch.zeros(1, 1, *crop)).sum()
    for hk in hooks:
        hk.remove()
    return total[0]


def conv3d_throughput(filters: int, crop: tuple[int, ...], repeats: int = 3) -> float:
    """FLOP/s of conv3d forward + input and weight gradients at the level-0 convolution's
    shape, channels_last_3d (this process's threads)."""
    import torch
    import torch.nn.functional as F

    t, d, h, w = crop
    cl = torch.channels_last_3d
    x = torch.randn(t, filters, d, h, w).contiguous(memory_format=cl).requires_grad_()
    wt = torch.randn(filters, filters, 3, 3, 3, requires_grad=True)
    g = torch.randn(t, filters, d, h, w).contiguous(memory_format=cl)

    def once():
        x.grad = wt.grad = None
        F.conv3d(x, wt, None, 1, 1).backward(g)

    once()
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    seconds = (time.perf_counter() - t0) / repeats
    return 3 * 2.0 * t * filters * filters * 27 * d * h * w / seconds


def worker(name: str, cache: str | None, steps: int, device: str = "cpu", bf16: bool = False,
           compile_: bool = False) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from lvtl.model.network import LVNet4d
    from lvtl.model.train import TrainConfig, _batch, batch_loss

    cfg = CONFIGS[name]
    if cache:
        from lvtl.data.cache import load_cached

        case = load_cached(cache)
    else:
        from synthetic4d import make_case

        case = make_case("bench", 0, t=20, n=128, labelled=(0, 7))
    model = LVNet4d(init_filters=cfg["filters"], blocks_down=tuple(cfg["blocks"]),
                    groups=min(8, cfg["filters"]))
    dev = torch.device(device)
    model.to(dev)
    try:  # the optimiser and allocator settings of lvtl's training loop (absent in older trees)
        from lvtl.model.heap import reuse_freed_memory
        from lvtl.model.train import make_optimizer
    except ImportError:
        def make_optimizer(m, lr):
            return torch.optim.Adam(m.parameters(), lr)
        reuse_freed_memory = contextlib.nullcontext
    opt = make_optimizer(model, 1e-3)
    # the conv3d reference always runs with freed memory kept (this tree's lvtl.model.heap,
    # whichever lvtl is measured), so the limit is the same for every tree
    spec = importlib.util.spec_from_file_location("_heap", REPO / "lvtl" / "model" / "heap.py")
    heap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heap)
    step_model = torch.compile(model) if compile_ else model
    tc = TrainConfig(crop=tuple(cfg["crop"]))
    rng = np.random.default_rng(0)
    load = total = 0.0
    # warm-up: also lets the case find the foreground of its labelled phases, as the first
    # crops of a training run do
    warm = (1 if name == "paper" else 5) + (3 if compile_ or dev.type == "cuda" else 0)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    memory = reuse_freed_memory()
    memory.__enter__()  # the measured tree's setting, for its steps
    for i in range(warm + steps):
        if i == warm and dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        x, y, m = _batch([case], tc, rng)
        x, y, m = x.to(dev), y.to(dev), m.to(dev)
        sync()
        t1 = time.perf_counter()
        loss = batch_loss(step_model, x, y, m, bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        t2 = time.perf_counter()
        if i >= warm:
            load += t1 - t0
            total += t2 - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    row = {"config": name, **cfg, "device": str(dev), "bf16": bf16, "compile": compile_,
           "steps": steps, "threads": torch.get_num_threads(),
           "seconds_per_step": total / steps, "samples_per_s": steps / total,
           "loading_share": load / total, "peak_rss_mib": peak}
    flops = conv_flops(model, tuple(cfg["crop"]))
    memory.__exit__(None, None, None)
    with heap.reuse_freed_memory():
        throughput = conv3d_throughput(cfg["filters"], tuple(cfg["crop"]))
    row.update(step_gflop=flops / 1e9, conv3d_gflops=throughput / 1e9,
               limit_seconds=flops / throughput,
               ratio=(total / steps) / (flops / throughput))
    if name == "paper":  # the paper's network and crop
        row["paper_protocol_hours"] = PAPER_PROTOCOL_CROPS * total / steps / 3600
    if dev.type == "cuda":
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        row["gpu"] = torch.cuda.get_device_name(dev)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="a case cache folder (default: synthetic)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--lvtl-src", help="measure the lvtl package in this source tree")
    ap.add_argument("--tag", default="", help="suffix of the results file (e.g. -before)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.cache, args.steps, args.device, args.bf16,
                                args.compile)))
        return
    rows = []
    on_cpu = args.device == "cpu"
    for name in args.configs.split(","):
        steps = 2 if name == "paper" and on_cpu else args.steps
        cmd = [sys.executable, __file__, "--worker", name, "--steps", str(steps),
               "--device", args.device] + ["--bf16"] * args.bf16 + ["--compile"] * args.compile
        if args.cache:
            cmd += ["--cache", args.cache]
        env = dict(os.environ)
        if args.lvtl_src:
            env["PYTHONPATH"] = str(Path(args.lvtl_src).resolve())
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"{name}: the benchmark worker failed:\n{out.stderr.strip()[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = ("train" if on_cpu else f"train-{args.device.replace(':', '')}") + args.tag + ".json"
    (RESULTS / name).write_text(json.dumps(
        {"benchmark": "train", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "cache": args.cache, "device": args.device, "lvtl": lvtl_version(args.lvtl_src),
         "rows": rows}, indent=1) + "\n")
    print("| config | filters / blocks | crop (t, z, y, x) | device | s / step | samples / s | "
          "loading share | peak RSS MiB | peak GPU MiB | paper protocol h | step GFLOP | "
          "conv3d GFLOP/s | limit s | step / limit |\n"
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gpu = f"{r['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in r else "-"
        hours = f"{r['paper_protocol_hours']:.1f}" if "paper_protocol_hours" in r else "-"
        dev = r["device"] + (" bf16" if r["bf16"] else "") + (" compiled" if r["compile"] else "")
        print(f"| {r['config']} | {r['filters']} / {r['blocks']} | {r['crop']} | {dev} | "
              f"{r['seconds_per_step']:.2f} | {r['samples_per_s']:.2f} | "
              f"{100 * r['loading_share']:.1f}% | {r['peak_rss_mib']:.0f} | {gpu} | {hours} | "
              f"{r['step_gflop']:.1f} | {r['conv3d_gflops']:.1f} | {r['limit_seconds']:.3f} | "
              f"{r['ratio']:.2f} |")


def lvtl_version(src: str | None) -> dict:
    """Which lvtl was measured: the source tree and its git commit (and whether it has
    uncommitted changes)."""
    root = Path(src).resolve() if src else REPO

    def git(*a):
        out = subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True)
        return out.stdout.strip()

    return {"source": str(root), "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "lvtl"))}


if __name__ == "__main__":
    main()
