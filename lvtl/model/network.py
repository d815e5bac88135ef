"""The 4D network's building blocks.

:class:`Conv4d` is a true 4D convolution on ``(N, C, T, D, H, W)`` tensors: every output sees a
``k x k x k x k`` neighbourhood, with stride and zero padding in all four dimensions. It is
built from 3D convolutions over the time kernel: for each time offset ``kt`` the input frames it
needs are gathered for all output times at once and folded into the batch, so a layer costs
``k`` calls of ``conv3d`` (not ``k * T``); see ``benchmarks/conv4d.py`` for the comparison with a
loop over output frames. Two equal rearrangements into a single ``conv3d`` (the offsets' input
frames stacked in channels; the kernel's time slices stacked as output channels) run where
they were faster: :func:`conv4d_plan` picks one per layer and input.

Memory layout: activations are kept **channels-last in 4D** — a tensor of logical shape
``(N, C, T, D, H, W)`` laid out in memory as ``(N, T, D, H, W, C)`` (:func:`channels_last_4d`).
Then the frames one time offset needs, folded into the batch, are already a ``channels_last_3d``
batch for ``conv3d`` (oneDNN's fast layout on the CPU: its backward pass is about 3x faster
than in the default layout), the convolution's output unfolds back without a copy, and
:class:`GroupNorm4d` normalises the same memory as a 5D ``channels_last_3d`` tensor. Time
padding is never materialised: each time offset convolves only the frames that exist and adds
into the output frames it reaches. The values are those of the default layout up to floating
point rounding (tests compare with the direct computation).
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


def channels_last_4d(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, C, T, D, H, W)`` with its memory in ``(N, T, D, H, W, C)`` order (no copy
    when it already is)."""
    return x.permute(0, 2, 3, 4, 5, 1).contiguous().permute(0, 5, 1, 2, 3, 4)


