"""Conv4d implementations compared: time folded into the batch (lvtl) against a loop over
output frames, forward + backward on the CPU, in one process.

Run: ``.venv/bin/python benchmarks/conv4d.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lvtl.model.network import Conv4d


def loop_conv4d(x: torch.Tensor, conv: Conv4d) -> torch.Tensor:
    """The straightforward way: for each output frame, sum conv3d over the time kernel."""
    kt, st, pt = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    t_in = x.shape[2]
    t_out = (t_in + 2 * pt - kt) // st + 1
    frames = []
    for t in range(t_out):
        acc = None
        for k in range(kt):
            src = t * st - pt + k
            if 0 <= src < t_in:
                y = F.conv3d(x[:, :, src], conv.weight[:, :, k], None, conv.stride[1:],
                             conv.padding[1:])
                acc = y if acc is None else acc + y
        frames.append(acc + conv.bias.view(1, -1, 1, 1, 1))
    return torch.stack(frames, dim=2)


def timed(fn, x, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        x.grad = None
        t0 = time.perf_counter()
        fn(x).square().mean().backward()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for (c_in, c_out, size, stride) in [(8, 8, (16, 32, 32, 32), 1), (16, 16, (8, 16, 16, 16), 1),
                                        (8, 16, (16, 32, 32, 32), 2)]:
        conv = Conv4d(c_in, c_out, 3, stride, 1)
        x = torch.randn(1, c_in, *size, requires_grad=True)
        assert torch.allclose(conv(x), loop_conv4d(x, conv), atol=1e-4)
        folded, loop = timed(conv, x), timed(lambda v, c=conv: loop_conv4d(v, c), x)
        rows.append({"channels": [c_in, c_out], "input": list(size), "stride": stride,
                     "folded_s": folded, "loop_s": loop, "loop_over_folded": loop / folded})
        print(f"C {c_in}->{c_out}, input {size}, stride {stride}: folded {folded:.3f} s, "
              f"loop {loop:.3f} s, loop/folded {loop / folded:.2f}")
    out = Path(__file__).parent / "results" / "conv4d.json"
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
