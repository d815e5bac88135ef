"""The 4D network's building blocks.

:class:`Conv4d` is a true 4D convolution on ``(N, C, T, D, H, W)`` tensors: every output sees a
``k x k x k x k`` neighbourhood, with stride and zero padding in all four dimensions. It is
built from 3D convolutions over the time kernel: for each time offset ``kt`` the input frames it
needs are gathered for all output times at once and folded into the batch, so a layer costs
``k`` calls of ``conv3d`` (not ``k * T``); see ``benchmarks/conv4d.py`` for the comparison with a
loop over output frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _four(v, name: str) -> tuple[int, int, int, int]:
    t = (v,) * 4 if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != 4:
        raise ValueError(f"{name} must be an int or four ints (t, d, h, w), got {v!r}")
    return t  # type: ignore[return-value]


class Conv4d(nn.Module):
    """4D convolution: input ``(N, C_in, T, D, H, W)``, output ``(N, C_out, T', D', H', W')``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1,
                 bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _four(kernel_size, "kernel_size")
        self.stride = _four(stride, "stride")
        self.padding = _four(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError("kernel_size and stride must be >= 1 and padding >= 0")
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels,
                                               *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * math.prod(self.kernel_size)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def output_shape(self, t: int, d: int, h: int, w: int) -> tuple[int, int, int, int]:
        """Spatio-temporal output size for an input of size ``(t, d, h, w)``."""
        return tuple((n + 2 * p - k) // s + 1 for n, p, k, s in  # type: ignore[return-value]
                     zip((t, d, h, w), self.padding, self.kernel_size, self.stride, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 6 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (N, {self.in_channels}, T, D, H, W), got "
                             f"{tuple(x.shape)}")
        n = x.shape[0]
        kt, st, pt = self.kernel_size[0], self.stride[0], self.padding[0]
        t_out, d_out, h_out, w_out = self.output_shape(*x.shape[2:])
        if min(t_out, d_out, h_out, w_out) < 1:
            raise ValueError(f"input {tuple(x.shape[2:])} is smaller than the kernel")
        if pt:
            x = F.pad(x, (0, 0, 0, 0, 0, 0, pt, pt))  # zero frames before and after
        out = None
        for k in range(kt):
            frames = x[:, :, k: k + st * (t_out - 1) + 1: st]  # (N, C, T', D, H, W)
            folded = frames.transpose(1, 2).reshape(n * t_out, self.in_channels,
                                                    *frames.shape[3:])
            y = F.conv3d(folded, self.weight[:, :, k], None, self.stride[1:], self.padding[1:])
            out = y if out is None else out + y
        out = out.reshape(n, t_out, self.out_channels, d_out, h_out, w_out).transpose(1, 2)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1, 1, 1)
        return out.contiguous()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


def _norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class ResBlock4d(nn.Module):
    """Pre-activation residual block: (GroupNorm, ReLU, Conv4d 3^4) twice, plus the identity."""

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        self.norm1, self.conv1 = _norm(channels, groups), Conv4d(channels, channels, 3, 1, 1)
        self.norm2, self.conv2 = _norm(channels, groups), Conv4d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return x + y


def _upsample2(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling by 2 in (T, D, H, W), cropped to ``like``'s size."""
    for dim in range(2, 6):
        x = x.repeat_interleave(2, dim=dim)
    return x[:, :, : like.shape[2], : like.shape[3], : like.shape[4], : like.shape[5]]


class LVNet4d(nn.Module):
    """Myronenko's 4D CNN for cardiac sequences (STACOM 2019), SegResNet style.

    Encoder: an initial Conv4d, then per level ``blocks_down[i]`` residual blocks at
    ``init_filters * 2**i`` channels, levels joined by stride-2 Conv4d in all four dimensions.
    Decoder: per level a 1x1x1x1 Conv4d halving the channels, nearest upsampling by 2, an
    additive skip from the encoder, and ``blocks_up`` residual blocks. Head: GroupNorm, ReLU and a
    1x1x1x1 Conv4d to ``out_channels`` scores per voxel and phase. Input ``(N, C, T, D, H, W)``,
    output ``(N, out_channels, T, D, H, W)``; any size works (odd sizes are cropped back).
    The paper: 1, 2, 4 blocks at 8, 16, 32 filters; crop 16 x 64 x 96 x 96 (t, z, y, x).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 3, init_filters: int = 8,
                 blocks_down: tuple[int, ...] = (1, 2, 4), blocks_up: int = 1,
                 groups: int = 8):
        super().__init__()
        if not blocks_down or min(blocks_down) < 1 or init_filters < 1 or blocks_up < 0:
            raise ValueError("need at least one level, one block per level and one filter")
        self.config = {"in_channels": in_channels, "out_channels": out_channels,
                       "init_filters": init_filters, "blocks_down": list(blocks_down),
                       "blocks_up": blocks_up, "groups": groups}
        f = init_filters
        self.stem = Conv4d(in_channels, f, 3, 1, 1)
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        for i, n in enumerate(blocks_down):
            ch = f * 2**i
            self.down.append(nn.Identity() if i == 0 else Conv4d(ch // 2, ch, 3, 2, 1))
            self.encoder.append(nn.Sequential(*[ResBlock4d(ch, groups) for _ in range(n)]))
        self.reduce = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(blocks_down) - 1, 0, -1):
            ch = f * 2**i
            self.reduce.append(Conv4d(ch, ch // 2, 1, 1, 0))
            self.decoder.append(nn.Sequential(*[ResBlock4d(ch // 2, groups)
                                                for _ in range(blocks_up)]))
        self.head = nn.Sequential(_norm(f, groups), nn.ReLU(), Conv4d(f, out_channels, 1, 1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for down, enc in zip(self.down, self.encoder, strict=True):
            x = enc(down(x))
            skips.append(x)
        for reduce, dec, skip in zip(self.reduce, self.decoder, reversed(skips[:-1]),
                                     strict=True):
            x = dec(_upsample2(reduce(x), skip) + skip)
        return self.head(x)
