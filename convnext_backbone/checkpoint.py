"""Checkpoint interop: every ConvNeXt weight layout in the wild -> ours (the official one), and ours -> timm.

Layouts recognised from the keys (after unwrapping ``state_dict`` / ``model`` / ``module.``):

- ``official``: facebookresearch ConvNeXt / ConvNeXt-V2 classification checkpoints (``model`` key,
  ``downsample_layers``, ``stages.i.j.dwconv``, V2 GRN tensors shaped (1, 1, 1, C)), and the official
  fine-tuned COCO / ADE20K checkpoints (mmdet-2 ``state_dict`` with ``backbone.`` prefix and ``norm0..3``).
  This is our own layout too.
- ``timm``: ``stem.*``, ``stages.i.downsample.*``, ``stages.i.blocks.j.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}``,
  ``mlp.grn.{weight,bias}``, and conv-MLP variants whose 1x1-conv weights are reshaped to linear ones.
- ``mmpretrain``: mmpretrain / mmcls classifiers and mmdet / mmseg model-zoo models
  (``depthwise_conv``, ``pointwise_conv1/2``, ``grn.gamma/beta`` shaped (C,)).

Classification-only tensors (``head.*``, the final pooled ``norm``; timm's ``head.norm``; in an mmpretrain
classifier, the last ``norm{i}``, which is applied after pooling) are skipped and reported, as the official
detection code does: the dense output norms start fresh. The final pooled norm is kept aside
(``Conversion.final_norm``): a backbone in ``gap_before_final_norm`` mode takes it as its last output norm.

The functions that map keys are pure and tested directly; file loading never unpickles arbitrary objects.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
from mmengine.logging import print_log

FORMATS = ('official', 'timm', 'mmpretrain')


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unknown layout, or made for another architecture."""


# --- reading files ---------------------------------------------------------------------------------

def _local_path(path: str) -> str:
    if path.startswith(('http://', 'https://')):
        from torch.hub import download_url_to_file, get_dir
        cache_dir = os.path.join(get_dir(), 'checkpoints')
        os.makedirs(cache_dir, exist_ok=True)
        local = os.path.join(cache_dir, os.path.basename(path.split('?')[0]))
        if not os.path.exists(local):
            print_log(f'Downloading {path} to {local}', logger='current')
            download_url_to_file(path, local, progress=False)
        return local
    if '://' in path:
        raise CheckpointError(f'Checkpoint {path!r}: only local files and http(s) URLs are supported; '
                              'download it and pass the local path.')
    if not os.path.isfile(path):
        raise CheckpointError(f'Checkpoint {path!r} does not exist (or is not a file).')
    return path


