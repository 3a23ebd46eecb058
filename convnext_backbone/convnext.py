"""ConvNeXt V1/V2 as a multi-scale backbone for dense prediction.

Parameter names and shapes follow the official facebookresearch layout
(``downsample_layers``, ``stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma,grn}``, ``norm0..norm3``), so
official checkpoints load one to one. Every other known layout (timm, mmpretrain/mmdet/mmseg model zoo,
official fine-tuned detectors/segmentors) is converted on the fly by :mod:`convnext_backbone.checkpoint`,
whichever way the weights arrive (``init_cfg=dict(type='Pretrained')`` or a whole-model ``load_from``).

Arguments: a superset of mmpretrain 1.2's ``ConvNeXt`` (same names, meanings and numbers; two defaults differ
outside mmpretrain's scope, see :class:`ConvNeXt`), plus the official names and timm's ablation knobs.

Speed: the network runs in channels-last memory format internally, so the permutes around the MLP are
free views and every LayerNorm is ``F.layer_norm`` over a contiguous last dimension. In float32 CPU work,
eager or under ``torch.compile``, the blocks run through fused kernels (custom ops,
:mod:`convnext_backbone.cpu_kernels`, one entry point); tracers and exporters always see the plain block below.
Numerics match the official formulation to float rounding (tested against it and against timm).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from functools import partial
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule

from . import compat, cpu_kernels

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


NORM_TYPES = ('LN2d', 'LN')  # mmpretrain's names of the one norm ConvNeXt has: LayerNorm over channels


def norm_settings(norm_cfg) -> tuple[float, bool]:
    """``(eps, requires_grad)`` of the LayerNorms from an mmpretrain-style ``norm_cfg`` (None: eps 1e-6).

    As in mmpretrain's ``build_norm_layer``, a cfg without ``eps`` means eps 1e-5."""
    if norm_cfg is None:
        return 1e-6, True
    if not isinstance(norm_cfg, dict) or norm_cfg.get('type') not in NORM_TYPES:
        raise ValueError(f'ConvNeXt: norm_cfg {norm_cfg!r} is not supported: every ConvNeXt norm is a LayerNorm '
                         "over channels; use dict(type='LN2d', eps=1e-6) (or type 'LN', the same here).")
    unknown = set(norm_cfg) - {'type', 'eps', 'requires_grad'}
    if unknown:
        raise ValueError(f'ConvNeXt: norm_cfg {norm_cfg!r} has keys {sorted(unknown)} that a LayerNorm over '
                         'channels does not take; valid keys: type, eps, requires_grad.')
    eps = norm_cfg.get('eps', 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f'ConvNeXt: norm_cfg eps must be a positive number, got {eps!r}.')
    requires_grad = norm_cfg.get('requires_grad', True)
    if not isinstance(requires_grad, bool):
        raise ValueError(f'ConvNeXt: norm_cfg requires_grad must be True or False, got {requires_grad!r}.')
    return float(eps), requires_grad


def build_activation(act_cfg) -> nn.Module:
    """The blocks' activation: exact GELU for None, else what mmengine's ``MODELS`` registry builds from
    ``act_cfg`` (e.g. ``dict(type='GELU')``, ``dict(type='ReLU')``, ``dict(type='GELU', approximate='tanh')``)."""
    if act_cfg is None:
        return nn.GELU()
    if not isinstance(act_cfg, dict) or 'type' not in act_cfg:
        raise ValueError(f"ConvNeXt: act_cfg must be a dict with a 'type', e.g. dict(type='GELU'), "
                         f'got {act_cfg!r}.')
    try:
        import mmcv.cnn  # noqa: F401  (registers torch's activations, GELU, ReLU, SiLU, ..., in mmengine's MODELS)
    except ImportError:
        pass
    from mmengine.registry import MODELS
    try:
        act = MODELS.build(dict(act_cfg))
    except Exception as exc:  # the registry raises KeyError / TypeError / ...: give one clear error
        raise ValueError(f"ConvNeXt: act_cfg {act_cfg!r} cannot be built by mmengine's MODELS registry "
                         f'({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); use a registered '
                         "activation, e.g. dict(type='GELU') or dict(type='ReLU').") from exc
    if not isinstance(act, nn.Module):
        raise ValueError(f'ConvNeXt: act_cfg {act_cfg!r} built a {type(act).__name__}, not an nn.Module.')
    return act


