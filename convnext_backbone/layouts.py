"""Every ConvNeXt checkpoint layout in circulation, as one table.

Each :class:`Layout` record says how its keys are recognised, how they map to ours (the official
facebookresearch layout, :mod:`convnext_backbone.convnext`), how its tensors are reshaped, and which of its keys
are classification-only (skipped) or pretraining-only (dropped). Detection, conversion to ours and conversion
back (for ``tools/convert_checkpoint.py --to``) are all derived from the table: adding a layout means adding a
record here, and its test.

Key rules are pairs of templates, theirs and ours. ``{s}``, ``{b}``, ``{i}`` are integer fields (stage, block,
index) and may carry an affine form, e.g. torchvision's ``features.{2s+1}`` is stage ``s``'s blocks. A template
ending in ``.`` is a prefix: the last path element (``weight`` / ``bias``) is carried over unchanged. The first
rule that matches a key wins, in both directions.

This module is pure (keys and tensors in, keys and tensors out); reading files and loading into a model is
:mod:`convnext_backbone.checkpoint`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable


# --- templates ---------------------------------------------------------------------------------------------

_FIELD = re.compile(r'\{(\d*)([a-z])([+-]\d+)?\}')


class Template:
    """A key pattern with integer fields; matches a key (giving the fields) and formats one from fields."""

    def __init__(self, text: str):
        self.text = text
        self.is_prefix = text.endswith('.')
        pieces, self.fields, pos = [], [], 0
        for m in _FIELD.finditer(text):
            pieces += [re.escape(text[pos:m.start()]), r'(\d+)']
            self.fields.append((m.group(2), int(m.group(1) or 1), int(m.group(3) or 0)))
            pos = m.end()
        pieces.append(re.escape(text[pos:]))
        self._regex = re.compile('^' + ''.join(pieces) + (r'([^.]+)' if self.is_prefix else '') + '$')
        self.names = {name for name, _, _ in self.fields}

    def match(self, key: str):
        """``(fields, tail)`` when ``key`` fits, else None."""
        m = self._regex.match(key)
        if m is None:
            return None
        values = {}
        for (name, scale, offset), group in zip(self.fields, m.groups()):
            n = int(group) - offset
            if n < 0 or n % scale or values.setdefault(name, n // scale) != n // scale:
                return None
        return values, (m.group(len(self.fields) + 1) if self.is_prefix else '')

    def format(self, values: dict, tail: str = '') -> str:
        def field_value(m):
            return str(int(m.group(1) or 1) * values[m.group(2)] + int(m.group(3) or 0))
        return _FIELD.sub(field_value, self.text) + tail

    def __repr__(self):
        return f'Template({self.text!r})'


# --- tensor reshapes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reshape:
    """How one kind of tensor differs from ours: ``to_ours(v)`` and ``to_theirs(v, options)``."""
    name: str
    to_ours: Callable
    to_theirs: Callable


def _grn_from_flat(v):
    return v.reshape(1, 1, 1, -1)


GRN_FLAT = Reshape('GRN (C,) <-> (1, 1, 1, C)', _grn_from_flat, lambda v, o: v.reshape(-1))
# timm / mmpretrain conv-MLP variants hold the pointwise layers as 1x1 convs; written back as such on request
PW_CONV = Reshape('pointwise (O, I[, 1, 1]) <-> (O, I)', lambda v: v.flatten(1) if v.ndim == 4 else v,
                  lambda v, o: v[:, :, None, None] if o.get('conv_mlp') else v)
LAYER_SCALE_CHW = Reshape('layer scale (C, 1, 1) <-> (C,)', lambda v: v.reshape(-1), lambda v, o: v.reshape(-1, 1, 1))
# FCMAE (MinkowskiEngine) tensors, exactly as ConvNeXt-V2's utils.remap_checkpoint_keys and its inverse
# dedense_checkpoint_keys: kernels are (K*K, C) / (K*K, Cin, Cout) with the spatial axes transposed.
ROW_BIAS = Reshape('bias (1, C) <-> (C,)', lambda v: v.reshape(-1) if v.ndim != 1 else v,
                   lambda v, o: v.unsqueeze(0))
GRN_ROW = Reshape('GRN (1, C) <-> (1, 1, 1, C)', _grn_from_flat, lambda v, o: v.reshape(1, -1))


def _sparse_dw_to_ours(v):
    kk, dim = v.shape
    k = math.isqrt(kk)
    return v.permute(1, 0).reshape(dim, 1, k, k).transpose(3, 2)


def _sparse_dw_to_theirs(v, options):
    dim, _, k, _ = v.shape
    return v.transpose(3, 2).reshape(dim, k * k).permute(1, 0)


def _sparse_conv_to_ours(v):
    kk, in_dim, out_dim = v.shape
    k = math.isqrt(kk)
    return v.permute(2, 1, 0).reshape(out_dim, in_dim, k, k).transpose(3, 2)


def _sparse_conv_to_theirs(v, options):
    out_dim, in_dim, k, _ = v.shape
    return v.transpose(3, 2).reshape(out_dim, in_dim, k * k).permute(2, 1, 0)


SPARSE_DW = Reshape('sparse depthwise kernel (K*K, C) <-> (C, 1, K, K)', _sparse_dw_to_ours, _sparse_dw_to_theirs)
SPARSE_CONV = Reshape('sparse conv kernel (K*K, Cin, Cout) <-> (Cout, Cin, K, K)', _sparse_conv_to_ours,
                      _sparse_conv_to_theirs)


# --- rules and layouts ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    theirs: Template
    ours: Template
    reshape: Reshape | None = None


def rule(theirs: str, ours: str, reshape: Reshape | None = None) -> Rule:
    t, o = Template(theirs), Template(ours)
    if t.is_prefix != o.is_prefix or t.names != o.names:
        raise ValueError(f'Bad rule {theirs!r} <-> {ours!r}: both must be prefixes or full keys, with the same fields.')
    return Rule(t, o, reshape)


@dataclass(frozen=True)
class Layout:
    """One checkpoint layout.

    name: what detection reports and ``--to`` takes. source: where such files come from (docs/checkpoints.md table).
    rules: key rules (theirs <-> ours, optional reshape), including the layout's dense per-stage norms, which map
    to our ``norm{i}``. wrappers: prefixes the backbone may sit under inside a larger model (tried in order;
    keys outside the one found are skipped and reported). classification: regexes of classification-only keys
    (skipped and reported). dropped: regexes of pretraining-only keys (decoders, mask tokens: dropped and reported).
    pooled_last_norm: in a classifier, the last dense-norm key is the final pooled norm (mmpretrain), skipped.
    final_norm: regex of the classifier's final pooled norm among the classification keys (``norm.``, timm's
    ``head.norm.``): kept aside, a backbone in ``gap_before_final_norm`` mode loads it as its last norm.
    """
    name: str
    source: str = field(repr=False)
    rules: tuple[Rule, ...] = field(repr=False)
    wrappers: tuple[str, ...] = ('',)
    classification: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    pooled_last_norm: bool = False
    final_norm: str = ''

    def __post_init__(self):
        for name, patterns in (('_class_re', self.classification), ('_drop_re', self.dropped)):
            object.__setattr__(self, name, re.compile('|'.join(f'(?:{p})' for p in patterns)) if patterns else None)

    def is_classification(self, key: str) -> bool:
        return bool(self._class_re and self._class_re.search(key))

    def is_dropped(self, key: str) -> bool:
        return bool(self._drop_re and self._drop_re.search(key))

    def to_ours(self, key: str):
        """``(our key, rule)`` for one of this layout's keys (wrapper already stripped), or None."""
        for r in self.rules:
            found = r.theirs.match(key)
            if found is not None:
                return r.ours.format(*found), r
        return None

    def from_ours(self, key: str):
        """``(their key, rule)`` for one of our keys, or None when the layout has no place for it."""
        for r in self.rules:
            found = r.ours.match(key)
            if found is not None:
                return r.theirs.format(*found), r
        return None


