"""The backbone's arguments in, :class:`Settings` out: every argument name, alias, default and check in one place.

:class:`convnext_backbone.convnext.ConvNeXt` calls :func:`resolve_settings` once with what it was given and builds
the network from the result. This module alone knows

- the names: mmpretrain 1.2's (same meaning and positional order), timm's (``ls_init_value``, ``kernel_sizes``),
  the official facebookresearch ones (``in_chans``, ``depths``, ``dims``), and the deprecated ``pretrained``;
- the defaults, including the two that depend on the scope: in mmpretrain's (an mmpretrain config) a left-out
  ``out_indices`` / ``gap_before_final_norm`` takes mmpretrain's default, elsewhere ours (dense). The
  ``mmcls.ConvNeXt`` / ``mmpretrain.ConvNeXt`` stand-ins (:mod:`convnext_backbone.registry`) use
  :func:`mmpretrain_defaults` too;
- the checks: each argument's type and range, one ``ValueError`` naming the argument, the value and what is valid
  (unknown arguments: ``TypeError``).

The per-stage layout (arch table, out_indices, kernel sizes, output stride, norms) is :mod:`convnext_backbone.arch`.
"""
from __future__ import annotations

import inspect
import operator
import os
import warnings
from dataclasses import dataclass

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.registry import MODELS, DefaultScope

from .arch import (is_int, is_real, norm_settings, normalize_out_indices, resolve_arch, resolve_kernel_sizes,
                   resolve_output_stride)

DEFAULT_INIT_CFG = [dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=0.02, bias=0.0),
                    dict(type='Constant', layer=['LayerNorm'], val=1.0, bias=0.0)]
# mmpretrain's (and mmcls') defaults for the two arguments whose defaults differ from ours.
MMPRETRAIN_DEFAULTS = {'out_indices': -1, 'gap_before_final_norm': True}


@dataclass(frozen=True)
class Settings:
    """What the network is built from: resolved and checked (see :func:`resolve_settings` for each argument)."""
    depths: list
    channels: list
    in_channels: int
    stem_patch_size: int
    norm_eps: float
    norm_requires_grad: bool
    act_cfg: dict | None
    linear_pw_conv: bool
    use_grn: bool
    drop_path_rate: float
    layer_scale_init_value: float
    out_indices: tuple
    frozen_stages: int  # -1 already made 0
    gap_before_final_norm: bool
    with_cp: bool
    init_cfg: dict | list
    channels_last: bool
    kernel_sizes: list
    conv_bias: bool
    output_stride: int | None
    strides: tuple  # per stage: the downsampling stride (the stem's first)
    conv_dilations: tuple  # per stage: the dilation of its 2x2 downsampling conv
    dilations: tuple  # per stage: its blocks' depthwise dilation


class _NotGiven:
    """Marks an argument with an alias that the caller did not pass."""

    def __repr__(self):
        return 'NOT_GIVEN'


NOT_GIVEN = _NotGiven()


