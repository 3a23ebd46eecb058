"""Fast CPU kernels for the ConvNeXt block, behind one entry point.

``convnext.Block.forward`` is the plain block of the paper plus one dispatch::

    if cpu_kernels.applies(x):
        return cpu_kernels.block_forward(self, x)

:func:`applies` is true only for eager float32 CPU work on an ordinary channels-last tensor. The kernels step
aside (the block runs its plain torch ops, same numerics to float rounding) whenever

- the model is traced, scripted or exported: ``torch.jit`` tracing/scripting, the TorchScript ONNX exporter,
  dynamo (``torch.compile``, ``torch.export``, the dynamo ONNX exporter), FX symbolic tracing, or any
  ``__torch_dispatch__`` mode or tensor subclass (fake tensors, functionalisation, FLOP counters): these only
  understand portable aten ops;
- CPU autocast is on (the plain ops autocast; our float32 nodes would mix dtypes);
- the calling thread asked for plain ops with :func:`plain_ops` (thread-local: other threads keep theirs).

What the kernels do (ConvNeXt-T, 2-core CPU, measured in the README): the pointwise linears run through
oneDNN without addmm's bias pre-copy, fused with GELU and with the residual add where the autograd allows;
layer scale is folded into the second pointwise weight (a C x 4C multiply instead of the activation map);
in training the MLP is one autograd node (GELU gradient written in place) and the depthwise-conv weight
gradient is computed as a per-plane correlation, far faster than oneDNN's.
"""
from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ['applies', 'block_forward', 'plain_ops']


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')


ONEDNN = _onednn_linear_available()
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
    """Whether a tracer, scripter, exporter or compiler is looking at the ops being run."""
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling() or torch.compiler.is_exporting() or _fx_tracing()
                or torch._C._len_torch_dispatch_stack() > 0)


def applies(x: torch.Tensor) -> bool:
    """True where :func:`block_forward` may run: an ordinary float32 CPU tensor in channels-last memory, eager
    (nothing tracing, see :func:`tracing`), no CPU autocast, and plain ops not requested by this thread."""
    return (ONEDNN and type(x) is torch.Tensor and x.device.type == 'cpu' and x.dtype == torch.float32
            and x.is_contiguous(memory_format=torch.channels_last)
            and not getattr(_local, 'plain', False) and not torch.is_autocast_enabled('cpu')
            and not tracing())


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')


def _onednn_linear(x, weight, bias, post_op='none', other=None):
    """oneDNN's fused CPU linear: ``post_op(x W^T + b)`` or ``x W^T + b + other``. Unlike ``addmm`` it does not
    first copy the broadcast bias into the output, and it fuses the activation / residual add."""
    if other is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, bias, 'add')
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], '' if post_op == 'none' else 'none')


def _linear_grads(grad, x, weight, needs):
    """The gradients of ``x W^T + b`` for a contiguous ``grad``: ``(x, W, b)``, None where ``needs`` says so."""
    grad_2d = grad.view(-1, grad.shape[-1])
    return (grad.matmul(weight) if needs[0] else None,
            grad_2d.t().mm(x.reshape(-1, x.shape[-1])) if needs[1] else None,
            grad_2d.sum(0) if needs[2] else None)


