"""Checkpoint files and layouts, no model: read any ConvNeXt checkpoint safely, convert it to ours (the official
layout) or from ours to another layout, and convert files (``tools/convert_checkpoint.py``).

The layouts themselves (how each is recognised, its key rules, reshapes, classification-only and pretraining-only
keys) are the table in :mod:`convnext_backbone.layouts`; everything here is derived from it. Loading into the
backbone (``init_cfg``, a whole model's ``load_from``) is :mod:`convnext_backbone.loading`, which converts through
:func:`convert_state_dict` too: its NaN/Inf check (:func:`check_finite`) is the tool's. Classification-only tensors
(heads, final pooled norms) are skipped and reported, as the official detection code does; a classifier's final
pooled norm is kept aside (``Conversion.final_norm``) for a backbone in ``gap_before_final_norm`` mode. Dense
per-stage norms a layout does have (fine-tuned detectors, ``ConvNextBackbone``, DINOv3) convert to our ``norm{i}``.

Files are read with ``weights_only=True``: no arbitrary objects are unpickled.
"""
from __future__ import annotations

import json
import os
import pickle
import pickletools
import re
import sys
import zipfile
from dataclasses import dataclass, field

import torch
from mmengine.logging import print_log
from safetensors.torch import load_file, save_file
from torch.hub import download_url_to_file, get_dir

from .safe_load import allow_mmengine_metadata
from .arch import arch_name
from .layouts import LAYOUT_NAMES, LAYOUTS, detect, get_layout  # noqa: F401  (LAYOUTS re-exported)

FORMATS = LAYOUT_NAMES


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unknown layout, bad values, or made for another architecture."""


# --- reading files ---------------------------------------------------------------------------------

def _local_path(path: str) -> str:
    if path.startswith(('http://', 'https://')):
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


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else '(no message)'


def _looks_like_text(head: bytes) -> bool:
    if not head or b'\x00' in head:
        return False
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in '\r\n\t' for ch in text)


def read_checkpoint(path: str, map_location='cpu') -> dict:
    """Read a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file safely and return the raw object.

    ``.pth`` files are read with ``weights_only=True``: no arbitrary objects are unpickled (mmengine's own
    checkpoint metadata is allow-listed by :mod:`convnext_backbone.safe_load`, registered again before each read;
    torch < 2.4 has no allow-list, and such files are refused there). Empty, truncated, text (an HTML
    error page, a Git LFS pointer) and object-pickling files are each a :class:`CheckpointError` naming the file,
    decided by checks of the file (its size, its first and last bytes, the safetensors header, the globals its
    pickle names), not by the wording of torch's errors.
    """
    local = _local_path(path)
    size = os.path.getsize(local)
    if size == 0:
        raise CheckpointError(f'Checkpoint {path!r} is an empty file (0 bytes): the download or save did not '
                              'complete. Fetch or save it again.')
    with open(local, 'rb') as f:
        head = f.read(256)
        f.seek(max(size - 65558, 0))
        tail = f.read()
    if _looks_like_text(head):
        first = head.decode('utf-8').strip().splitlines()[0][:120] if head.strip() else ''
        hint = (' It is a Git LFS pointer: run `git lfs pull`, or download the file itself.'
                if first.startswith('version https://git-lfs') else
                ' It looks like a web page or an error message saved instead of the file.')
        raise CheckpointError(f'Checkpoint {path!r} is a text file, not a checkpoint (it starts with {first!r}).{hint}')
    if local.endswith('.safetensors'):
        complete = _safetensors_complete(local, size)
    else:  # a torch zip ends with its central directory
        complete = not head.startswith(b'PK\x03\x04') or b'PK\x05\x06' in tail
    if not complete:
        raise CheckpointError(f'Checkpoint {path!r} is truncated or corrupt ({size} bytes, its end is missing): '
                              'the download or save did not complete. Fetch or save it again.')
    try:
        if local.endswith('.safetensors'):
            return load_file(local, device=map_location if isinstance(map_location, str) else 'cpu')
        allow_mmengine_metadata()  # again: a safe_globals scope (onedl-mmengine's loads) may have removed it
        return torch.load(local, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch / safetensors raise many types for a bad file; give one clear one
        if isinstance(exc, pickle.UnpicklingError):  # the safe unpickler refused the file: say what it holds
            unsafe = _unsafe_globals(local)
            if unsafe:
                raise CheckpointError(
                    f'Checkpoint {path!r} pickles an object of type {unsafe[0]}, which is not loaded: only '
                    'tensors are (weights_only=True). Re-save just its state_dict: '
                    'torch.save(model.state_dict(), ...).') from exc
            detail = 'not a pickle of tensors that torch.load reads'
        else:
            detail = f'{type(exc).__name__}: {_first_line(exc)[:160]}'
        raise CheckpointError(f'Cannot read checkpoint {path!r}: {detail}. Expected a torch .pth/.pt file of '
                              'tensors or a .safetensors file (read with weights_only=True).') from exc


def _safetensors_complete(local: str, size: int) -> bool:
    """Whether a .safetensors file holds all it declares: an 8-byte header length, the JSON header, and every
    tensor's bytes up to the largest ``data_offsets`` end (the format's public specification)."""
    with open(local, 'rb') as f:
        length = int.from_bytes(f.read(8), 'little')
        if size < 8 or length + 8 > size:
            return False
        try:
            header = json.loads(f.read(length))
            ends = [int(v['data_offsets'][1]) for k, v in header.items() if k != '__metadata__']
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return False
    return 8 + length + max(ends, default=0) <= size


def _unsafe_globals(local: str) -> list:
    """The globals a torch zip checkpoint's pickle names that the safe loader refuses: torch's own public check
    (``torch.serialization.get_unsafe_globals_in_checkpoint``, torch >= 2.5), else (torch 2.1-2.4, called only after
    the safe loader refused the file) the names its pickle refers to outside torch, ``collections`` and builtins,
    read with ``pickletools`` (nothing is unpickled); [] where it cannot tell."""
    check = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    try:
        if check is not None:
            return sorted(check(local))
        return sorted({name for name in _pickle_globals(local)
                       if name.split('.')[0] not in ('torch', 'collections', 'builtins', '_codecs')})
    except (ValueError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, StopIteration):
        return []  # not a zip checkpoint (legacy format), unreadable


def _pickle_globals(local: str) -> list:
    """``module.name`` of every global a torch zip checkpoint's ``data.pkl`` refers to (``pickletools`` opcodes)."""
    with zipfile.ZipFile(local) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl'))
    names, strings = [], []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == 'GLOBAL':
            names.append(arg.replace(' ', '.'))
        elif opcode.name in ('SHORT_BINUNICODE', 'BINUNICODE', 'UNICODE', 'BINUNICODE8'):
            strings.append(arg)
        elif opcode.name == 'STACK_GLOBAL' and len(strings) >= 2:
            names.append(f'{strings[-2]}.{strings[-1]}')
    return names