def resolve_settings(arch='tiny', in_channels=3, stem_patch_size=4, norm_cfg=None, act_cfg=None,
                     linear_pw_conv=True, use_grn=False, drop_path_rate=0.0, layer_scale_init_value=NOT_GIVEN,
                     out_indices=None, frozen_stages=0, gap_before_final_norm=None, with_cp=False, init_cfg=None,
                     channels_last=False, kernel_size=NOT_GIVEN, conv_bias=True, output_stride=None,
                     ls_init_value=NOT_GIVEN, kernel_sizes=NOT_GIVEN, in_chans=None, depths=None, dims=None,
                     pretrained=None, **unsupported) -> Settings:
    """The ConvNeXt backbone's arguments (docs/backbone.md has the table: ours / mmpretrain / timm / official).

    Args:
        arch: one of :data:`~convnext_backbone.arch.ARCH_SETTINGS` or ``dict(depths=[...], channels=[...])``.
        in_channels: input image channels (a positive int).
        stem_patch_size: the stem conv's kernel and stride (a positive int; 4 in the paper).
        norm_cfg: the LayerNorms: ``dict(type='LN2d' or 'LN', eps=..., requires_grad=...)``; a cfg without eps
            means 1e-5, as mmpretrain's ``build_norm_layer``. None: ``dict(type='LN2d', eps=1e-6)``.
        act_cfg: the blocks' activation, anything mmengine's ``MODELS`` builds. None: exact GELU.
        linear_pw_conv: pointwise layers as ``nn.Linear`` (True, official) or as 1x1 convs (False).
        use_grn: ConvNeXt-V2's global response norm in every block.
        drop_path_rate: stochastic depth of the last block, in [0, 1); it rises linearly from 0 over all blocks.
        layer_scale_init_value: initial layer scale, >= 0 (default 1e-6; 0 disables it, as ConvNeXt-V2).
        out_indices: the stages returned (int or sequence, negatives from the end). None: all stages; in
            mmpretrain's scope mmpretrain's default -1, logged once.
        frozen_stages: freeze the stem and stages ``0 .. frozen_stages - 1``; an int in [-1, number of stages].
        gap_before_final_norm: pool each output, then normalise it (classification). None: False; in
            mmpretrain's scope mmpretrain's default True, logged once.
        with_cp: activation checkpointing, True or False.
        init_cfg: mmengine init config (a dict with a ``type``, or a list of them); at most one ``Pretrained``,
            which loads any supported checkpoint layout. None: truncated-normal convs and linears, unit norms.
        channels_last: return the features in channels-last memory format, True or False.
        kernel_size: the depthwise conv's kernel, one odd int or one per stage (default 7).
        conv_bias: bias in the stem, downsampling and depthwise convs, True or False.
        output_stride: None or one of the strides of stages 1.. (8, 16, 32 with the 4-pixel stem): the
            downsampling stops there and the later stages dilate (timm's ``output_stride``).
        ls_init_value, kernel_sizes: timm's names of ``layer_scale_init_value`` (None disables layer scale) and
            ``kernel_size``; an argument and its alias given with different values is an error.
        in_chans, depths, dims: the official names of ``in_channels`` and of the arch; when given they are used
            (``depths`` and ``dims`` together).
        pretrained: deprecated: ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``.
    """
    if unsupported:
        raise TypeError(f'ConvNeXt got unknown arguments {sorted(unsupported)}; see the ConvNeXt '
                        'docstring for the supported ones (mmpretrain, timm and official names).')
    if depths is not None or dims is not None:
        if depths is None or dims is None:
            raise ValueError('ConvNeXt: the official-style arguments `depths` and `dims` must be given '
                             'together (or use `arch`).')
        arch = dict(depths=depths, channels=dims)
    depths, channels = resolve_arch(arch)
    num_stages = len(depths)
    in_channels = in_chans if in_chans is not None else in_channels
    _check(is_int(in_channels) and in_channels >= 1, 'in_channels (the input image channels)', in_channels,
           'a positive int')
    _check(is_int(stem_patch_size) and stem_patch_size >= 1, "stem_patch_size (the stem conv's kernel and stride)",
           stem_patch_size, 'a positive int')
    _check(is_real(drop_path_rate) and 0 <= drop_path_rate < 1, 'drop_path_rate', drop_path_rate,
           'a number in [0, 1)')
    layer_scale_init_value = _merge_alias('layer_scale_init_value', layer_scale_init_value, 'ls_init_value',
                                          0.0 if ls_init_value is None else ls_init_value, 1e-6)
    _check(is_real(layer_scale_init_value) and layer_scale_init_value >= 0, 'layer_scale_init_value',
           layer_scale_init_value, 'a number >= 0 (0 disables layer scale)')
    _check(is_int(frozen_stages) and -1 <= frozen_stages <= num_stages, 'frozen_stages', frozen_stages,
           f'an int in [-1, {num_stages}]')
    kernel_sizes = resolve_kernel_sizes(_merge_alias(
        'kernel_size', kernel_size, 'kernel_sizes', kernel_sizes, 7,
        same=lambda a, b: resolve_kernel_sizes(a, num_stages) == resolve_kernel_sizes(b, num_stages)), num_stages)
    norm_eps, norm_requires_grad = norm_settings(norm_cfg)
    build_activation(act_cfg)  # a bad act_cfg fails here, once, with its own message
    out_indices, gap_before_final_norm = _scope_defaults(out_indices, gap_before_final_norm, num_stages)
    for name, flag in (('linear_pw_conv', linear_pw_conv), ('use_grn', use_grn), ('conv_bias', conv_bias),
                       ('gap_before_final_norm', gap_before_final_norm), ('with_cp', with_cp),
                       ('channels_last', channels_last)):
        _check(isinstance(flag, bool), name, flag, 'True or False')
    strides, conv_dilations, dilations = resolve_output_stride(output_stride, stem_patch_size, num_stages)
    return Settings(
        depths=depths, channels=channels, in_channels=int(in_channels), stem_patch_size=int(stem_patch_size),
        norm_eps=norm_eps, norm_requires_grad=norm_requires_grad, act_cfg=act_cfg, linear_pw_conv=linear_pw_conv,
        use_grn=use_grn, drop_path_rate=float(drop_path_rate), layer_scale_init_value=float(layer_scale_init_value),
        out_indices=normalize_out_indices(out_indices, num_stages), frozen_stages=max(int(frozen_stages), 0),
        gap_before_final_norm=gap_before_final_norm, with_cp=with_cp, init_cfg=_init_cfg(init_cfg, pretrained),
        channels_last=channels_last, kernel_sizes=kernel_sizes, conv_bias=conv_bias, output_stride=output_stride,
        strides=tuple(strides), conv_dilations=tuple(conv_dilations), dilations=tuple(dilations))


