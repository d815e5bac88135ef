"""Conv4d against a direct computation of the 4D convolution."""

import numpy as np
import pytest
import torch

from lvtl.model.network import (
    Conv4d,
    GroupNorm4d,
    LVNet4d,
    _Conv4dFunction,
    _OutStackedConv4dFunction,
    _StackedConv4dFunction,
    _upsample2,
    _upsample2_add,
    channels_last_4d,
    conv4d_plan,
)


def direct_conv4d(x, w, b, stride, padding):
    """The definition, in numpy: out[n,o,t,d,h,w] = b[o] + sum x_pad[window] * w[o]."""
    x, w = x.numpy().astype(np.float64), w.numpy().astype(np.float64)
    pads = [(0, 0), (0, 0)] + [(p, p) for p in padding]
    xp = np.pad(x, pads)
    k = w.shape[2:]
    out_sz = [(xp.shape[2 + i] - k[i]) // stride[i] + 1 for i in range(4)]
    out = np.zeros((x.shape[0], w.shape[0], *out_sz))
    for idx in np.ndindex(*out_sz):
        sl = tuple(slice(i * s, i * s + kk) for i, s, kk in zip(idx, stride, k, strict=True))
        win = xp[(slice(None), slice(None), *sl)]  # (N, C, kt, kd, kh, kw)
        out[(slice(None), slice(None), *idx)] = np.tensordot(
            win, w, axes=([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]))
    if b is not None:
        out += b.numpy()[None, :, None, None, None, None]
    return out


CASES = [((2, 3, 4, 5, 4, 3), 3, 1, 1, True), ((1, 2, 5, 4, 6, 5), 3, 2, 1, True),
         ((1, 2, 4, 4, 4, 4), 3, (2, 1, 2, 1), (1, 0, 1, 0), False),
         ((2, 1, 3, 5, 5, 4), (1, 3, 3, 3), 1, (0, 1, 1, 1), True),
         ((1, 2, 5, 5, 5, 5), 2, 2, 0, True),
         ((1, 2, 1, 4, 4, 4), 3, 1, 1, True),  # one frame: no time offset reaches all outputs
         ((1, 2, 2, 4, 4, 4), 3, 2, 2, True),  # output frames no offset reaches (bias only)
         ((1, 1, 4, 5, 4, 4), 3, 1, 1, True)]  # the first layer's: one channel


FUNCTIONS = pytest.mark.parametrize(
    "fn", [_Conv4dFunction, _StackedConv4dFunction, _OutStackedConv4dFunction],
    ids=["per-offset", "stacked-in", "stacked-out"])


def _applies(fn, k, stride, padding) -> bool:
    """The output-stacked form is for stride 1 and "same" padding in time only."""
    kt, st, pt = (x if isinstance(x, int) else x[0] for x in (k, stride, padding))
    if fn is _OutStackedConv4dFunction and not (st == 1 and 2 * pt == kt - 1):
        pytest.skip("stride 1 and same time padding only")
    return True


@FUNCTIONS
@pytest.mark.parametrize("shape,k,stride,padding,bias", CASES)
def test_conv4d_equals_the_direct_computation(shape, k, stride, padding, bias, fn):
    _applies(fn, k, stride, padding)
    torch.manual_seed(0)
    conv = Conv4d(shape[1], 3, k, stride, padding, bias=bias).double()
    x = torch.randn(shape, dtype=torch.float64)
    got = fn.apply(x, conv.weight, conv.bias, conv.stride, conv.padding).detach().numpy()
    ref = direct_conv4d(x, conv.weight.detach(), None if conv.bias is None else
                        conv.bias.detach(), conv.stride, conv.padding)
    assert got.shape == ref.shape
    assert np.allclose(got, ref, atol=1e-10)


@FUNCTIONS
@pytest.mark.parametrize("shape,k,stride,padding,bias", CASES)
def test_conv4d_gradients_equal_the_numerical_ones(shape, k, stride, padding, bias, fn):
    """The hand-written backward pass (input, weight and bias) against finite differences,
    in float64, with an input in the default (not channels-last) layout."""
    _applies(fn, k, stride, padding)
    torch.manual_seed(1)
    conv = Conv4d(shape[1], 2, k, stride, padding, bias=bias).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_() for p in
                   ((conv.weight,) + ((conv.bias,) if bias else ())))

    def apply(xx, w, *b):
        return fn.apply(xx, w, b[0] if b else None, conv.stride, conv.padding)

    assert torch.autograd.gradcheck(lambda xx: apply(xx, *params), (x,))
    assert torch.autograd.gradcheck(lambda *p: apply(x.detach(), *p), params)
    # input and weights at once (the backward pass reuses buffers between the two)
    assert torch.autograd.gradcheck(apply, (x,) + params)


