"""Loading weights into the backbone: one path for ``init_cfg=dict(type='Pretrained')`` and every ``load_state_dict``.

The backbone's ``_load_from_state_dict`` calls :func:`adapt_state_dict_in_place` with the keys under its prefix,
however they arrive: its own ``init_cfg`` (:func:`load_pretrained`), or a whole model's ``load_from`` / ``resume`` /
``mmengine.runner.load_checkpoint`` (also mmdet's ``init_detector``, mmseg's ``init_model``), a whole model's own
``init_cfg=dict(type='Pretrained')``, ``model.load_state_dict(...)``. The keys are converted from their layout
(:func:`convnext_backbone.checkpoint.convert_state_dict`) and checked with the same messages either way (values,
shapes, missing and unexpected keys), and one log line reports what was found.

Messages name the file where our code read it (``init_cfg``); for a file mmengine reads they say "The checkpoint
being loaded", and mmengine's own log line just before (``Loads checkpoint by local backend from path: ...``) names
it.

A whole model's ``load_from`` pointed at a backbone-only checkpoint (an ImageNet classifier, official
``{'model': ...}``, ``{'state_dict': ...}`` or raw, timm, ...) would load nothing into the backbone, with only
mmengine's missing-key warning to say so: it is refused, naming the backbone's ``init_cfg`` as the fix
(:func:`refuse_backbone_only`; docs/checkpoints.md).

Reading and converting files (no model) is :mod:`convnext_backbone.checkpoint`.
"""
from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass

from mmengine.logging import print_log

from .checkpoint import (WEIGHT_WRAPPERS, CheckpointError, Conversion, backbone_prefix, convert_state_dict,
                         detect_format, read_checkpoint, short_keys, split_backbone, unwrap_state_dict)
from .layouts import detect


@dataclass
class _LoadContext:
    """What :func:`load_pretrained` knows and a ``load_state_dict`` does not: the file, keys left outside."""
    source: str
    outside: list
    is_classifier: bool | None
    key_prefix: str = ''  # what split_backbone stripped: keys are named as in the file
    result: Conversion | None = None


_CONTEXT: contextvars.ContextVar = contextvars.ContextVar('convnext_checkpoint_load', default=None)


def load_pretrained(model, checkpoint: str, prefix: str | None = None, map_location='cpu') -> Conversion:
    """Load a checkpoint of any supported layout into a ConvNeXt backbone (``init_cfg`` ``Pretrained``): read it,
    select the backbone's keys, and hand them to the one loading path. Returns the conversion (layout, skipped)."""
    state_dict = unwrap_state_dict(read_checkpoint(checkpoint, map_location), f'Checkpoint {checkpoint!r}')
    prefix = backbone_prefix(state_dict, prefix)
    backbone, outside, has_head = split_backbone(state_dict, prefix)
    context = _LoadContext(checkpoint, outside, has_head or None, prefix)
    token = _CONTEXT.set(context)
    try:
        model.load_state_dict(backbone, strict=False)
    finally:
        _CONTEXT.reset(token)
    return context.result


def init_weights(model, base_init_weights) -> None:
    """``model.init_weights()``: ``base_init_weights`` (mmengine's, from ``model.init_cfg``) with our loader for its
    ``Pretrained`` entry. The other entries run first (they initialise what the checkpoint may not hold, e.g. the
    dense output norms), then the checkpoint loads."""
    cfgs = model.init_cfg if isinstance(model.init_cfg, (list, tuple)) else [model.init_cfg]
    pretrained = [c for c in cfgs if isinstance(c, dict) and c.get('type') == 'Pretrained']
    if not pretrained:
        return base_init_weights()
    cfg = pretrained[0]
    if cfg.get('checkpoint') is None:
        raise CheckpointError("ConvNeXt: init_cfg=dict(type='Pretrained') needs `checkpoint`, a path or URL.")
    saved, model.init_cfg = model.init_cfg, [c for c in cfgs if c is not cfg] or None
    try:
        base_init_weights()
    finally:
        model.init_cfg = saved
    load_pretrained(model, str(cfg['checkpoint']), prefix=cfg.get('prefix'),
                    map_location=cfg.get('map_location', 'cpu'))


def adapt_state_dict_in_place(model, state_dict: dict, prefix: str, unexpected_keys: list) -> None:
    """The one loading path, called by the backbone's ``_load_from_state_dict``. Convert the keys under ``prefix`` of
    a state dict being loaded into ``model`` (a ConvNeXt) to our layout, check them (values, shapes, missing,
    unexpected) and log what was found; with no key under ``prefix``, :func:`refuse_backbone_only`."""
    context = _CONTEXT.get()
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not keys:
        refuse_backbone_only(unexpected_keys, prefix)
        return
    local = {k[len(prefix):]: state_dict[k] for k in keys}
    if any(isinstance(v, dict) for v in local.values()):  # a checkpoint object, e.g. {'model': ...}: its weights
        local = unwrap_state_dict(local, 'The checkpoint being loaded')
    if detect(local) is None:
        if context is not None:
            detect_format(local)  # raises: the file given in init_cfg is not a ConvNeXt checkpoint
        return  # nothing ConvNeXt-like under this prefix: torch reports the keys as missing/unexpected
    name, key_prefix = (context.source, context.key_prefix) if context is not None else (None, prefix)
    source = f'Checkpoint {name!r}' if name else 'The checkpoint being loaded'
    result = convert_state_dict(local, is_classifier=context.is_classifier if context else None, source=source,
                                key_prefix=key_prefix)
    claim_final_norm(model, result)
    if context is not None:
        result.skipped = context.outside + result.skipped
        context.result = result
    fitted = _fit(model, result, prefix, source)
    for k in keys:
        del state_dict[k]
    state_dict.update({prefix + k: v for k, v in fitted.items()})
    missing = [k for k in dict(model.named_parameters()) if k not in fitted]
    where = f' at {prefix!r}' if prefix else ''
    lines = [f'Loaded {name or "a checkpoint"} into {_describe(model)}{where}: detected the {result.format} layout.']
    if result.skipped:
        lines.append(f'  skipped (classification-only or outside the backbone): {short_keys(result.skipped)}')
    if result.dropped:
        lines.append(f'  dropped (pretraining-only): {short_keys(result.dropped)}')
    if result.aliases:
        lines.append(f'  aliases (the same tensors as loaded ones): {short_keys(result.aliases)}')
    if missing:
        lines.append(f'  missing (kept their initialisation): {short_keys(missing)}')
    print_log('\n'.join(lines), logger='current')


