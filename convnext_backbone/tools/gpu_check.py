"""GPU readiness in one call: correctness under CUDA and AMP, speed and memory against timm, whole-model train steps.

``python tools/gpu_check.py`` (on a CUDA machine, about 6 minutes) writes a JSON file (``--out``) and prints Markdown
tables of five sections, run in this order, each within its own time budget (``BUDGETS``):

- ``correctness``: our ConvNeXt-T (V1, and V2 with GRN) with timm's weights (random, non-trivial: norm affines,
  layer scale, GRN) against timm's ``features_only`` model: each stage output's max abs error against timm's
  float32 features passed through the same (identity-initialised) output LayerNorm, in float32 (TF32 off) and
  under ``torch.autocast`` bf16 and fp16, for an ordinary input and a large-activation one (x 1000: squares of
  the stem's activations overflow fp16); whether ours and timm's outputs are finite. Pass: float32 error
  <= ``FP32_TOL``; under autocast ours finite wherever timm's is, and ours no further from the float32 reference
  than ``LOW_PRECISION_FACTOR`` x timm's + ``LOW_PRECISION_TOL``.
- ``speed``: images/s of ours and timm's, same process, steps interleaved, medians (the machinery of
  :mod:`convnext_backbone.tools.bench`, shared with ``tools/benchmark.py``): the training step (forward, backward
  of the stage means) at batch 32, 224 px, and inference at batch 8, 800x1216, for fp32 / AMP bf16 / AMP fp16,
  input in channels-last memory format or not; ratio ours / timm (> 1: ours faster).
- ``memory``: peak ``torch.cuda.max_memory_allocated`` of the training step, ours with and without ``with_cp``,
  timm's with and without grad checkpointing (fp32 and AMP fp16).
- ``models``: UperNet-T train steps at 512x512, batch 2 (the recipe's AmpOptimWrapper fp16 and layer decay;
  peak memory beside the OpenMMLab model zoo's 4.23 GB/GPU for UperNet ConvNeXt-T fp16), and Mask R-CNN-T's when
  mmcv has compiled ops for the device (``mmcv._ext``; with CUDA on a GPU), else the row says why it is skipped.
- ``speed_compile``: the speed rows with ``torch.compile`` (inductor), in priority order (bf16, fp16, fp32;
  training first); compiling is the expensive part: rows that would overrun the budget are skipped and say so.

A failing row records its error; a failing section records its error in every row; neither stops the run. Rows
come from one definition (:func:`expected_rows`), and :func:`validate` checks a result against it and the schema
(``SCHEMA``), raising :class:`GpuCheckResultError` on a missing row or a mistyped field.

``--smoke`` (CI, ``--device cpu``): the same rows with a tiny model (depths 1,1,1,1, channels 8..64), tiny
inputs, one repeat, one CPU thread, no budgets, and of the ``torch.compile`` rows only the first, with the
``eager`` backend (dynamo traces the model, no inductor code generation: a second a trace on a shared 2-core
machine, minutes with inductor); the other compile rows say they are skipped in the smoke. On CPU, autocast
bf16 and fp16 are both run (torch's CPU autocast supports float16); peak memory rows are ``n/a`` (CUDA memory
statistics only), and the models train with a plain fp32 OptimWrapper (mmengine's AmpOptimWrapper needs a GPU).

Without compiled mmcv ops (e.g. mmcv-lite on a bare GPU machine), mmseg cannot be imported (``mmseg.models``
imports ``mmcv.ops`` at import time): :func:`mmcv_ops` then registers a placeholder ``mmcv._ext`` whose every op
raises :class:`MissingMmcvOp` when called. UperNet's training step calls none of them (a call would fail its row,
never give a number); Mask R-CNN's does, so it is skipped.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
import types

import torch
import torch.nn.functional as F

from .bench import _setup, _sync, interleave
from .common import adapt_to_machine, build_model_from_config, dummy_train_batch, load_config, require

SCHEMA_VERSION = 'convnext_backbone.gpu_check/1'
DTYPES = ('float32', 'bfloat16', 'float16')
SECTIONS = ('correctness', 'speed', 'memory', 'models', 'speed_compile')  # run order
STATUSES = ('ok', 'error', 'skipped', 'n/a')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UPERNET_CONFIG = 'configs/segmentation/upernet_convnext_t_512_160k_ade20k.py'
MASK_RCNN_CONFIG = 'configs/detection/mask_rcnn_convnext_t_3x.py'
# OpenMMLab's mmseg model zoo, UperNet ConvNeXt-T 512x512 160k, fp16 AMP, 8x2 images: training memory per GPU
UPERNET_ZOO_GB = 4.23
FP32_TOL = 1e-3
LOW_PRECISION_FACTOR, LOW_PRECISION_TOL = 2.0, 1e-2
LARGE_INPUT_SCALE = 1000.0

# Seconds per section on a GPU (the whole run: about 6 minutes with imports and CUDA start-up).
BUDGETS = dict(correctness=25, speed=60, memory=25, models=50, speed_compile=150)
TIME_LIMIT = 345  # the whole run: sections stop starting rows past it

# The sizes of a run: the GPU one and the CPU smoke (same rows, shrunk).
FULL = dict(arch='tiny', correctness=dict(batch=2, size=(224, 224)),
            train=dict(batch=32, size=(224, 224)), infer=dict(batch=8, size=(800, 1216)),
            warmup=3, repeat=10, compile_warmup=2, compile_repeat=10, compile_backend='inductor',
            model_warmup=2, model_repeat=5, upernet=dict(batch=2, size=(512, 512)),
            mask_rcnn=dict(batch=2, size=(800, 1216)), threads=None, compile_rows=None)
SMOKE = dict(arch=dict(depths=[1, 1, 1, 1], channels=[8, 16, 32, 64]), correctness=dict(batch=1, size=(32, 32)),
             train=dict(batch=2, size=(32, 32)), infer=dict(batch=1, size=(64, 96)),
             warmup=0, repeat=1, compile_warmup=0, compile_repeat=1, compile_backend='eager',
             model_warmup=0, model_repeat=1, upernet=dict(batch=2, size=(64, 64)),
             mask_rcnn=dict(batch=1, size=(64, 64)), threads=1, compile_rows=1)

# --- the rows: one definition -------------------------------------------------------------------------------

STEPS = ('train', 'infer')
MEMORY_IMPLS = (('ours', False), ('ours', True), ('timm', False), ('timm', True))  # (impl, checkpointing)
MEMORY_DTYPES = ('float32', 'float16')
MODELS = ('upernet_t', 'mask_rcnn_t')


def _speed_id(step, dtype, channels_last, compiled):
    return f'{step} {dtype} channels_last={int(channels_last)} compile={int(compiled)}'


def _compile_order():
    """The compiled speed rows in the order they run (and are dropped from, when the budget runs out)."""
    return [(step, dtype, cl) for cl in (False, True) for dtype in ('bfloat16', 'float16', 'float32')
            for step in STEPS]


def expected_rows() -> dict[str, list[str]]:
    """Every row id of every section: what a run must produce and :func:`validate` checks."""
    return dict(
        correctness=[f'{v} {inp} {dt}' for v in ('v1', 'v2') for inp in ('normal', 'large') for dt in DTYPES],
        speed=[_speed_id(s, dt, cl, False) for s in STEPS for dt in DTYPES for cl in (False, True)],
        memory=[f'{impl} {"checkpointing" if cp else "plain"} {dt}' for dt in MEMORY_DTYPES
                for impl, cp in MEMORY_IMPLS],
        models=list(MODELS),
        speed_compile=[_speed_id(s, dt, cl, True) for s, dt, cl in _compile_order()],
    )


_num = (float, int, type(None))
_COMMON = dict(id=str, status=str, note=str)
SCHEMA = dict(  # per section: field -> type(s); 'ok' rows must have the fields of REQUIRED_WHEN_OK non-null
    correctness=dict(model=str, input=str, dtype=str, ours_max_abs_err=list, timm_max_abs_err=list,
                     ours_finite=(bool, type(None)), timm_finite=(bool, type(None)), passed=(bool, type(None))),
    speed=dict(step=str, dtype=str, channels_last=bool, compile=bool, batch=int, size=list, ours_img_s=_num,
               timm_img_s=_num, ratio=_num, ours_s=_num, timm_s=_num),
    memory=dict(impl=str, checkpointing=bool, dtype=str, peak_mib=_num, base_mib=_num),
    models=dict(config=str, batch=int, size=list, optim_wrapper=str, s_per_step=_num, img_s=_num,
                peak_mib=_num, anchor_gb=_num),
)
SCHEMA['speed_compile'] = dict(SCHEMA['speed'], compile_s=_num)
REQUIRED_WHEN_OK = dict(correctness=('ours_finite', 'timm_finite', 'passed'),
                        speed=('ours_img_s', 'timm_img_s', 'ratio'), memory=(), models=('s_per_step', 'img_s'),
                        speed_compile=('ours_img_s', 'timm_img_s', 'ratio', 'compile_s'))
TOP_LEVEL = dict(schema=str, device=str, smoke=bool, env=dict, sections=dict, seconds=_num)
SECTION_KEYS = dict(status=str, seconds=_num, budget_s=_num, error=(str, type(None)), rows=list)


class GpuCheckResultError(ValueError):
    """A gpu_check result that does not match :data:`SCHEMA` / :func:`expected_rows`."""


def validate(result: dict) -> dict:
    """Raise :class:`GpuCheckResultError` unless ``result`` has every section and expected row, each field of
    its type, statuses from :data:`STATUSES`, and the values an 'ok' row must have. Returns ``result``."""
    def check(obj, spec, where):
        if not isinstance(obj, dict):
            raise GpuCheckResultError(f'gpu_check result: {where} must be a dict, got {type(obj).__name__}.')
        for key, types_ in spec.items():
            if key not in obj:
                raise GpuCheckResultError(f'gpu_check result: {where} lacks {key!r}; a run writes it (rerun '
                                          'tools/gpu_check.py, or fix the code that wrote this file).')
            if not isinstance(obj[key], types_) or (isinstance(obj[key], bool) and bool not in (
                    types_ if isinstance(types_, tuple) else (types_,))):
                raise GpuCheckResultError(f'gpu_check result: {where}.{key} = {obj[key]!r} is not of type '
                                          f'{types_}.')

    check(result, TOP_LEVEL, 'the result')
    if result['schema'] != SCHEMA_VERSION:
        raise GpuCheckResultError(f'gpu_check result: schema {result["schema"]!r}, expected {SCHEMA_VERSION!r}.')
    for section, ids in expected_rows().items():
        if section not in result['sections']:
            raise GpuCheckResultError(f'gpu_check result: section {section!r} is missing.')
        sec = result['sections'][section]
        check(sec, SECTION_KEYS, f'section {section}')
        rows = {}
        for row in sec['rows']:
            check(row, dict(_COMMON, **SCHEMA[section]), f'a row of section {section}')
            if row['id'] in rows:
                raise GpuCheckResultError(f'gpu_check result: row {row["id"]!r} of {section} appears twice.')
            rows[row['id']] = row
        missing = [i for i in ids if i not in rows]
        if missing:
            raise GpuCheckResultError(f'gpu_check result: section {section} lacks rows {missing}: every row of '
                                      'expected_rows() must be written (status error/skipped/n/a with a note '
                                      'when it has no figures).')
        unexpected = [i for i in rows if i not in ids]
        if unexpected:
            raise GpuCheckResultError(f'gpu_check result: section {section} has unknown rows {unexpected}.')
        for row in rows.values():
            if row['status'] not in STATUSES:
                raise GpuCheckResultError(f'gpu_check result: row {row["id"]!r} has status {row["status"]!r}; '
                                          f'valid: {STATUSES}.')
            if row['status'] == 'ok':
                empty = [k for k in REQUIRED_WHEN_OK[section] if row[k] is None]
                if empty:
                    raise GpuCheckResultError(f'gpu_check result: ok row {row["id"]!r} of {section} has no '
                                              f'{empty}.')
            elif not row['note']:
                raise GpuCheckResultError(f'gpu_check result: row {row["id"]!r} is {row["status"]} without a '
                                          'note saying why.')
    return result


# --- helpers ---------------------------------------------------------------------------------------------

def _error_note(exc: BaseException) -> str:
    return f'{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""}'


def _measure(row: dict, skip, fn) -> None:
    """Fill ``row`` by ``fn()`` unless ``skip`` (the reason the time budget gives) says otherwise; a failure is
    recorded in the row (status ``error``) and the other rows still run."""
    if skip:
        row.update(status='skipped', note=skip)
        return
    try:
        fn()
    except Exception as exc:
        row.update(status='error', note=_error_note(exc))


def _free(device):
    """Between rows on CUDA: collect the last row's cycles and return the cached blocks, so that each row's peak
    memory is its own (on CPU there is no cache to return, and a full collection of this process costs ~0.2 s)."""
    if device.type == 'cuda':
        gc.collect()
        torch.cuda.empty_cache()


class _Clock:
    """A section's budget and the whole run's deadline."""

    def __init__(self, budget_s, deadline):
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.deadline = deadline

    def elapsed(self):
        return time.perf_counter() - self.start

    def left(self):
        return min(self.budget_s - self.elapsed(), self.deadline - time.perf_counter())

    def over(self, estimate=0.0):
        """None, or why a row expected to take ``estimate`` s must be skipped."""
        if time.perf_counter() + estimate > self.deadline:
            return 'the run\'s time limit (--time-limit) would be passed'
        if self.elapsed() + estimate > self.budget_s:
            return (f'time budget ({self.budget_s:.0f} s for this section, '
                    f'{self.elapsed():.0f} s spent, next row estimated {estimate:.0f} s)')
        return None


def _randomize_(model, seed=0):
    """Non-trivial weights everywhere (norm affines, layer scale, GRN), at a scale that keeps activations
    well-conditioned so that float32 comparisons are meaningful."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and 'grn' not in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            else:
                base = 1.0 if name.endswith('weight') and 'grn' not in name else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
    return model