# The keys checkpoint objects nest their weights under, in order of preference: a training checkpoint of the
# official repo holds 'model' and, with EMA, 'model_ema' too (the first wins); an EMA-only file gives its EMA.
WEIGHT_WRAPPERS = ('state_dict', 'model', 'module', 'model_ema', 'state_dict_ema')


def unwrap_state_dict(obj, source: str = 'Checkpoint') -> dict[str, torch.Tensor]:
    """Dig the tensor dict out of a checkpoint object (the :data:`WEIGHT_WRAPPERS`)."""
    for _ in range(3):
        if isinstance(obj, dict):
            for key in WEIGHT_WRAPPERS:
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{source} holds no state dict of tensors (looked at the top level and under '
                              f'{", ".join(map(repr, WEIGHT_WRAPPERS))}). Is this a model checkpoint?')
    if all(k.startswith('module.') for k in obj):  # saved from DistributedDataParallel
        obj = {k[len('module.'):]: v for k, v in obj.items()}
    return dict(obj)


def backbone_prefix(state_dict: dict, prefix: str | None = None) -> str:
    """The prefix of the backbone's keys: ``prefix`` (dot-terminated), else ``'backbone.'`` when any key has it."""
    if prefix is None:
        prefix = 'backbone.' if any(k.startswith('backbone.') for k in state_dict) else ''
    if prefix and not prefix.endswith('.'):
        prefix += '.'
    return prefix


