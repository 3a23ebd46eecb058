"""ConvNeXt V1/V2 ("A ConvNet for the 2020s", Liu et al. 2022; ConvNeXt V2, Woo et al. 2023) as a multi-scale
backbone for dense prediction: a 4x4 patchify stem, four stages of blocks (7x7 depthwise conv, LayerNorm, an
inverted-bottleneck MLP with GELU [and V2's GRN], layer scale, stochastic depth, residual) joined by LayerNorm +
2x2 stride-2 convs, and a LayerNorm on each returned stage (``norm0..norm3``).

Parameter names and shapes are the official facebookresearch layout (``downsample_layers``,
``stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma,grn}``, ``norm0..norm3``), so official checkpoints load one to
one; every other layout is converted on the fly (:mod:`convnext_backbone.loading`), whichever way the weights
arrive. The arguments (mmpretrain's, timm's, the official names) are resolved and checked in
:mod:`convnext_backbone.settings`; the model is built from the result.

Speed: the network runs in channels-last memory format internally, so the permutes around the MLP are
free views and every LayerNorm is ``F.layer_norm`` over a contiguous last dimension. In float32 CPU work,
eager or under ``torch.compile``, the blocks run through fused kernels (custom ops; autograd functions on torch < 2.4,
:mod:`convnext_backbone.cpu_kernels`, one entry point); tracers and exporters always see the plain block below.
Numerics match the official formulation to float rounding (tested against it and against timm).
"""
from __future__ import annotations

import contextlib
import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule

from . import compat, cpu_kernels, loading
from .arch import ARCH_SETTINGS  # noqa: F401  (re-exported: convnext_backbone.convnext.ARCH_SETTINGS)
from .settings import build_activation, resolve_settings, signature_with_self


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


class ConvNeXt(BaseModule):
    """ConvNeXt V1/V2 backbone returning normalised multi-scale features (strides 4, 8, 16, 32; with
    ``output_stride`` 16 or 8 the last stages dilate instead of downsampling: see :attr:`out_strides`).

    Arguments: every argument of mmpretrain 1.2's ``ConvNeXt`` (same meaning, same positional order), the official
    facebookresearch names and timm's ablation knobs, each documented and checked in
    :func:`convnext_backbone.settings.resolve_settings` (docs/backbone.md has the table). Two defaults differ from
    mmpretrain's outside its scope: ``out_indices`` (all stages) and ``gap_before_final_norm`` (False: dense maps).
    """

    def __init__(self, *args, **kwargs):
        s = resolve_settings(*args, **kwargs)  # every name, alias, default and check: settings.py
        super().__init__(init_cfg=s.init_cfg)
        self.depths, self.channels, self.num_stages = s.depths, s.channels, len(s.depths)
        self.in_channels, self.kernel_sizes, self.out_indices = s.in_channels, s.kernel_sizes, s.out_indices
        self.use_grn, self.linear_pw_conv = s.use_grn, s.linear_pw_conv
        self.layer_scale_init_value = s.layer_scale_init_value
        self.gap_before_final_norm, self.channels_last = s.gap_before_final_norm, s.channels_last
        self.frozen_stages, self.with_cp = s.frozen_stages, s.with_cp
        self.output_stride, self.strides, self.dilations = s.output_stride, s.strides, s.dilations

        # stem: 4x4 patchify conv + LN; then per stage: LN + 2x2 stride-2 conv (stride 1 and dilated past the
        # output stride)
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(s.in_channels, s.channels[0], kernel_size=s.stem_patch_size, stride=s.stem_patch_size,
                      bias=s.conv_bias),
            LayerNorm2d(s.channels[0], eps=s.norm_eps))])
        for i in range(1, self.num_stages):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(s.channels[i - 1], eps=s.norm_eps),
                downsample_conv(s.channels[i - 1], s.channels[i], s.strides[i], s.conv_dilations[i], s.conv_bias)))

        # stochastic depth rises linearly from 0 to drop_path_rate over all blocks
        rates = torch.linspace(0, s.drop_path_rate, sum(s.depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(s.depths, s.channels)):
            first = sum(s.depths[:i])
            self.stages.append(nn.Sequential(*[
                Block(dim, rates[first + j], s.layer_scale_init_value, s.use_grn, kernel_size=s.kernel_sizes[i],
                      conv_bias=s.conv_bias, norm_eps=s.norm_eps, act_cfg=s.act_cfg,
                      linear_pw_conv=s.linear_pw_conv, dilation=s.dilations[i])
                for j in range(depth)]))
            for block in self.stages[-1]:
                block.low_memory = self._checkpointed(i)

        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(s.channels[i], eps=s.norm_eps))
        if not s.norm_requires_grad:
            for module in self.modules():
                if isinstance(module, LayerNorm):
                    module.requires_grad_(False)
        self._freeze_stages()

    __init__.__signature__ = signature_with_self()  # inspect.signature / help show the arguments, not *args

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

    @property
    def out_channels(self) -> list[int]:
        return [self.channels[i] for i in self.out_indices]

    @property
    def out_strides(self) -> list[int]:
        """Input pixels per feature pixel of each returned map, parallel to :attr:`out_channels`: 4, 8, 16, 32;
        at ``output_stride`` 16: 4, 8, 16, 16; at 8: 4, 8, 8, 8."""
        stage_strides = [math.prod(self.strides[:i + 1]) for i in range(self.num_stages)]
        return [stage_strides[i] for i in self.out_indices]

    @property
    def final_norm_name(self) -> str | None:
        """Where a classification checkpoint's final pooled norm loads: the last stage's output norm in
        ``gap_before_final_norm`` mode (applied after pooling, as in the classifier); None in dense mode."""
        last = self.num_stages - 1
        return f'norm{last}' if self.gap_before_final_norm and last in self.out_indices else None

    # --- activation checkpointing ------------------------------------------------------------------------
    def _checkpointed(self, stage_index: int) -> bool:
        """with_cp checkpoints every block except the last stage's: their activations (an eighth of a first-stage
        block's) are the first freed in backward, long before the memory peak, so keeping them costs no peak
        memory and saves the last stage's share of the recomputation (the blocks of all stages cost the same
        FLOPs): depths[-1] / sum(depths), a sixth for T, a twelfth for S / B / L / XL."""
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

    # --- frozen stages -----------------------------------------------------------------------------------
    def _freeze_stages(self):
        for i in range(self.frozen_stages):
            for module in (self.downsample_layers[i], self.stages[i]):
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()  # after every .train(): frozen stages stay in eval mode
        return self

    # --- mmpretrain's layer-wise lr decay ----------------------------------------------------------------
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

    # --- loading: any checkpoint layout, through one path (loading.py) -------------------------------------
    def init_weights(self):
        """Random init from ``init_cfg``; a ``Pretrained`` entry loads any supported checkpoint layout."""
        loading.init_weights(self, super().init_weights)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # nn.Module's documented override point for a module's own state-dict entries (torch's BatchNorm uses it;
        # the public register_load_state_dict_pre_hook exists only from torch 2.5, after the classic stack).
        # Every load_state_dict reaches the backbone here (init_cfg's Pretrained, a whole model's load_from):
        # convert whatever layout the keys under `prefix` are in to ours and check them, or refuse a
        # backbone-only checkpoint loaded as a whole model's.
        loading.adapt_state_dict_in_place(self, state_dict, prefix, unexpected_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