class _OneDNNLinear(torch.autograd.Function):
    """``x W^T + b [+ other]`` with oneDNN's forward and the ordinary matmul backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, other=None):
        ctx.save_for_backward(x, weight)
        ctx.has_other = other is not None
        return _onednn_linear(x, weight, bias, other=other)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_other = grad if ctx.has_other and ctx.needs_input_grad[3] else None
        return (*_linear_grads(grad, x, weight, ctx.needs_input_grad[:3]), grad_other)


class _OneDNNMlp(torch.autograd.Function):
    """``GELU(x W1^T + b1) W2^T + b2 [+ other]`` in one autograd node: the linears as in :class:`_OneDNNLinear`,
    and the GELU gradient written over the hidden-activation gradient in place (one 4C-channel buffer fewer
    per block in backward, which on CPU is fresh memory to fault in). With ``save_act=False`` the GELU output
    is recomputed in backward instead of kept (for activation checkpointing: 4C channels less at the peak)."""

    @staticmethod
    def forward(ctx, x, weight1, bias1, weight2, bias2, other=None, save_act=True):
        hidden = _onednn_linear(x, weight1, bias1)
        act = F.gelu(hidden)
        ctx.save_for_backward(x, weight1, hidden, weight2, act if save_act else None)
        ctx.has_other = other is not None
        return _onednn_linear(act, weight2, bias2, other=other)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight1, hidden, weight2, act = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad = grad.contiguous()
        if act is None and needs[3]:
            act = F.gelu(hidden)
        _, grad_w2, grad_b2 = _linear_grads(grad, act, weight2, (False, needs[3], needs[4]))
        del act  # a recomputed one is freed before the hidden gradient is allocated
        grad_x = grad_w1 = grad_b1 = None
        if needs[0] or needs[1] or needs[2]:
            grad_hidden = grad.matmul(weight2)
            torch.ops.aten.gelu_backward.grad_input(grad_hidden, hidden, grad_input=grad_hidden)
            grad_x, grad_w1, grad_b1 = _linear_grads(grad_hidden, x, weight1, needs[:3])
        grad_other = grad if ctx.has_other and needs[5] else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_other, None


class _DepthwiseConv(torch.autograd.Function):
    """The blocks' depthwise KxK conv (stride 1, zero 'same' padding) with a faster CPU weight gradient.

    oneDNN's depthwise weight gradient runs far slower than its forward (ConvNeXt-T at 224, batch 8: 19 / 9 / 6
    / 14 ms per block in stages 0-3, against 2.2 / 0.8 / 0.5 / 0.3 ms forward). The same gradient is a
    correlation of each (sample, channel) input plane with its output-gradient plane: a depthwise conv with
    the gradient as an HxW kernel and a KxK output, summed over the batch (7 / 3 / 2 / 1.4 ms there).
    Forward and input gradient are the ordinary conv ops."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        k = weight.shape[-1]
        pad = k // 2
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad = grad.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
                memory_format=torch.channels_last) else grad.contiguous()
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], c, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            # one sample at a time: as fast, and the NCHW copies stay one sample's size
            padded = x.new_zeros(1, c, h + 2 * pad, w + 2 * pad)  # the zero border is written once
            grad_w = weight.new_zeros(c, 1, k, k)
            for i in range(n):
                padded[0, :, pad:pad + h, pad:pad + w] = x[i]
                grad_w += F.conv2d(padded, grad[i].contiguous().view(c, 1, h, w), groups=c).view(c, 1, k, k)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


def _depthwise_conv(x: torch.Tensor, conv) -> torch.Tensor:
    if torch.is_grad_enabled() and conv.weight.requires_grad:
        return _DepthwiseConv.apply(x, conv.weight, conv.bias)
    return conv(x)


def block_forward(block, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` (a :class:`convnext_backbone.convnext.Block`) through the CPU kernels; only where
    :func:`applies` is true."""
    shortcut = x
    # NHWC view of channels-last memory: contiguous
    x = block.norm(_depthwise_conv(x, block.dwconv).permute(0, 2, 3, 1))
    weight, bias = block.pwconv2.weight, block.pwconv2.bias
    if block.gamma is not None:
        # gamma * (W x + b) == (gamma[:, None] * W) x + gamma * b: scales C x 4C weights instead of
        # the whole activation map.
        weight, bias = weight * block.gamma[:, None], bias * block.gamma
    fuse_residual = not (block.training and block.drop_path_rate > 0)
    shortcut_nhwc = shortcut.permute(0, 2, 3, 1)
    if torch.is_grad_enabled() and block.grn is None:
        x = _OneDNNMlp.apply(x, block.pwconv1.weight, block.pwconv1.bias, weight, bias,
                             shortcut_nhwc if fuse_residual else None, not block.low_memory)
        x = x.permute(0, 3, 1, 2)
        return x if fuse_residual else shortcut + block.drop_path(x)
    if torch.is_grad_enabled():
        x = F.gelu(_OneDNNLinear.apply(x, block.pwconv1.weight, block.pwconv1.bias))
    else:
        x = _onednn_linear(x, block.pwconv1.weight, block.pwconv1.bias, 'gelu')
    if block.grn is not None:
        x = block.grn(x)
    if fuse_residual:
        return _OneDNNLinear.apply(x, weight, bias, shortcut_nhwc).permute(0, 3, 1, 2)
    return shortcut + block.drop_path(_OneDNNLinear.apply(x, weight, bias).permute(0, 3, 1, 2))