@FUNCTIONS
@pytest.mark.parametrize("shape,k,stride,padding,bias", CASES)
def test_conv4d_float32_gradients_equal_the_float64_ones(shape, k, stride, padding, bias, fn):
    """On the CPU in float32 the layer runs oneDNN's kernels on channels-last frames and
    reuses their buffers (float64 runs PyTorch's default path, checked above against finite
    differences): input, weight and bias gradients at once, against float64, relative 1e-5."""
    _applies(fn, k, stride, padding)
    torch.manual_seed(3)
    conv = Conv4d(shape[1], 4, k, stride, padding, bias=bias)
    x = torch.randn(shape)
    grads = []
    for dtype in (torch.float32, torch.float64):
        c = Conv4d(shape[1], 4, k, stride, padding, bias=bias).to(dtype)
        c.load_state_dict(conv.state_dict())
        xx = x.to(dtype).detach().requires_grad_()
        out = fn.apply(xx, c.weight, c.bias, c.stride, c.padding)
        assert out.permute(0, 2, 3, 4, 5, 1).is_contiguous()  # channels-last 4D out
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape))
        grads.append([g.double() for g in (xx.grad, c.weight.grad)
                      + ((c.bias.grad,) if bias else ())])
    for got, want in zip(*grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max())


def test_layers_keep_channels_last_4d_and_equal_the_default_layout():
    torch.manual_seed(2)
    x = torch.randn(1, 8, 3, 4, 5, 6)
    conv = Conv4d(8, 8)
    y = conv(x)
    assert y.permute(0, 2, 3, 4, 5, 1).is_contiguous()  # memory (N, T, D, H, W, C)
    norm, ref = GroupNorm4d(4, 8), torch.nn.GroupNorm(4, 8)
    ref.load_state_dict(norm.state_dict())
    got = norm(y)
    assert got.permute(0, 2, 3, 4, 5, 1).is_contiguous()
    assert torch.allclose(got, ref(y.contiguous()), atol=1e-5)
    up = _upsample2(channels_last_4d(x), torch.zeros(1, 1, 5, 7, 10, 11))
    want = x
    for dim in range(2, 6):
        want = want.repeat_interleave(2, dim=dim)
    assert torch.equal(up, want[:, :, :5, :7, :10, :11])


