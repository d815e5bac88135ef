"""Training-step benchmark on this machine's CPU: samples/s, peak memory, crop-loading share.

Run: ``.venv/bin/python benchmarks/train.py [--cache DIR] [--steps N]``.

Each configuration runs in a fresh child process (so its peak RSS is its own): a few warm-up
steps, then ``--steps`` timed steps of Adam on ``masked_dice_loss`` with crops cut from a cached
case (``--cache``: a case cache folder from ``lvtl preprocess``; default: a synthetic beating
sphere of the small phantom's size). Loading = making the crop (``lvtl.data.random_crop`` +
augmentation), measured inside the same loop. Results: stdout (markdown) and
``benchmarks/results/train.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

CONFIGS = {
    "demo": {"filters": 4, "blocks": [1, 1, 1], "crop": [4, 24, 32, 32]},
    "paper-small-crop": {"filters": 8, "blocks": [1, 2, 4], "crop": [8, 32, 48, 48]},
    "paper": {"filters": 8, "blocks": [1, 2, 4], "crop": [16, 64, 96, 96]},
}


def worker(name: str, cache: str | None, steps: int) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from lvtl.model import LVNet4d
    from lvtl.train import TrainConfig, _batch, masked_dice_loss

    cfg = CONFIGS[name]
    if cache:
        from lvtl.preprocess import load_cached

        case = load_cached(cache)
    else:
        from synthetic4d import make_case

        case = make_case("bench", 0, t=20, n=128, labelled=(0, 7))
    model = LVNet4d(init_filters=cfg["filters"], blocks_down=tuple(cfg["blocks"]),
                    groups=min(8, cfg["filters"]))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    tc = TrainConfig(crop=tuple(cfg["crop"]))
    rng = np.random.default_rng(0)
    load = total = 0.0
    warm = 1 if name == "paper" else 2
    for i in range(warm + steps):
        t0 = time.perf_counter()
        x, y, m = _batch([case], tc, rng)
        t1 = time.perf_counter()
        loss = masked_dice_loss(model(x), y, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i >= warm:
            load += t1 - t0
            total += t2 - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    return {"config": name, **cfg, "steps": steps, "threads": torch.get_num_threads(),
            "seconds_per_step": total / steps, "samples_per_s": steps / total,
            "loading_share": load / total, "peak_rss_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="a case cache folder (default: synthetic)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.cache, args.steps)))
        return
    rows = []
    for name in args.configs.split(","):
        steps = 2 if name == "paper" else args.steps
        cmd = [sys.executable, __file__, "--worker", name, "--steps", str(steps)]
        if args.cache:
            cmd += ["--cache", args.cache]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(
        {"benchmark": "train", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "cache": args.cache, "rows": rows}, indent=1) + "\n")
    print("| config | filters / blocks | crop (t, z, y, x) | s / step | samples / s | "
          "loading share | peak RSS MiB |\n|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['filters']} / {r['blocks']} | {r['crop']} | "
              f"{r['seconds_per_step']:.2f} | {r['samples_per_s']:.2f} | "
              f"{100 * r['loading_share']:.1f}% | {r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