def resolve_kernel_sizes(kernel_size, num_stages: int) -> list[int]:
    """The depthwise conv's kernel size per stage from one int or one per stage; odd (same-size output)."""
    sizes = [kernel_size] * num_stages if isinstance(kernel_size, int) else kernel_size
    if not isinstance(sizes, Sequence) or isinstance(sizes, str) or len(sizes) != num_stages or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in sizes):
        raise ValueError(f'ConvNeXt: kernel_size must be an odd positive int or a sequence of {num_stages} of '
                         f'them (one per stage; an even kernel cannot keep the residual\'s size), '
                         f'got {kernel_size!r}.')
    return list(sizes)


def resolve_output_stride(output_stride, stem_patch_size: int, num_stages: int):
    """Each stage's downsampling stride and dilations for an ``output_stride`` (None: no dilation).

    timm's rule (``timm.models.convnext.ConvNeXt``): the downsampling layers after the stem halve the resolution
    until the network's stride reaches ``output_stride``; from there on they keep stride 1 and each stage that
    would have downsampled doubles its blocks' depthwise dilation instead, while its 2x2 downsampling conv takes
    timm's ``first_dilation`` (1 while the stage's dilation is 1 or 2, else 2: the previous stage's dilation).
    Valid values are the strides stages 1.. have without dilation (8, 16, 32 with the paper's 4-pixel stem).
    Returns ``(strides, conv_dilations, dilations)``, one entry per stage (``strides[0]`` is the stem's)."""
    natural = [stem_patch_size * 2 ** i for i in range(1, num_stages)]
    if output_stride is not None and (isinstance(output_stride, bool) or not isinstance(output_stride, int)
                                      or output_stride not in natural):
        valid = (f'None or one of {", ".join(map(str, natural))} (the strides this arch\'s stages after the first '
                 f'have with stem_patch_size {stem_patch_size})') if natural else \
            'None: this arch has one stage, no downsampling layer to keep at stride 1'
        raise ValueError(f'ConvNeXt: output_stride must be {valid}, got {output_stride!r}.')
    strides, conv_dilations, dilations = [stem_patch_size], [1], [1]
    stride, dilation = stem_patch_size, 1
    for _ in range(1, num_stages):
        if output_stride is not None and stride >= output_stride:
            strides.append(1)
            dilation *= 2
        else:
            strides.append(2)
            stride *= 2
        conv_dilations.append(1 if dilation in (1, 2) else 2)
        dilations.append(dilation)
    return strides, conv_dilations, dilations


class PadConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters) that first zero-pads its input by ``pad`` = (left, right, top, bottom):
    timm's ``Conv2dSame`` at stride 1, where the 'same' padding does not depend on the input size. (torch's own
    ``padding='same'`` exports to ONNX as ``auto_pad=SAME_UPPER``, which ONNX Runtime rejects with dilation.)"""

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs):
        super().__init__(*args, **kwargs)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, pad={self.pad}'


def downsample_conv(in_channels: int, out_channels: int, stride: int, dilation: int, bias: bool) -> nn.Conv2d:
    """The 2x2 conv of a downsampling layer: stride 2 as in the paper, or (past the output stride) stride 1 with
    timm's ``create_conv2d(..., padding='same')``: ``dilation`` pixels of zero padding, split evenly, the odd one
    at the bottom / right, so the map keeps its size."""
    if stride == 2:
        return nn.Conv2d(in_channels, out_channels, kernel_size=2, stride=2, bias=bias)
    before, after = dilation // 2, dilation - dilation // 2
    if before == after:
        return nn.Conv2d(in_channels, out_channels, kernel_size=2, padding=before, dilation=dilation, bias=bias)
    return PadConv2d(in_channels, out_channels, kernel_size=2, dilation=dilation, bias=bias,
                     pad=(before, after, before, after))


class _NotGiven:
    """Marks an alias argument the caller did not pass."""

    def __repr__(self):
        return 'NOT_GIVEN'


NOT_GIVEN = _NotGiven()


def _merge_alias(name, value, alias, alias_value, default, same=lambda a, b: a == b):
    """One value from an argument and its alias (e.g. timm's name); both given and different is an error."""
    if alias_value is NOT_GIVEN:
        return default if value is NOT_GIVEN else value
    if value is not NOT_GIVEN and not same(value, alias_value):
        raise ValueError(f'ConvNeXt: `{name}`={value!r} and its alias `{alias}`={alias_value!r} disagree; '
                         'give only one of them.')
    return alias_value


_logged_mmpretrain_defaults = False

# mmpretrain's (and mmcls') defaults for the two arguments whose defaults differ from ours.
MMPRETRAIN_DEFAULTS = {'out_indices': -1, 'gap_before_final_norm': True}


def mmpretrain_defaults(out_indices, gap_before_final_norm) -> tuple:
    """Fill ``out_indices`` / ``gap_before_final_norm`` left as None with mmpretrain's defaults, as its class
    would. Returns (out_indices, gap_before_final_norm, {name: default taken})."""
    given = {'out_indices': out_indices, 'gap_before_final_norm': gap_before_final_norm}
    taken = {name: value for name, value in MMPRETRAIN_DEFAULTS.items() if given[name] is None}
    given.update(taken)
    return given['out_indices'], given['gap_before_final_norm'], taken


def _mmpretrain_scope() -> bool:
    """Whether the model is being built in mmpretrain's default scope (i.e. from an mmpretrain config)."""
    from mmengine.registry import DefaultScope
    current = DefaultScope.get_current_instance()
    return current is not None and current.scope_name == 'mmpretrain'


def _autocast(x: torch.Tensor) -> bool:
    return compat.autocast_enabled(x.device.type)


def _low_precision(x: torch.Tensor) -> bool:
    if isinstance(x, torch.fx.Proxy):  # symbolic tracing records the float32 graph
        return False
    return x.dtype in (torch.float16, torch.bfloat16) or _autocast(x)


def _float32(x: torch.Tensor):
    """A context computing in float32: autocast switched off on x's device where it exists."""
    if compat.autocast_supported(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _compiling() -> bool:
    """Under ``torch.compile`` (not an exporter). Graph outputs of ``torch.compile``'s training graphs (what is
    saved for backward) that are 4-D permuted views make torch 2.14's inductor fail with dynamic shapes:
    ``cannot determine truth value of Relational: 8*((s0//4)) < 8`` (it sorts their symbolic strides without
    the shape environment; pytorch/pytorch#185510, timm's ConvNeXt fails the same way). The model avoids such
    views there: LayerNorm2d normalises the NCHW tensor itself, the blocks' pointwise layers work on 2-D rows."""
    return compat.is_compiling() and not compat.is_exporting()


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dimension, numerically safe in half precision.

    Under ``model.half()`` / bfloat16 or autocast (CUDA or CPU, fp16 or bf16) the normalisation is computed in
    float32 and the result cast back to the input's dtype (the official channels-first formulation overflows
    in fp16: facebookresearch/ConvNeXt#80). In float32 it is plain ``F.layer_norm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _low_precision(x):
            return self._norm(x, self.weight, self.bias)
        with _float32(x):
            out = self._norm(x.float(), self.weight.float(), self.bias.float())
        return out.to(x.dtype)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class LayerNorm2d(LayerNorm):
    """LayerNorm over the channels of an NCHW tensor.

    The official version computes mean and variance by hand (several full passes over memory); here the
    channels-last view is normalised by ``F.layer_norm`` directly, which is one fused kernel when the tensor
    is in channels-last memory format (as it is inside the backbone).
    """

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if _compiling():
            # on the NCHW tensor itself (what inductor decomposes F.layer_norm into, and fuses alike): the output
            # is no permuted view (see _compiling)
            var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
            return (x - mean) * torch.rsqrt(var + self.eps) * weight[:, None, None] + bias[:, None, None]
        return super()._norm(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


class GRN(nn.Module):
    """ConvNeXt-V2 global response norm on an NHWC tensor; parameters shaped (1, 1, 1, C) as official.

    The spatial L2 norm is taken in float32 whatever the input's dtype (in fp16 the sum of squares over a
    feature map overflows); the normalised response is O(1) and applied in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.gamma, self.beta
        if not _low_precision(x):
            gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
            nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        else:
            with _float32(x):
                gx = torch.linalg.vector_norm(x.float(), ord=2, dim=(1, 2), keepdim=True)
                nx = (gx / (gx.mean(dim=-1, keepdim=True) + self.eps)).to(x.dtype)
            gamma, beta = gamma.to(x.dtype), beta.to(x.dtype)
        # gamma * (x * nx) + beta + x, in one pass over x
        return torch.addcmul(beta, x, torch.addcmul(torch.ones_like(nx), gamma, nx))


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm's formulation: scale kept paths by 1 / keep_prob)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
    return x * mask.div_(keep_prob)


class Block(nn.Module):
    """dwconv KxK (dilated past the output stride) -> LN -> pointwise(4C) -> act [-> GRN] -> pointwise(C)
    [* gamma] -> drop path -> + input.

    The pointwise layers are ``nn.Linear`` on the NHWC view (``linear_pw_conv=True``, the official form) or
    1x1 ``nn.Conv2d`` in a channels-first block (``linear_pw_conv=False``, mmpretrain's other form); the
    parameter names are the same either way and a state dict of one form loads into the other (the backbone's
    loading hook reshapes the weights). ``fast_path_ok`` says whether the configuration is one the CPU kernels
    implement (linear pointwise layers, exact GELU); any other runs the plain ops below.
    """

    def __init__(self, dim: int, drop_path_rate: float = 0.0, layer_scale_init_value: float = 1e-6,
                 use_grn: bool = False, mlp_ratio: int = 4, kernel_size: int = 7, conv_bias: bool = True,
                 norm_eps: float = 1e-6, act_cfg: dict | None = None, linear_pw_conv: bool = True,
                 dilation: int = 1):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=dilation * (kernel_size // 2),
                                dilation=dilation, groups=dim, bias=conv_bias)
        self.linear_pw_conv = linear_pw_conv
        self.norm = (LayerNorm if linear_pw_conv else LayerNorm2d)(dim, eps=norm_eps)
        pointwise = nn.Linear if linear_pw_conv else partial(nn.Conv2d, kernel_size=1)
        self.pwconv1 = pointwise(dim, mlp_ratio * dim)
        self.act = build_activation(act_cfg)
        self.grn = GRN(mlp_ratio * dim) if use_grn else None
        self.pwconv2 = pointwise(mlp_ratio * dim, dim)
        self.gamma = (nn.Parameter(layer_scale_init_value * torch.ones(dim))
                      if layer_scale_init_value > 0 else None)
        self.drop_path_rate = drop_path_rate
        self.low_memory = False  # set under activation checkpointing: recompute rather than keep the GELU output
        self.fast_path_ok = (linear_pw_conv and type(self.act) is nn.GELU and self.act.approximate == 'none')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 CPU, eager or torch.compile: the same block through fused kernels (where they implement it)
        if self.fast_path_ok and cpu_kernels.applies(x):
            return cpu_kernels.block_forward(self, x)
        shortcut = x
        x = self.dwconv(x)
        if self.linear_pw_conv:
            n, c, h, w = x.shape
            # NCHW -> (N*H*W, C) rows, channels last for LayerNorm and the linears (a free view of channels-last
            # memory; rows rather than NHWC maps keep 4-D views out of compiled graphs, see _compiling)
            x = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
            x = self.act(self.pwconv1(self.norm(x)))
            if self.grn is not None:  # GRN normalises over H and W: on the NHWC view of the rows
                x = self.grn(x.view(n, h, w, x.shape[-1])).view(n * h * w, x.shape[-1])
            x = self.pwconv2(x)
            if self.gamma is not None:
                x = self.gamma * x
            x = x.view(n, h, w, c).permute(0, 3, 1, 2)
        else:  # channels first throughout; GRN takes the (free) NHWC view of the channels-last memory
            x = self.act(self.pwconv1(self.norm(x)))
            if self.grn is not None:
                x = self.grn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            x = self.pwconv2(x)
            if self.gamma is not None:
                x = self.gamma[:, None, None] * x
        return shortcut + self.drop_path(x)

    def drop_path(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_path_rate, self.training)

    def extra_repr(self) -> str:
        return f'drop_path_rate={self.drop_path_rate:.3f}'


class ConvNeXt(BaseModule):
    """ConvNeXt V1/V2 backbone returning normalised multi-scale features (strides 4, 8, 16, 32; with
    ``output_stride`` 16 or 8 the last stages dilate instead of downsampling: see :attr:`out_strides`).

    Accepts every argument of mmpretrain 1.2's ``ConvNeXt`` (same meaning, same positional order), the
    official facebookresearch names, and timm's ablation knobs. Where a default differs from mmpretrain's it
    says so below; docs/backbone.md has the full table (ours / mmpretrain / timm / official).

    Args:
        arch: one of :data:`ARCH_SETTINGS` or ``dict(depths=[...], channels=[...])``. mmpretrain raises
            AssertionError for a bad arch, we raise ValueError naming the valid ones.
        in_channels: input image channels.
        stem_patch_size: the stem conv's kernel and stride (any positive int; 4 in the paper).
        norm_cfg: the LayerNorms (stem, downsampling, blocks, outputs): ``dict(type='LN2d', eps=...)`` or
            ``type='LN'`` (the same here: every ConvNeXt norm normalises over channels), optional
            ``requires_grad``; eps defaults to 1e-5 when the cfg leaves it out, as mmpretrain's
            ``build_norm_layer``. None (default) is ``dict(type='LN2d', eps=1e-6)``, mmpretrain's default.
            Any other norm type raises ValueError.
        act_cfg: the blocks' activation, anything mmengine's ``MODELS`` registry builds (``dict(type='GELU')``,
            ``dict(type='ReLU')``, ...). None (default) is exact GELU, as mmpretrain's ``dict(type='GELU')``.
            Exact GELU with linear pointwise layers runs through the CPU fast path; others take the plain ops.
        linear_pw_conv: pointwise layers as ``nn.Linear`` on the NHWC view (True, official) or as 1x1 convs in
            a channels-first block (False, mmpretrain's alternative; plain ops only). Parameter names are ours
            either way (``pwconv1/2``, 4-D weights when False) and checkpoints of either form load into both.
        use_grn: add ConvNeXt-V2's global response norm to every block.
        drop_path_rate: stochastic depth of the last block; rates rise linearly from 0 over all blocks.
        layer_scale_init_value: initial layer-scale ``gamma`` (default 1e-6); 0 disables layer scale
            (ConvNeXt-V2). ``ls_init_value`` is timm's name for it.
        out_indices: stages whose (``norm{i}``-normalised) outputs are returned; negatives count from the end
            (of this arch's stages; mmpretrain counts from 4 whatever the arch). **Default differs**: None
            means all stages, for dense tasks; in mmpretrain's scope (an mmpretrain config) None means
            mmpretrain's default ``-1`` (last stage only), logged once.
        frozen_stages: freeze the stem + stage 0, ..., up to stage ``frozen_stages - 1`` with their
            downsampling layers (eval mode, no grad, kept so after ``.train()``); 0 or -1 freezes nothing.
            The output norms are never frozen: they are new for dense tasks.
        gap_before_final_norm: classification mode (mmpretrain's): each output is globally average-pooled,
            then normalised by its ``norm{i}``, shape ``(N, C)``. A classification checkpoint's final pooled
            norm (official ``norm.``, timm ``head.norm.``, an mmpretrain classifier's last ``norm{i}``) then
            loads into the last stage's norm; in dense mode it is skipped. **Default differs**: None means
            False (dense feature maps); in mmpretrain's scope it means mmpretrain's default True, logged once.
        with_cp: activation checkpointing per block, except in the last stage (about half the training
            memory; same outputs and grads. mmpretrain checkpoints every block, only when the input
            requires grad).
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=PATH_OR_URL[, prefix=...])``
            loads any supported checkpoint format (see :mod:`convnext_backbone.checkpoint`).
        channels_last: return features in channels-last memory format (the backbone always computes in
            it); by default they are returned as ordinary contiguous NCHW tensors. (Ours only.)
        kernel_size: the depthwise conv's kernel, one odd int or one per stage (the paper's 3..11 ablation;
            timm's ``kernel_sizes``, also accepted under that name). mmpretrain has no such argument (7).
        conv_bias: bias in the stem, downsampling and depthwise convs (timm's ``conv_bias``; default True).
        output_stride: the stride at which downsampling stops, timm's ``output_stride``: 16 or 8 (DeepLab,
            PSPNet) keep the last one or two downsampling layers at stride 1 and dilate the following stages'
            depthwise convs (2, then 4) instead; same parameters, so every checkpoint loads. None (default) or
            32 is the paper's network; valid values are the strides of stages 1.. (8, 16, 32 with the 4-pixel
            stem). The CPU kernels run dilated blocks too. The per-stage ``strides`` and ``dilations`` (mmseg
            ResNet's names) are attributes; see :attr:`out_strides`.
        ls_init_value: timm's name for ``layer_scale_init_value`` (None disables layer scale, as 0 does);
            giving both with different values raises ValueError.
        in_chans, depths, dims: the official facebookresearch config names for in_channels / arch.
        pretrained: deprecated shortcut for ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``.
    """

    def __init__(self,
                 arch='tiny',
                 in_channels: int = 3,
                 stem_patch_size: int = 4,
                 norm_cfg: dict | None = None,
                 act_cfg: dict | None = None,
                 linear_pw_conv: bool = True,
                 use_grn: bool = False,
                 drop_path_rate: float = 0.0,
                 layer_scale_init_value=NOT_GIVEN,
                 out_indices=None,
                 frozen_stages: int = 0,
                 gap_before_final_norm: bool | None = None,
                 with_cp: bool = False,
                 init_cfg=None,
                 channels_last: bool = False,
                 kernel_size=NOT_GIVEN,
                 conv_bias: bool = True,
                 output_stride: int | None = None,
                 ls_init_value=NOT_GIVEN,
                 kernel_sizes=NOT_GIVEN,
                 in_chans: int | None = None,
                 depths=None,
                 dims=None,
                 pretrained: str | None = None,
                 **unsupported):
        if unsupported:
            raise TypeError(f'ConvNeXt got unknown arguments {sorted(unsupported)}; see the ConvNeXt '
                            'docstring for the supported ones (mmpretrain, timm and official names).')
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
        out_indices, gap_before_final_norm = self._scope_defaults(out_indices, gap_before_final_norm)
        self.out_indices = normalize_out_indices(out_indices, self.num_stages)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'ConvNeXt: drop_path_rate must be in [0, 1), got {drop_path_rate}.')
        layer_scale_init_value = _merge_alias(
            'layer_scale_init_value', layer_scale_init_value, 'ls_init_value',
            0.0 if ls_init_value is None else ls_init_value, 1e-6)
        if isinstance(layer_scale_init_value, bool) or not isinstance(layer_scale_init_value, (int, float)) \
                or layer_scale_init_value < 0:
            raise ValueError(f'ConvNeXt: layer_scale_init_value must be a number >= 0 (0 disables layer scale), '
                             f'got {layer_scale_init_value!r}.')
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'ConvNeXt: frozen_stages must be an int in [-1, {self.num_stages}], '
                             f'got {frozen_stages!r}.')
        if isinstance(stem_patch_size, bool) or not isinstance(stem_patch_size, int) or stem_patch_size < 1:
            raise ValueError(f'ConvNeXt: stem_patch_size (the stem conv\'s kernel and stride) must be a '
                             f'positive int, got {stem_patch_size!r}.')
        self.kernel_sizes = resolve_kernel_sizes(
            _merge_alias('kernel_size', kernel_size, 'kernel_sizes', kernel_sizes, 7,
                         same=lambda a, b: resolve_kernel_sizes(a, self.num_stages)
                         == resolve_kernel_sizes(b, self.num_stages)), self.num_stages)
        norm_eps, norm_requires_grad = norm_settings(norm_cfg)
        for name, flag in (('linear_pw_conv', linear_pw_conv), ('conv_bias', conv_bias), ('use_grn', use_grn),
                           ('gap_before_final_norm', gap_before_final_norm)):
            if not isinstance(flag, bool):
                raise ValueError(f'ConvNeXt: {name} must be True or False, got {flag!r}.')
        build_activation(act_cfg)  # a bad act_cfg fails here, once, with its own message
        self.frozen_stages = max(frozen_stages, 0)
        self.with_cp = with_cp
        self.channels_last = channels_last
        self.gap_before_final_norm = gap_before_final_norm
        self.use_grn = use_grn
        self.layer_scale_init_value = layer_scale_init_value
        self.linear_pw_conv = linear_pw_conv
        self.output_stride = output_stride
        # per stage: the downsampling stride (the stem's first), its 2x2 conv's dilation, the blocks' dilation
        strides, conv_dilations, dilations = resolve_output_stride(output_stride, stem_patch_size, self.num_stages)
        self.strides, self.dilations = tuple(strides), tuple(dilations)

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(self.in_channels, self.channels[0], kernel_size=stem_patch_size, stride=stem_patch_size,
                      bias=conv_bias),
            LayerNorm2d(self.channels[0], eps=norm_eps)))
        for i in range(1, self.num_stages):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(self.channels[i - 1], eps=norm_eps),
                downsample_conv(self.channels[i - 1], self.channels[i], strides[i], conv_dilations[i], conv_bias)))

        rates = torch.linspace(0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(self.depths, self.channels)):
            first = sum(self.depths[:i])
            self.stages.append(nn.Sequential(*[
                Block(dim, rates[first + j], layer_scale_init_value, use_grn, kernel_size=self.kernel_sizes[i],
                      conv_bias=conv_bias, norm_eps=norm_eps, act_cfg=act_cfg, linear_pw_conv=linear_pw_conv,
                      dilation=dilations[i])
                for j in range(depth)]))
            for block in self.stages[-1]:
                block.low_memory = self._checkpointed(i)

        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(self.channels[i], eps=norm_eps))
        if not norm_requires_grad:
            for module in self.modules():
                if isinstance(module, LayerNorm):
                    module.requires_grad_(False)
        self._freeze_stages()

    def _scope_defaults(self, out_indices, gap_before_final_norm):
        """Fill the two arguments whose defaults differ from mmpretrain's: ours (all stages, dense maps)
        normally, mmpretrain's (last stage, pooled) when built in mmpretrain's scope (logged once)."""
        global _logged_mmpretrain_defaults
        if out_indices is not None and gap_before_final_norm is not None:
            return out_indices, gap_before_final_norm
        if not _mmpretrain_scope():
            return (out_indices if out_indices is not None else tuple(range(self.num_stages)),
                    False if gap_before_final_norm is None else gap_before_final_norm)
        out_indices, gap_before_final_norm, taken = mmpretrain_defaults(out_indices, gap_before_final_norm)
        if not _logged_mmpretrain_defaults:
            _logged_mmpretrain_defaults = True
            from mmengine.logging import print_log
            print_log(f'ConvNeXt (convnext_backbone) built in the mmpretrain scope: unspecified arguments take '
                      f"mmpretrain's defaults {taken} (elsewhere our dense defaults apply: all stages, "
                      'gap_before_final_norm=False). Pass them explicitly to silence this.', logger='current')
        return out_indices, gap_before_final_norm

    @property
    def final_norm_name(self) -> str | None:
        """Where a classification checkpoint's final pooled norm loads: the last stage's output norm in
        ``gap_before_final_norm`` mode (applied after pooling, as in the classifier); None in dense mode."""
        last = self.num_stages - 1
        return f'norm{last}' if self.gap_before_final_norm and last in self.out_indices else None

    def get_layer_depth(self, param_name: str, prefix: str = '') -> tuple[int, int]:
        """mmpretrain's layer-wise lr-decay hook (its ``LearningRateDecayOptimWrapperConstructor`` calls it):
        ``(layer id, number of layers)`` of a parameter, by mmpretrain's rule (12 layers when the third stage is
        deeper than 9 blocks, else 6; stage 2 in groups of three blocks; the output norms and anything outside
        the backbone last). In mmdet / mmseg configs use :class:`ConvNeXtLayerDecayOptimizerConstructor`."""
        max_layer_id = 12 if self.depths[-2] > 9 else 6
        if not param_name.startswith(prefix):
            return max_layer_id + 1, max_layer_id + 2
        parts = param_name[len(prefix):].split('.')
        if parts[0] == 'downsample_layers':
            stage = int(parts[1])
            layer_id = 0 if stage == 0 else stage + 1 if stage in (1, 2) else max_layer_id
        elif parts[0] == 'stages':
            stage, block = int(parts[1]), int(parts[2])
            layer_id = stage + 1 if stage in (0, 1) else 3 + block // 3 if stage == 2 else max_layer_id
        else:
            layer_id = max_layer_id + 1
        return layer_id, max_layer_id + 2

    @property
    def out_channels(self) -> list[int]:
        return [self.channels[i] for i in self.out_indices]

    @property
    def out_strides(self) -> list[int]:
        """Input pixels per feature pixel of each returned map, parallel to :attr:`out_channels`: 4, 8, 16, 32;
        at ``output_stride`` 16: 4, 8, 16, 16; at 8: 4, 8, 8, 8."""
        stage_strides = [math.prod(self.strides[:i + 1]) for i in range(self.num_stages)]
        return [stage_strides[i] for i in self.out_indices]

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