def _spans(kt: int, stride: int, pad: int, t_in: int, t_out: int
           ) -> list[tuple[int, int, int, int]]:
    """Per time offset ``k`` with any frame to read: ``(k, lo, hi, first)``, the output frames
    ``[lo, hi)`` whose input frame ``t * stride + k - pad`` exists, and the first of those
    input frames. Offsets covering every output frame come first."""
    out = []
    for k in range(kt):
        lo = max(0, -(-(pad - k) // stride))
        hi = min(t_out, (t_in - 1 + pad - k) // stride + 1)
        if hi > lo:
            out.append((k, lo, hi, lo * stride + k - pad))
    return sorted(out, key=lambda s: s[2] - s[1] != t_out)


def _frames(first: int, count: int, stride: int) -> slice:
    """The time index of ``count`` frames from ``first`` every ``stride``."""
    return slice(first, first + stride * (count - 1) + 1, stride)


def _folded(xt: torch.Tensor, first: int, count: int, stride: int) -> torch.Tensor:
    """``count`` frames of ``xt`` ``(N, T, C, D, H, W)`` from ``first`` every ``stride``,
    folded into the batch as a ``channels_last_3d`` tensor (a view when they are adjacent)."""
    frames = xt[:, _frames(first, count, stride)]
    folded = frames.reshape(frames.shape[0] * count, *frames.shape[2:])
    return folded.contiguous(memory_format=torch.channels_last_3d)


def _zeros_cl(n: int, t: int, c: int, d: int, h: int, w: int, like: torch.Tensor
              ) -> torch.Tensor:
    """Zeros as an ``(N, T, C, D, H, W)`` view of channels-last 4D memory."""
    return like.new_zeros(n, t, d, h, w, c).permute(0, 1, 5, 2, 3, 4)


def _mkldnn(x: torch.Tensor) -> bool:
    """Whether to call oneDNN directly: CPU float32 in eager mode (under ``torch.compile``
    the graph's own convolution lowering decides; the direct op has no fake-tensor kernel)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.compiler.is_compiling())


def _conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            stride: tuple[int, ...], padding: tuple[int, ...]) -> torch.Tensor:
    """``conv3d``; on the CPU always oneDNN's (PyTorch picks its slow reference kernel for a
    batch of one small volume, 5x slower: the frames a time offset reaches at the edges)."""
    if _mkldnn(x):
        return torch.ops.aten.mkldnn_convolution(x, weight.contiguous(), bias, padding, stride,
                                                 (1, 1, 1), 1)
    return F.conv3d(x, weight, bias, stride, padding)


def _conv3d_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     stride: tuple[int, ...], padding: tuple[int, ...],
                     mask: tuple[bool, bool]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Input and weight gradients of ``conv3d`` (as ``mask`` asks). A batch of one on the CPU
    gets a zero second sample, so that PyTorch uses oneDNN there too (its slow kernel takes
    2 to 4 times as long as oneDNN on the doubled batch); the zeros add nothing."""
    one = x.shape[0] == 1 and _mkldnn(x)
    if one:
        x = torch.cat([x, torch.zeros_like(x)]).contiguous(memory_format=torch.channels_last_3d)
        grad = torch.cat([grad, torch.zeros_like(grad)]).contiguous(
            memory_format=torch.channels_last_3d)
    gi, gw, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, stride, padding, (1, 1, 1), False, (0, 0, 0), 1,
        (mask[0], mask[1], False))
    return (gi[:1] if one and gi is not None else gi), gw


class _Conv4dFunction(torch.autograd.Function):
    """The 4D convolution and its gradients as ``conv3d`` calls on channels-last frames, the
    contributions of the time offsets summed in place (no padded copy of the input, no
    autograd bookkeeping per offset). Once differentiable (no double backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        n, t_in = x.shape[0], x.shape[2]
        kt, st, pt = weight.shape[2], stride[0], padding[0]
        t_out = (t_in + 2 * pt - kt) // st + 1
        xt = channels_last_4d(x).permute(0, 2, 1, 3, 4, 5)  # (N, T, C, D, H, W), a view
        spans = _spans(kt, st, pt, t_in, t_out)
        out = None
        for k, lo, hi, first in spans:
            full = out is None and hi - lo == t_out
            y = _conv3d(_folded(xt, first, hi - lo, st), weight[:, :, k],
                        bias if full else None, stride[1:], padding[1:])
            y = y.reshape(n, hi - lo, *y.shape[1:])
            if full:
                out = y
                continue
            if out is None:  # no offset reaches every output frame (a tiny input)
                out = _zeros_cl(n, t_out, *y.shape[2:], like=y)
                if bias is not None:
                    out += bias.view(1, 1, -1, 1, 1, 1)
            out[:, lo:hi].add_(y)  # in place (``+=`` on a slice also copies it back)
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, spans, bias is not None)
        # (N, C_out, T', D', H', W'), channels-last 4D (oneDNN answers a one-channel input,
        # the first layer's, in the default layout: one copy here rather than in each user)
        return channels_last_4d(out.permute(0, 2, 1, 3, 4, 5))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, spans, has_bias = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        n = grad.shape[0]
        gt = channels_last_4d(grad).permute(0, 2, 1, 3, 4, 5)  # (N, T', C_out, D', H', W')
        xt = channels_last_4d(x).permute(0, 2, 1, 3, 4, 5)
        t_in = xt.shape[1]
        gx = None
        gw = torch.zeros_like(weight) if need_w else None
        for k, lo, hi, first in spans:
            go = gt[:, lo:hi].reshape(n * (hi - lo), *gt.shape[2:])
            gi, gwk = _conv3d_backward(go.contiguous(memory_format=torch.channels_last_3d),
                                       _folded(xt, first, hi - lo, stride[0]), weight[:, :, k],
                                       stride[1:], padding[1:], (need_x, need_w))
            if need_x:
                gi = gi.reshape(n, hi - lo, *gi.shape[1:])
                if (gx is None and first == 0 and hi - lo == t_in
                        and gi.permute(0, 1, 3, 4, 5, 2).is_contiguous()):
                    gx = gi  # an offset reading every input frame: its gradient is the base
                else:
                    if gx is None:
                        gx = _zeros_cl(*xt.shape, like=x)
                    gx[:, _frames(first, hi - lo, stride[0])].add_(gi)
            if need_w:
                gw[:, :, k] = gwk
        gb = grad.sum(dim=(0, 2, 3, 4, 5)) if need_b and has_bias else None
        return (gx.permute(0, 2, 1, 3, 4, 5) if need_x else None), gw, gb, None, None


class _StackedConv4dFunction(torch.autograd.Function):
    """The same 4D convolution as one ``conv3d`` whose input channels are the time offsets'
    frames side by side (``kt * C_in`` channels, zeros where a frame would lie in the time
    padding) and whose weight is the 4D kernel with its time axis moved into the channels.
    It reads the input ``kt`` times over (a copy), so it pays where the input has few channels
    and the per-offset convolutions use oneDNN's vector units poorly: the first layer (one
    channel: 6.5x faster at the paper's crop, 2x at the demo's)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        n, c_in, t_in = x.shape[:3]
        c_out, _, kt = weight.shape[:3]
        t_out = (t_in + 2 * padding[0] - kt) // stride[0] + 1
        spans = _spans(kt, stride[0], padding[0], t_in, t_out)
        xl = channels_last_4d(x).permute(0, 2, 3, 4, 5, 1)  # (N, T, D, H, W, C), a view
        d, h, w = xl.shape[2:5]
        stacked = xl.new_zeros(n, t_out, d, h, w, kt, c_in)
        for k, lo, hi, first in spans:
            stacked[:, lo:hi, :, :, :, k] = xl[:, _frames(first, hi - lo, stride[0])]
        stacked = stacked.reshape(n * t_out, d, h, w, kt * c_in).permute(0, 4, 1, 2, 3)
        w3 = weight.permute(0, 2, 1, 3, 4, 5).reshape(c_out, kt * c_in, *weight.shape[3:])
        y = _conv3d(stacked, w3, bias, stride[1:], padding[1:])
        ctx.save_for_backward(stacked, w3)
        ctx.conv = (stride, padding, spans, tuple(x.shape), bias is not None)
        return channels_last_4d(y.reshape(n, t_out, *y.shape[1:]).permute(0, 2, 1, 3, 4, 5))

    @staticmethod
    def backward(ctx, grad):
        stacked, w3 = ctx.saved_tensors
        stride, padding, spans, (n, c_in, t_in, d, h, w), has_bias = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gt = channels_last_4d(grad).permute(0, 2, 1, 3, 4, 5)  # (N, T', C_out, D', H', W')
        t_out = gt.shape[1]
        go = gt.reshape(n * t_out, *gt.shape[2:]).contiguous(memory_format=torch.channels_last_3d)
        gi, gw3 = _conv3d_backward(go, stacked, w3, stride[1:], padding[1:], (need_x, need_w))
        gx = gw = None
        kt = w3.shape[1] // c_in
        if need_x:
            gs = gi.permute(0, 2, 3, 4, 1).reshape(n, t_out, d, h, w, kt, c_in)
            gx = gi.new_zeros(n, t_in, d, h, w, c_in)
            for k, lo, hi, first in spans:
                gx[:, _frames(first, hi - lo, stride[0])].add_(gs[:, lo:hi, :, :, :, k])
            gx = gx.permute(0, 5, 1, 2, 3, 4)
        if need_w:
            gw = gw3.reshape(w3.shape[0], kt, c_in, *w3.shape[2:]).transpose(1, 2).contiguous()
        gb = grad.sum(dim=(0, 2, 3, 4, 5)) if need_b and has_bias else None
        return gx, gw, gb, None, None