def signature_with_self() -> inspect.Signature:
    """:func:`resolve_settings`' signature as a method's: what ``inspect.signature(ConvNeXt)`` and ``help`` show."""
    sig = inspect.signature(resolve_settings)
    self = inspect.Parameter('self', inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sig.replace(parameters=[self, *sig.parameters.values()], return_annotation=inspect.Signature.empty)


def _check(ok: bool, name: str, value, valid: str) -> None:
    if not ok:
        raise ValueError(f'ConvNeXt: {name} must be {valid}, got {value!r}.')


def _merge_alias(name, value, alias, alias_value, default, same=operator.eq):
    """One value from an argument and its alias (e.g. timm's name); both given and different is an error."""
    if alias_value is NOT_GIVEN:
        return default if value is NOT_GIVEN else value
    if value is not NOT_GIVEN and not same(value, alias_value):
        raise ValueError(f'ConvNeXt: `{name}`={value!r} and its alias `{alias}`={alias_value!r} disagree; '
                         'give only one of them.')
    return alias_value


def build_activation(act_cfg) -> nn.Module:
    """The blocks' activation: exact GELU for None, else what mmengine's ``MODELS`` registry builds from
    ``act_cfg`` (e.g. ``dict(type='GELU')``, ``dict(type='ReLU')``, ``dict(type='GELU', approximate='tanh')``)."""
    if act_cfg is None:
        return nn.GELU()
    if not isinstance(act_cfg, dict) or 'type' not in act_cfg:
        raise ValueError(f"ConvNeXt: act_cfg must be a dict with a 'type', e.g. dict(type='GELU'), "
                         f'got {act_cfg!r}.')
    try:  # an optional dependency, needed only here: mmcv registers torch's activations in mmengine's MODELS
        import mmcv.cnn  # noqa: F401
    except ImportError:
        pass
    try:
        act = MODELS.build(dict(act_cfg))
    except Exception as exc:  # the registry raises KeyError / TypeError / ...: give one clear error
        raise ValueError(f"ConvNeXt: act_cfg {act_cfg!r} cannot be built by mmengine's MODELS registry "
                         f'({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); use a registered '
                         "activation, e.g. dict(type='GELU') or dict(type='ReLU').") from exc
    if not isinstance(act, nn.Module):
        raise ValueError(f'ConvNeXt: act_cfg {act_cfg!r} built a {type(act).__name__}, not an nn.Module.')
    return act


def _init_cfg(init_cfg, pretrained):
    """``init_cfg`` with the deprecated ``pretrained`` folded in; None: the default random init."""
    if pretrained is not None:
        if init_cfg is not None:
            raise ValueError('ConvNeXt: give either `pretrained` or `init_cfg`, not both.')
        _check(isinstance(pretrained, (str, os.PathLike)), 'pretrained', pretrained, 'a checkpoint path or URL')
        warnings.warn('ConvNeXt: `pretrained` is deprecated, use '
                      "init_cfg=dict(type='Pretrained', checkpoint=...)", DeprecationWarning)
        init_cfg = dict(type='Pretrained', checkpoint=pretrained)
    if init_cfg is None:
        return [dict(cfg) for cfg in DEFAULT_INIT_CFG]
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    _check(all(isinstance(cfg, dict) and 'type' in cfg for cfg in cfgs), 'init_cfg', init_cfg,
           "a dict with a 'type' or a list of them, e.g. dict(type='Pretrained', checkpoint=PATH_OR_URL)")
    if sum(cfg['type'] == 'Pretrained' for cfg in cfgs) > 1:
        raise ValueError('ConvNeXt: init_cfg has more than one Pretrained entry.')
    return init_cfg


_logged_mmpretrain_defaults = False


def mmpretrain_defaults(out_indices, gap_before_final_norm) -> tuple:
    """Fill ``out_indices`` / ``gap_before_final_norm`` left as None with mmpretrain's defaults, as its class
    would. Returns (out_indices, gap_before_final_norm, {name: default taken})."""
    given = {'out_indices': out_indices, 'gap_before_final_norm': gap_before_final_norm}
    taken = {name: value for name, value in MMPRETRAIN_DEFAULTS.items() if given[name] is None}
    given.update(taken)
    return given['out_indices'], given['gap_before_final_norm'], taken


def _scope_defaults(out_indices, gap_before_final_norm, num_stages: int):
    """Fill the two arguments whose defaults differ from mmpretrain's: ours (all stages, dense maps) normally,
    mmpretrain's (last stage, pooled) when built in mmpretrain's default scope, i.e. from an mmpretrain config
    (logged once)."""
    global _logged_mmpretrain_defaults
    if out_indices is not None and gap_before_final_norm is not None:
        return out_indices, gap_before_final_norm
    scope = DefaultScope.get_current_instance()
    if scope is None or scope.scope_name != 'mmpretrain':
        return (tuple(range(num_stages)) if out_indices is None else out_indices,
                False if gap_before_final_norm is None else gap_before_final_norm)
    out_indices, gap_before_final_norm, taken = mmpretrain_defaults(out_indices, gap_before_final_norm)
    if not _logged_mmpretrain_defaults:
        _logged_mmpretrain_defaults = True
        print_log(f'ConvNeXt (convnext_backbone) built in the mmpretrain scope: unspecified arguments take '
                  f"mmpretrain's defaults {taken} (elsewhere our dense defaults apply: all stages, "
                  'gap_before_final_norm=False). Pass them explicitly to silence this.', logger='current')
    return out_indices, gap_before_final_norm