# Our own (the official) parameter names; every layout maps onto these.
_OFFICIAL_RULES = (
    rule('downsample_layers.{s}.{i}.', 'downsample_layers.{s}.{i}.'),
    rule('stages.{s}.{b}.dwconv.', 'stages.{s}.{b}.dwconv.'),
    rule('stages.{s}.{b}.norm.', 'stages.{s}.{b}.norm.'),
    rule('stages.{s}.{b}.pwconv1.', 'stages.{s}.{b}.pwconv1.'),
    rule('stages.{s}.{b}.pwconv2.', 'stages.{s}.{b}.pwconv2.'),
    rule('stages.{s}.{b}.gamma', 'stages.{s}.{b}.gamma'),
    rule('stages.{s}.{b}.grn.gamma', 'stages.{s}.{b}.grn.gamma'),
    rule('stages.{s}.{b}.grn.beta', 'stages.{s}.{b}.grn.beta'),
)
_DENSE_NORMS = (rule('norm{s}.', 'norm{s}.'),)

_TIMM_RULES = (
    rule('stem.{i}.', 'downsample_layers.0.{i}.'),
    rule('stages.{s}.downsample.{i}.', 'downsample_layers.{s}.{i}.'),
    rule('stages.{s}.blocks.{b}.conv_dw.', 'stages.{s}.{b}.dwconv.'),
    rule('stages.{s}.blocks.{b}.norm.', 'stages.{s}.{b}.norm.'),
    rule('stages.{s}.blocks.{b}.mlp.fc1.weight', 'stages.{s}.{b}.pwconv1.weight', PW_CONV),
    rule('stages.{s}.blocks.{b}.mlp.fc1.bias', 'stages.{s}.{b}.pwconv1.bias'),
    rule('stages.{s}.blocks.{b}.mlp.fc2.weight', 'stages.{s}.{b}.pwconv2.weight', PW_CONV),
    rule('stages.{s}.blocks.{b}.mlp.fc2.bias', 'stages.{s}.{b}.pwconv2.bias'),
    rule('stages.{s}.blocks.{b}.gamma', 'stages.{s}.{b}.gamma'),
    rule('stages.{s}.blocks.{b}.mlp.grn.weight', 'stages.{s}.{b}.grn.gamma', GRN_FLAT),
    rule('stages.{s}.blocks.{b}.mlp.grn.bias', 'stages.{s}.{b}.grn.beta', GRN_FLAT),
)
_TIMM_CLASSIFICATION = (r'^head\.', r'^norm_pre\.')
_TIMM_FINAL_NORM = r'^head\.norm\.(weight|bias)$'  # pooled, then normalised (head_norm_first=False)

