"""Sign and verify a ~100 MB artifact, against ``sha256sum`` of the same weights file.

Each step runs in a fresh child process (warm file cache: the file is read once first); peak
memory is the child's high-water mark (``VmHWM``) and its rise over the child's own imports.
Run: ``.venv/bin/python benchmarks/artifact.py [--mb 100] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")

import torch  # noqa: F401
from lvtl.artifact import TrustStore, load_verified, sign, verify
op, work = sys.argv[1], Path(sys.argv[2])
base = hwm()
t0 = time.perf_counter()
if op == "sign":
    sign(work / "model.pt", work / "keys" / "signing_key.pem", work / sys.argv[3],
         name="bench", version="1.0.0")
elif op == "verify":
    verify(work / "art", TrustStore.from_path(work / "keys"))
elif op == "load_verified":
    load_verified(work / "art", TrustStore.from_path(work / "keys"))
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_mib": hwm(), "imports_mib": base}))
"""


def _child(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _sha256sum(path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=int, default=100, help="Weights size in MB (10^6 bytes).")
    ap.add_argument("--repeat", type=int, default=3, help="Runs of each step; the best counts.")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "artifact.json")
    args = ap.parse_args()

    import torch

    from lvtl.artifact import WEIGHTS, keygen

    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        keygen(work / "keys")
        n = args.mb * 1_000_000 // 4
        g = torch.Generator().manual_seed(0)
        torch.save({"state_dict": {"w": torch.randn(n, generator=g)}}, work / "model.pt")
        sign_runs = [_child("sign", str(work), f"art{i}") for i in range(args.repeat)]
        (work / "art0").rename(work / "art")
        weights = work / "art" / WEIGHTS
        size = weights.stat().st_size
        _sha256sum(weights)  # warm the cache
        sha = min(_sha256sum(weights) for _ in range(args.repeat))
        ver_runs = [_child("verify", str(work)) for _ in range(args.repeat)]
        load_runs = [_child("load_verified", str(work)) for _ in range(args.repeat)]

    def best(runs):
        r = min(runs, key=lambda x: x["seconds"])
        return {**r, "ratio_to_sha256sum": r["seconds"] / sha,
                "peak_above_imports_mib": r["peak_mib"] - r["imports_mib"]}

    result = {
        "bytes": size, "sha256sum_seconds": sha,
        "sign": best(sign_runs), "verify": best(ver_runs), "load_verified": best(load_runs),
        "python": platform.python_version(), "torch": torch.__version__,
        "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"weights {size / 1e6:.1f} MB; sha256sum {sha:.3f} s")
    print("| step | time (s) | / sha256sum | peak RSS (MiB) | peak above imports (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for step in ("sign", "verify", "load_verified"):
        r = result[step]
        print(f"| {step} | {r['seconds']:.3f} | {r['ratio_to_sha256sum']:.2f}x | "
              f"{r['peak_mib']:.0f} | {r['peak_above_imports_mib']:.0f} |")


if __name__ == "__main__":
    main()
