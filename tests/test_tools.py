"""The benchmark and FLOPs tools run and report what they promise (no timing assertions)."""
import json
import os
import re
import statistics
import subprocess
import sys

import pytest
import torch

from convnext_backbone.tools import benchmark
from helpers import ROOT

TOOLS = os.path.join(ROOT, 'tools')


def _run(*args):
    out = subprocess.run([sys.executable, os.path.join(TOOLS, args[0]), *args[1:]], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_benchmark_backbone_prints_ours_timm_and_ratios():
    # the channels_last mode's step is the check's too (tests/test_gpu_check.py runs it in every speed row pair)
    out = _run('benchmark.py', 'backbone', '--arch', 'atto', '--size', '64', '--batch', '2', '--step', 'train',
               '--warmup', '1', '--repeat', '2', '--modes', 'eager', 'with_cp', '--threads', '1')
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (['eager'], ['with_cp'])]
    assert [(r[0], r[1]) for r in rows] == [(m, i) for m in ('eager', 'with_cp') for i in ('ours', 'timm')]
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0  # img/s, s/step
    assert re.search(r'timm .*\d+\.\d\dx \(min \d+\.\d\dx\), \d+\.\d\dx', out)
    assert re.search(r'ours with_cp / eager: memory \d+\.\d\dx, time \d+\.\d\dx', out)


def test_benchmark_profile_breaks_ours_and_timm_down_per_op(capsys):
    args = benchmark.parse_args(['backbone', '--arch', 'atto', '--profile', '--top', '40'])
    assert args.profile and args.top == 40
    threads = torch.get_num_threads()
    try:  # what the CLI's fresh process runs, here in-process
        profiled = benchmark.profile_backbones('atto', 'eager', (64, 64), 2, 'train', 'float32', 'cpu', 1, 1, 1)
    finally:
        torch.set_num_threads(threads)
    benchmark.print_profile(profiled, 40)
    out = capsys.readouterr().out
    rows = [line.split(' | ') for line in out.splitlines() if ' | ' in line]
    ours = {r[0].split()[0] for r in rows[1:-1] if r[0].strip()}
    timm = {r[1].split()[0] for r in rows[1:-1] if r[1].strip()}
    # our step runs the custom-op kernels (forward and backward), timm's plain aten ops (atto: 1x1 convs)
    assert {'convnext::mlp', 'convnext::mlp_backward', 'convnext::dwconv_weight_grad'} <= ours, ours
    assert 'aten::convolution_backward' in timm and not any(op.startswith('convnext::') for op in timm), timm
    ours_total, timm_total = re.findall(r'total \(all ops, per step\)\s+(\d+\.\d)', rows[-1][0] + rows[-1][1])
    assert float(ours_total) > 0 and float(timm_total) > 0


@pytest.mark.parametrize('arch,expected', [('tiny', 4.5), ('small', 8.7), ('base', 15.4), ('large', 34.4),
                                           ('xlarge', 60.9)])
def test_backbone_flops_match_the_paper(arch, expected):
    """Counted on the meta device (shapes only, the same count; test_get_flops_cli counts a real forward)."""
    import torch
    from convnext_backbone.tools.get_flops import backbone_complexity
    with torch.device('meta'):
        macs, _ = backbone_complexity(arch, (224, 224))
    assert abs(macs / 1e9 - expected) / expected < 0.03


def test_get_flops_cli():
    assert re.search(r'ConvNeXt-atto backbone at 224x224: FLOPs 0\.55G, params 3\.4M', _run('get_flops.py', '--arch', 'atto'))


def test_benchmark_output_stride_builds_ours_and_timm_dilated():
    assert benchmark.parse_args(['backbone', '--output-stride', '8']).output_stride == 8
    assert benchmark.parse_args(['backbone']).output_stride == 32
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        for impl in ('ours', 'timm'):
            model = benchmark.build_backbone(impl, 'atto', 'eager', 8).eval()
            assert [tuple(o.shape[2:]) for o in model(x)] == [(16, 16), (8, 8), (8, 8), (8, 8)], impl