def read_checkpoint(path: str, map_location='cpu') -> dict:
    """Read a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file safely and return the raw object.

    ``.pth`` files are read with ``weights_only=True``: no arbitrary objects are unpickled (mmengine's own
    checkpoint metadata is allow-listed by :mod:`convnext_backbone.safe_load`).
    """
    from . import safe_load  # noqa: F401  (allow-lists mmengine's checkpoint metadata)
    local = _local_path(path)
    try:
        if local.endswith('.safetensors'):
            from safetensors.torch import load_file
            device = map_location if isinstance(map_location, str) else 'cpu'
            return load_file(local, device=device)
        return torch.load(local, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for a bad file; give one clear one
        raise CheckpointError(
            f'Cannot read checkpoint {path!r}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}. '
            'Expected a torch .pth/.pt file of tensors or a .safetensors file. It is loaded with '
            'weights_only=True; if it pickles custom objects, re-save just its state_dict.') from exc


def unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    """Dig the tensor dict out of a checkpoint object (``state_dict``, ``model``, ``module`` wrappers)."""
    for _ in range(3):
        if isinstance(obj, dict):
            for key in ('state_dict', 'model', 'module'):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError('Checkpoint holds no state dict of tensors (looked at the top level and under '
                              "'state_dict', 'model', 'module'). Is this a model checkpoint?")
    if all(k.startswith('module.') for k in obj):  # saved from DistributedDataParallel
        obj = {k[len('module.'):]: v for k, v in obj.items()}
    return dict(obj)


# --- pure key conversion ---------------------------------------------------------------------------

def detect_format(keys) -> str:
    """Name the layout of backbone keys (no prefix): 'official', 'timm' or 'mmpretrain'."""
    keys = list(keys)
    if any(k.startswith('stem.') or '.blocks.' in k for k in keys):
        return 'timm'
    if any('.depthwise_conv.' in k or '.pointwise_conv' in k for k in keys):
        return 'mmpretrain'
    if any('.dwconv.' in k for k in keys) or any(k.startswith('downsample_layers.') for k in keys):
        return 'official'
    sample = ', '.join(keys[:5])
    raise CheckpointError(f'Not a ConvNeXt checkpoint: no known key layout (first keys: {sample}). '
                          f'Supported layouts: {", ".join(FORMATS)}.')


_TIMM_RULES = [
    (re.compile(r'^stem\.([01])\.'), r'downsample_layers.0.\1.'),
    (re.compile(r'^stages\.(\d+)\.downsample\.([01])\.'), r'downsample_layers.\1.\2.'),
    (re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.'), r'stages.\1.\2.dwconv.'),
    (re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.'), r'stages.\1.\2.pwconv1.'),
    (re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.'), r'stages.\1.\2.pwconv2.'),
    (re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.weight$'), r'stages.\1.\2.grn.gamma'),
    (re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.bias$'), r'stages.\1.\2.grn.beta'),
    (re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.'), r'stages.\1.\2.'),  # norm, gamma
]
_MMPRETRAIN_RULES = [
    (re.compile(r'\.depthwise_conv\.'), '.dwconv.'),
    (re.compile(r'\.pointwise_conv1\.'), '.pwconv1.'),
    (re.compile(r'\.pointwise_conv2\.'), '.pwconv2.'),
]
_CLASSIFIER_KEY = re.compile(r'^(head\.|norm\.|norm_pre\.|fc\.)')


def _apply_rules(key: str, rules) -> str:
    for pattern, replacement in rules:
        new, count = pattern.subn(replacement, key)
        if count:
            return new
    return key


def _to_our_shape(key: str, value: torch.Tensor) -> torch.Tensor:
    if re.search(r'\.pwconv[12]\.weight$', key) and value.ndim == 4:  # 1x1 conv MLP -> linear
        return value.flatten(1)
    if re.search(r'\.grn\.(gamma|beta)$', key) and value.ndim == 1:
        return value.reshape(1, 1, 1, -1)
    return value


def convert_key(key: str, fmt: str) -> str | None:
    """Map one backbone key of layout ``fmt`` to ours; None for classification-only keys."""
    if fmt not in FORMATS:
        raise ValueError(f'Unknown checkpoint format {fmt!r}; valid: {", ".join(FORMATS)}.')
    if _CLASSIFIER_KEY.match(key):
        return None
    if fmt == 'timm':
        return _apply_rules(key, _TIMM_RULES)
    if fmt == 'mmpretrain':
        return _apply_rules(key, _MMPRETRAIN_RULES)
    return key


@dataclass
class Conversion:
    state_dict: dict
    format: str
    skipped: list = field(default_factory=list)  # keys dropped as classification-only / outside backbone
    final_norm: dict = field(default_factory=dict)  # the classifier's final pooled norm: {source key: tensor}


# --- the classifier's final pooled norm (issue 18: gap_before_final_norm takes it) ------------------
_FINAL_NORM = {'official': re.compile(r'^norm\.(weight|bias)$'), 'timm': re.compile(r'^head\.norm\.(weight|bias)$')}


def claim_final_norm(model, result: Conversion) -> None:
    """In ``gap_before_final_norm`` mode, load the classifier's final pooled norm into the model's last output
    norm (``model.final_norm_name``) instead of skipping it; in dense mode leave it skipped."""
    target = getattr(model, 'final_norm_name', None)
    if not target or not result.final_norm:
        return
    for key, value in result.final_norm.items():
        result.state_dict[f'{target}.{key.rsplit(".", 1)[1]}'] = value
    result.skipped = [k for k in result.skipped if k not in result.final_norm]
    print_log(f'ConvNeXt (gap_before_final_norm): the classifier\'s final norm {_short(result.final_norm)} '
              f'loads into {target}', logger='current')
# --- end of the final pooled norm -------------------------------------------------------------------


def convert_state_dict(state_dict: dict, fmt: str | None = None, is_classifier: bool | None = None
                       ) -> Conversion:
    """Convert a backbone state dict (keys without any ``backbone.`` prefix) to our layout.

    ``is_classifier`` says the weights come from a classifier (it had a head): mmpretrain classifiers then
    hold their final pooled norm as the last ``norm{i}``, which is skipped. Detected when not given.
    """
    fmt = fmt or detect_format(state_dict)
    if is_classifier is None:
        is_classifier = any(_CLASSIFIER_KEY.match(k) for k in state_dict)
    out, skipped = {}, []
    last_norm = None
    if fmt == 'mmpretrain' and is_classifier:
        norms = sorted(int(m.group(1)) for k in state_dict if (m := re.match(r'^norm(\d+)\.', k)))
        last_norm = f'norm{norms[-1]}.' if norms else None
    final_norm = {}
    for key, value in state_dict.items():
        new = convert_key(key, fmt)
        if new is None or (last_norm and key.startswith(last_norm)):
            skipped.append(key)
            if (last_norm and key.startswith(last_norm)) or (fmt in _FINAL_NORM and _FINAL_NORM[fmt].match(key)):
                final_norm[key] = value
            continue
        out[new] = _to_our_shape(new, value)
    return Conversion(out, fmt, skipped, final_norm)


def split_backbone(state_dict: dict, prefix: str | None = None) -> tuple[dict, list, bool]:
    """Select the backbone's keys of a full-model state dict.

    With ``prefix`` (mmengine's ``init_cfg`` semantics) keep the keys that start with it, stripped. Without,
    use the ``backbone.`` keys when there are any (detector, segmentor, mmpretrain classifier), else all.
    Returns (backbone keys, keys left out, whether a classification head was among them).
    """
    if prefix is None:
        prefix = 'backbone.' if any(k.startswith('backbone.') for k in state_dict) else ''
    if prefix and not prefix.endswith('.'):
        prefix += '.'
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    outside = [k for k in state_dict if not k.startswith(prefix)]
    if not inside:
        raise CheckpointError(f'No checkpoint key starts with prefix {prefix!r}; first keys: '
                              f'{", ".join(list(state_dict)[:5])}. Fix `prefix` in init_cfg.')
    has_head = any(k.startswith('head.') for k in outside)
    return inside, outside, has_head


_OURS_TO_TIMM = [
    (re.compile(r'^downsample_layers\.0\.([01])\.'), r'stem.\1.'),
    (re.compile(r'^downsample_layers\.(\d+)\.([01])\.'), r'stages.\1.downsample.\2.'),
    (re.compile(r'^stages\.(\d+)\.(\d+)\.dwconv\.'), r'stages.\1.blocks.\2.conv_dw.'),
    (re.compile(r'^stages\.(\d+)\.(\d+)\.pwconv1\.'), r'stages.\1.blocks.\2.mlp.fc1.'),
    (re.compile(r'^stages\.(\d+)\.(\d+)\.pwconv2\.'), r'stages.\1.blocks.\2.mlp.fc2.'),
    (re.compile(r'^stages\.(\d+)\.(\d+)\.grn\.gamma$'), r'stages.\1.blocks.\2.mlp.grn.weight'),
    (re.compile(r'^stages\.(\d+)\.(\d+)\.grn\.beta$'), r'stages.\1.blocks.\2.mlp.grn.bias'),
    (re.compile(r'^stages\.(\d+)\.(\d+)\.'), r'stages.\1.blocks.\2.'),
]


def convert_ours_to_timm(state_dict: dict, conv_mlp: bool = False) -> Conversion:
    """Our backbone state dict -> timm ``convnext_*`` keys (no head: load with ``strict=False`` or add one).

    ``conv_mlp``: write the MLP as 1x1 convs, as timm's atto/femto/pico/nano models (``conv_mlp=True``)
    expect. The per-stage output norms ``norm{i}`` have no timm counterpart and are reported as skipped.
    """
    out, skipped = {}, []
    for key, value in state_dict.items():
        if re.match(r'^norm\d+\.', key):
            skipped.append(key)
            continue
        new = _apply_rules(key, _OURS_TO_TIMM)
        value = _to_our_shape(key, value)  # linear_pw_conv=False: 1x1-conv pointwise weights -> linear first
        if new.endswith(('.mlp.grn.weight', '.mlp.grn.bias')):
            value = value.flatten()
        elif conv_mlp and re.search(r'\.mlp\.fc[12]\.weight$', new):
            value = value[:, :, None, None]
        out[new] = value
    return Conversion(out, 'timm', skipped)


# --- loading into a model --------------------------------------------------------------------------

def _describe(model) -> str:
    return f'ConvNeXt(depths={model.depths}, channels={model.channels}, use_grn={model.use_grn})'


def adapt_state_dict_in_place(model, state_dict: dict, prefix: str) -> None:
    """Convert the keys under ``prefix`` of a state dict being loaded into ``model`` (a ConvNeXt) to our
    layout, drop classification-only keys, and raise on a shape mismatch. Called by the model's
    ``_load_from_state_dict``, so it applies to every way of loading."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not keys:
        return
    local = {k[len(prefix):]: state_dict[k] for k in keys}
    try:
        fmt = detect_format(local)
    except CheckpointError:
        return  # nothing ConvNeXt-like under this prefix: torch reports the keys as missing/unexpected
    result = convert_state_dict(local, fmt)
    claim_final_norm(model, result)
    if fmt != 'official' or result.skipped or result.final_norm:
        for k in keys:
            del state_dict[k]
        state_dict.update({prefix + k: v for k, v in result.state_dict.items()})
        msg = f'ConvNeXt at {prefix or "<root>"!r}: loaded a {fmt}-layout checkpoint'
        if result.skipped:
            msg += f'; skipped {len(result.skipped)} classification-only keys: {_short(result.skipped)}'
        print_log(msg, logger='current')
    expected = dict(model.named_parameters())
    expected.update(model.named_buffers())
    for key, value in result.state_dict.items():
        # pointwise weights compare in their linear form (1x1-conv ones with linear_pw_conv=False)
        if key in expected and _to_our_shape(key, expected[key]).shape != value.shape:
            raise CheckpointError(
                f'Checkpoint tensor {prefix + key!r} has shape {tuple(value.shape)} but {_describe(model)} '
                f'expects {tuple(expected[key].shape)}: the checkpoint was made for another architecture. '
                'Set the backbone `arch` (or depths/channels, use_grn) to match the checkpoint.')


def _short(keys, limit: int = 8) -> str:
    keys = list(keys)
    return ', '.join(keys[:limit]) + (f', ... ({len(keys)} in all)' if len(keys) > limit else '')


def load_pretrained(model, checkpoint: str, prefix: str | None = None, map_location='cpu') -> Conversion:
    """Load a checkpoint of any supported layout into a ConvNeXt backbone; log format, missing and
    unexpected keys. Returns the conversion (format, skipped keys)."""
    state_dict = unwrap_state_dict(read_checkpoint(checkpoint, map_location))
    backbone, outside, has_head = split_backbone(state_dict, prefix)
    result = convert_state_dict(backbone, is_classifier=has_head or None)
    claim_final_norm(model, result)
    result.skipped = outside + result.skipped
    # Our layout now; the model's own hook checks shapes.
    incompatible = model.load_state_dict(result.state_dict, strict=False)
    lines = [f'Loaded {checkpoint} into {_describe(model)}: detected the {result.format} layout.']
    if result.skipped:
        lines.append(f'  skipped (classification-only or outside the backbone): {_short(result.skipped)}')
    if incompatible.missing_keys:
        lines.append(f'  missing (kept their initialisation): {_short(incompatible.missing_keys)}')
    if incompatible.unexpected_keys:
        lines.append(f'  unexpected (ignored): {_short(incompatible.unexpected_keys)}')
    print_log('\n'.join(lines), logger='current')
    # Only the dense output norms may legitimately be absent; anything else means another variant.
    missing = [k for k in incompatible.missing_keys if not re.match(r'^norm\d+\.', k)]
    if missing or incompatible.unexpected_keys:
        raise CheckpointError(
            f'Checkpoint {checkpoint} does not fit {_describe(model)}: missing {_short(missing) or "none"}; '
            f'unexpected {_short(incompatible.unexpected_keys) or "none"}. Match the backbone to it: depths / '
            'arch for missing or extra blocks; ConvNeXt-V2 weights need use_grn=True and '
            'layer_scale_init_value=0, V1 weights use_grn=False and layer_scale_init_value > 0.')
    return result