def split_backbone(state_dict: dict, prefix: str | None = None) -> tuple[dict, list, bool]:
    """Select the backbone's keys of a full-model state dict.

    With ``prefix`` (mmengine's ``init_cfg`` semantics) keep the keys that start with it, stripped. Without,
    use the ``backbone.`` keys when there are any (detector, segmentor, mmpretrain classifier), else all.
    Returns (backbone keys, keys left out, whether a classification head was among them).
    """
    prefix = backbone_prefix(state_dict, prefix)
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    outside = [k for k in state_dict if not k.startswith(prefix)]
    if not inside:
        raise CheckpointError(f'No checkpoint key starts with prefix {prefix!r}; first keys: '
                              f'{", ".join(list(state_dict)[:5])}. Fix `prefix` in init_cfg.')
    has_head = any(k.startswith('head.') for k in outside)
    return inside, outside, has_head


# --- conversion (derived from the layout table) ------------------------------------------------------

def short_keys(keys, limit: int = 8) -> str:
    keys = list(keys)
    return ', '.join(keys[:limit]) + (f', ... ({len(keys)} in all)' if len(keys) > limit else '')


def detect_format(keys) -> str:
    """Name the layout of backbone keys (no ``backbone.`` prefix), e.g. 'official', 'timm', 'hf', 'fcmae'."""
    keys = list(keys)
    found = detect(keys)
    if found is None:
        raise CheckpointError(f'Not a ConvNeXt checkpoint: no known key layout (first keys: {", ".join(keys[:5])}). '
                              f'Supported layouts: {", ".join(FORMATS)}.')
    return found.layout.name


def convert_key(key: str, fmt: str) -> str | None:
    """Map one backbone key of layout ``fmt`` to ours; None for classification-only or pretraining-only keys."""
    layout = get_layout(fmt)
    for wrapper in layout.wrappers:
        if key.startswith(wrapper):
            local = key[len(wrapper):]
            if layout.is_dropped(local):
                return None
            mapped = layout.to_ours(local)
            if mapped is not None:
                return mapped[0]
            if layout.is_classification(local):
                return None
    return key


@dataclass
class Conversion:
    state_dict: dict
    format: str
    skipped: list = field(default_factory=list)  # classification-only, outside the backbone, no place in the target
    dropped: list = field(default_factory=list)  # pretraining-only (FCMAE decoder, mask token)
    aliases: list = field(default_factory=list)  # keys holding the same tensor as a loaded one (DINOv3 `norm`)
    final_norm: dict = field(default_factory=dict)  # a classifier's final pooled norm {source key: tensor}, skipped


def check_finite(tensors: dict, source: str = 'Checkpoint') -> None:
    """Refuse tensors holding NaN or Inf: the one finiteness check of every loading path (``init_cfg``, a whole
    model's ``load_from`` / ``load_checkpoint`` / ``load_state_dict``, ``tools/convert_checkpoint.py``), called by
    :func:`convert_state_dict` on every backbone tensor it takes. Names the first keys (as ``tensors`` names them)
    with how many of their values are NaN / Inf."""
    bad = []
    for key, value in tensors.items():
        if value.is_floating_point() or value.is_complex():
            nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
            if nan or inf:
                counts = ', '.join(f'{n} {name}' for n, name in ((nan, 'NaN'), (inf, 'Inf')) if n)
                bad.append(f'{key} ({counts} of {value.numel()} values)')
    if bad:
        raise CheckpointError(
            f'{source}: {len(bad)} backbone tensor(s) hold non-finite values: {short_keys(bad, 5)}. The file is '
            'corrupt or was saved from a diverged run: re-download it, or pick an earlier checkpoint.')