def test_benchmark_vs_timm_writes_json_and_the_stack_table_row(tmp_path):
    """The ours-vs-timm command of the docs' stack table: one process, the three scenarios (train 224, inference
    800x1216 and 512x512), ours, ours without the fused kernels and timm; JSON and Markdown written."""
    out = tmp_path / 'vs_timm.json'
    stdout = _run('benchmark.py', '--vs-timm', '--arch', 'atto', '--warmup', '0', '--repeat', '2', '--threads', '1',
                  '--impls', 'ours', 'ours_plain', 'timm', '--out', str(out))
    result = json.loads(out.read_text())
    assert [(r['scenario'], r['batch'], r['size']) for r in result['rows']] == [
        ('train b8 224', 8, [224, 224]), ('inference b1 800x1216', 1, [800, 1216]),
        ('inference b1 512x512', 1, [512, 512])]
    for row in result['rows']:
        for impl in ('ours', 'ours_plain'):
            assert row[f'{impl}/timm'] == pytest.approx(row['timm']['median'] / row[impl]['median'])
            assert row[impl]['min'] <= row[impl]['median']
            assert row[f'{impl}/timm paired'] == pytest.approx(statistics.median(
                t / o for t, o in zip(row['timm']['steps'], row[impl]['steps'])))
            assert len(row[impl]['steps']) == 2
    env = result['env']
    assert env['torch'] == torch.__version__ and env['threads'] == 1 and env['cores'] == os.cpu_count()
    assert len(env['load']) == 3 and env['simd'] in ('AVX-512', 'AVX2', 'no AVX2') and env['date']
    markdown = (tmp_path / 'vs_timm.md').read_text()
    stack_row = markdown.strip().splitlines()[-1]
    ratio = r'\d+\.\d\dx \(paired \d+\.\d\dx, min \d+\.\d\dx\)'
    assert re.fullmatch(rf'\| torch {re.escape(torch.__version__)} \| timm \S+ \| train b8 224 {ratio}, '
                        rf'800x1216 {ratio}, 512x512 {ratio} \| .*1 threads, load .*\d{{4}}-\d\d-\d\d \|', stack_row)
    assert re.search(r'\| inference b1 512x512 \| [\d.]+ \([\d.]+\) \| [\d.]+ \([\d.]+\) \| [\d.]+ \([\d.]+\) \| '
                     r'\d+\.\d\dx \(paired \d+\.\d\dx\) \| \d+\.\d\dx \(paired \d+\.\d\dx\) \|', markdown)
    assert markdown.strip() in stdout


def test_benchmark_vs_timm_runs_a_subset_of_the_scenarios(tmp_path, monkeypatch):
    """``--scenarios 512x512``: only that scenario is built and timed (the 512x512 row of the stack table, rerun
    with more rounds)."""
    built = []
    setup_step = benchmark.setup_step
    monkeypatch.setattr(benchmark, 'setup_step', lambda impl, arch, mode, size, *args, **kwargs: (
        built.append((impl, tuple(size))), setup_step(impl, arch, mode, (64, 64), *args, **kwargs))[1])
    result = benchmark.main(['vs-timm', '--arch', 'atto', '--scenarios', '512x512', '--warmup', '0', '--repeat', '1',
                             '--threads', '1', '--out', str(tmp_path / 'vs.json')])
    assert built == [('ours', (512, 512)), ('timm', (512, 512))]
    assert [row['scenario'] for row in result['rows']] == ['inference b1 512x512']
    assert (tmp_path / 'vs.md').read_text().strip().splitlines()[-1].startswith(
        f'| torch {torch.__version__} | timm ')


def test_ours_plain_runs_without_the_fused_kernels(monkeypatch):
    """``ours_plain`` (the torch-without-custom-ops alternative measured by --vs-timm) never calls the kernels."""
    from convnext_backbone import cpu_kernels

    def kernels(*args):
        raise AssertionError('the fused kernels ran')
    monkeypatch.setattr(cpu_kernels, 'block_forward', kernels)
    for step in ('train', 'forward'):
        benchmark.setup_step('ours_plain', 'atto', 'eager', (32, 32), 1, step, 'float32', 'cpu')()
        with pytest.raises(AssertionError, match='the fused kernels ran'):
            benchmark.setup_step('ours', 'atto', 'eager', (32, 32), 1, step, 'float32', 'cpu')()
    with pytest.raises(ValueError, match="lacks timm"):
        benchmark.vs_timm('atto', impls=('ours', 'ours_plain'))
    with pytest.raises(ValueError, match="unknown benchmark implementation 'mine'"):
        benchmark.build_backbone('mine', 'atto')


