"""Fast CPU kernels for the ConvNeXt block, behind one entry point.

``convnext.Block.forward`` is the plain block of the paper plus one dispatch::

    if cpu_kernels.applies(x):
        return cpu_kernels.block_forward(self, x)

The kernels are ``torch.library`` custom ops (namespace ``convnext``; on torch < 2.4 plain autograd functions
with the same forward and backward, see :mod:`convnext_backbone.compat`), each with a fake (meta) implementation
and, except the inference-only ``mlp_inference``, an autograd formula whose backward kernels are custom ops too:

- ``convnext::linear``: oneDNN's ``x W^T + b``, fused with GELU (inference) or with the residual add;
- ``convnext::mlp`` / ``convnext::mlp_backward``: the whole MLP ``GELU(x W1^T + b1) W2^T + b2 [+ residual]``
  as one autograd node, the GELU gradient written in place in backward;
- ``convnext::dwconv`` / ``convnext::dwconv_weight_grad``: the depthwise conv (any dilation) with a faster weight
  gradient;
- ``convnext::mlp_inference``: the no-grad MLP in row chunks.

Eager calls them directly; ``torch.compile`` (dynamo + inductor) traces them as opaque calls without graph
breaks and fuses what lies between (LayerNorm, permutes, layer scale, residual adds) into its own kernels.

:func:`applies` is true only for float32 CPU work on an ordinary channels-last tensor, eager or under
``torch.compile``. The kernels step aside (the block runs its plain torch ops, same numerics to float rounding)
whenever

- the model is traced, scripted or exported for deployment: ``torch.jit`` tracing/scripting, the TorchScript
  ONNX exporter, ``torch.export`` and the dynamo ONNX exporter (``compat.is_exporting()``), FX symbolic
  tracing, or any ``__torch_dispatch__`` mode or tensor subclass outside ``torch.compile`` (fake tensors,
  functionalisation, FLOP counters): deployment graphs and these tools need portable aten ops;
- CPU autocast is on (the plain ops autocast; our float32 kernels would mix dtypes);
- the calling thread asked for plain ops with :func:`plain_ops` (thread-local: other threads keep theirs).

What the kernels do (ConvNeXt-T, 2-core CPU, measured in docs/performance.md): the pointwise linears run through
oneDNN without addmm's bias pre-copy, fused with GELU and with the residual add where the autograd allows;
layer scale is folded into the second pointwise weight (a C x 4C multiply instead of the activation map);
in training the MLP is one autograd node (GELU gradient written in place) and the depthwise-conv weight
gradient is computed as a per-plane correlation, far faster than oneDNN's.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .compat import KERNELS_UNDER_COMPILE, autocast_enabled, custom_op, is_compiling, is_exporting

__all__ = ['applies', 'block_forward', 'plain_ops']


def _onednn_linear_available() -> bool:
    """Whether oneDNN's fused linear (a private op: no public API fuses the bias / GELU / residual add) exists and
    computes what :func:`_onednn_linear` asks of it, tried once on a tiny input. Its arguments differ between
    torches (torch 2.0 refuses the ``'none'`` post-op with "Fusion behavior undefined"): where the op is missing
    or answers otherwise the kernels step aside and the blocks run their plain ops."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')):
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, bias, other = (torch.randn(*shape, generator=generator) for shape in ((4, 8), (6, 8), (6,), (4, 6)))
    expected = F.linear(x, weight, bias)
    try:
        with torch.no_grad():
            return all(torch.allclose(out, ref, rtol=1e-4, atol=1e-4) for out, ref in (
                (_onednn_linear(x, weight, bias), expected),
                (_onednn_linear(x, weight, bias, 'gelu'), F.gelu(expected)),
                (_onednn_linear(x, weight, bias, other=other), expected + other)))
    except RuntimeError:
        return False


_local = threading.local()


@contextlib.contextmanager
def plain_ops():
    """Run the blocks with plain torch ops only, in this thread (e.g. for FLOP counters and tools that only
    know aten ops). Numerics are the same to float rounding. Other threads are not affected."""
    previous = getattr(_local, 'plain', False)
    _local.plain = True
    try:
        yield
    finally:
        _local.plain = previous