def convert_state_dict(state_dict: dict, fmt: str | None = None, is_classifier: bool | None = None,
                       source: str = 'Checkpoint', progress=None, key_prefix: str = '') -> Conversion:
    """Convert a backbone state dict (keys without any ``backbone.`` prefix) of any layout to ours.

    ``is_classifier`` says the weights come from a classifier (it had a head): an mmpretrain classifier then holds
    its final pooled norm as the last ``norm{i}``, which is skipped. Detected when not given. Keys a layout does
    not know are kept as they are (the model then reports them as unexpected). ``progress(done, total)`` is
    called per tensor. Every tensor taken (not the classification heads or pretraining-only keys it skips) must
    be finite (:func:`check_finite`); messages name keys as ``key_prefix + key`` (their name in the file).
    """
    if fmt is None:
        found = detect(state_dict)
        if found is None:
            detect_format(state_dict)  # raises with the message
        layout, wrapper = found.layout, found.wrapper
    else:
        layout = get_layout(fmt)
        wrapper = next((w for w in layout.wrappers if any(k.startswith(w) for k in state_dict)), layout.wrappers[-1])
    if is_classifier is None:
        is_classifier = any(layout.is_classification(k[len(wrapper):]) for k in state_dict if k.startswith(wrapper))
    out, origin, skipped, dropped, aliases, final_norm = {}, {}, [], [], [], {}
    taken, conflicts = {}, []  # every backbone tensor taken, for the finiteness check; aliases that differ
    final_norm_re = re.compile(layout.final_norm) if layout.final_norm else None
    total = len(state_dict)
    for done, (key, value) in enumerate(state_dict.items(), 1):
        if progress is not None:
            progress(done, total)
        if not key.startswith(wrapper):
            skipped.append(key)
            continue
        local = key[len(wrapper):]
        if layout.is_dropped(local):
            dropped.append(key)
            continue
        mapped = layout.to_ours(local)
        if mapped is None:
            if layout.is_classification(local):
                skipped.append(key)
                if final_norm_re is not None and final_norm_re.match(local):
                    final_norm[key] = taken[key] = value  # loaded in gap_before_final_norm mode
                continue
            new = local
        else:
            new, rule = mapped
            if rule.reshape is not None:
                value = rule.reshape.to_ours(value)
        taken[key] = value
        if new in out:  # aliases (DINOv3's `norm` is `norms.3`): must hold the same tensor
            if out[new].shape != value.shape or not torch.equal(out[new], value):
                conflicts.append(f'{source}: {key_prefix + origin[new]!r} and {key_prefix + key!r} both map to '
                                 f'{new!r} but differ.')
            aliases.append(key)
            continue
        out[new], origin[new] = value, key
    if layout.pooled_last_norm and is_classifier:
        norms = sorted(int(m.group(1)) for k in out if (m := re.match(r'^norm(\d+)\.', k)))
        if norms:
            last = f'norm{norms[-1]}.'
            skipped += [origin[k] for k in out if k.startswith(last)]
            final_norm.update({origin[k]: v for k, v in out.items() if k.startswith(last)})
            out = {k: v for k, v in out.items() if not k.startswith(last)}
    check_finite({key_prefix + k: v for k, v in taken.items()}, source)  # first: NaN aliases differ too
    if conflicts:
        raise CheckpointError(conflicts[0])
    return Conversion(out, layout.name, skipped, dropped, aliases, final_norm)


def convert_from_ours(state_dict: dict, fmt: str, conv_mlp: bool = False) -> Conversion:
    """Our backbone state dict -> layout ``fmt`` (under the layout's plainest wrapper, e.g. none for 'hf').

    ``conv_mlp``: write the MLP as 1x1 convs, as timm's atto/femto/pico/nano models (``conv_mlp=True``) expect.
    Keys the layout has no place for (e.g. our dense ``norm{i}`` in timm) are reported as skipped.
    """
    layout = get_layout(fmt)
    wrapper, options = layout.wrappers[-1], dict(conv_mlp=conv_mlp)
    out, skipped = {}, []
    for key, value in state_dict.items():
        mapped = layout.from_ours(key)
        if mapped is None:
            skipped.append(key)
            continue
        if value.ndim == 4 and re.search(r'\.pwconv[12]\.weight$', key):  # linear_pw_conv=False: as linear first
            value = value.flatten(1)
        new, rule = mapped
        out[wrapper + new] = rule.reshape.to_theirs(value, options) if rule.reshape is not None else value
    return Conversion(out, layout.name, skipped)


@dataclass
class Arch:
    depths: list
    channels: list
    use_grn: bool
    layer_scale: bool

    @property
    def name(self) -> str | None:
        return arch_name(self.depths, self.channels)

    def __str__(self):
        version = 'ConvNeXt-V2 (GRN)' if self.use_grn else 'ConvNeXt V1'
        scale = 'layer scale' if self.layer_scale else 'no layer scale'
        return (f'{self.name or "custom"} (depths {self.depths}, channels {self.channels}), {version}, {scale}; '
                f"backbone: arch={self.name or dict(depths=self.depths, channels=self.channels)!r}, "
                f'use_grn={self.use_grn}, layer_scale_init_value={1e-6 if self.layer_scale else 0}')


