"""The ConvNeXt family as data: the named architectures, and the per-stage layout an argument resolves to.

Pure Python (no torch): :mod:`convnext_backbone.settings` validates the backbone's arguments with these functions,
:mod:`convnext_backbone.checkpoint` names the architecture of a checkpoint with :func:`arch_name`. Every function
raises ``ValueError`` (``TypeError`` for an ``arch`` of another type) with a message naming the argument, the
value and what is valid.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Sequence

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


def is_int(value) -> bool:
    """An integer, not a bool (``True`` is an int to Python, never a stage count or a size here)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite real number, not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def arch_name(depths, channels) -> str | None:
    """The name in :data:`ARCH_SETTINGS` of these depths and channels, or None."""
    return next((n for n, (d, c) in ARCH_SETTINGS.items() if d == list(depths) and c == list(channels)), None)


def resolve_arch(arch) -> tuple[list[int], list[int]]:
    """``(depths, channels)`` of an arch name or an arch dict ``dict(depths=[...], channels=[...])``."""
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
    if not all(isinstance(v, Sequence) and not isinstance(v, str) for v in (depths, channels)) \
            or len(depths) != len(channels) or not depths:
        raise ValueError(f'ConvNeXt: `depths` {depths!r} and `channels` {channels!r} must be non-empty and '
                         'of the same length (one entry per stage).')
    if not all(is_int(v) and v >= 1 for v in (*depths, *channels)):
        raise ValueError(f'ConvNeXt: depths {list(depths)} and channels {list(channels)} must be positive ints.')
    return [int(d) for d in depths], [int(c) for c in channels]


def normalize_out_indices(out_indices, num_stages: int) -> tuple[int, ...]:
    """Validate ``out_indices`` (int or sequence, negatives allowed) and return sorted stage indices."""
    if is_int(out_indices):
        out_indices = [out_indices]
    if not isinstance(out_indices, Sequence) or isinstance(out_indices, str) or not out_indices:
        raise ValueError(f'ConvNeXt: `out_indices` must be an int or a non-empty sequence of ints, '
                         f'got {out_indices!r}.')
    result = []
    for index in out_indices:
        if not is_int(index) or not -num_stages <= index < num_stages:
            raise ValueError(f'ConvNeXt: out_indices {list(out_indices)} has {index!r}, but this arch has '
                             f'{num_stages} stages: use values in [{-num_stages}, {num_stages - 1}].')
        result.append(int(index) % num_stages)
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
    if not is_real(eps) or not eps > 0:
        raise ValueError(f'ConvNeXt: norm_cfg eps must be a positive number, got {eps!r}.')
    requires_grad = norm_cfg.get('requires_grad', True)
    if not isinstance(requires_grad, bool):
        raise ValueError(f'ConvNeXt: norm_cfg requires_grad must be True or False, got {requires_grad!r}.')
    return float(eps), requires_grad


def resolve_kernel_sizes(kernel_size, num_stages: int) -> list[int]:
    """The depthwise conv's kernel size per stage from one int or one per stage; odd (same-size output)."""
    sizes = [kernel_size] * num_stages if is_int(kernel_size) else kernel_size
    if not isinstance(sizes, Sequence) or isinstance(sizes, str) or len(sizes) != num_stages or any(
            not is_int(k) or k < 1 or k % 2 == 0 for k in sizes):
        raise ValueError(f'ConvNeXt: kernel_size must be an odd positive int or a sequence of {num_stages} of '
                         f'them (one per stage; an even kernel cannot keep the residual\'s size), '
                         f'got {kernel_size!r}.')
    return [int(k) for k in sizes]


def resolve_output_stride(output_stride, stem_patch_size: int, num_stages: int):
    """Each stage's downsampling stride and dilations for an ``output_stride`` (None: no dilation).

    timm's rule (``timm.models.convnext.ConvNeXt``): the downsampling layers after the stem halve the resolution
    until the network's stride reaches ``output_stride``; from there on they keep stride 1 and each stage that
    would have downsampled doubles its blocks' depthwise dilation instead, while its 2x2 downsampling conv takes
    timm's ``first_dilation`` (1 while the stage's dilation is 1 or 2, else 2: the previous stage's dilation).
    Valid values are the strides stages 1.. have without dilation (8, 16, 32 with the paper's 4-pixel stem).
    Returns ``(strides, conv_dilations, dilations)``, one entry per stage (``strides[0]`` is the stem's)."""
    natural = [stem_patch_size * 2 ** i for i in range(1, num_stages)]
    if output_stride is not None and (not is_int(output_stride) or output_stride not in natural):
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