def _fx_tracing() -> bool:
    """FX symbolic tracing (torch.export and torch.compile are caught by ``torch.compiler`` instead)."""
    from torch.fx import _symbolic_trace
    check = getattr(_symbolic_trace, 'is_fx_symbolic_tracing', None) or _symbolic_trace.is_fx_tracing
    return check()


def tracing() -> bool:
    """Whether a tracer, scripter or exporter is looking at the ops being run. ``torch.compile`` is not one:
    dynamo records the kernels as custom-op calls and inductor calls them."""
    if is_exporting():
        return True
    if is_compiling():  # opaque custom ops in the graph; plain ops where torch lacks them (see compat)
        return not KERNELS_UNDER_COMPILE
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
                or _fx_tracing() or torch._C._len_torch_dispatch_stack() > 0)


def applies(x: torch.Tensor) -> bool:
    """True where :func:`block_forward` may run: an ordinary float32 CPU tensor in channels-last memory, eager
    or under ``torch.compile`` (no exporter or tracer, see :func:`tracing`), no CPU autocast, and plain ops not
    requested by this thread."""
    # tracing() first: torch 2.1's dynamo (torch.export there) cannot evaluate the type check below
    return (ONEDNN and not tracing() and type(x) is torch.Tensor and x.device.type == 'cpu'
            and x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
            and not getattr(_local, 'plain', False) and not autocast_enabled('cpu'))


# --- the kernels -----------------------------------------------------------------------------------------

def _onednn_linear(x, weight, bias, post_op='none', other=None):
    """oneDNN's fused CPU linear: ``post_op(x W^T + b)`` or ``x W^T + b + other``. Unlike ``addmm`` it does not
    first copy the broadcast bias into the output, and it fuses the activation / residual add."""
    x = x.contiguous()
    if other is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, other.contiguous(), weight, bias, 'add')
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], '' if post_op == 'none' else 'none')


ONEDNN = _onednn_linear_available()


def _linear_grads(grad, x, weight, needs):
    """The gradients of ``x W^T + b`` for a contiguous ``grad``: ``(x, W, b)``, None where ``needs`` says so."""
    grad_2d = grad.view(-1, grad.shape[-1])
    return (grad.matmul(weight) if needs[0] else None,
            grad_2d.t().mm(x.reshape(-1, x.shape[-1])) if needs[1] else None,
            grad_2d.sum(0) if needs[2] else None)


