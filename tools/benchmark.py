"""Throughput and peak memory of our ConvNeXt against timm's, and of whole detectors / segmentors.

Backbone mode (ours and timm's same-arch model, built in the same way, each configuration measured in its
own fresh process so that peak memory is per configuration):

    python tools/benchmark.py backbone --arch tiny --size 224 --batch 8 --step train
    python tools/benchmark.py backbone --arch tiny --size 800 1216 --batch 1 --step forward
    python tools/benchmark.py backbone --arch tiny --size 224 --batch 8 --step train --modes eager with_cp
    python tools/benchmark.py backbone --arch tiny --size 224 --batch 8 --step train --profile   # per-op table
    python tools/benchmark.py backbone --arch tiny --size 512 --batch 2 --output-stride 8  # both dilated

Modes: eager (default), channels_last (input handed over in channels-last memory format), compile
(torch.compile), compile_freezing (torch.compile with inductor's freezing=True; inference), with_cp (activation
checkpointing; timm's grad_checkpointing). Time: ours and timm are built in one process and their steps
interleaved, so a drifting machine speed hits both alike; img/s from the median of --repeat steps after --warmup,
and the min too. Memory: each configuration in a fresh process;
CUDA max allocated, or on CPU the peak RSS and its rise over the RSS before the first step (activations,
gradients, workspace). Ratios: ours/timm speed (>1: ours faster) and memory (<1: ours smaller). ``--profile``
prints, instead of timings, each implementation's ops by self time per step side by side (torch.profiler), so a
regression shows as the op whose time grew.

Compile mode (``--compile``): what ``torch.compile`` gives, eager vs compiled, ours vs timm, in the two
scenarios of docs/performance.md, each in its own process with every variant's steps interleaved (medians):

    python tools/benchmark.py --compile            # inference b1 800x1216 and training step b8 224
    python tools/benchmark.py --compile --arch tiny --repeat 5 --threads 2

Inference also runs inductor's ``freezing=True`` (weights as constants). The first --warmup steps include the
compilation (minutes on a small CPU).

Model mode (FPS of a whole detector or segmentor in inference, like mmdet's benchmark), several configs in
one run; ``mmdet::`` / ``mmseg::`` name configs shipped inside those packages:

    python tools/benchmark.py model configs/detection/cascade_convnext_t_3x.py \\
        mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py --size 800 1216
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from convnext_backbone.tools.bench import _setup, _sync, build_backbone, time_backbones  # noqa: F401
from convnext_backbone.tools.common import build_model_from_config, dummy_batch, load_config


def _rss_mib() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory(impl, arch, mode, size, batch, step, dtype, device, threads, output_stride=32) -> dict:
    """Peak memory of one configuration, in this (fresh) process: CUDA max allocated, or on CPU the peak RSS
    and its rise over the RSS before the first step (activations, gradients, workspace)."""
    if threads:
        torch.set_num_threads(threads)
    run = _setup(impl, arch, mode, size, batch, step, dtype, device, output_stride=output_stride)
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
        run()
        run()
        return dict(peak_mib=torch.cuda.max_memory_allocated() / 2**20)
    before = _rss_mib()
    run()
    run()
    peak = _peak_rss_mib()
    return dict(peak_mib=peak, rise_mib=peak - before)


def profile_backbones(arch, mode, size, batch, step, dtype, device, warmup, repeat, threads,
                      output_stride=32) -> dict:
    """Per-op breakdown of ours and timm's step: self time per op (torch.profiler, ``repeat`` steps after
    ``warmup``), ms per step, every op sorted by time; the ops that differ most are where a regression is."""
    from torch.profiler import ProfilerActivity, profile
    if threads:
        torch.set_num_threads(threads)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith('cuda') else [])
    result = {}
    for impl in ('ours', 'timm'):
        run = _setup(impl, arch, mode, size, batch, step, dtype, device, output_stride=output_stride)
        for _ in range(warmup):
            run()
        with profile(activities=activities) as prof:
            for _ in range(repeat):
                run()
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0 or e.self_device_time_total > 0]
        events.sort(key=lambda e: e.self_cpu_time_total + e.self_device_time_total, reverse=True)
        result[impl] = {e.key: dict(ms=(e.self_cpu_time_total + e.self_device_time_total) / 1e3 / repeat,
                                    calls=e.count / repeat) for e in events}
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


def _in_subprocess(kind, **kwargs) -> dict:
    env = dict(os.environ)
    if kind == 'memory':
        # A fixed mmap threshold makes glibc return every large freed buffer to the OS at once (by default the
        # threshold grows after frees and freed activations linger in the heap), so peak RSS tracks the peak
        # of live tensors, the CPU analogue of CUDA's max allocated.
        env.setdefault('MALLOC_MMAP_THRESHOLD_', str(1 << 20))
    out = subprocess.run([sys.executable, __file__, '_one', kind, json.dumps(kwargs)], capture_output=True,
                         text=True, env=env)
    if out.returncode:
        raise RuntimeError(f'{kind} {kwargs} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def cmd_backbone(args):
    size = args.size if len(args.size) == 2 else args.size * 2
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
            results[mode] = _in_subprocess('profile', mode=mode, warmup=args.warmup, repeat=args.repeat, **common)
            print_profile(results[mode], args.top)
        return results
    cuda = args.device.startswith('cuda')
    memory = 'peak MiB (max allocated)' if cuda else 'peak RSS MiB (rise)'
    print(f'{"mode":<14} {"impl":<5} {"img/s":>8} {"s/step":>8} {"min s":>8} {memory:>24}  ours/timm: speed, memory')
    for mode in args.modes:
        timing = _in_subprocess('time', mode=mode, warmup=args.warmup, repeat=args.repeat, **common)
        for impl in ('ours', 'timm'):
            r = dict(timing[impl], **_in_subprocess('memory', impl=impl, mode=mode, **common))
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


# --- torch.compile -------------------------------------------------------------------------------------

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
        timing = _in_subprocess('time', arch=args.arch, mode=None, modes=list(modes), size=list(size), batch=batch,
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


# --- whole models --------------------------------------------------------------------------------------

def cmd_model(args):
    size = args.size if len(args.size) == 2 else args.size * 2
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'inference FPS at {size[0]}x{size[1]}, batch 1, {device}, median of {args.repeat} after {args.warmup}')
    for path in args.configs:
        cfg = load_config(path)
        model, scope = build_model_from_config(cfg)
        model = model.to(device)
        batch = dummy_batch(scope, size, device)
        times = []
        with torch.no_grad():
            for i in range(args.warmup + args.repeat):
                _sync(device)
                start = time.perf_counter()
                model.test_step(batch)
                _sync(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - start)
        median = statistics.median(times)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f'{path}: {1 / median:.3f} FPS ({median:.3f} s/img), {params:.1f}M params', flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--size', type=int, nargs='+', default=[224], help='H [W]')
    common.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    common.add_argument('--warmup', type=int, default=2)
    common.add_argument('--repeat', type=int, default=5)
    common.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    bb = sub.add_parser('backbone', parents=[common], help='ours vs timm backbone')
    bb.add_argument('--arch', default='tiny')
    bb.add_argument('--batch', type=int, default=8)
    bb.add_argument('--step', choices=['train', 'forward'], default='train')
    bb.add_argument('--dtype', choices=['float32', 'bfloat16', 'float16'], default='float32')
    bb.add_argument('--output-stride', type=int, choices=[8, 16, 32], default=32,
                    help='output_stride of both backbones (16, 8: the last stages dilated)')
    bb.add_argument('--modes', nargs='+', default=['eager'],
                    choices=['eager', 'channels_last', 'compile', 'compile_freezing', 'with_cp'])
    bb.add_argument('--profile', action='store_true',
                    help='instead of timing: a per-op breakdown (self time per step) of ours and timm, side by side')
    bb.add_argument('--top', type=int, default=15, help='with --profile: ops listed per implementation')
    cc = sub.add_parser('compile', parents=[common], help='torch.compile: eager vs compiled, ours vs timm')
    cc.add_argument('--arch', default='tiny')
    cc.add_argument('--scenarios', nargs='+', choices=['forward', 'train'], help='default: both')
    md = sub.add_parser('model', parents=[common], help='whole detector / segmentor FPS')
    md.add_argument('configs', nargs='+')
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == '_one':  # internal: one measurement in a fresh process
        fn = dict(time=time_backbones, memory=measure_memory, profile=profile_backbones)[argv[1]]
        print(json.dumps(fn(**json.loads(argv[2]))))
        return
    if argv and argv[0] == '--compile':
        argv = ['compile', *argv[1:]]
    args = parse_args(argv)
    return dict(backbone=cmd_backbone, compile=cmd_compile, model=cmd_model)[args.command](args)


if __name__ == '__main__':
    main()