def _layer_norm_2d(x):
    """What our identity-initialised output norms compute: LayerNorm over channels, float32."""
    x = x.float()
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=1e-6).permute(0, 3, 1, 2)


def timm_pair(arch, v2: bool, seed: int = 0):
    """timm's ``features_only`` ConvNeXt of ``arch`` (V2 with GRN) with random non-trivial weights, and ours
    with the same weights (timm's layout, loaded by our ``load_state_dict``); our output norms stay identity."""
    import re
    timm = require('timm', 'the timm reference of the gpu check')
    from convnext_backbone import ConvNeXt
    name = ('convnextv2_' if v2 else 'convnext_') + (arch if isinstance(arch, str) else 'tiny')
    kwargs = {} if isinstance(arch, str) else dict(depths=tuple(arch['depths']), dims=tuple(arch['channels']))
    reference = _randomize_(timm.create_model(name, pretrained=False, features_only=True, out_indices=(0, 1, 2, 3),
                                              **kwargs), seed)
    # features_only flattens timm's module names (stem_0, stages_1): back to timm's model layout
    state = {re.sub(r'^(stem|stages)_(\d+)', r'\1.\2', k): v for k, v in reference.state_dict().items()}
    ours = ConvNeXt(arch, use_grn=v2, layer_scale_init_value=0 if v2 else 1e-6)
    result = ours.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not re.match(r'norm\d\.', k)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f'timm weights did not load into ours: missing {missing}, unexpected '
                           f'{result.unexpected_keys}')
    return ours.eval(), reference.eval()


