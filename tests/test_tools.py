"""The benchmark and FLOPs tools run and report what they promise (no timing assertions)."""
import os
import re
import subprocess
import sys

import pytest

TOOLS = os.path.join(os.path.dirname(__file__), '..', 'tools')


def _run(*args):
    out = subprocess.run([sys.executable, os.path.join(TOOLS, args[0]), *args[1:]], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_benchmark_backbone_prints_ours_timm_and_ratios():
    out = _run('benchmark.py', 'backbone', '--arch', 'atto', '--size', '64', '--batch', '2', '--step', 'train',
               '--warmup', '1', '--repeat', '2', '--modes', 'eager', 'with_cp', 'channels_last')
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (['eager'], ['with_cp'],
                                                                             ['channels_last'])]
    assert [(r[0], r[1]) for r in rows] == [(m, i) for m in ('eager', 'with_cp', 'channels_last')
                                           for i in ('ours', 'timm')]
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0  # img/s, s/step
    assert re.search(r'timm .*\d+\.\d\dx \(min \d+\.\d\dx\), \d+\.\d\dx', out)
    assert re.search(r'ours with_cp / eager: memory \d+\.\d\dx, time \d+\.\d\dx', out)


@pytest.mark.parametrize('arch,expected', [('tiny', 4.5), ('small', 8.7), ('base', 15.4), ('large', 34.4),
                                           ('xlarge', 60.9)])
def test_backbone_flops_match_the_paper(arch, expected):
    sys.path.insert(0, TOOLS)
    from get_flops import backbone_complexity
    macs, _ = backbone_complexity(arch, (224, 224))
    assert abs(macs / 1e9 - expected) / expected < 0.03


def test_get_flops_cli():
    assert re.search(r'ConvNeXt-atto backbone at 224x224: FLOPs 0\.55G, params 3\.4M', _run('get_flops.py', '--arch', 'atto'))