class _OutStackedConv4dFunction(torch.autograd.Function):
    """The same 4D convolution (stride 1 and "same" padding in time) as one ``conv3d`` of every
    frame with the ``kt`` time slices of the kernel side by side as output channels
    (``kt * C_out``), and a sum of those outputs shifted by their offsets. The backward pass is
    one ``conv3d`` gradient call on the shifted output gradient, giving the whole input
    gradient at once. Pays where the layer has few output channels (oneDNN fills its vectors
    poorly with 4; the demo's first level: 0.77x the time of the per-offset calls) or an offset
    would see a single frame (0.62x); at the paper's widths it is 5-15% slower."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        n, c_in, t = x.shape[:3]
        c_out, _, kt = weight.shape[:3]
        pt = padding[0]
        if stride[0] != 1 or 2 * pt != kt - 1:
            raise ValueError("the output-stacked Conv4d needs stride 1 and same time padding")
        frames = channels_last_4d(x).permute(0, 2, 1, 3, 4, 5).reshape(n * t, c_in, *x.shape[3:])
        w3 = weight.permute(2, 0, 1, 3, 4, 5).reshape(kt * c_out, c_in, *weight.shape[3:])
        y = _conv3d(frames, w3, None, stride[1:], padding[1:])  # (N*T, kt*C_out, D, H, W)
        y = y.permute(0, 2, 3, 4, 1).reshape(n, t, *y.shape[2:], kt, c_out)
        out = y[:, :, :, :, :, pt].clone(memory_format=torch.contiguous_format)  # every frame
        if bias is not None:
            out += bias
        for k in range(kt):
            s = k - pt  # output frame i reads input frame i + s
            if s < 0:
                out[:, -s:].add_(y[:, :t + s, :, :, :, k])
            elif s > 0:
                out[:, :t - s].add_(y[:, s:, :, :, :, k])
        ctx.save_for_backward(frames, w3)
        ctx.conv = (stride, padding, (n, t, c_in, c_out, kt), bias is not None)
        return out.permute(0, 5, 1, 2, 3, 4)  # (N, C_out, T, D', H', W'), channels-last 4D

    @staticmethod
    def backward(ctx, grad):
        frames, w3 = ctx.saved_tensors
        stride, padding, (n, t, c_in, c_out, kt), has_bias = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g = channels_last_4d(grad).permute(0, 2, 3, 4, 5, 1)  # (N, T, D', H', W', C_out)
        gy = g.new_zeros(n, t, *g.shape[2:5], kt, c_out)
        for k in range(kt):
            s = k - padding[0]
            if s < 0:
                gy[:, :t + s, :, :, :, k] = g[:, -s:]
            else:
                gy[:, s:, :, :, :, k] = g[:, :t - s]
        gy = gy.reshape(n * t, *g.shape[2:5], kt * c_out).permute(0, 4, 1, 2, 3)
        gi, gw3 = _conv3d_backward(gy, frames, w3, stride[1:], padding[1:], (need_x, need_w))
        gx = (channels_last_4d(gi.reshape(n, t, *gi.shape[1:]).permute(0, 2, 1, 3, 4, 5))
              if need_x else None)
        gw = (gw3.reshape(kt, c_out, c_in, *w3.shape[2:]).permute(1, 2, 0, 3, 4, 5).contiguous()
              if need_w else None)
        gb = grad.sum(dim=(0, 2, 3, 4, 5)) if need_b and has_bias else None
        return gx, gw, gb, None, None


#: A layer whose input channels times time offsets are at most this many runs with its input
#: frames stacked (:class:`_StackedConv4dFunction`): the first layer (1 x 3).
STACKED_MAX_CHANNELS = 3
#: A layer with fewer output channels runs with its outputs stacked
#: (:class:`_OutStackedConv4dFunction`) where it can (stride 1, "same" time padding).
OUT_STACKED_BELOW = 8


def conv4d_plan(in_channels: int, out_channels: int, kt: int, stride: int, padding: int,
                n: int, t_in: int) -> type[torch.autograd.Function]:
    """Which of the three equal computations of a 4D convolution to run on an input of ``n`` x
    ``t_in`` frames, by what was faster here (2 threads, ``benchmarks/train.py``): per time
    offset (:class:`_Conv4dFunction`, the default and the paper's widths), the input frames
    stacked (few input channels; or a strided layer where an offset would convolve a single
    frame beside others, which oneDNN handles worst), or the outputs stacked (few output
    channels; or a single-frame offset in a stride-1 layer)."""
    if kt == 1:
        return _Conv4dFunction
    if in_channels * kt <= STACKED_MAX_CHANNELS:
        return _StackedConv4dFunction
    t_out = (t_in + 2 * padding - kt) // stride + 1
    spans = _spans(kt, stride, padding, t_in, t_out)
    single = len(spans) > 1 and any(n * (hi - lo) == 1 for _, lo, hi, _ in spans)
    if stride == 1 and 2 * padding == kt - 1 and (out_channels < OUT_STACKED_BELOW or single):
        return _OutStackedConv4dFunction
    return _StackedConv4dFunction if single else _Conv4dFunction


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
        if min(self.output_shape(*x.shape[2:])) < 1:
            raise ValueError(f"input {tuple(x.shape[2:])} is smaller than the kernel")
        fn = conv4d_plan(self.in_channels, self.out_channels, self.kernel_size[0],
                         self.stride[0], self.padding[0], x.shape[0], x.shape[2])
        return fn.apply(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


#: Fewer channels than this are normalised in the default layout: PyTorch's channels-last
#: GroupNorm kernel takes about 10x as long at 4 channels (2 threads, 98 304 voxels: 3.7 ms
#: against 0.4 ms with both copies), and is the faster one from 8.
CHANNELS_LAST_NORM_MIN = 8


class GroupNorm4d(nn.GroupNorm):
    """GroupNorm of an ``(N, C, T, D, H, W)`` tensor (statistics over each group's channels
    and all of T, D, H, W), computed on the same memory viewed as ``(N, C, T * D, H, W)``:
    for a channels-last 4D tensor that is a ``channels_last_3d`` one, which PyTorch's kernel
    normalises in place of layout (from :data:`CHANNELS_LAST_NORM_MIN` channels). Parameters
    and state-dict keys are ``nn.GroupNorm``'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, d, h, w = x.shape
        # through the contiguous (N, T*D, H, W, C) view, so that a batch of one keeps a
        # channels_last_3d stride in N (a direct reshape gives it stride C, and PyTorch then
        # copies to the default layout and back)
        v = channels_last_4d(x).permute(0, 2, 3, 4, 5, 1).reshape(n, t * d, h, w, c)
        v = v.permute(0, 4, 1, 2, 3)
        y = super().forward(v if c >= CHANNELS_LAST_NORM_MIN else v.contiguous())
        return channels_last_4d(y.permute(0, 2, 3, 4, 1).reshape(n, t, d, h, w, c)
                                .permute(0, 5, 1, 2, 3, 4))


def _norm(channels: int, groups: int = 8) -> GroupNorm4d:
    return GroupNorm4d(min(groups, channels), channels)


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
    """Nearest-neighbour upsampling by 2 in (T, D, H, W), cropped to ``like``'s size; the
    result is channels-last 4D (one copy)."""
    n, c, t, d, h, w = x.shape
    v = channels_last_4d(x).permute(0, 2, 3, 4, 5, 1)  # (N, T, D, H, W, C), contiguous
    v = v[:, :, None, :, None, :, None, :, None].expand(n, t, 2, d, 2, h, 2, w, 2, c)
    v = v.reshape(n, 2 * t, 2 * d, 2 * h, 2 * w, c)
    v = v[:, : like.shape[2], : like.shape[3], : like.shape[4], : like.shape[5]]
    return v.permute(0, 5, 1, 2, 3, 4)


def _halve_pairs(g: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """``g`` (memory ``(N, 2T, 2D, 2H, 2W, C)``, contiguous) summed over each 2^4 block of
    voxels, to ``(N, T, D, H, W, C)`` for ``sizes`` ``(N, T, D, H, W, C)``: one dimension at a
    time, each a sum of two contiguous halves (PyTorch's ``sum`` over the four interleaved
    dimensions at once is 8 to 17x slower)."""
    n, t, d, h, w, c = sizes
    outer = n
    for size in (t, d, h, w):
        outer *= size
        g = g.reshape(outer, 2, -1)
        g = g[:, 0] + g[:, 1]
    return g.reshape(n, t, d, h, w, c)


class _UpsampleAdd(torch.autograd.Function):
    """``skip + upsample2(x)`` (nearest, by 2 in T, D, H, W) for ``skip`` exactly twice ``x``'s
    size, channels-last 4D in and out; without the upsampled copy of ``x``."""

    @staticmethod
    def forward(ctx, x, skip):
        n, c, t, d, h, w = x.shape
        xs = channels_last_4d(x).permute(0, 2, 3, 4, 5, 1)  # (N, T, D, H, W, C), contiguous
        ss = channels_last_4d(skip).permute(0, 2, 3, 4, 5, 1)
        out = ss.view(n, t, 2, d, 2, h, 2, w, 2, c) + xs.view(n, t, 1, d, 1, h, 1, w, 1, c)
        ctx.sizes = (n, t, d, h, w, c)
        return out.view(n, 2 * t, 2 * d, 2 * h, 2 * w, c).permute(0, 5, 1, 2, 3, 4)

    @staticmethod
    def backward(ctx, grad):
        g = channels_last_4d(grad).permute(0, 2, 3, 4, 5, 1)
        gx = _halve_pairs(g, ctx.sizes).permute(0, 5, 1, 2, 3, 4)
        return gx, grad


def _upsample2_add(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``skip`` plus ``x`` upsampled to its size (nearest, by 2; cropped where ``skip`` is
    odd), channels-last 4D."""
    if tuple(skip.shape[2:]) == tuple(2 * s for s in x.shape[2:]):
        return _UpsampleAdd.apply(x, skip)
    return _upsample2(x, skip) + skip


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
            x = dec(_upsample2_add(reduce(x), skip))
        return self.head(x)
