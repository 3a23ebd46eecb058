"""ConvNeXt V1/V2 as a multi-scale backbone for dense prediction.

Parameter names and shapes follow the official facebookresearch layout
(``downsample_layers``, ``stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma,grn}``, ``norm0..norm3``), so
official checkpoints load one to one. Every other known layout (timm, mmpretrain/mmdet/mmseg model zoo,
official fine-tuned detectors/segmentors) is converted on the fly by :mod:`convnext_backbone.checkpoint`,
whichever way the weights arrive (``init_cfg=dict(type='Pretrained')`` or a whole-model ``load_from``).

Speed: the network runs in channels-last memory format internally, so the permutes around the MLP are
free views and every LayerNorm is ``F.layer_norm`` over a contiguous last dimension. In float32 CPU work,
eager or under ``torch.compile``, the blocks run through fused kernels (custom ops,
:mod:`convnext_backbone.cpu_kernels`, one entry point); tracers and exporters always see the plain block below.
Numerics match the official formulation to float rounding (tested against it and against timm).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule

from . import cpu_kernels

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


def _autocast(x: torch.Tensor) -> bool:
    device = x.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def _low_precision(x: torch.Tensor) -> bool:
    if not isinstance(x.dtype, torch.dtype):  # an FX proxy: symbolic tracing records the float32 graph
        return False
    return x.dtype in (torch.float16, torch.bfloat16) or _autocast(x)


def _float32(x: torch.Tensor):
    """A context computing in float32: autocast switched off on x's device where it exists."""
    if torch.amp.is_autocast_available(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dimension, numerically safe in half precision.

    Under ``model.half()`` / bfloat16 or autocast (CUDA or CPU, fp16 or bf16) the normalisation is computed in
    float32 and the result cast back to the input's dtype (the official channels-first formulation overflows
    in fp16: facebookresearch/ConvNeXt#80). In float32 it is plain ``F.layer_norm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _low_precision(x):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        with _float32(x):
            out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class LayerNorm2d(LayerNorm):
    """LayerNorm over the channels of an NCHW tensor.

    The official version computes mean and variance by hand (several full passes over memory); here the
    channels-last view is normalised by ``F.layer_norm`` directly, which is one fused kernel when the tensor
    is in channels-last memory format (as it is inside the backbone).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


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
    """dwconv 7x7 -> LN -> Linear(4C) -> GELU [-> GRN] -> Linear(C) [* gamma] -> drop path -> + input."""

    def __init__(self, dim: int, drop_path_rate: float = 0.0, layer_scale_init_value: float = 1e-6,
                 use_grn: bool = False, mlp_ratio: int = 4):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.grn = GRN(mlp_ratio * dim) if use_grn else None
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = (nn.Parameter(layer_scale_init_value * torch.ones(dim))
                      if layer_scale_init_value > 0 else None)
        self.drop_path_rate = drop_path_rate
        self.low_memory = False  # set under activation checkpointing: recompute rather than keep the GELU output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_kernels.applies(x):  # float32 CPU, eager or torch.compile: the same block through fused kernels
            return cpu_kernels.block_forward(self, x)
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)  # NCHW -> NHWC: channels last for LayerNorm and the linears
        x = self.norm(x)
        x = self.act(self.pwconv1(x))
        if self.grn is not None:
            x = self.grn(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))

    def drop_path(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_path_rate, self.training)

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