class _ExactFloat32:
    """float32 matmuls and convolutions without TF32 (restored on exit)."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


# --- sections --------------------------------------------------------------------------------------------

def section_correctness(device, sizes, clock):
    rows = []
    batch, size = sizes['correctness']['batch'], sizes['correctness']['size']
    for variant in ('v1', 'v2'):
        ours, reference = timm_pair(sizes['arch'], variant == 'v2')
        ours, reference = ours.to(device), reference.to(device)
        gen = torch.Generator().manual_seed(1)
        for inp in ('normal', 'large'):
            x = torch.randn(batch, 3, *size, generator=gen).to(device)
            if inp == 'large':
                x = x * LARGE_INPUT_SCALE
            with torch.no_grad(), _ExactFloat32():
                ref = [_layer_norm_2d(f) for f in reference(x)]
            for dtype in DTYPES:
                row = dict(id=f'{variant} {inp} {dtype}', model=variant, input=inp, dtype=dtype, ours_max_abs_err=[],
                           timm_max_abs_err=[], ours_finite=None, timm_finite=None, passed=None, status='ok',
                           note='')
                rows.append(row)

                def compare(row=row, dtype=dtype, x=x, ref=ref):
                    autocast = torch.autocast(device.type, dtype=getattr(torch, dtype),
                                              enabled=dtype != 'float32')
                    with torch.no_grad(), _ExactFloat32(), autocast:
                        outs = [o.float() for o in ours(x)]
                        feats = [_layer_norm_2d(f) for f in reference(x)]
                    row.update(_compare(outs, feats, ref, dtype))
                _measure(row, clock.over(), compare)
        del ours, reference
        _free(device)
    return rows


def _compare(outs, feats, ref, dtype):
    def errors(ts):
        return [float((t - r).abs().max()) if bool(torch.isfinite(t).all()) else None for t, r in zip(ts, ref)]
    ours_err, timm_err = errors(outs), errors(feats)
    ours_finite, timm_finite = all(e is not None for e in ours_err), all(e is not None for e in timm_err)
    if dtype == 'float32':
        passed = ours_finite and max(ours_err) <= FP32_TOL
        criterion = f'fp32: ours within {FP32_TOL:g} of timm'
    else:
        passed = (ours_finite or not timm_finite) and (not ours_finite or not timm_finite or all(
            o <= LOW_PRECISION_FACTOR * t + LOW_PRECISION_TOL for o, t in zip(ours_err, timm_err)))
        criterion = (f'{dtype}: ours finite where timm is, error <= {LOW_PRECISION_FACTOR:g} x timm\'s + '
                     f'{LOW_PRECISION_TOL:g}')
    return dict(ours_max_abs_err=ours_err, timm_max_abs_err=timm_err, ours_finite=ours_finite,
                timm_finite=timm_finite, passed=passed, note='' if passed else f'FAILED ({criterion})')


def _speed_row(step, dtype, channels_last, compiled, sizes):
    shape = sizes['train' if step == 'train' else 'infer']
    row = dict(id=_speed_id(step, dtype, channels_last, compiled), step=step, dtype=dtype,
               channels_last=channels_last, compile=compiled, batch=shape['batch'], size=list(shape['size']),
               ours_img_s=None, timm_img_s=None, ratio=None, ours_s=None, timm_s=None, status='ok', note='')
    if compiled:
        row['compile_s'] = None
    return row


def _time_speed_row(row, device, sizes, compiled):
    mode = '+'.join(m for m, on in (('channels_last', row['channels_last']), ('compile', compiled)) if on) or 'eager'
    step = 'train' if row['step'] == 'train' else 'forward'
    warmup = sizes['compile_warmup' if compiled else 'warmup']
    repeat = sizes['compile_repeat' if compiled else 'repeat']
    runs = {impl: _setup(impl, sizes['arch'], mode, row['size'], row['batch'], step, row['dtype'], device,
                         compile_backend=sizes['compile_backend']) for impl in ('ours', 'timm')}
    if compiled:  # the first call compiles: timed apart, then the usual warm-up and interleaved repeats
        start = time.perf_counter()
        for run in runs.values():
            run()
        row['compile_s'] = time.perf_counter() - start
    times = interleave(runs, warmup, repeat)
    ours, timm = times['ours']['median'], times['timm']['median']
    row.update(ours_s=ours, timm_s=timm, ours_img_s=row['batch'] / ours, timm_img_s=row['batch'] / timm,
               ratio=timm / ours)


def section_speed(device, sizes, clock):
    rows = []
    for step in STEPS:
        for dtype in DTYPES:
            for cl in (False, True):
                row = _speed_row(step, dtype, cl, False, sizes)
                rows.append(row)
                _measure(row, clock.over(), lambda row=row: _time_speed_row(row, device, sizes, compiled=False))
                _free(device)
    return rows


def section_speed_compile(device, sizes, clock):
    rows, last = [], 0.0
    if sizes['compile_backend'] != 'inductor':
        backend_note = f'torch.compile backend {sizes["compile_backend"]!r} (smoke: no inductor code generation)'
    else:
        backend_note = ''
    for i, (step, dtype, cl) in enumerate(_compile_order()):
        row = _speed_row(step, dtype, cl, True, sizes)
        row['note'] = backend_note
        rows.append(row)
        skip = clock.over(last)
        if not skip and sizes['compile_rows'] is not None and i >= sizes['compile_rows']:
            skip = f'the smoke compiles {sizes["compile_rows"]} row(s) (tracing costs seconds a row here)'
        if skip:
            row.update(status='skipped', note=skip)
            continue
        start = time.perf_counter()
        torch._dynamo.reset()
        _measure(row, None, lambda row=row: _time_speed_row(row, device, sizes, compiled=True))
        last = time.perf_counter() - start
        _free(device)
    return rows


def section_memory(device, sizes, clock):
    rows = []
    shape = sizes['train']
    for dtype in MEMORY_DTYPES:
        for impl, cp in MEMORY_IMPLS:
            row = dict(id=f'{impl} {"checkpointing" if cp else "plain"} {dtype}', impl=impl, checkpointing=cp,
                       dtype=dtype, peak_mib=None, base_mib=None, status='ok', note='')
            rows.append(row)

            def peak(row=row, impl=impl, cp=cp, dtype=dtype):
                _free(device)
                if device.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats(device)
                run = _setup(impl, sizes['arch'], 'with_cp' if cp else 'eager', shape['size'], shape['batch'],
                             'train', dtype, device)
                base = torch.cuda.memory_allocated(device) if device.type == 'cuda' else None
                run()
                run()
                if device.type == 'cuda':
                    row.update(peak_mib=torch.cuda.max_memory_allocated(device) / 2**20, base_mib=base / 2**20)
                else:
                    row.update(status='n/a', note='ran; torch.cuda.max_memory_allocated exists on CUDA only')
            _measure(row, clock.over(), peak)
    _free(device)
    return rows


class MissingMmcvOp(RuntimeError):
    """An mmcv op was called where mmcv has no compiled ops (the gpu check's placeholder ``mmcv._ext``)."""


class _MissingExt(types.ModuleType):
    """Stands in for ``mmcv._ext`` where mmcv has no compiled ops, so that ``import mmcv.ops`` (which mmseg's and
    mmdet's model packages do at import time) succeeds; every op raises :class:`MissingMmcvOp` when called."""
    placeholder = True

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise MissingMmcvOp(f'mmcv op {name} is not compiled on this machine (mmcv has no ops here: mmcv-lite '
                                'or MMCV_WITH_OPS=0); install a compiled mmcv (tools/install.sh) to run it.')
        return missing


def mmcv_ops(device) -> tuple[bool, str]:
    """Whether mmcv has compiled ops for ``device`` and a line saying what it has. Where it has none, a
    placeholder ``mmcv._ext`` is registered (see :class:`_MissingExt`) so that mmseg and mmdet import."""
    try:
        import mmcv
    except ImportError as exc:
        return False, f'mmcv is not installed ({_error_note(exc)})'
    try:
        from mmcv import _ext
    except ImportError:
        sys.modules['mmcv._ext'] = _ext = _MissingExt('mmcv._ext')
        mmcv._ext = _ext
    if getattr(_ext, 'placeholder', False):
        return False, f'mmcv {mmcv.__version__} has no compiled ops (mmcv._ext missing; placeholder registered)'
    cuda = _ext.get_compiling_cuda_version()
    if device.type == 'cuda' and cuda == 'not available':
        return False, f'mmcv {mmcv.__version__} has no CUDA ops (compiled without CUDA)'
    return True, f'mmcv {mmcv.__version__} ops compiled (CUDA {cuda})'


def config_path(rel: str) -> str:
    """A config of this repository: beside the package in a checkout, else under the working directory (the
    installed package carries no configs: run from a checkout)."""
    for root in (ROOT, os.getcwd()):
        path = os.path.join(root, rel)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f'gpu_check: {rel} is neither beside the package ({ROOT}) nor under the working '
                            f'directory ({os.getcwd()}): run tools/gpu_check.py from a checkout of this repository.')