def refuse_backbone_only(unexpected_keys: list, prefix: str) -> None:
    """Nothing of the state dict is under the backbone's ``prefix`` (``'backbone.'``): if what the modules loaded
    before it found no place for is a ConvNeXt backbone's checkpoint, or weights nested under ``'model'``, the file
    was meant for the backbone, and loading it as the whole model's would leave the backbone at its initialisation.
    Raise, naming the fix: the backbone's ``init_cfg``.

    ``unexpected_keys`` is the list ``load_state_dict`` passes to every ``_load_from_state_dict``: torch's and
    mmengine's both load a module before its children, so the keys the detector / segmentor itself (the backbone's
    parent) has no place for are in it when the backbone's turn comes. tests/test_load_from.py runs mmengine's
    Runner on a detector and a segmentor and fails should that change."""
    if not prefix:
        return  # the backbone is the whole model: its keys were all under its prefix
    nested = [k for k in unexpected_keys if k in WEIGHT_WRAPPERS]
    found = detect(unexpected_keys)
    if found is not None:  # at least one block of a ConvNeXt: not a stray key that happens to look like ours
        inside = [k[len(found.wrapper):] for k in unexpected_keys if k.startswith(found.wrapper)]
        if not any(m is not None and m[0].startswith('stages.') for m in map(found.layout.to_ours, inside)):
            found = None
    if found is None and not nested:
        return
    what = (f'is a backbone checkpoint ({found.layout.name} layout: {short_keys(unexpected_keys, 4)}), not a whole '
            f"model's: none of its keys is under {prefix!r}" if found is not None else
            f"nests its weights under {nested[0]!r} (as the official ConvNeXt classifiers are saved), which "
            f"mmengine does not unwrap: nothing in it is under {prefix!r}")
    raise CheckpointError(
        f"The checkpoint being loaded {what}, so loading it into the whole model (load_from, load_checkpoint, "
        "init_detector / init_model) would leave the backbone at its initialisation and the model would train "
        "from scratch. Load a backbone checkpoint through the backbone instead: "
        "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=<this file>), which reads every ConvNeXt "
        "layout, and no load_from (it is for checkpoints of the whole model).")


def claim_final_norm(model, result: Conversion) -> None:
    """``gap_before_final_norm`` mode: the classifier's final pooled norm loads into the model's last output norm
    (``model.final_norm_name``) instead of being skipped; dense mode leaves it skipped."""
    target = model.final_norm_name
    if not target or not result.final_norm:
        return
    for key, value in result.final_norm.items():
        result.state_dict[f'{target}.{key.rsplit(".", 1)[1]}'] = value
    result.skipped = [k for k in result.skipped if k not in result.final_norm]
    print_log(f"ConvNeXt (gap_before_final_norm): the classifier's final norm {short_keys(result.final_norm)} "
              f'loads into {target}', logger='current')


def _describe(model) -> str:
    return f'ConvNeXt(depths={model.depths}, channels={model.channels}, use_grn={model.use_grn})'


def _fit(model, result: Conversion, prefix: str, source: str) -> dict:
    """Check a converted state dict against ``model``: shapes (singleton dims adapted, e.g. 1x1 conv vs linear),
    then missing and unexpected keys. Dense norms of stages the model does not output are skipped."""
    expected = dict(model.named_parameters())
    expected.update(model.named_buffers())
    out = {}
    for key, value in result.state_dict.items():
        if key not in expected:
            if re.match(r'^norm\d+\.', key):
                result.skipped.append(key)  # a dense norm of a stage not in out_indices
                continue
            out[key] = value
            continue
        shape = expected[key].shape
        if value.shape != shape:
            if value.numel() == expected[key].numel() and [d for d in value.shape if d != 1] == \
                    [d for d in shape if d != 1]:
                value = value.reshape(shape)
            else:
                raise CheckpointError(
                    f'{source}: tensor {prefix + key!r} has shape {tuple(value.shape)} but {_describe(model)} '
                    f'expects {tuple(shape)}: the checkpoint was made for another architecture. Set the backbone '
                    '`arch` (or depths/channels, use_grn) to match the checkpoint.')
        out[key] = value
    # Only the dense output norms may legitimately be absent; anything else means another variant.
    missing = [k for k in expected if k not in out and not re.match(r'^norm\d+\.', k)]
    unexpected = [k for k in out if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f'{source} ({result.format} layout) does not fit {_describe(model)}: missing '
            f'{short_keys(missing) or "none"}; unexpected {short_keys(unexpected) or "none"}. Match the backbone to '
            'it: depths / arch for missing or extra blocks; ConvNeXt-V2 weights need use_grn=True and '
            'layer_scale_init_value=0, V1 weights use_grn=False and layer_scale_init_value > 0.')
    return out