_HF_BLOCK = 'encoder.stages.{s}.layers.{b}.'
_FCMAE_DECODER = (r'decoder', r'mask_token', r'proj', r'pred')  # the official fine-tuning filter, verbatim

LAYOUTS: tuple[Layout, ...] = (
    Layout(
        'official',
        'facebookresearch/ConvNeXt and ConvNeXt-V2 classifiers (`model` key), their fine-tuned COCO / ADE20K '
        'detectors and segmentors (`backbone.`, dense `norm0..3`), and this plugin',
        _OFFICIAL_RULES + _DENSE_NORMS,
        classification=(r'^head\.', r'^norm\.'), final_norm=r'^norm\.(weight|bias)$'),
    Layout(
        'timm',
        'timm `convnext_*` / `convnextv2_*` (incl. conv-MLP atto..nano), Hugging Face Hub `timm/` repos',
        _TIMM_RULES, classification=_TIMM_CLASSIFICATION, final_norm=_TIMM_FINAL_NORM),
    Layout(
        'mmpretrain',
        'mmpretrain / mmcls classifiers and the mmdet / mmseg model zoo',
        (rule('stages.{s}.{b}.depthwise_conv.', 'stages.{s}.{b}.dwconv.'),
         rule('stages.{s}.{b}.pointwise_conv1.weight', 'stages.{s}.{b}.pwconv1.weight', PW_CONV),
         rule('stages.{s}.{b}.pointwise_conv1.bias', 'stages.{s}.{b}.pwconv1.bias'),
         rule('stages.{s}.{b}.pointwise_conv2.weight', 'stages.{s}.{b}.pwconv2.weight', PW_CONV),
         rule('stages.{s}.{b}.pointwise_conv2.bias', 'stages.{s}.{b}.pwconv2.bias'),
         rule('stages.{s}.{b}.grn.gamma', 'stages.{s}.{b}.grn.gamma', GRN_FLAT),
         rule('stages.{s}.{b}.grn.beta', 'stages.{s}.{b}.grn.beta', GRN_FLAT))
        + _OFFICIAL_RULES + _DENSE_NORMS,
        classification=(r'^head\.',), pooled_last_norm=True),
    Layout(
        'hf',
        'Hugging Face transformers `ConvNextModel` / `ConvNextForImageClassification` / `ConvNextBackbone` and '
        'their `ConvNextV2*` counterparts (`save_pretrained` safetensors, `facebook/convnext*` repos)',
        (rule('embeddings.patch_embeddings.', 'downsample_layers.0.0.'),
         rule('embeddings.layernorm.', 'downsample_layers.0.1.'),
         rule('encoder.stages.{s}.downsampling_layer.{i}.', 'downsample_layers.{s}.{i}.'),
         rule(_HF_BLOCK + 'dwconv.', 'stages.{s}.{b}.dwconv.'),
         rule(_HF_BLOCK + 'layernorm.', 'stages.{s}.{b}.norm.'),
         rule(_HF_BLOCK + 'pwconv1.', 'stages.{s}.{b}.pwconv1.'),
         rule(_HF_BLOCK + 'pwconv2.', 'stages.{s}.{b}.pwconv2.'),
         rule(_HF_BLOCK + 'layer_scale_parameter', 'stages.{s}.{b}.gamma'),
         rule(_HF_BLOCK + 'grn.weight', 'stages.{s}.{b}.grn.gamma'),
         rule(_HF_BLOCK + 'grn.bias', 'stages.{s}.{b}.grn.beta'),
         rule('hidden_states_norms.stage{s+1}.', 'norm{s}.')),  # ConvNextBackbone's dense norms
        wrappers=('convnext.', 'convnextv2.', ''),
        classification=(r'^layernorm\.', r'^classifier\.')),
    Layout(
        'torchvision',
        'torchvision `convnext_{tiny,small,base,large}` (`state_dict()`, download.pytorch.org)',
        (rule('features.0.{i}.', 'downsample_layers.0.{i}.'),
         rule('features.{2s}.{i}.', 'downsample_layers.{s}.{i}.'),
         rule('features.{2s+1}.{b}.block.0.', 'stages.{s}.{b}.dwconv.'),
         rule('features.{2s+1}.{b}.block.2.', 'stages.{s}.{b}.norm.'),
         rule('features.{2s+1}.{b}.block.3.', 'stages.{s}.{b}.pwconv1.'),
         rule('features.{2s+1}.{b}.block.5.', 'stages.{s}.{b}.pwconv2.'),
         rule('features.{2s+1}.{b}.layer_scale', 'stages.{s}.{b}.gamma', LAYER_SCALE_CHW)),
        classification=(r'^classifier\.',)),
    Layout(
        'fcmae',
        'ConvNeXt-V2 FCMAE self-supervised pretraining checkpoints (`*_fcmae.pt`): the sparse MinkowskiEngine '
        'form and the densified one; decoder, mask token, proj and pred dropped',
        # sparse form first (written back as such), exactly the official remap_checkpoint_keys
        (rule('encoder.downsample_layers.0.{i}.', 'downsample_layers.0.{i}.'),
         rule('encoder.downsample_layers.{s}.0.ln.', 'downsample_layers.{s}.0.'),
         rule('encoder.downsample_layers.{s}.1.kernel', 'downsample_layers.{s}.1.weight', SPARSE_CONV),
         rule('encoder.downsample_layers.{s}.1.bias', 'downsample_layers.{s}.1.bias', ROW_BIAS),
         rule('encoder.stages.{s}.{b}.dwconv.kernel', 'stages.{s}.{b}.dwconv.weight', SPARSE_DW),
         rule('encoder.stages.{s}.{b}.dwconv.bias', 'stages.{s}.{b}.dwconv.bias', ROW_BIAS),
         rule('encoder.stages.{s}.{b}.norm.ln.', 'stages.{s}.{b}.norm.'),
         rule('encoder.stages.{s}.{b}.pwconv1.linear.', 'stages.{s}.{b}.pwconv1.'),
         rule('encoder.stages.{s}.{b}.pwconv2.linear.', 'stages.{s}.{b}.pwconv2.'),
         rule('encoder.stages.{s}.{b}.grn.gamma', 'stages.{s}.{b}.grn.gamma', GRN_ROW),
         rule('encoder.stages.{s}.{b}.grn.beta', 'stages.{s}.{b}.grn.beta', GRN_ROW))
        # densified form: official names under `encoder.` (its biases and GRN tensors are caught above: the
        # reshapes accept dense shapes too, as the official remap does)
        + (rule('encoder.downsample_layers.{s}.{i}.', 'downsample_layers.{s}.{i}.'),
           rule('encoder.stages.{s}.{b}.dwconv.', 'stages.{s}.{b}.dwconv.'),
           rule('encoder.stages.{s}.{b}.norm.', 'stages.{s}.{b}.norm.'),
           rule('encoder.stages.{s}.{b}.pwconv1.', 'stages.{s}.{b}.pwconv1.'),
           rule('encoder.stages.{s}.{b}.pwconv2.', 'stages.{s}.{b}.pwconv2.')),
        dropped=_FCMAE_DECODER),
    Layout(
        'openclip',
        'OpenCLIP ConvNeXt image towers (`visual.trunk.` over timm; `visual.head.*` and the text tower skipped), '
        'e.g. laion/CLIP-convnext_* `open_clip_pytorch_model.bin`',
        _TIMM_RULES, wrappers=('visual.trunk.',), classification=_TIMM_CLASSIFICATION,
        final_norm=_TIMM_FINAL_NORM),
    Layout(
        'dinov3',
        'DINOv3 ConvNeXt original release (facebookresearch/dinov3 `dinov3_convnext_*.pth`): official block names, '
        'dense per-stage `norms.{i}` (the final `norm` is the same module as `norms.3`)',
        _OFFICIAL_RULES + (rule('norms.{s}.', 'norm{s}.'), rule('norm.', 'norm3.')),
        classification=(r'^head\.',)),
    Layout(
        'hf-dinov3',
        'Hugging Face transformers `DINOv3ConvNextModel` / `DINOv3ConvNextBackbone` (facebook/dinov3-convnext-* '
        'repos); the final `layer_norm` is the last dense norm',
        (rule('stages.{s}.downsample_layers.{i}.', 'downsample_layers.{s}.{i}.'),
         rule('stages.{s}.layers.{b}.depthwise_conv.', 'stages.{s}.{b}.dwconv.'),
         rule('stages.{s}.layers.{b}.layer_norm.', 'stages.{s}.{b}.norm.'),
         rule('stages.{s}.layers.{b}.pointwise_conv1.', 'stages.{s}.{b}.pwconv1.'),
         rule('stages.{s}.layers.{b}.pointwise_conv2.', 'stages.{s}.{b}.pwconv2.'),
         rule('stages.{s}.layers.{b}.gamma', 'stages.{s}.{b}.gamma'),
         rule('layer_norm.', 'norm3.')),
        wrappers=('dinov3_convnext.', '')),
)
LAYOUT_NAMES = tuple(layout.name for layout in LAYOUTS)


def get_layout(name: str) -> Layout:
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    raise ValueError(f'Unknown checkpoint layout {name!r}; known: {", ".join(LAYOUT_NAMES)}.')


# --- detection -------------------------------------------------------------------------------------------

@dataclass
class Detection:
    layout: Layout
    wrapper: str
    explained: int  # keys under the wrapper that the layout maps, skips or drops


def detect(keys) -> Detection | None:
    """The layout (and wrapper prefix) that explains the most keys; ties go to the earlier table entry."""
    keys = list(keys)
    best = None
    for layout in LAYOUTS:
        for wrapper in layout.wrappers:
            inside = [k[len(wrapper):] for k in keys if k.startswith(wrapper)]
            unmapped = [k for k in inside if layout.to_ours(k) is None]
            if len(unmapped) == len(inside):
                continue
            explained = len(inside) - sum(not (layout.is_classification(k) or layout.is_dropped(k)) for k in unmapped)
            if best is None or explained > best.explained:
                best = Detection(layout, wrapper, explained)
    return best