def _shrink_model_cfg(cfg, arch):
    """The smoke's small UperNet / Mask R-CNN: our tiny backbone, heads narrowed to match."""
    channels = arch['channels']
    cfg.model.backbone.arch = arch
    if 'decode_head' in cfg.model:
        cfg.model.decode_head.in_channels = channels
        cfg.model.decode_head.channels = 16
        cfg.model.auxiliary_head.in_channels = channels[2]
        cfg.model.auxiliary_head.channels = 16
    else:
        cfg.model.neck.in_channels = channels
        cfg.model.train_cfg.rcnn.sampler.num = 64
        cfg.model.roi_head.bbox_head.fc_out_channels = 64


def _train_steps(name, config, scope, device, sizes, clock, smoke):
    shape = sizes['upernet' if name == 'upernet_t' else 'mask_rcnn']
    row = dict(id=name, config=config, batch=shape['batch'], size=list(shape['size']), optim_wrapper='',
               s_per_step=None, img_s=None, peak_mib=None, anchor_gb=UPERNET_ZOO_GB if name == 'upernet_t' else None,
               status='ok', note='')
    from mmengine.optim import build_optim_wrapper
    cfg = load_config(config_path(config))
    if smoke:
        _shrink_model_cfg(cfg, sizes['arch'])
    if 'data_preprocessor' in cfg.model and cfg.model.data_preprocessor.get('size') is not None:
        cfg.model.data_preprocessor.size = tuple(shape['size'])
    if device.type != 'cuda':
        adapt_to_machine(cfg, cuda=False)
    model, scope = build_model_from_config(cfg)
    model = model.to(device).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    row['optim_wrapper'] = type(optim_wrapper).__name__ + (
        f' ({cfg.optim_wrapper.get("dtype") or "float16"})' if type(optim_wrapper).__name__ == 'AmpOptimWrapper'
        else ' (float32)')
    batch = dummy_train_batch(scope, shape['size'], shape['batch'], device=device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(sizes['model_warmup'] + sizes['model_repeat']):
        _sync(device)
        start = time.perf_counter()
        log_vars = model.train_step(batch, optim_wrapper)
        _sync(device)
        if i >= sizes['model_warmup']:
            times.append(time.perf_counter() - start)
        if clock.over() and times:
            row['note'] = f'time budget: {len(times)} timed steps'
            break
    loss = float(sum(float(v) for k, v in log_vars.items() if 'loss' in k))
    if not math.isfinite(loss):
        raise FloatingPointError(f'{name}: non-finite training loss {loss}')
    median = sorted(times)[len(times) // 2]
    row.update(s_per_step=median, img_s=shape['batch'] / median)
    if device.type == 'cuda':
        row['peak_mib'] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        row['note'] = (row['note'] + '; ' if row['note'] else '') + 'peak memory: CUDA only'
    del model, optim_wrapper
    _free(device)
    return row


def section_models(device, sizes, clock, smoke=False):
    rows = []
    ops, ops_note = mmcv_ops(device)
    for name, config, scope in (('upernet_t', UPERNET_CONFIG, 'mmseg'), ('mask_rcnn_t', MASK_RCNN_CONFIG, 'mmdet')):
        skip = clock.over()
        if skip:
            rows.append(_model_row(name, config, 'skipped', skip))
            continue
        if name == 'mask_rcnn_t' and not ops:
            rows.append(_model_row(name, config, 'skipped', f'{ops_note}; Mask R-CNN needs its RoI ops'))
            continue
        try:
            require(scope, f'the {name} row of the gpu check')
            row = _train_steps(name, config, scope, device, sizes, clock, smoke)
            if name == 'upernet_t' and not ops:
                row['note'] = (row['note'] + '; ' if row['note'] else '') + ops_note
            rows.append(row)
        except Exception as exc:
            rows.append(_model_row(name, config, 'error', _error_note(exc)))
            _free(device)
    return rows


def _model_row(name, config, status, note):
    return dict(id=name, config=config, batch=0, size=[], optim_wrapper='', s_per_step=None, img_s=None,
                peak_mib=None, anchor_gb=UPERNET_ZOO_GB if name == 'upernet_t' else None, status=status, note=note)


SECTION_FUNCTIONS = dict(correctness=section_correctness, speed=section_speed, memory=section_memory,
                         models=section_models, speed_compile=section_speed_compile)


# --- the run ---------------------------------------------------------------------------------------------

def environment(device) -> dict:
    env = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
               cudnn_benchmark=torch.backends.cudnn.benchmark,
               tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
               threads=torch.get_num_threads())
    if device.type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(device)
    env['paths'] = {}
    for module in ('timm', 'mmengine', 'mmcv', 'mmseg', 'mmdet', 'convnext_backbone'):
        try:
            imported = __import__(module)
            env[module] = imported.__version__
            env['paths'][module] = os.path.dirname(imported.__file__)
        except Exception as exc:  # noqa: BLE001  (an optional codebase that does not import: say why)
            env[module] = f'not importable ({_error_note(exc)})'
    return env


def run(device='cuda', smoke=False, sections=SECTIONS, time_limit=None, log=print) -> dict:
    """Run the check; return the result (validated against the schema when every section ran).

    ``time_limit``: seconds for the whole run (default :data:`TIME_LIMIT`; the smoke has no limit and no
    section budgets, so that it writes every row). The smoke runs torch on one CPU thread (on a shared
    2-core machine two threads spin at every barrier: steps 100x slower), restored afterwards."""
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('gpu_check: --device cuda but torch sees no CUDA device here; on a machine without '
                           'a GPU run `--device cpu --smoke`.')
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f'gpu_check: unknown sections {sorted(unknown)}; valid: {", ".join(SECTIONS)}.')
    sizes = SMOKE if smoke else FULL
    if time_limit is None:
        time_limit = math.inf if smoke else TIME_LIMIT
    threads = torch.get_num_threads()
    try:
        if sizes['threads']:
            torch.set_num_threads(sizes['threads'])
        return _run(device, smoke, sizes, sections, time_limit, log)
    finally:
        torch.set_num_threads(threads)


