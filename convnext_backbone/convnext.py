"""ConvNeXt V1/V2 as a multi-scale backbone for dense prediction.

Parameter names and shapes follow the official facebookresearch layout
(``downsample_layers``, ``stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma,grn}``, ``norm0..norm3``), so
official checkpoints load one to one. Every other known layout (timm, mmpretrain/mmdet/mmseg model zoo,
official fine-tuned detectors/segmentors) is converted on the fly by :mod:`convnext_backbone.checkpoint`,
whichever way the weights arrive (``init_cfg=dict(type='Pretrained')`` or a whole-model ``load_from``).

Speed: the network runs in channels-last memory format internally, so the permutes around the MLP are
free views, every LayerNorm is ``F.layer_norm`` over a contiguous last dimension, and the layer-scale
multiply is folded into the second pointwise weight. On CPU (float32) the pointwise linears run through
oneDNN: without addmm's bias pre-copy, fused with GELU and with the residual add where the autograd allows;
in training the MLP is one autograd node (GELU gradient in place) and the depthwise-conv weight gradient is
computed as a per-plane correlation, far faster than oneDNN's. Numerics match the official formulation to
float rounding (tested against it and against timm).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch.autograd.function import once_differentiable
from mmengine.model import BaseModule

# depths, channels (timm and the ConvNeXt / ConvNeXt-V2 papers)
ARCH_SETTINGS = {
    'atto': ([2, 2, 6, 2], [40, 80, 160, 320]),
    'femto': ([2, 2, 6, 2], [48, 96, 192, 384]),
    'pico': ([2, 2, 6, 2], [64, 128, 256, 512]),
    'nano': ([2, 2, 8, 2], [80, 160, 320, 640]),
    'tiny': ([3, 3, 9, 3], [96, 192, 384, 768]),
    'small': ([3, 3, 27, 3], [96, 192, 384, 768]),
    'base': ([3, 3, 27, 3], [128, 256, 512, 1024]),
    'large': ([3, 3, 27, 3], [192, 384, 768, 1536]),
    'xlarge': ([3, 3, 27, 3], [256, 512, 1024, 2048]),
    'xxlarge': ([3, 4, 30, 3], [384, 768, 1536, 3072]),
    'huge': ([3, 3, 27, 3], [352, 704, 1408, 2816]),
}


def resolve_arch(arch, depths=None, dims=None):
    """Return ``(depths, channels)`` from an arch name, an arch dict, or official-style depths/dims."""
    if depths is not None or dims is not None:
        if depths is None or dims is None:
            raise ValueError('ConvNeXt: the official-style arguments `depths` and `dims` must be given '
                             'together (or use `arch`).')
        arch = dict(depths=depths, channels=dims)
    if isinstance(arch, str):
        if arch not in ARCH_SETTINGS:
            raise ValueError(f'ConvNeXt: unknown arch {arch!r}. Valid archs: {", ".join(ARCH_SETTINGS)}; '
                             'or pass a dict with `depths` and `channels`.')
        depths, channels = ARCH_SETTINGS[arch]
    elif isinstance(arch, dict):
        unknown = set(arch) - {'depths', 'channels'}
        if unknown or 'depths' not in arch or 'channels' not in arch:
            raise ValueError(f'ConvNeXt: an arch dict needs exactly the keys `depths` and `channels`, '
                             f'got {sorted(arch)}.')
        depths, channels = arch['depths'], arch['channels']
    else:
        raise TypeError(f'ConvNeXt: `arch` must be a name or a dict, got {type(arch).__name__}.')
    depths, channels = list(depths), list(channels)
    if len(depths) != len(channels) or not depths:
        raise ValueError(f'ConvNeXt: `depths` {depths} and `channels` {channels} must be non-empty and '
                         'of the same length (one entry per stage).')
    if any(int(d) < 1 for d in depths) or any(int(c) < 1 for c in channels):
        raise ValueError(f'ConvNeXt: depths {depths} and channels {channels} must be positive.')
    return [int(d) for d in depths], [int(c) for c in channels]


def normalize_out_indices(out_indices, num_stages: int) -> tuple[int, ...]:
    """Validate ``out_indices`` (int or sequence, negatives allowed) and return sorted stage indices."""
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    if not isinstance(out_indices, Sequence) or not out_indices:
        raise ValueError(f'ConvNeXt: `out_indices` must be an int or a non-empty sequence of ints, '
                         f'got {out_indices!r}.')
    result = []
    for index in out_indices:
        if not isinstance(index, int) or not -num_stages <= index < num_stages:
            raise ValueError(f'ConvNeXt: out_indices {list(out_indices)} has {index!r}, but this arch has '
                             f'{num_stages} stages: use values in [{-num_stages}, {num_stages - 1}].')
        result.append(index % num_stages)
    if len(set(result)) != len(result):
        raise ValueError(f'ConvNeXt: out_indices {list(out_indices)} names a stage twice.')
    return tuple(sorted(result))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor.

    The official version computes mean and variance by hand (several full passes over memory); here the
    channels-last view is normalised by ``F.layer_norm`` directly, which is one fused kernel when the tensor
    is in channels-last memory format (as it is inside the backbone).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """ConvNeXt-V2 global response norm on an NHWC tensor; parameters shaped (1, 1, 1, C) as official."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        # gamma * (x * nx) + beta + x, in one pass over x
        return torch.addcmul(self.beta, x, torch.addcmul(torch.ones_like(nx), self.gamma, nx))


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm's formulation: scale kept paths by 1 / keep_prob)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
    return x * mask.div_(keep_prob)


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')