def _linear_out(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def rows(t: Tensor) -> Tensor:
    """NCHW in channels-last memory -> its ``(N*H*W, C)`` rows: a view (a copy for other memory formats)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def image(t: Tensor, like: Tensor) -> Tensor:
    """``(N*H*W, C)`` rows -> NCHW in channels-last memory, ``like``'s shape: a view."""
    n, c, h, w = like.shape
    return t.view(n, h, w, c).permute(0, 3, 1, 2)


def _image_out(like: Tensor) -> Tensor:
    """A fresh tensor with the strides :func:`image` gives (fake implementations: not a view, see below)."""
    n, c, h, w = like.shape
    return like.new_empty_strided((n, c, h, w), (h * w * c, 1, w * c, c))


def _residual(out_rows, other):
    """With a residual: the rows of ``x W^T + b + other`` as ``other``'s NCHW image."""
    return out_rows if other is None else image(out_rows, other)


def _none_if_empty(grads, needs):
    return tuple(g if need else None for g, need in zip(grads, needs))


@custom_op('convnext::linear', mutates_args=())
def linear(x: Tensor, weight: Tensor, bias: Tensor, other: Optional[Tensor] = None, gelu: bool = False) -> Tensor:
    """``x W^T + b`` on ``(M, C)`` rows, or ``GELU(x W^T + b)`` with ``gelu`` (no autograd: inference only), or
    with the residual ``other`` (the block's NCHW channels-last input) the block's output ``other + x W^T + b``
    in ``other``'s form."""
    if gelu and other is not None:
        raise ValueError('convnext::linear fuses either GELU or the residual add, not both.')
    out = _onednn_linear(x, weight, bias, 'gelu' if gelu else 'none', None if other is None else rows(other))
    return _residual(out, other)


@linear.register_fake
def _(x, weight, bias, other=None, gelu=False):
    return _linear_out(x, weight) if other is None else _image_out(other)


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias, other, gelu = inputs
    ctx.gelu = gelu
    ctx.has_other = other is not None
    ctx.save_for_backward(x, weight)


def _linear_backward(ctx, grad):
    if ctx.gelu:
        raise RuntimeError('convnext::linear with gelu=True is inference-only: it keeps no pre-activation for '
                           'the GELU gradient; under autograd apply F.gelu to the plain linear instead.')
    x, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_other = grad if ctx.has_other and needs[3] else None
    grad = (rows(grad) if ctx.has_other else grad).contiguous()
    return (*_linear_grads(grad, x, weight, needs[:3]), grad_other, None)


linear.register_autograd(_linear_backward, setup_context=_linear_setup_context)


@custom_op('convnext::mlp', mutates_args=())
def mlp(x: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor, bias2: Tensor, other: Optional[Tensor] = None,
        save_act: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """``GELU(x W1^T + b1) W2^T + b2`` on ``(M, C)`` rows in one autograd node, with the residual ``other`` (the
    block's NCHW channels-last input) the block's output ``other + MLP(x)`` in ``other``'s form. Also returns
    what backward needs: the hidden pre-activation and (``save_act``) the GELU output, else an empty tensor:
    backward recomputes it (activation checkpointing: 4C channels less at the peak)."""
    hidden = _onednn_linear(x, weight1, bias1)
    act = F.gelu(hidden)
    out = _onednn_linear(act, weight2, bias2, other=None if other is None else rows(other))
    return _residual(out, other), hidden, act if save_act else act.new_empty(0)


@mlp.register_fake
def _(x, weight1, bias1, weight2, bias2, other=None, save_act=True):
    hidden = _linear_out(x, weight1)
    out = _linear_out(hidden, weight2) if other is None else _image_out(other)
    return out, hidden, hidden.new_empty(hidden.shape if save_act else (0,))


@custom_op('convnext::mlp_backward', mutates_args=())
def mlp_backward(grad: Tensor, x: Tensor, weight1: Tensor, hidden: Tensor, weight2: Tensor, act: Tensor,
                 needs: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradients ``(x, W1, b1, W2, b2)`` of :func:`mlp` (empty tensors where ``needs`` is false): the GELU
    gradient is written over the hidden-activation gradient in place (one 4C-channel buffer fewer per block,
    which on CPU is fresh memory to fault in). An empty ``act`` is recomputed from ``hidden``."""
    grad = grad.contiguous()
    if act.numel() == 0 and needs[3]:
        act = F.gelu(hidden)
    _, grad_w2, grad_b2 = _linear_grads(grad, act, weight2, (False, needs[3], needs[4]))
    del act  # a recomputed one is freed before the hidden gradient is allocated
    grad_x = grad_w1 = grad_b1 = None
    if needs[0] or needs[1] or needs[2]:
        grad_hidden = grad.matmul(weight2)
        torch.ops.aten.gelu_backward.grad_input(grad_hidden, hidden, grad_input=grad_hidden)
        grad_x, grad_w1, grad_b1 = _linear_grads(grad_hidden, x, weight1, needs[:3])
    # a fresh empty tensor per missing gradient: a custom op's outputs must not alias each other
    return tuple(grad.new_empty(0) if g is None else g for g in (grad_x, grad_w1, grad_b1, grad_w2, grad_b2))


@mlp_backward.register_fake
def _(grad, x, weight1, hidden, weight2, act, needs):
    shapes = (x.shape, weight1.shape, weight1.shape[:1], weight2.shape, weight2.shape[:1])
    return tuple(grad.new_empty(shape if need else (0,)) for shape, need in zip(shapes, needs))


def _mlp_setup_context(ctx, inputs, output):
    x, weight1, bias1, weight2, bias2, other, save_act = inputs
    _, hidden, act = output
    ctx.has_other = other is not None
    # hidden and act are outputs for backward's sake only: no gradient flows into them, and none should be
    # materialised as zeros (two 4C-channel fills per block in eager)
    ctx.mark_non_differentiable(hidden, act)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight1, hidden, weight2, act)


def _mlp_backward(ctx, grad, _grad_hidden, _grad_act):
    x, weight1, hidden, weight2, act = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:5])
    grad_rows = rows(grad) if ctx.has_other else grad
    grads = _none_if_empty(mlp_backward(grad_rows, x, weight1, hidden, weight2, act, needs), needs)
    grad_other = grad if ctx.has_other and ctx.needs_input_grad[5] else None
    return (*grads, grad_other, None)


mlp.register_autograd(_mlp_backward, setup_context=_mlp_setup_context)


# Rows per chunk of the inference MLP, per torch thread: each thread's share of the chunk's 4C-channel hidden
# activation (4096 x 384 floats at stage 0: 6 MB) is reused from the last-level cache by the second linear instead
# of a full M x 4C map written to and read back from memory. Measured on 2 cores only; per thread, because every
# chunk's matmuls and GELU are OpenMP regions whose barriers stall when the threads share the cores with other work
# (2-core AMD EPYC, Dec 4 2026, 512x512 inference, loaded host: 2 threads, 2048-row chunks 0.84-0.89x timm, 4096
# 0.99x, 8192 1.08x, the whole map 1.10-1.13x; 1 thread: 2048 1.10x, 8192 1.08x, the whole map 1.00x).
MLP_CHUNK_ROWS = 4096


@custom_op('convnext::mlp_inference', mutates_args=())
def mlp_inference(x: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor, bias2: Tensor,
                  other: Optional[Tensor] = None) -> Tensor:
    """``GELU(x W1^T + b1) W2^T + b2`` on ``(M, C)`` rows without autograd (inference), with the residual
    ``other`` (the block's NCHW channels-last input) the block's output ``other + MLP(x)`` in ``other``'s form.

    Computed :data:`MLP_CHUNK_ROWS` rows per torch thread at a time into one reused hidden buffer: no M x 4C
    activation map is allocated (on CPU: fresh pages to fault in) or streamed through memory twice. The linears
    are MKL's ``addmm`` writing into their destinations; the bias / residual add happens on the chunk while it is
    in cache.
    """
    m = x.shape[0]
    x = x.contiguous()
    out = x.new_empty((m, weight2.shape[0]))
    residual = None if other is None else rows(other)
    chunk_rows = MLP_CHUNK_ROWS * torch.get_num_threads()
    hidden = x.new_empty((min(m, chunk_rows), weight1.shape[0]))
    weight1_t, weight2_t = weight1.t(), weight2.t()
    for start in range(0, m, chunk_rows):
        stop = min(start + chunk_rows, m)
        h = torch.addmm(bias1, x[start:stop], weight1_t, out=hidden[:stop - start])
        torch.ops.aten.gelu_(h)
        chunk = out[start:stop]
        if residual is None:
            chunk.copy_(bias2.expand_as(chunk))
        else:
            torch.add(residual[start:stop], bias2, out=chunk)
        chunk.addmm_(h, weight2_t)
    return _residual(out, other)


@mlp_inference.register_fake
def _(x, weight1, bias1, weight2, bias2, other=None):
    return _linear_out(x, weight2) if other is None else _image_out(other)


@custom_op('convnext::dwconv', mutates_args=())
def dwconv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, dilation: int = 1) -> Tensor:
    """The blocks' depthwise KxK conv (stride 1, ``dilation``, zero 'same' padding); its autograd computes the
    weight gradient with :func:`dwconv_weight_grad`. Forward and input gradient are the ordinary conv ops."""
    return F.conv2d(x, weight, bias, padding=dilation * (weight.shape[-1] // 2), dilation=dilation,
                    groups=x.shape[1])


@dwconv.register_fake
def _(x, weight, bias=None, dilation=1):
    return F.conv2d(x, weight, bias, padding=dilation * (weight.shape[-1] // 2), dilation=dilation,
                    groups=x.shape[1])


@custom_op('convnext::dwconv_weight_grad', mutates_args=())
def dwconv_weight_grad(x: Tensor, grad: Tensor, kernel_size: int, dilation: int = 1) -> Tensor:
    """The depthwise conv's weight gradient, faster than oneDNN's.

    oneDNN's depthwise weight gradient runs far slower than its forward (ConvNeXt-T at 224, batch 8: 19 / 9 / 6
    / 14 ms per block in stages 0-3, against 2.2 / 0.8 / 0.5 / 0.3 ms forward). The same gradient is a
    correlation of each (sample, channel) input plane with its output-gradient plane: a depthwise conv with
    the gradient as an HxW kernel and a KxK output, summed over the batch (7 / 3 / 2 / 1.4 ms there). With
    ``dilation`` d the kernel taps lie d pixels apart: the same correlation at stride d."""
    n, c, h, w = x.shape
    k = kernel_size
    pad = dilation * (k // 2)
    # one sample at a time: as fast, and the NCHW copies stay one sample's size
    padded = x.new_zeros(1, c, h + 2 * pad, w + 2 * pad)  # the zero border is written once
    grad_w = x.new_zeros(c, 1, k, k)
    for i in range(n):
        padded[0, :, pad:pad + h, pad:pad + w] = x[i]
        grad_w += F.conv2d(padded, grad[i].contiguous().view(c, 1, h, w), stride=dilation,
                           groups=c).view(c, 1, k, k)
    return grad_w


@dwconv_weight_grad.register_fake
def _(x, grad, kernel_size, dilation=1):
    return x.new_empty(x.shape[1], 1, kernel_size, kernel_size)


def _dwconv_setup_context(ctx, inputs, output):
    x, weight, bias, dilation = inputs
    ctx.has_bias = bias is not None
    ctx.dilation = dilation
    ctx.save_for_backward(x, weight)


def _dwconv_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    c, k, d = x.shape[1], weight.shape[-1], ctx.dilation
    pad = d * (k // 2)
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad = grad.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last) else grad.contiguous()
        grad_x = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], [pad, pad], [d, d], False, [0, 0], c, [True, False, False])[0]
    if ctx.needs_input_grad[1]:
        grad_w = dwconv_weight_grad(x, grad, k, d)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = grad.sum((0, 2, 3))
    return grad_x, grad_w, grad_b, None


dwconv.register_autograd(_dwconv_backward, setup_context=_dwconv_setup_context)


# --- the block -------------------------------------------------------------------------------------------

def _depthwise_conv(x: torch.Tensor, conv) -> torch.Tensor:
    if torch.is_grad_enabled() and conv.weight.requires_grad:
        return dwconv(x, conv.weight, conv.bias, conv.dilation[0])
    return conv(x)


def block_forward(block, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` (a :class:`convnext_backbone.convnext.Block`) through the CPU kernels; only where
    :func:`applies` is true.

    The MLP runs on the ``(N*H*W, C)`` rows of the channels-last memory (free views), and with the residual add
    fused returns the block's output in its NCHW form. Under ``torch.compile`` this keeps two things out of the
    graph: 4-D NHWC tensors saved for backward, which inductor lays out as channels-last *of their own dims*
    (transposing H with the channels: two extra copies of the 4C-channel activations per block), and a block
    output that is a permuted view, which inductor cannot lay out with dynamic shapes (see
    ``convnext._compiling``)."""
    shortcut = x
    x = block.norm(rows(_depthwise_conv(x, block.dwconv)))
    weight, bias = block.pwconv2.weight, block.pwconv2.bias
    if block.gamma is not None:
        # gamma * (W x + b) == (gamma[:, None] * W) x + gamma * b: scales C x 4C weights instead of
        # the whole activation map.
        weight, bias = weight * block.gamma[:, None], bias * block.gamma
    fuse_residual = not (block.training and block.drop_path_rate > 0)
    residual = shortcut if fuse_residual else None
    if block.grn is None and torch.is_grad_enabled():
        x = mlp(x, block.pwconv1.weight, block.pwconv1.bias, weight, bias, residual, not block.low_memory)[0]
    elif block.grn is None:
        x = mlp_inference(x, block.pwconv1.weight, block.pwconv1.bias, weight, bias, residual)
    else:  # GRN normalises over H and W: on the NHWC view of the whole 4C-channel map
        if torch.is_grad_enabled():
            x = F.gelu(linear(x, block.pwconv1.weight, block.pwconv1.bias))
        else:
            x = linear(x, block.pwconv1.weight, block.pwconv1.bias, gelu=True)
        n, _, h, w = shortcut.shape
        x = block.grn(x.view(n, h, w, x.shape[-1])).view(x.shape)
        x = linear(x, weight, bias, residual)
    return x if fuse_residual else shortcut + block.drop_path(image(x, shortcut))