def _run(device, smoke, sizes, sections, time_limit, log):
    start = time.perf_counter()
    deadline = start + time_limit
    result = dict(schema=SCHEMA_VERSION, device=str(device), smoke=smoke, env={}, sections={}, seconds=None)
    mmcv_ops(device)  # before anything imports mmseg / mmdet: the placeholder ops where mmcv has none
    result['env'] = environment(device)
    for name in SECTIONS:
        if name not in sections:
            continue
        budget = math.inf if smoke else BUDGETS[name]
        clock = _Clock(budget, deadline)
        log(f'gpu_check: {name} (budget {budget} s) ...')
        sec = dict(status='ok', seconds=None, budget_s=None if smoke else float(budget), error=None, rows=[])
        try:
            kwargs = dict(smoke=smoke) if name == 'models' else {}
            sec['rows'] = SECTION_FUNCTIONS[name](device, sizes, clock, **kwargs)
        except Exception as exc:  # the section's every row records the error; the run goes on
            sec.update(status='error', error=traceback.format_exc()[-2000:])
            sec['rows'] = [_failed_row(name, row_id, _error_note(exc)) for row_id in expected_rows()[name]]
        sec['seconds'] = clock.elapsed()
        result['sections'][name] = sec
        _free(device)
    result['seconds'] = time.perf_counter() - start
    if set(sections) == set(SECTIONS):
        validate(result)
    return result


