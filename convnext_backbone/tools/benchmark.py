"""Speed, memory and correctness of our ConvNeXt against timm's, on CPU or CUDA: ``python tools/benchmark.py``.

Commands (``python tools/benchmark.py COMMAND -h`` for each one's options):

- ``vs-timm`` (or ``--vs-timm``): our eager ConvNeXt-T against timm's ``convnext_tiny`` in the three scenarios of
  docs/performance.md (train step b8 @ 224, inference b1 @ 800x1216 and @ 512x512), all in one process, every
  model's steps interleaved round by round (the order rotating each round), medians; prints and writes (``--out``)
  a JSON result and a Markdown row for the stack table. ``--impls ours ours_plain timm`` adds ours with the fused
  CPU kernels switched off (``cpu_kernels.plain_ops``).
- ``backbone``: one scenario, ours vs timm, several modes (eager, channels_last, compile, compile_freezing,
  with_cp); time interleaved in one process, peak memory of each configuration in its own fresh process (CUDA
  max allocated, or on CPU the peak RSS and its rise over the RSS before the first step); ``--profile`` prints
  each implementation's ops by self time per step side by side instead (torch.profiler)::

      python tools/benchmark.py backbone --arch tiny --size 224 --batch 8 --step train --modes eager with_cp
      python tools/benchmark.py backbone --arch tiny --size 512 --batch 2 --output-stride 8  # both dilated

- ``compile`` (or ``--compile``): eager vs ``torch.compile`` (and inductor's ``freezing=True`` for inference), ours
  vs timm, inference b1 @ 800x1216 and a train step b8 @ 224; the warm-up steps include compiling (minutes).
- ``model``: inference FPS of whole detectors / segmentors (``mmdet::`` / ``mmseg::`` name their shipped configs).
- ``check``: the device run (``bash tools/gpu_check.sh run``, docs/gpu.md): sections ``correctness`` (ours with
  timm's weights vs timm, fp32 with TF32 off and under autocast bf16 / fp16, an ordinary input and a x1000 one
  whose fp16 squares overflow), ``speed`` (train step b32 @ 224, inference b8 @ 800x1216; fp32 / AMP bf16 / fp16;
  channels-last input or not), ``memory`` (CUDA peak of the train step, with and without checkpointing),
  ``models`` (UperNet-T and Mask R-CNN-T train steps with the recipes' optimizer wrappers), ``speed_compile``;
  each within a time budget (:data:`BUDGETS`); writes JSON (``--out``) and Markdown (the same path, ``.md``).
  Rows come from :func:`expected_rows`; :func:`validate` rejects a result with a row missing or a field mistyped.
  A failing row or section records its error and the run goes on. ``--smoke``: the same rows with a tiny model
  on one CPU thread (CI), ``torch.compile`` with dynamo's ``eager`` backend for one row.

A row that needs mmcv's compiled ops (mmseg's and mmdet's model packages import ``mmcv.ops``) is skipped, with the
reason, where they do not load (mmcv absent or built without its ops); nothing is faked. Modes of a model are
joined with ``+`` (``channels_last+compile``). Speed targets live here and in docs/performance.md, never in timed tests.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import traceback

import torch

from .common import adapt_to_machine, build_model_from_config, dummy_batch, dummy_train_batch, load_config, require

MODES = ('eager', 'channels_last', 'compile', 'compile_freezing', 'with_cp')
IMPLS = ('ours', 'ours_plain', 'timm')  # ours_plain: ours with the fused CPU kernels off
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- building and timing one step --------------------------------------------------------------------------

def sync(device) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def parse_mode(mode: str) -> set:
    modes = set(mode.split('+'))
    unknown = modes - set(MODES)
    if unknown:
        raise ValueError(f'unknown benchmark mode(s) {sorted(unknown)} in {mode!r}: use {", ".join(MODES)}, '
                         "several joined with '+'.")
    return modes


def build_backbone(impl: str, arch, mode: str = 'eager', output_stride: int = 32):
    """Ours (``impl`` 'ours' / 'ours_plain') or timm's ConvNeXt (``features_only``, four stages) of ``arch``: a name
    (``'tiny'``) or ``dict(depths=[...], channels=[...])`` (timm's ``convnext_tiny`` with those depths and dims),
    both at ``output_stride`` (16, 8: the last stages dilated)."""
    modes = parse_mode(mode)
    if impl not in IMPLS:
        raise ValueError(f'unknown benchmark implementation {impl!r}: use one of {", ".join(IMPLS)}.')
    if impl != 'timm':
        from convnext_backbone import ConvNeXt
        return ConvNeXt(arch, with_cp='with_cp' in modes, output_stride=output_stride)
    timm = require('timm', 'the timm reference of the backbone benchmark')
    kwargs = dict(depths=tuple(arch['depths']), dims=tuple(arch['channels'])) if isinstance(arch, dict) else {}
    model = timm.create_model(f'convnext_{"tiny" if isinstance(arch, dict) else arch}', pretrained=False,
                              features_only=True, out_indices=(0, 1, 2, 3), output_stride=output_stride, **kwargs)
    if 'with_cp' in modes:
        model.set_grad_checkpointing(True)
    return model


def setup_step(impl, arch, mode, size, batch, step, dtype, device, compile_backend='inductor', output_stride=32):
    """Build one model and its input; return ``run()``: one training step (forward under autocast for a
    non-float32 ``dtype``, the sum of the stage means' backward) or one inference forward, synchronised."""
    modes = parse_mode(mode)
    torch.manual_seed(0)
    device = torch.device(device)
    model = build_backbone(impl, arch, mode, output_stride).to(device)
    x = torch.randn(batch, 3, *size, device=device)
    if 'channels_last' in modes:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train(step == 'train')
    if 'compile' in modes:
        fn = torch.compile(model, backend=compile_backend)
    elif 'compile_freezing' in modes:
        fn = torch.compile(model, backend=compile_backend, options={'freezing': True})
    else:
        fn = model
    dtype = getattr(torch, dtype)
    autocast = autocast_context(device.type, str(dtype).replace('torch.', ''))
    if impl == 'ours_plain':
        from convnext_backbone.cpu_kernels import plain_ops
        kernels = plain_ops
    else:
        kernels = contextlib.nullcontext

    def run():
        with kernels():
            if step == 'train':
                with autocast:
                    loss = sum(o.float().mean() for o in fn(x))
                loss.backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad(), autocast:
                    fn(x)
        sync(device)
    return run


def interleave(runs: dict, warmup: int, repeat: int, log=None) -> dict:
    """Seconds per call of every ``run`` in ``runs``, called in turn, each round starting one further along (so no
    run always follows the same one); ``warmup`` rounds dropped. Median and min of each. ``log``: called with a
    line after each round. Also every kept step's seconds, in round order (``steps``: the rounds pair up across
    runs)."""
    times = {name: [] for name in runs}
    names = list(runs)
    for i in range(warmup + repeat):
        start_round = time.perf_counter()
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            runs[name]()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
        if log:
            log(f'round {i + 1}/{warmup + repeat}{" (warm-up)" if i < warmup else ""}: '
                f'{time.perf_counter() - start_round:.1f} s')
    return {name: dict(median=statistics.median(t), min=min(t), steps=t) for name, t in times.items()}


def time_backbones(arch, mode, size, batch, step, dtype, device, warmup, repeat, threads, modes=None,
                   output_stride=32, impls=('ours', 'timm')) -> dict:
    """Seconds per step of ``impls``, interleaved step by step in one process so that a drifting machine speed
    (shared or throttled CPUs) hits all alike; median and min of ``repeat`` steps. With ``modes``, every
    (impl, mode) pair is interleaved, keyed ``'impl mode'``."""
    if threads:
        torch.set_num_threads(threads)
    if modes:
        runs = {f'{impl} {m}': setup_step(impl, arch, m, size, batch, step, dtype, device,
                                          output_stride=output_stride) for m in modes for impl in impls}
    else:
        runs = {impl: setup_step(impl, arch, mode, size, batch, step, dtype, device, output_stride=output_stride)
                for impl in impls}
    return interleave(runs, warmup, repeat)


# --- memory and per-op profiles (each in a fresh process) --------------------------------------------------

def _rss_mib() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def measure_memory(impl, arch, mode, size, batch, step, dtype, device, threads, output_stride=32) -> dict:
    """Peak memory of one configuration, in this (fresh) process: CUDA max allocated, or on CPU the peak RSS
    and its rise over the RSS before the first step (activations, gradients, workspace)."""
    if threads:
        torch.set_num_threads(threads)
    run = setup_step(impl, arch, mode, size, batch, step, dtype, device, output_stride=output_stride)
    if torch.device(device).type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        run()
        run()
        return dict(peak_mib=torch.cuda.max_memory_allocated() / 2**20)
    before = _rss_mib()
    run()
    run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(peak_mib=peak, rise_mib=peak - before)


def profile_backbones(arch, mode, size, batch, step, dtype, device, warmup, repeat, threads,
                      output_stride=32) -> dict:
    """Per-op breakdown of ours and timm's step: self time per op (torch.profiler, ``repeat`` steps after
    ``warmup``), ms per step, every op sorted by time; the ops that differ most are where a regression is."""
    from torch.profiler import ProfilerActivity, profile
    if threads:
        torch.set_num_threads(threads)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith('cuda') else [])

    def self_us(e):  # torch < 2.4 names the device time after CUDA
        return e.self_cpu_time_total + getattr(e, 'self_device_time_total', getattr(e, 'self_cuda_time_total', 0))
    result = {}
    for impl in ('ours', 'timm'):
        run = setup_step(impl, arch, mode, size, batch, step, dtype, device, output_stride=output_stride)
        for _ in range(warmup):
            run()
        with profile(activities=activities) as prof:
            for _ in range(repeat):
                run()
        events = sorted((e for e in prof.key_averages() if self_us(e) > 0), key=self_us, reverse=True)
        result[impl] = {e.key: dict(ms=self_us(e) / 1e3 / repeat, calls=e.count / repeat) for e in events}
        result[impl]['total'] = dict(ms=sum(v['ms'] for v in result[impl].values()), calls=0)
    return result


def print_profile(profiled: dict, top: int = 15):
    print(f'{"op (self time)":<44} {"ours ms":>9} {"calls":>6} | {"op (self time)":<44} {"timm ms":>9} {"calls":>6}')
    ours = [(k, v) for k, v in profiled['ours'].items() if k != 'total'][:top]
    timm = [(k, v) for k, v in profiled['timm'].items() if k != 'total'][:top]
    for i in range(max(len(ours), len(timm))):
        left = f'{ours[i][0][:44]:<44} {ours[i][1]["ms"]:>9.1f} {ours[i][1]["calls"]:>6.0f}' if i < len(ours) \
            else ' ' * 61
        right = f'{timm[i][0][:44]:<44} {timm[i][1]["ms"]:>9.1f} {timm[i][1]["calls"]:>6.0f}' if i < len(timm) \
            else ''
        print(f'{left} | {right}')
    print(f'{"total (all ops, per step)":<44} {profiled["ours"]["total"]["ms"]:>9.1f} {"":>6} | '
          f'{"total (all ops, per step)":<44} {profiled["timm"]["total"]["ms"]:>9.1f}')


def in_subprocess(kind, **kwargs) -> dict:
    """One :func:`time_backbones` / :func:`measure_memory` / :func:`profile_backbones` call in a fresh process."""
    env = dict(os.environ)
    if kind == 'memory':
        # A fixed mmap threshold makes glibc return every large freed buffer to the OS at once (by default the
        # threshold grows after frees and freed activations linger in the heap), so peak RSS tracks the peak
        # of live tensors, the CPU analogue of CUDA's max allocated.
        env.setdefault('MALLOC_MMAP_THRESHOLD_', str(1 << 20))
    out = subprocess.run([sys.executable, '-m', 'convnext_backbone.tools.benchmark', '_one', kind, json.dumps(kwargs)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f'{kind} {kwargs} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- where a figure was measured ---------------------------------------------------------------------------

def host() -> dict:
    """The machine and stack a figure belongs to: CPU model, cores, AVX-512 or AVX2, GPU, load, versions, date."""
    cpu, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        info = open('/proc/cpuinfo').read()
        cpu = (re.findall(r'model name\s*:\s*(.*)', info) or [cpu])[0].strip()
        flags = set((re.findall(r'flags\s*:\s*(.*)', info) or [''])[0].split())
    simd = 'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'
    env = dict(date=datetime.date.today().isoformat(), cpu=cpu, cores=os.cpu_count(), simd=simd,
               load=list(os.getloadavg()), threads=torch.get_num_threads(), python=platform.python_version(),
               torch=torch.__version__, cuda=torch.version.cuda,
               gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, paths={})
    for module in ('timm', 'mmengine', 'mmcv', 'mmseg', 'mmdet', 'convnext_backbone'):
        try:
            imported = __import__(module)
            env[module], env['paths'][module] = imported.__version__, os.path.dirname(imported.__file__)
        except Exception as exc:  # noqa: BLE001  (an optional codebase that does not import: say why)
            env[module] = f'not importable ({error_note(exc)})'
    return env


def host_line(env: dict) -> str:
    load = '/'.join(f'{v:.1f}' for v in env['load'])
    where = env['gpu'] or f'{env["cpu"]} ({env["simd"]}), {env["cores"]} cores'
    return f'{where}, {env["threads"]} threads, load {load} (1/5/15 min), {env["date"]}'


# --- ours vs timm, eager, the three scenarios of docs/performance.md ---------------------------------------

VS_TIMM_SCENARIOS = (  # (name, step, batch, (H, W))
    ('train b8 224', 'train', 8, (224, 224)),
    ('inference b1 800x1216', 'forward', 1, (800, 1216)),
    ('inference b1 512x512', 'forward', 1, (512, 512)),
)


def vs_timm(arch='tiny', device='cpu', warmup=2, repeat=10, threads=0, impls=('ours', 'timm'),
            scenarios=VS_TIMM_SCENARIOS, log=None) -> dict:
    """Every (scenario, impl) built in this one process and their steps interleaved (:func:`interleave`): median
    and min s/step of each, and per scenario the speed ratio of every non-timm impl over timm (> 1: faster)."""
    if 'timm' not in impls:
        raise ValueError(f'vs-timm compares with timm: --impls {" ".join(impls)} lacks timm.')
    if threads:
        torch.set_num_threads(threads)
    env = host()
    runs = {(name, impl): setup_step(impl, arch, 'eager', size, batch, step, 'float32', device)
            for name, step, batch, size in scenarios for impl in impls}
    times = interleave(runs, warmup, repeat, log)
    rows = []
    for name, step, batch, size in scenarios:
        row = dict(scenario=name, step=step, batch=batch, size=list(size))
        for impl in impls:
            row[impl] = times[name, impl]
            if impl != 'timm':
                row[f'{impl}/timm'] = times[name, 'timm']['median'] / times[name, impl]['median']
                row[f'{impl}/timm min'] = times[name, 'timm']['min'] / times[name, impl]['min']
                # round by round (the two steps ran within seconds of each other): robust to a host whose speed
                # drifts over the run, which moves both medians apart
                row[f'{impl}/timm paired'] = statistics.median(
                    t / o for t, o in zip(times[name, 'timm']['steps'], times[name, impl]['steps']))
        rows.append(row)
    env['load_after'] = list(os.getloadavg())
    return dict(command='vs-timm', arch=arch, device=device, warmup=warmup, repeat=repeat, impls=list(impls),
                env=env, rows=rows)


def vs_timm_markdown(result: dict) -> str:
    """The table: a line per scenario, and the one-line row of the docs' stack table."""
    env, impls = result['env'], [i for i in result['impls'] if i != 'timm']
    lines = [f'ConvNeXt-{result["arch"]} eager vs timm, float32, {result["device"]}: {host_line(env)}; torch '
             f'{env["torch"]}, timm {env["timm"]}; median (min) s/step of {result["repeat"]} interleaved rounds after '
             f'{result["warmup"]}', '',
             '| scenario | ' + ' | '.join(f'{i} s' for i in result['impls']) + ' | '
             + ' | '.join(f'{i} / timm' for i in impls) + ' |',
             '|---|' + '---|' * (len(result['impls']) + len(impls))]
    for row in result['rows']:
        lines.append(f'| {row["scenario"]} | ' + ' | '.join(
            f'{row[i]["median"]:.3f} ({row[i]["min"]:.3f})' for i in result['impls']) + ' | ' + ' | '.join(
            f'{row[f"{i}/timm"]:.2f}x (paired {row[f"{i}/timm paired"]:.2f}x)' for i in impls) + ' |')
    ratios = ', '.join(f'{r["scenario"].replace("inference b1 ", "")} {r["ours/timm"]:.2f}x '
                       f'(paired {r["ours/timm paired"]:.2f}x, min {r["ours/timm min"]:.2f}x)'
                       for r in result['rows'] if 'ours/timm' in r)
    lines += ['', 'stack-table row (ours / timm: ratio of the medians; in brackets the median of the round-by-round '
              'ratios and the ratio of the fastest steps):', '',
              f'| torch {env["torch"]} | timm {env["timm"]} | {ratios} | {host_line(env)} |']
    return '\n'.join(lines)


# --- the device run: sections, rows, schema ----------------------------------------------------------------

SCHEMA_VERSION = 'convnext_backbone.benchmark.check/1'
DTYPES = ('float32', 'bfloat16', 'float16')
SECTIONS = ('correctness', 'speed', 'memory', 'models', 'speed_compile')  # run order
STATUSES = ('ok', 'error', 'skipped', 'n/a')
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


class CheckResultError(ValueError):
    """A ``check`` result that does not match :data:`SCHEMA` / :func:`expected_rows`."""


def validate(result: dict) -> dict:
    """Raise :class:`CheckResultError` unless ``result`` has every section and expected row, each field of its
    type, statuses from :data:`STATUSES`, and the values an 'ok' row must have. Returns ``result``."""
    def check(obj, spec, where):
        if not isinstance(obj, dict):
            raise CheckResultError(f'benchmark check result: {where} must be a dict, got {type(obj).__name__}.')
        for key, types_ in spec.items():
            types_ = types_ if isinstance(types_, tuple) else (types_,)
            if key not in obj:
                raise CheckResultError(f'benchmark check result: {where} lacks {key!r}; a run writes it (rerun '
                                       '`tools/benchmark.py check`, or fix the code that wrote this file).')
            if not isinstance(obj[key], types_) or (isinstance(obj[key], bool) and bool not in types_):
                raise CheckResultError(f'benchmark check result: {where}.{key} = {obj[key]!r} is not of type '
                                       f'{types_}.')

    check(result, TOP_LEVEL, 'the result')
    if result['schema'] != SCHEMA_VERSION:
        raise CheckResultError(f'benchmark check result: schema {result["schema"]!r}, expected {SCHEMA_VERSION!r}.')
    for section, ids in expected_rows().items():
        if section not in result['sections']:
            raise CheckResultError(f'benchmark check result: section {section!r} is missing.')
        sec = result['sections'][section]
        check(sec, SECTION_KEYS, f'section {section}')
        rows = {}
        for row in sec['rows']:
            check(row, dict(id=str, status=str, note=str, **SCHEMA[section]), f'a row of section {section}')
            if row['id'] in rows:
                raise CheckResultError(f'benchmark check result: row {row["id"]!r} of {section} appears twice.')
            rows[row['id']] = row
        missing = [i for i in ids if i not in rows]
        if missing:
            raise CheckResultError(f'benchmark check result: section {section} lacks rows {missing}: every row of '
                                   'expected_rows() must be written (status error/skipped/n/a with a note when it '
                                   'has no figures).')
        unexpected = [i for i in rows if i not in ids]
        if unexpected:
            raise CheckResultError(f'benchmark check result: section {section} has unknown rows {unexpected}.')
        for row in rows.values():
            if row['status'] not in STATUSES:
                raise CheckResultError(f'benchmark check result: row {row["id"]!r} has status {row["status"]!r}; '
                                       f'valid: {STATUSES}.')
            empty = [k for k in REQUIRED_WHEN_OK[section] if row[k] is None] if row['status'] == 'ok' else []
            if empty:
                raise CheckResultError(f'benchmark check result: ok row {row["id"]!r} of {section} has no {empty}.')
            if row['status'] != 'ok' and not row['note']:
                raise CheckResultError(f'benchmark check result: row {row["id"]!r} is {row["status"]} without a '
                                       'note saying why.')
    return result


def error_note(exc: BaseException) -> str:
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
        row.update(status='error', note=error_note(exc))


def _free(device):
    """Between rows on CUDA: collect the last row's cycles and return the cached blocks, so that each row's peak
    memory is its own (on CPU there is no cache to return, and a full collection of this process costs ~0.2 s)."""
    if device.type == 'cuda':
        gc.collect()
        torch.cuda.empty_cache()


class Clock:
    """A section's budget and the whole run's deadline."""

    def __init__(self, budget_s, deadline):
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.deadline = deadline

    def elapsed(self):
        return time.perf_counter() - self.start

    def over(self, estimate=0.0):
        """None, or why a row expected to take ``estimate`` s must be skipped."""
        if time.perf_counter() + estimate > self.deadline:
            return 'the run\'s time limit (--time-limit) would be passed'
        if self.elapsed() + estimate > self.budget_s:
            return (f'time budget ({self.budget_s:.0f} s for this section, '
                    f'{self.elapsed():.0f} s spent, next row estimated {estimate:.0f} s)')
        return None


# --- correctness: ours with timm's weights against timm ----------------------------------------------------

def timm_features_layout(state_dict: dict) -> dict:
    """A timm ``features_only`` model's weights in timm's model layout: features_only flattens the module names
    (stem_0, stages_1) that timm's models and checkpoints have nested (stem.0, stages.1)."""
    return {re.sub(r'^(stem|stages)_(\d+)\.', r'\1.\2.', k): v for k, v in state_dict.items()}


def timm_pair(arch, v2: bool = False, init=None):
    """timm's ``features_only`` ConvNeXt of ``arch`` (V2 with GRN; V1 with layer scale 1, so that the blocks count)
    and ours with the same weights (timm's layout, loaded by our ``load_state_dict``), both in eval mode.
    ``init(timm_model)``, where given, sets timm's weights first (the tests give non-trivial ones everywhere)."""
    timm = require('timm', 'the timm reference of the correctness check')
    from convnext_backbone import ConvNeXt
    name = ('convnextv2_' if v2 else 'convnext_') + (arch if isinstance(arch, str) else 'tiny')
    kwargs = {} if isinstance(arch, str) else dict(depths=tuple(arch['depths']), dims=tuple(arch['channels']))
    reference = timm.create_model(name, pretrained=False, features_only=True, out_indices=(0, 1, 2, 3),
                                  **kwargs, **({} if v2 else dict(ls_init_value=1.0)))
    if init is not None:
        init(reference)
    state = timm_features_layout(reference.state_dict())
    ours = ConvNeXt(arch, use_grn=v2, layer_scale_init_value=0 if v2 else 1e-6)
    loaded = ours.load_state_dict(state, strict=False)
    missing = [k for k in loaded.missing_keys if not re.match(r'norm\d\.', k)]
    if missing or loaded.unexpected_keys:
        raise RuntimeError(f'timm weights did not load into ours: missing {missing}, unexpected '
                           f'{loaded.unexpected_keys}')
    return ours.eval(), reference.eval()


@contextlib.contextmanager
def exact_float32():
    """float32 CUDA matmuls and convolutions without TF32 (restored on exit)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast_takes(device, dtype: str) -> bool:
    """Whether ``torch.autocast`` on ``device`` computes a matmul in ``dtype`` (CPU float16: torch >= 2.2)."""
    device = torch.device(device)
    try:
        with autocast_context(device.type, dtype):
            probe = torch.ones(1, 1, device=device)
            return (probe @ probe).dtype == getattr(torch, dtype)
    except RuntimeError:  # torch 2.1's CPU autocast refuses anything but bfloat16 when entered
        return False


def autocast_context(device_type: str, dtype: str):
    """Autocast to ``dtype``, or no autocast object at all for float32 (torch 2.1's CPU autocast refuses a
    float32 dtype even when disabled)."""
    if dtype == 'float32':
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=getattr(torch, dtype))


def compare_with_timm(ours, reference, x, dtype: str) -> dict:
    """Ours and timm's (:func:`timm_pair`, on ``x``'s device) under ``dtype`` (autocast unless float32) against timm's
    float32 features (TF32 off), timm's passed through our (identity) output norms: per stage max abs error of
    each (None: not finite), whether each is finite, and whether ours passes: float32 within :data:`FP32_TOL`;
    under autocast finite wherever timm's is and no further off than ``LOW_PRECISION_FACTOR`` x timm's error +
    ``LOW_PRECISION_TOL``. Raises where this torch's autocast does not take ``dtype`` on this device."""
    if not autocast_takes(x.device, dtype):
        raise RuntimeError(f'torch {torch.__version__} autocast does not take {dtype} on {x.device.type}.')
    norms = [getattr(ours, f'norm{i}') for i in range(4)]
    autocast = autocast_context(x.device.type, dtype)
    with torch.no_grad(), exact_float32():
        ref = [norm(f.float()) for norm, f in zip(norms, reference(x))]
        with autocast:
            outs = [o.float() for o in ours(x)]
            feats = [norm(f).float() for norm, f in zip(norms, reference(x))]

    def errors(ts):
        return [float((t - r).abs().max()) if bool(torch.isfinite(t).all()) else None for t, r in zip(ts, ref)]
    ours_err, timm_err = errors(outs), errors(feats)
    ours_finite, timm_finite = None not in ours_err, None not in timm_err
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


def section_correctness(device, sizes, clock):
    rows = []
    batch, size = sizes['correctness']['batch'], sizes['correctness']['size']
    for variant in ('v1', 'v2'):
        ours, reference = (m.to(device) for m in timm_pair(sizes['arch'], variant == 'v2'))
        gen = torch.Generator().manual_seed(1)
        for inp in ('normal', 'large'):
            x = (torch.randn(batch, 3, *size, generator=gen) * (LARGE_INPUT_SCALE if inp == 'large' else 1)).to(device)
            for dtype in DTYPES:
                row = dict(id=f'{variant} {inp} {dtype}', model=variant, input=inp, dtype=dtype, ours_max_abs_err=[],
                           timm_max_abs_err=[], ours_finite=None, timm_finite=None, passed=None, status='ok',
                           note='')
                rows.append(row)
                _measure(row, clock.over(),
                         lambda row=row, x=x, dtype=dtype: row.update(compare_with_timm(ours, reference, x, dtype)))
        del ours, reference
        _free(device)
    return rows


# --- speed and memory ----------------------------------------------------------------------------------------

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
    runs = {impl: setup_step(impl, sizes['arch'], mode, row['size'], row['batch'], step, row['dtype'], device,
                             compile_backend=sizes['compile_backend']) for impl in ('ours', 'timm')}
    if compiled:  # the first call compiles: timed apart, then the usual warm-up and interleaved repeats
        start = time.perf_counter()
        for run in runs.values():
            run()
        row['compile_s'] = time.perf_counter() - start
    times = interleave(runs, sizes['compile_warmup' if compiled else 'warmup'],
                       sizes['compile_repeat' if compiled else 'repeat'])
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
    backend_note = '' if sizes['compile_backend'] == 'inductor' else \
        f'torch.compile backend {sizes["compile_backend"]!r} (smoke: no inductor code generation)'
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
        torch.compiler.reset()  # each row compiles afresh
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
                run = setup_step(impl, sizes['arch'], 'with_cp' if cp else 'eager', shape['size'], shape['batch'],
                                 'train', dtype, device)
                base = torch.cuda.memory_allocated(device) if device.type == 'cuda' else None
                run()
                run()
                if device.type == 'cuda':
                    row.update(peak_mib=torch.cuda.max_memory_allocated(device) / 2**20, base_mib=base / 2**20)
                else:
                    row.update(status='n/a', note='ran; torch.cuda.max_memory_allocated exists on CUDA only (CPU '
                                                  'peak RSS: `benchmark.py backbone`)')
            _measure(row, clock.over(), peak)
    _free(device)
    return rows


# --- whole models -------------------------------------------------------------------------------------------

def mmcv_ops(device) -> tuple[bool, bool, str]:
    """Whether mmcv's compiled ops load (mmseg's and mmdet's model packages import ``mmcv.ops``), whether they
    run on ``device``, and a line saying what mmcv has."""
    try:
        import mmcv
    except ImportError as exc:
        return False, False, f'mmcv is not installed ({error_note(exc)})'
    try:
        from mmcv.ops import get_compiling_cuda_version
    except ImportError as exc:
        return False, False, (f'mmcv {mmcv.__version__} has no compiled ops (mmcv.ops does not import: '
                              f'{error_note(exc)}; mmcv-lite or MMCV_WITH_OPS=0)')
    cuda = get_compiling_cuda_version()
    if device.type == 'cuda' and cuda == 'not available':
        return True, False, f'mmcv {mmcv.__version__} has no CUDA ops (compiled without CUDA)'
    return True, True, f'mmcv {mmcv.__version__} ops compiled (CUDA {cuda})'


def config_path(rel: str) -> str:
    """A config of this repository: beside the package in a checkout, else under the working directory (the
    installed package carries no configs: run from a checkout)."""
    for root in (ROOT, os.getcwd()):
        path = os.path.join(root, rel)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f'benchmark: {rel} is neither beside the package ({ROOT}) nor under the working '
                            f'directory ({os.getcwd()}): run tools/benchmark.py from a checkout of this repository.')


def shrink_model_cfg(cfg, arch):
    """A small UperNet / Mask R-CNN: the backbone of ``arch`` (a dict), heads narrowed to match."""
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


def _model_row(name, config, status='ok', note='', shape=None):
    return dict(id=name, config=config, batch=shape['batch'] if shape else 0, size=list(shape['size']) if shape else [],
                optim_wrapper='', s_per_step=None, img_s=None, peak_mib=None,
                anchor_gb=UPERNET_ZOO_GB if name == 'upernet_t' else None, status=status, note=note)


def _train_steps(name, config, device, sizes, clock, smoke):
    shape = sizes['upernet' if name == 'upernet_t' else 'mask_rcnn']
    row = _model_row(name, config, shape=shape)
    from mmengine.optim import build_optim_wrapper
    cfg = load_config(config_path(config))
    if smoke:
        shrink_model_cfg(cfg, sizes['arch'])
    if 'data_preprocessor' in cfg.model and cfg.model.data_preprocessor.get('size') is not None:
        cfg.model.data_preprocessor.size = tuple(shape['size'])
    if device.type != 'cuda':
        adapt_to_machine(cfg, cuda=False)
    model, scope = build_model_from_config(cfg)
    model = model.to(device).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    amp = type(optim_wrapper).__name__ == 'AmpOptimWrapper'
    row['optim_wrapper'] = type(optim_wrapper).__name__ + (
        f' ({cfg.optim_wrapper.get("dtype") or "float16"})' if amp else ' (float32)')
    batch = dummy_train_batch(scope, shape['size'], shape['batch'], device=device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(sizes['model_warmup'] + sizes['model_repeat']):
        sync(device)
        start = time.perf_counter()
        log_vars = model.train_step(batch, optim_wrapper)
        sync(device)
        if i >= sizes['model_warmup']:
            times.append(time.perf_counter() - start)
        if clock.over() and times:
            row['note'] = f'time budget: {len(times)} timed steps'
            break
    loss = sum(float(v.detach() if torch.is_tensor(v) else v) for k, v in log_vars.items() if 'loss' in k)
    if not math.isfinite(loss):
        raise FloatingPointError(f'{name}: non-finite training loss {loss}')
    median = statistics.median(times)
    row.update(s_per_step=median, img_s=shape['batch'] / median)
    if device.type == 'cuda':
        row['peak_mib'] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        row['note'] = '; '.join(filter(None, [row['note'], 'peak memory: CUDA only']))
    del model, optim_wrapper
    _free(device)
    return row


def section_models(device, sizes, clock, smoke=False):
    rows = []
    importable, on_device, ops_note = mmcv_ops(device)
    for name, config, scope in (('upernet_t', UPERNET_CONFIG, 'mmseg'), ('mask_rcnn_t', MASK_RCNN_CONFIG, 'mmdet')):
        skip = clock.over()
        if not skip and not importable:
            skip = f'{ops_note}: {scope}\'s models import mmcv.ops'
        elif not skip and name == 'mask_rcnn_t' and not on_device:
            skip = f'{ops_note}: Mask R-CNN runs RoI ops'
        if skip:
            rows.append(_model_row(name, config, 'skipped', skip))
            continue
        try:
            require(scope, f'the {name} row of the benchmark check')
            rows.append(_train_steps(name, config, device, sizes, clock, smoke))
        except Exception as exc:
            rows.append(_model_row(name, config, 'error', error_note(exc)))
            _free(device)
    return rows


SECTION_FUNCTIONS = dict(correctness=section_correctness, speed=section_speed, memory=section_memory,
                         models=section_models, speed_compile=section_speed_compile)


# --- the run ---------------------------------------------------------------------------------------------

def check(device='cuda', smoke=False, sections=SECTIONS, time_limit=None, log=print) -> dict:
    """Run the device check's ``sections``; return the result (validated when every section ran).

    ``time_limit``: seconds for the whole run (default :data:`TIME_LIMIT`; the smoke has no limit and no
    section budgets, so that it writes every row). The smoke runs torch on one CPU thread (on a shared
    2-core machine two threads spin at every barrier: steps 100x slower), restored afterwards."""
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('benchmark check: --device cuda but torch sees no CUDA device here; on a machine '
                           'without a GPU run `--device cpu --smoke`.')
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f'benchmark check: unknown sections {sorted(unknown)}; valid: {", ".join(SECTIONS)}.')
    sizes = SMOKE if smoke else FULL
    if time_limit is None:
        time_limit = math.inf if smoke else TIME_LIMIT
    deadline = time.perf_counter() + time_limit
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        if sizes['threads']:
            torch.set_num_threads(sizes['threads'])
        result = dict(schema=SCHEMA_VERSION, device=str(device), smoke=smoke, env=host(), sections={}, seconds=None)
        for name in (s for s in SECTIONS if s in sections):
            budget = math.inf if smoke else BUDGETS[name]
            clock = Clock(budget, deadline)
            log(f'benchmark check: {name} (budget {budget} s) ...')
            sec = dict(status='ok', seconds=None, budget_s=None if smoke else float(budget), error=None, rows=[])
            try:
                kwargs = dict(smoke=smoke) if name == 'models' else {}
                sec['rows'] = SECTION_FUNCTIONS[name](device, sizes, clock, **kwargs)
            except Exception as exc:  # the section's every row records the error; the run goes on
                sec.update(status='error', error=traceback.format_exc()[-2000:])
                sec['rows'] = [_failed_row(name, row_id, error_note(exc)) for row_id in expected_rows()[name]]
            sec['seconds'] = clock.elapsed()
            result['sections'][name] = sec
            _free(device)
    finally:
        torch.set_num_threads(threads)
    result['seconds'] = time.perf_counter() - start
    if set(sections) == set(SECTIONS):
        validate(result)
    return result


def _failed_row(section, row_id, note):
    row = {k: ([] if t is list else False if t is bool else 0 if t is int else '' if t is str else None)
           for k, t in SCHEMA[section].items()}
    row.update(id=row_id, status='error', note=f'section failed: {note}')
    return row


def _f(value, fmt='{:.1f}'):
    return '-' if value is None else fmt.format(value)


def _errs(errs):
    return '-' if not errs else ' '.join('inf/nan' if e is None else f'{e:.1e}' for e in errs)


def check_markdown(result: dict) -> str:
    env = result['env']
    lines = [f'# benchmark check: {result["device"]}{" (smoke)" if result["smoke"] else ""}', '',
             f'{host_line(env)}; torch {env.get("torch")}, CUDA {env.get("cuda")}, timm {env.get("timm")}, '
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


# --- command lines -------------------------------------------------------------------------------------------

def _size(args):
    return args.size if len(args.size) == 2 else args.size * 2


def _write(result: dict, text: str, out: str | None) -> None:
    """Print the Markdown; with ``out``, write the JSON there and the Markdown beside it (``.md``)."""
    print(text)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, 'w') as f:
            json.dump(result, f, indent=1)
        with open(os.path.splitext(out)[0] + '.md', 'w') as f:
            f.write(text + '\n')
        print(f'\nwritten: {out} and {os.path.splitext(out)[0]}.md')


def cmd_vs_timm(args):
    print(f'ConvNeXt-{args.arch} eager, {" / ".join(args.impls)}: building {len(args.scenarios)} scenarios x '
          f'{len(args.impls)} models, '
          f'{args.warmup} + {args.repeat} interleaved rounds ...', flush=True)
    scenarios = tuple(s for s in VS_TIMM_SCENARIOS if s[0].split()[-1] in args.scenarios)
    result = vs_timm(args.arch, args.device, args.warmup, args.repeat, args.threads, tuple(args.impls),
                     scenarios=scenarios, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    _write(result, vs_timm_markdown(result), args.out)
    return result


def cmd_check(args):
    result = check(args.device, smoke=args.smoke, sections=args.sections, time_limit=args.time_limit,
                   log=lambda msg: print(msg, file=sys.stderr, flush=True))
    _write(result, check_markdown(result), args.out)
    return result


def cmd_backbone(args):
    size = _size(args)
    common = dict(arch=args.arch, size=size, batch=args.batch, step=args.step, dtype=args.dtype,
                  device=args.device, threads=args.threads, output_stride=args.output_stride)
    print(f'ConvNeXt-{args.arch} (output stride {args.output_stride}) {args.step} step, batch {args.batch}, '
          f'{size[0]}x{size[1]}, {args.dtype}, '
          f'{args.device}, {args.threads or torch.get_num_threads()} threads; time: ours and timm interleaved, '
          f'{args.repeat} steps after {args.warmup} warm-up')
    results = {}
    if args.profile:
        for mode in args.modes:
            print(f'per-op breakdown, {mode}: self time per step (torch.profiler, {args.repeat} steps after '
                  f'{args.warmup} warm-up), ours and timm in one fresh process')
            results[mode] = in_subprocess('profile', mode=mode, warmup=args.warmup, repeat=args.repeat, **common)
            print_profile(results[mode], args.top)
        return results
    cuda = args.device.startswith('cuda')
    memory = 'peak MiB (max allocated)' if cuda else 'peak RSS MiB (rise)'
    print(f'{"mode":<14} {"impl":<5} {"img/s":>8} {"s/step":>8} {"min s":>8} {memory:>24}  ours/timm: speed, memory')
    for mode in args.modes:
        timing = in_subprocess('time', mode=mode, warmup=args.warmup, repeat=args.repeat, **common)
        for impl in ('ours', 'timm'):
            r = dict(timing[impl], **in_subprocess('memory', impl=impl, mode=mode, **common))
            r['img_s'] = args.batch / r['median']
            results[impl, mode] = r
            mem_key = 'peak_mib' if cuda else 'rise_mib'
            mem = f'{r["peak_mib"]:.0f}' + ('' if cuda else f' ({r["rise_mib"]:.0f})')
            line = f'{mode:<14} {impl:<5} {r["img_s"]:>8.2f} {r["median"]:>8.3f} {r["min"]:>8.3f} {mem:>24}'
            if impl == 'timm':
                ours = results['ours', mode]
                line += (f'  {r["median"] / ours["median"]:.2f}x (min {r["min"] / ours["min"]:.2f}x), '
                         f'{ours[mem_key] / max(r[mem_key], 1e-9):.2f}x')
            print(line, flush=True)
    if {'with_cp', 'eager'} <= set(args.modes) and args.step == 'train':
        cp, eager = results['ours', 'with_cp'], results['ours', 'eager']
        key = 'peak_mib' if cuda else 'rise_mib'
        print(f'ours with_cp / eager: memory {cp[key] / eager[key]:.2f}x, time {cp["median"] / eager["median"]:.2f}x')
    return results


COMPILE_SCENARIOS = (  # (name, step, batch, size, modes)
    ('inference b1 800x1216', 'forward', 1, (800, 1216), ('eager', 'compile', 'compile_freezing')),
    ('train step b8 224', 'train', 8, (224, 224), ('eager', 'compile')),
)


def cmd_compile(args):
    print(f'torch.compile on ConvNeXt-{args.arch} ({torch.__version__}, inductor, {args.device}, '
          f'{args.threads or torch.get_num_threads()} threads): every variant of a scenario built in one process '
          f'and their steps interleaved; median (min) s/step of {args.repeat} steps after {args.warmup} warm-up '
          f'steps (which include compiling)')
    print(f'{"scenario":<22} {"mode":<17} {"ours s":>13} {"timm s":>13} {"ours/timm":>9} {"ours vs eager":>13}')
    results = {}
    for name, step, batch, size, modes in COMPILE_SCENARIOS:
        if args.scenarios and step not in args.scenarios:
            continue
        timing = in_subprocess('time', arch=args.arch, mode=None, modes=list(modes), size=list(size), batch=batch,
                               step=step, dtype='float32', device=args.device, warmup=args.warmup,
                               repeat=args.repeat, threads=args.threads)
        results[name] = timing
        eager = timing['ours eager']['median']
        for m in modes:
            ours, timm = timing[f'ours {m}'], timing[f'timm {m}']
            print(f'{name:<22} {m:<17} {ours["median"]:>6.3f} ({ours["min"]:.3f}) {timm["median"]:>6.3f} '
                  f'({timm["min"]:.3f}) {timm["median"] / ours["median"]:>8.2f}x '
                  f'{eager / ours["median"]:>12.2f}x', flush=True)
    print('ours/timm: speed-up of ours over timm in the same mode; ours vs eager: speed-up over ours eager')
    return results


def cmd_model(args):
    size = _size(args)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'inference FPS at {size[0]}x{size[1]}, batch 1, {device}, median of {args.repeat} after {args.warmup}')
    for path in args.configs:
        model, scope = build_model_from_config(load_config(path))
        model = model.to(device)
        batch = dummy_batch(scope, size, device)
        times = []
        with torch.no_grad():
            for i in range(args.warmup + args.repeat):
                sync(device)
                start = time.perf_counter()
                model.test_step(batch)
                sync(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - start)
        median = statistics.median(times)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f'{path}: {1 / median:.3f} FPS ({median:.3f} s/img), {params:.1f}M params', flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    timing = argparse.ArgumentParser(add_help=False, parents=[device])
    timing.add_argument('--warmup', type=int, default=2)
    timing.add_argument('--repeat', type=int, default=5)
    timing.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    common = argparse.ArgumentParser(add_help=False, parents=[timing])
    common.add_argument('--size', type=int, nargs='+', default=[224], help='H [W]')
    vt = sub.add_parser('vs-timm', parents=[timing], help='ours vs timm eager: train b8 224, inference 800x1216 and '
                        '512x512 (docs/performance.md)')
    vt.set_defaults(repeat=10)
    vt.add_argument('--arch', default='tiny')
    vt.add_argument('--impls', nargs='+', choices=IMPLS, default=['ours', 'timm'],
                    help='ours_plain: ours with the fused CPU kernels off')
    vt.add_argument('--scenarios', nargs='+', choices=[s[0].split()[-1] for s in VS_TIMM_SCENARIOS],
                    default=[s[0].split()[-1] for s in VS_TIMM_SCENARIOS], help='a subset of the three (default: all)')
    vt.add_argument('--out', help='write the JSON result here and the Markdown beside it (.md)')
    ck = sub.add_parser('check', parents=[device], help='the device run: correctness, speed, memory, models, compile')
    ck.add_argument('--smoke', action='store_true', help='tiny model and inputs, one repeat (CI, CPU)')
    ck.add_argument('--out', default='work_dirs/benchmark_check.json', help='the JSON result (Markdown beside it)')
    ck.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    ck.add_argument('--time-limit', type=float, default=None,
                    help=f'seconds for the whole run (default {TIME_LIMIT}; smoke: none): past it, sections '
                    'skip their remaining rows')
    bb = sub.add_parser('backbone', parents=[common], help='ours vs timm backbone, one scenario, several modes')
    bb.add_argument('--arch', default='tiny')
    bb.add_argument('--batch', type=int, default=8)
    bb.add_argument('--step', choices=['train', 'forward'], default='train')
    bb.add_argument('--dtype', choices=DTYPES, default='float32')
    bb.add_argument('--output-stride', type=int, choices=[8, 16, 32], default=32,
                    help='output_stride of both backbones (16, 8: the last stages dilated)')
    bb.add_argument('--modes', nargs='+', default=['eager'], choices=MODES)
    bb.add_argument('--profile', action='store_true',
                    help='instead of timing: a per-op breakdown (self time per step) of ours and timm, side by side')
    bb.add_argument('--top', type=int, default=15, help='with --profile: ops listed per implementation')
    cc = sub.add_parser('compile', parents=[timing], help='torch.compile: eager vs compiled, ours vs timm')
    cc.add_argument('--arch', default='tiny')
    cc.add_argument('--scenarios', nargs='+', choices=['forward', 'train'], help='default: both')
    md = sub.add_parser('model', parents=[common], help='whole detector / segmentor FPS')
    md.add_argument('configs', nargs='+')
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['_one']:  # internal: one measurement in a fresh process (in_subprocess)
        fn = dict(time=time_backbones, memory=measure_memory, profile=profile_backbones)[argv[1]]
        print(json.dumps(fn(**json.loads(argv[2]))))
        return None
    if argv[:1] in (['--compile'], ['--vs-timm'], ['--check']):
        argv = [argv[0][2:], *argv[1:]]
    args = parse_args(argv)
    return dict(backbone=cmd_backbone, compile=cmd_compile, model=cmd_model, check=cmd_check,
                **{'vs-timm': cmd_vs_timm})[args.command](args)


if __name__ == '__main__':
    main()