@pytest.mark.parametrize("skip_size", [(4, 6, 8, 10), (3, 6, 7, 10)], ids=["even", "odd"])
def test_upsample_add_equals_upsample_plus_skip_with_gradients(skip_size):
    """The decoder's join (one pass, pairwise-summed gradient where the skip is exactly twice
    the size) against nearest upsampling by repetition plus the skip, in value and gradient."""
    torch.manual_seed(4)
    x = channels_last_4d(torch.randn(1, 3, 2, 3, 4, 5, dtype=torch.float64)).requires_grad_()
    skip = channels_last_4d(torch.randn(1, 3, *skip_size, dtype=torch.float64)).requires_grad_()
    want = x
    for dim in range(2, 6):
        want = want.repeat_interleave(2, dim=dim)
    want = want[:, :, :skip_size[0], :skip_size[1], :skip_size[2], :skip_size[3]] + skip
    got = _upsample2_add(x, skip)
    assert got.permute(0, 2, 3, 4, 5, 1).is_contiguous()
    g = torch.randn_like(want)
    assert torch.allclose(got, want, atol=0)
    for a, b in zip(torch.autograd.grad(got, (x, skip), g), torch.autograd.grad(want, (x, skip), g),
                    strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.autograd.gradcheck(_upsample2_add, (x, skip))


def test_every_output_sees_a_full_4d_neighbourhood():
    conv = Conv4d(1, 1, 3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.zeros(1, 1, 5, 5, 5, 5)
    x[0, 0, 2, 2, 2, 2] = 1.0  # an impulse
    y = conv(x)[0, 0]
    assert int((y != 0).sum()) == 81  # 3 x 3 x 3 x 3
    assert y[1:4, 1:4, 1:4, 1:4].min() == 1.0


@pytest.mark.parametrize("size", [(4, 6, 6, 6), (5, 7, 8, 9), (16, 16, 16, 16)])
def test_output_shapes_odd_and_even(size):
    conv = Conv4d(2, 4, 3, 2, 1)
    y = conv(torch.zeros(1, 2, *size))
    assert tuple(y.shape[2:]) == conv.output_shape(*size)
    assert tuple(y.shape[2:]) == tuple((n + 1) // 2 for n in size)


def test_gradients_flow_to_input_weight_and_bias():
    conv = Conv4d(2, 3, 3, 1, 1)
    x = torch.randn(1, 2, 3, 4, 4, 4, requires_grad=True)
    conv(x).square().mean().backward()
    for g in (x.grad, conv.weight.grad, conv.bias.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_bad_shapes_are_refused():
    conv = Conv4d(2, 3)
    with pytest.raises(ValueError, match=r"\(N, 2, T, D, H, W\)"):
        conv(torch.zeros(1, 3, 4, 4, 4, 4))
    with pytest.raises(ValueError, match="four ints"):
        Conv4d(1, 1, kernel_size=(3, 3))


@pytest.mark.parametrize("size", [(4, 8, 8, 8), (5, 7, 9, 6), (3, 5, 5, 5)])
def test_network_output_shape_odd_and_even(size):
    net = LVNet4d(1, 3, init_filters=4, blocks_down=(1, 1, 2))
    y = net(torch.randn(1, 1, *size))
    assert y.shape == (1, 3, *size)


def test_network_learns_and_gradients_reach_the_stem():
    torch.manual_seed(0)
    net = LVNet4d(1, 3, init_filters=4, blocks_down=(1, 1))
    x = torch.randn(2, 1, 4, 6, 6, 6)
    target = (x[:, 0] > 0).long()  # a learnable voxel-wise rule
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), target)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert net.stem.weight.grad is not None and net.stem.weight.grad.abs().sum() > 0
    assert losses[-1] < 0.5 * losses[0]


def test_which_computation_each_layer_runs():
    """Input-stacked for the first layer; output-stacked for few output channels or where a
    time offset would convolve a single frame beside others at stride 1; input-stacked for
    that at stride 2; per offset at the paper's widths and 16, 8 and 4 frames."""
    assert conv4d_plan(1, 8, 3, 1, 1, n=1, t_in=16) is _StackedConv4dFunction  # first layer
    for t in (16, 8, 4):
        for c in (8, 16, 32):
            assert conv4d_plan(c, c, 3, 1, 1, n=1, t_in=t) is _Conv4dFunction
        assert conv4d_plan(8, 16, 3, 2, 1, n=1, t_in=2 * t) is _Conv4dFunction
    assert conv4d_plan(4, 4, 3, 1, 1, n=1, t_in=4) is _OutStackedConv4dFunction
    assert conv4d_plan(8, 8, 3, 1, 1, n=1, t_in=2) is _OutStackedConv4dFunction
    assert conv4d_plan(4, 8, 3, 2, 1, n=1, t_in=4) is _StackedConv4dFunction
    assert conv4d_plan(8, 8, 3, 1, 1, n=2, t_in=2) is _Conv4dFunction  # no single frame
    assert conv4d_plan(16, 16, 3, 1, 1, n=1, t_in=1) is _Conv4dFunction  # one offset
    assert conv4d_plan(4, 4, 3, 1, 0, n=1, t_in=4) is _Conv4dFunction  # not "same" padding
    assert conv4d_plan(8, 3, 1, 1, 0, n=1, t_in=4) is _Conv4dFunction  # no time kernel


def test_paper_configuration_has_the_papers_widths():
    net = LVNet4d()  # 1, 2, 4 blocks at 8, 16, 32 filters
    assert [len(e) for e in net.encoder] == [1, 2, 4]
    assert [e[0].conv1.out_channels for e in net.encoder] == [8, 16, 32]
    assert net.down[1].stride == (2, 2, 2, 2)


def test_conv4d_under_torch_compile_equals_eager():
    """TrainConfig.compile on the CPU: the compiled graph does not call oneDNN directly (that
    op has no fake-tensor kernel) and gives the eager values and gradients."""
    torch.manual_seed(3)
    conv = Conv4d(2, 3, 3, 1, 1)
    x = torch.randn(1, 2, 3, 4, 5, 4, requires_grad=True)
    eager = conv(x)
    eager.square().sum().backward()
    grads = x.grad.clone(), conv.weight.grad.clone()
    x.grad = conv.weight.grad = None
    compiled = torch.compile(conv)(x)
    compiled.square().sum().backward()
    assert torch.allclose(compiled, eager, atol=1e-5)
    assert torch.allclose(x.grad, grads[0], atol=1e-4)
    assert torch.allclose(conv.weight.grad, grads[1], atol=1e-4)