def _failed_row(section, row_id, note):
    row = {k: ([] if t is list else False if t is bool else 0 if t is int else '' if t is str else None)
           for k, t in SCHEMA[section].items()}
    row.update(id=row_id, status='error', note=f'section failed: {note}')
    return row


# --- Markdown ------------------------------------------------------------------------------------------------

def _f(value, fmt='{:.1f}'):
    return '-' if value is None else fmt.format(value)


def _errs(errs):
    return '-' if not errs else ' '.join('inf/nan' if e is None else f'{e:.1e}' for e in errs)


def markdown(result: dict) -> str:
    env = result['env']
    lines = [f'# gpu_check: {result["device"]}{" (smoke)" if result["smoke"] else ""}', '',
             f'torch {env.get("torch")}, CUDA {env.get("cuda")}, {env.get("gpu", "no GPU")}, timm {env.get("timm")}, '
             f'mmcv {env.get("mmcv")}, mmseg {env.get("mmseg")}; {result["seconds"]:.0f} s', '']
    secs = result['sections']

    def header(name, title, cols):
        sec = secs[name]
        budget = '' if sec['budget_s'] is None else f' of {sec["budget_s"]:.0f}'
        lines.extend([f'## {title} ({sec["seconds"]:.0f} s{budget})', '',
                      '| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)])
        return sec['rows']

    if 'correctness' in secs:
        for r in header('correctness', 'Correctness: ours vs timm, max abs error of the 4 stages vs timm fp32',
                        ['model', 'input', 'dtype', 'ours err', 'timm err', 'ours finite', 'timm finite',
                         'pass', 'status / note']):
            lines.append(f'| {r["model"]} | {r["input"]} | {r["dtype"]} | {_errs(r["ours_max_abs_err"])} | '
                         f'{_errs(r["timm_max_abs_err"])} | {r["ours_finite"]} | {r["timm_finite"]} | '
                         f'{r["passed"]} | {r["status"]} {r["note"]} |')
        lines.append('')
    for name, title in (('speed', 'Speed: images/s, ours vs timm (interleaved, medians)'),
                        ('speed_compile', 'Speed with torch.compile')):
        if name not in secs:
            continue
        cols = ['step', 'batch @ size', 'dtype', 'channels_last', 'ours img/s', 'timm img/s', 'ours/timm']
        cols += ['compile s'] if name == 'speed_compile' else []
        for r in header(name, title, cols + ['status / note']):
            extra = f' {_f(r.get("compile_s"))} |' if name == 'speed_compile' else ''
            lines.append(f'| {r["step"]} | {r["batch"]} @ {"x".join(map(str, r["size"]))} | {r["dtype"]} | '
                         f'{r["channels_last"]} | {_f(r["ours_img_s"])} | {_f(r["timm_img_s"])} | '
                         f'{_f(r["ratio"], "{:.2f}x")} |{extra} {r["status"]} {r["note"]} |')
        lines.append('')
    if 'memory' in secs:
        for r in header('memory', 'Peak memory of the training step (torch.cuda.max_memory_allocated)',
                        ['impl', 'checkpointing', 'dtype', 'peak MiB', 'before step MiB', 'status / note']):
            lines.append(f'| {r["impl"]} | {r["checkpointing"]} | {r["dtype"]} | {_f(r["peak_mib"], "{:.0f}")} | '
                         f'{_f(r["base_mib"], "{:.0f}")} | {r["status"]} {r["note"]} |')
        lines.append('')
    if 'models' in secs:
        for r in header('models', 'Whole-model train steps', ['model', 'batch @ size', 'optim wrapper', 's/step',
                                                              'img/s', 'peak MiB', 'zoo GB/GPU', 'status / note']):
            lines.append(f'| {r["id"]} | {r["batch"]} @ {"x".join(map(str, r["size"])) or "-"} | '
                         f'{r["optim_wrapper"] or "-"} | {_f(r["s_per_step"], "{:.3f}")} | {_f(r["img_s"])} | '
                         f'{_f(r["peak_mib"], "{:.0f}")} | {_f(r["anchor_gb"], "{:.2f}")} | {r["status"]} '
                         f'{r["note"]} |')
        lines.append('')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--smoke', action='store_true', help='tiny model and inputs, one repeat (CI, CPU)')
    parser.add_argument('--out', default='work_dirs/gpu_check.json', help='the JSON result')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument('--time-limit', type=float, default=None,
                        help=f'seconds for the whole run (default {TIME_LIMIT}; smoke: none): past it, sections '
                        'skip their remaining rows')
    return parser.parse_args(argv)


def cli(argv=None):
    args = parse_args(argv)
    result = run(args.device, smoke=args.smoke, sections=args.sections, time_limit=args.time_limit,
                 log=lambda msg: print(msg, file=sys.stderr, flush=True))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(markdown(result))
    print(f'\nwritten: {args.out}')
    return result