def test_get_flops_output_stride(capsys):
    from convnext_backbone.tools.get_flops import backbone_complexity, main
    macs = main(['--arch', 'atto', '--size', '64', '--output-stride', '16'])
    assert re.search(r'ConvNeXt-atto backbone at 64x64 \(output stride 16\): FLOPs \d\.\d\dG', capsys.readouterr().out)
    assert macs == backbone_complexity('atto', (64, 64), output_stride=16)[0] > backbone_complexity('atto', (64, 64))[0]


def test_analyze_logs_plots_and_times(tmp_path):
    import json as _json
    log = tmp_path / 'scalars.json'
    rows = [dict(lr=1e-4 * (i + 1), loss=2.0 / (i + 1), time=0.5 + 0.1 * (i % 2), iter=i + 1, step=i + 1)
            for i in range(12)] + [{'coco/bbox_mAP': 0.25, 'step': 12}]
    log.write_text('\n'.join(_json.dumps(r) for r in rows))
    out = _run('analyze_logs.py', str(log), '--keys', 'loss', 'lr', 'coco/bbox_mAP', '--out', str(tmp_path / 'c.png'))
    assert re.search(r'average iteration time 0\.5\d\d s', out)  # mean of the iterations after warm-up
    with open(tmp_path / 'c.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    bad = subprocess.run([sys.executable, os.path.join(TOOLS, 'analyze_logs.py'), str(log), '--keys', 'mIoU',
                          '--out', str(tmp_path / 'x.png')], capture_output=True, text=True)
    assert bad.returncode != 0 and "no scalar 'mIoU'" in bad.stderr


def test_benchmark_model_mode_and_detector_flops():
    config = os.path.join(os.path.dirname(__file__), '..', 'configs', 'detection', 'mask_rcnn_convnext_t_3x.py')
    out = _run('benchmark.py', 'model', config, 'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py',
               '--size', '96', '128', '--warmup', '0', '--repeat', '1')
    assert re.search(r'mask_rcnn_convnext_t_3x.py: \d+\.\d+ FPS .*48\.\dM params', out)
    assert re.search(r'cascade-mask-rcnn_r50_fpn_1x_coco.py: \d+\.\d+ FPS', out)


@pytest.mark.parametrize('config,size,expected,shapes_only', [
    ('detection/mask_rcnn_convnext_t_3x.py', (800, 1280), 262.0, False),  # NMS: the heads' input depends on values
    ('detection/cascade_convnext_t_3x.py', (800, 1280), 741.0, False),  # mask heads on 100 RoIs, as mmdet 2 counted
    ('segmentation/upernet_convnext_t_512_160k_ade20k.py', (512, 2048), 939.0, True),
])
def test_whole_model_flops_match_the_paper(config, size, expected, shapes_only):
    from convnext_backbone.tools.get_flops import model_complexity
    macs, _, _, on_shapes = model_complexity(os.path.join(os.path.dirname(__file__), '..', 'configs', config), size)
    assert on_shapes == shapes_only
    assert abs(macs / 1e9 - expected) / expected < 0.03


def test_counting_on_shapes_equals_a_real_forward(monkeypatch):
    """The fake-tensor count of a segmentor is the real forward's, to the MAC: the tool's two paths at one small
    size (the real one taken by making fake tensors fail, as NMS or an extension op would)."""
    from convnext_backbone.tools import get_flops
    config = os.path.join(os.path.dirname(__file__), '..', 'configs', 'segmentation',
                          'upernet_convnext_t_512_160k_ade20k.py')
    macs, _, _, shapes_only = get_flops.model_complexity(config, (96, 160))
    assert shapes_only

    def no_fake_tensors(**kwargs):
        raise RuntimeError('fake tensors unavailable')
    monkeypatch.setattr(get_flops, 'FakeTensorMode', no_fake_tensors)
    real, _, _, shapes_only = get_flops.model_complexity(config, (96, 160))
    assert not shapes_only and real == macs


def test_a_model_with_compiled_extension_ops_is_counted_on_a_real_forward():
    """mmcv's compiled ops (here DCNv2 convolutions in the decode head) cannot run on fake tensors: the count falls
    back to a real forward instead of failing."""
    from convnext_backbone.tools.common import load_config
    from convnext_backbone.tools.get_flops import model_complexity
    cfg = load_config(os.path.join(os.path.dirname(__file__), '..', 'configs', 'segmentation',
                                   'upernet_convnext_t_512_160k_ade20k.py'))
    cfg.model.decode_head.conv_cfg = dict(type='DCNv2', deform_groups=1)
    macs, _, _, shapes_only = model_complexity(cfg, (64, 64))
    assert not shapes_only and macs > 0
