"""Backbone timing shared by ``tools/benchmark.py`` and :mod:`convnext_backbone.tools.gpu_check`: ours and timm's
same-arch model built alike, one training or inference step as a closure, and steps of several models interleaved
in one process (medians), so that a drifting machine speed hits all of them alike.

Modes (``_setup``'s ``mode``): eager, channels_last (input handed over in channels-last memory format), compile
(``torch.compile``), compile_freezing (inductor's ``freezing=True``; inference), with_cp (activation checkpointing;
timm's grad_checkpointing); several joined with ``+`` (e.g. ``channels_last+compile``).
"""
from __future__ import annotations

import statistics
import time

import torch

from .common import require

MODES = ('eager', 'channels_last', 'compile', 'compile_freezing', 'with_cp')


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _parse_mode(mode: str) -> set:
    modes = set(mode.split('+'))
    unknown = modes - set(MODES)
    if unknown:
        raise ValueError(f'unknown benchmark mode(s) {sorted(unknown)} in {mode!r}: use {", ".join(MODES)}, '
                         "several joined with '+'.")
    return modes


def build_backbone(impl: str, arch, mode: str, output_stride: int = 32):
    """Ours or timm's ConvNeXt (``features_only``, four stages) of ``arch``: a name (``'tiny'``) or
    ``dict(depths=[...], channels=[...])`` (timm's ``convnext_tiny`` with those depths and dims), both at
    ``output_stride`` (16, 8: the last stages dilated)."""
    modes = _parse_mode(mode)
    if impl == 'ours':
        import convnext_backbone  # noqa: F401
        from convnext_backbone import ConvNeXt
        return ConvNeXt(arch, with_cp='with_cp' in modes, output_stride=output_stride)
    timm = require('timm', 'the timm reference of the backbone benchmark')
    if isinstance(arch, dict):
        model = timm.create_model('convnext_tiny', pretrained=False, features_only=True, out_indices=(0, 1, 2, 3),
                                  depths=tuple(arch['depths']), dims=tuple(arch['channels']),
                                  output_stride=output_stride)
    else:
        model = timm.create_model(f'convnext_{arch}', pretrained=False, features_only=True,
                                  out_indices=(0, 1, 2, 3), output_stride=output_stride)
    if 'with_cp' in modes:
        model.set_grad_checkpointing(True)
    return model


def _setup(impl, arch, mode, size, batch, step, dtype, device, compile_backend='inductor', output_stride=32):
    """Build one model and its input; return ``run()``, one training step (forward under autocast for a
    non-float32 ``dtype``, the sum of the stage means' backward) or one inference forward, synchronised."""
    modes = _parse_mode(mode)
    torch.manual_seed(0)
    device = torch.device(device)
    dtype = getattr(torch, dtype)
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
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def run():
        if step == 'train':
            with autocast:
                loss = sum(o.float().mean() for o in fn(x))
            loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast:
                fn(x)
        _sync(device)
    return run


def interleave(runs: dict, warmup: int, repeat: int) -> dict:
    """Seconds per call of every ``run`` in ``runs``, called in turn (``warmup`` rounds dropped): median and min."""
    times = {name: [] for name in runs}
    for i in range(warmup + repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: dict(median=statistics.median(t), min=min(t)) for name, t in times.items()}


def time_backbones(arch, mode, size, batch, step, dtype, device, warmup, repeat, threads, modes=None,
                   output_stride=32) -> dict:
    """Seconds per step of ours and timm's, interleaved step by step in one process so that drifting
    machine speed (shared or throttled CPUs) hits both equally; median and min of ``repeat`` steps.
    With ``modes``, every (impl, mode) pair is interleaved, keyed ``'impl mode'``."""
    if threads:
        torch.set_num_threads(threads)
    if modes:
        runs = {f'{impl} {m}': _setup(impl, arch, m, size, batch, step, dtype, device, output_stride=output_stride)
                for m in modes for impl in ('ours', 'timm')}
    else:
        runs = {impl: _setup(impl, arch, mode, size, batch, step, dtype, device, output_stride=output_stride)
                for impl in ('ours', 'timm')}
    return interleave(runs, warmup, repeat)