_ONEDNN = _onednn_linear_available()
_fused_enabled = True


@contextlib.contextmanager
def plain_ops():
    """Run the blocks with plain torch ops only (no fused oneDNN kernels), e.g. for FLOP counters and
    tracers that only know aten ops. Numerics are the same to float rounding."""
    global _fused_enabled
    previous, _fused_enabled = _fused_enabled, False
    try:
        yield
    finally:
        _fused_enabled = previous


def _cpu_float32(x: torch.Tensor) -> bool:
    """Our own CPU kernels apply: float32 on CPU, not under autocast, not disabled by :func:`plain_ops`, and not
    while torch.compile traces (inductor fuses the plain ops itself and cannot lower oneDNN's linear with
    trainable weights)."""
    return (_fused_enabled and x.device.type == 'cpu' and x.dtype == torch.float32
            and not torch.is_autocast_enabled('cpu') and not torch.compiler.is_compiling())


def _use_onednn(x: torch.Tensor) -> bool:
    return _ONEDNN and _cpu_float32(x) and x.is_contiguous()


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


def _depthwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    if _cpu_float32(x) and torch.is_grad_enabled() and conv.weight.requires_grad:
        return _DepthwiseConv.apply(x, conv.weight, conv.bias)
    return conv(x)


class Block(nn.Module):
    """dwconv 7x7 -> LN -> Linear(4C) -> GELU [-> GRN] -> Linear(C) [* gamma] -> drop path -> + input."""

    def __init__(self, dim: int, drop_path_rate: float = 0.0, layer_scale_init_value: float = 1e-6,
                 use_grn: bool = False, mlp_ratio: int = 4):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.grn = GRN(mlp_ratio * dim) if use_grn else None
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = (nn.Parameter(layer_scale_init_value * torch.ones(dim))
                      if layer_scale_init_value > 0 else None)
        self.drop_path_rate = drop_path_rate
        self.low_memory = False  # set under activation checkpointing: recompute rather than keep the GELU output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        # NHWC view; contiguous in channels-last memory
        x = self.norm(_depthwise_conv(x, self.dwconv).permute(0, 2, 3, 1))
        weight, bias = self.pwconv2.weight, self.pwconv2.bias
        if self.gamma is not None:
            # gamma * (W x + b) == (gamma[:, None] * W) x + gamma * b: scales C x 4C weights instead of
            # the whole activation map.
            weight, bias = weight * self.gamma[:, None], bias * self.gamma
        fuse_residual = not (self.training and self.drop_path_rate > 0)
        shortcut_nhwc = shortcut.permute(0, 2, 3, 1)
        if _use_onednn(x) and shortcut_nhwc.is_contiguous():
            if torch.is_grad_enabled() and self.grn is None:
                x = _OneDNNMlp.apply(x, self.pwconv1.weight, self.pwconv1.bias, weight, bias,
                                     shortcut_nhwc if fuse_residual else None, not self.low_memory)
                x = x.permute(0, 3, 1, 2)
                return x if fuse_residual else shortcut + drop_path(x, self.drop_path_rate, self.training)
            if torch.is_grad_enabled():
                x = self.act(_OneDNNLinear.apply(x, self.pwconv1.weight, self.pwconv1.bias))
            else:
                x = _onednn_linear(x, self.pwconv1.weight, self.pwconv1.bias, 'gelu')
            if self.grn is not None:
                x = self.grn(x)
            if fuse_residual:
                return _OneDNNLinear.apply(x, weight, bias, shortcut_nhwc).permute(0, 3, 1, 2)
            x = _OneDNNLinear.apply(x, weight, bias)
        else:  # other devices / dtypes, or memory layouts oneDNN's linear does not take
            x = self.act(self.pwconv1(x))
            if self.grn is not None:
                x = self.grn(x)
            x = F.linear(x, weight, bias)
        return shortcut + drop_path(x.permute(0, 3, 1, 2), self.drop_path_rate, self.training)

    def extra_repr(self) -> str:
        return f'drop_path_rate={self.drop_path_rate:.3f}'