def infer_arch(state_dict: dict) -> Arch:
    """Depths, channels and variant of a state dict in our layout, from its keys and shapes."""
    blocks = {}
    for key, value in state_dict.items():
        m = re.match(r'^stages\.(\d+)\.(\d+)\.dwconv\.weight$', key)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            depth, _ = blocks.get(s, (0, 0))
            blocks[s] = (max(depth, b + 1), value.shape[0])
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise CheckpointError('Cannot tell the architecture: the checkpoint has no complete set of stages '
                              f'(found stages {sorted(blocks)}).')
    return Arch([blocks[s][0] for s in sorted(blocks)], [blocks[s][1] for s in sorted(blocks)],
                use_grn=any('.grn.' in k for k in state_dict),
                layer_scale=any(re.match(r'^stages\.\d+\.\d+\.gamma$', k) for k in state_dict))


# --- converting files (tools/convert_checkpoint.py) ------------------------------------------------------

WRITE_TARGETS = ('ours',) + tuple(name for name in LAYOUT_NAMES if name != 'official')
_PROGRESS_BYTES = 100 * 2 ** 20


class _Progress:
    """A one-line progress bar on stderr, in 5% steps."""

    def __init__(self, label: str, stream=None):
        self.label, self.stream, self.shown = label, stream or sys.stderr, -1

    def __call__(self, done: int, total: int):
        percent = 100 * done // max(total, 1)
        if percent // 5 != self.shown // 5 or done == total:
            self.shown = percent
            end = '\n' if done == total else ''
            self.stream.write(f'\r{self.label}: {percent:3d}% ({done}/{total} tensors){end}')
            self.stream.flush()


def convert_file(src: str, dst: str, to: str = 'ours', prefix: str | None = None, conv_mlp: bool = False,
                 progress: bool | None = None, out=print) -> Conversion:
    """Convert checkpoint file ``src`` (any layout) to ``dst`` in layout ``to`` (see :data:`WRITE_TARGETS`).

    Prints the detected layout, the architecture (from the shapes) and the skipped keys; shows progress for large
    files (``progress=None``: when ``src`` is 100 MiB or more). ``dst`` ending in ``.safetensors`` is written as
    safetensors (with the ``format: pt`` metadata transformers expects), else with ``torch.save``: ours as
    ``{'state_dict': ...}``, other layouts as a plain state dict.
    """
    if to == 'hf-transformers':
        to = 'hf'
    if to not in WRITE_TARGETS:
        raise CheckpointError(f'Unknown target layout {to!r}; choose one of {", ".join(WRITE_TARGETS)}.')
    size = os.path.getsize(src) if os.path.isfile(src) else 0
    if progress is None:
        progress = size >= _PROGRESS_BYTES
    if progress:
        out(f'reading {src} ({size / 2 ** 20:.0f} MiB)')
    state_dict = unwrap_state_dict(read_checkpoint(src), f'Checkpoint {src!r}')
    prefix = backbone_prefix(state_dict, prefix)
    backbone, outside, has_head = split_backbone(state_dict, prefix)
    result = convert_state_dict(backbone, is_classifier=has_head or None, source=f'Checkpoint {src!r}',
                                progress=_Progress('converting') if progress else None, key_prefix=prefix)
    arch = infer_arch(result.state_dict)
    skipped = outside + result.skipped
    written = result.state_dict
    if to != 'ours':
        back = convert_from_ours(written, to, conv_mlp=conv_mlp)
        written, skipped = back.state_dict, skipped + back.skipped
    directory = os.path.dirname(os.path.abspath(dst))
    os.makedirs(directory, exist_ok=True)
    if dst.endswith('.safetensors'):
        save_file({k: v.contiguous() for k, v in written.items()}, dst, metadata={'format': 'pt'})
    else:
        torch.save({'state_dict': written} if to == 'ours' else written, dst)
    out(f'{src}: detected the {result.format} layout, {len(backbone)} backbone tensors')
    out(f'arch: {arch}')
    if skipped:
        out(f'skipped {len(skipped)} (classification-only, outside the backbone, or no place in {to}): '
            f'{short_keys(skipped, 10)}')
    if result.dropped:
        out(f'dropped {len(result.dropped)} pretraining-only: {short_keys(result.dropped, 10)}')
    out(f'wrote {dst} ({to} layout, {len(written)} tensors)')
    return Conversion(written, to, skipped, result.dropped)


__all__ = ['Arch', 'CheckpointError', 'Conversion', 'FORMATS', 'LAYOUTS', 'WRITE_TARGETS', 'backbone_prefix',
           'check_finite', 'convert_file', 'convert_from_ours', 'convert_key', 'convert_state_dict', 'detect_format',
           'infer_arch', 'read_checkpoint', 'short_keys', 'split_backbone', 'unwrap_state_dict']