class ConvNeXt(BaseModule):
    """ConvNeXt V1/V2 backbone returning normalised multi-scale features (strides 4, 8, 16, 32).

    Args:
        arch: one of :data:`ARCH_SETTINGS` or ``dict(depths=[...], channels=[...])``.
        in_channels: input image channels.
        out_indices: stages whose (``norm{i}``-normalised) outputs are returned; negatives count from the end.
        drop_path_rate: stochastic depth of the last block; rates rise linearly from 0 over all blocks.
        layer_scale_init_value: initial layer-scale ``gamma``; 0 disables layer scale (ConvNeXt-V2).
        use_grn: add ConvNeXt-V2's global response norm to every block.
        frozen_stages: freeze the stem + stage 0, ..., up to stage ``frozen_stages - 1`` with their
            downsampling layers (eval mode, no grad, kept so after ``.train()``); 0 or -1 freezes nothing.
            The output norms are never frozen: they are new for dense tasks.
        with_cp: activation checkpointing per block, except in the last stage (about half the training
            memory; same outputs and grads).
        channels_last: return features in channels-last memory format (the backbone always computes in
            it); by default they are returned as ordinary contiguous NCHW tensors.
        gap_before_final_norm: mmpretrain's classification mode: return globally average-pooled
            ``(N, C)`` features for every out index. Dense tasks keep the default False.
        in_chans, depths, dims: the official facebookresearch config names for in_channels / arch.
        pretrained: deprecated shortcut for ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``.
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=PATH_OR_URL[, prefix=...])``
            loads any supported checkpoint format (see :mod:`convnext_backbone.checkpoint`).
    """

    def __init__(self,
                 arch='tiny',
                 in_channels: int = 3,
                 out_indices=(0, 1, 2, 3),
                 drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6,
                 use_grn: bool = False,
                 frozen_stages: int = 0,
                 with_cp: bool = False,
                 channels_last: bool = False,
                 gap_before_final_norm: bool = False,
                 in_chans: int | None = None,
                 depths=None,
                 dims=None,
                 pretrained: str | None = None,
                 init_cfg=None,
                 **unsupported):
        if unsupported:
            raise TypeError(f'ConvNeXt got unknown arguments {sorted(unsupported)}; see the ConvNeXt '
                            'docstring for the supported ones (mmpretrain and official names).')
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('ConvNeXt: give either `pretrained` or `init_cfg`, not both.')
            warnings.warn('ConvNeXt: `pretrained` is deprecated, use '
                          "init_cfg=dict(type='Pretrained', checkpoint=...)", DeprecationWarning)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        if init_cfg is None:
            init_cfg = [dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=0.02, bias=0.0),
                        dict(type='Constant', layer=['LayerNorm'], val=1.0, bias=0.0)]
        super().__init__(init_cfg=init_cfg)

        self.depths, self.channels = resolve_arch(arch, depths, dims)
        self.num_stages = len(self.depths)
        self.in_channels = in_chans if in_chans is not None else in_channels
        self.out_indices = normalize_out_indices(out_indices, self.num_stages)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'ConvNeXt: drop_path_rate must be in [0, 1), got {drop_path_rate}.')
        if layer_scale_init_value < 0:
            raise ValueError(f'ConvNeXt: layer_scale_init_value must be >= 0 (0 disables layer scale), '
                             f'got {layer_scale_init_value}.')
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'ConvNeXt: frozen_stages must be an int in [-1, {self.num_stages}], '
                             f'got {frozen_stages!r}.')
        self.frozen_stages = max(frozen_stages, 0)
        self.with_cp = with_cp
        self.channels_last = channels_last
        self.gap_before_final_norm = gap_before_final_norm
        self.use_grn = use_grn
        self.layer_scale_init_value = layer_scale_init_value

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(self.in_channels, self.channels[0], kernel_size=4, stride=4),
            LayerNorm2d(self.channels[0], eps=1e-6)))
        for i in range(1, self.num_stages):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(self.channels[i - 1], eps=1e-6),
                nn.Conv2d(self.channels[i - 1], self.channels[i], kernel_size=2, stride=2)))

        rates = torch.linspace(0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(self.depths, self.channels)):
            first = sum(self.depths[:i])
            self.stages.append(nn.Sequential(*[
                Block(dim, rates[first + j], layer_scale_init_value, use_grn) for j in range(depth)]))
            for block in self.stages[-1]:
                block.low_memory = self._checkpointed(i)

        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(self.channels[i], eps=1e-6))
        self._freeze_stages()

    @property
    def out_channels(self) -> list[int]:
        return [self.channels[i] for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for i in range(self.num_stages):
            x = self.downsample_layers[i](x)
            x = self._run_stage(self.stages[i], x, checkpoint=self._checkpointed(i))
            if i in self.out_indices:
                if self.gap_before_final_norm:
                    out = getattr(self, f'norm{i}')(x.mean((2, 3), keepdim=True)).flatten(1)
                else:
                    out = getattr(self, f'norm{i}')(x)
                    if not self.channels_last:
                        out = out.contiguous()
                outs.append(out)
        return tuple(outs)

    def _checkpointed(self, stage_index: int) -> bool:
        """with_cp checkpoints every block except the last stage's: their activations (an eighth of a first-stage
        block's) are the first freed in backward, long before the memory peak, so keeping them costs no peak
        memory and saves a sixth of the recomputation (ConvNeXt blocks all cost the same FLOPs)."""
        return self.with_cp and (stage_index < self.num_stages - 1 or self.num_stages == 1)

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor, checkpoint: bool) -> torch.Tensor:
        if checkpoint and self.training and torch.is_grad_enabled():
            for block in stage:
                # RNG state is preserved, so drop-path masks are identical in the recomputation. The reentrant
                # variant runs the first pass without autograd, i.e. through the fused inference kernels; it
                # needs an input that requires grad to reach the block's parameters at all.
                x = cp.checkpoint(block, x, use_reentrant=x.requires_grad)
            return x
        return stage(x)

    def _frozen_modules(self):
        for i in range(self.frozen_stages):
            yield self.downsample_layers[i]
            yield self.stages[i]

    def _freeze_stages(self):
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        return self

    # --- checkpoint interop -------------------------------------------------------------------------
    def init_weights(self):
        """Random init from ``init_cfg``; a ``Pretrained`` entry loads any supported checkpoint format."""
        from .checkpoint import load_pretrained
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        pretrained = [c for c in cfgs if isinstance(c, dict) and c.get('type') == 'Pretrained']
        if not pretrained:
            return super().init_weights()
        if len(pretrained) > 1:
            raise ValueError('ConvNeXt: init_cfg has more than one Pretrained entry.')
        others = [c for c in cfgs if c not in pretrained]
        saved = self.init_cfg
        # Initialise what the checkpoint may not cover (e.g. the new output norms) first, then load.
        self.init_cfg = others or None
        try:
            super().init_weights()
        finally:
            self.init_cfg = saved
        cfg = pretrained[0]
        load_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                        map_location=cfg.get('map_location', 'cpu'))
        self._is_init = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Runs for model.load_state_dict(...) and for a whole detector's load_from alike: convert whatever
        # layout the keys under `prefix` are in to ours, then fail loudly on shape mismatches (mmengine's
        # non-strict loading would only warn and keep random weights).
        from .checkpoint import adapt_state_dict_in_place
        adapt_state_dict_in_place(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
