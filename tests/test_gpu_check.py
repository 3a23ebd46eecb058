"""tools/gpu_check.py: the CPU smoke writes every row of every section, the result is valid JSON that the schema
accepts, and the validator rejects a result with a row dropped, a section missing or a field mistyped."""
import copy
import json
import sys

import pytest
import torch

from convnext_backbone.tools import gpu_check
from convnext_backbone.tools.gpu_check import GpuCheckResultError, expected_rows, validate


@pytest.fixture(scope='module')
def smoke():
    """One whole smoke run (every section), through JSON as the CLI writes it."""
    return json.loads(json.dumps(gpu_check.run('cpu', smoke=True, log=lambda msg: None)))


def test_smoke_writes_every_expected_row(smoke):
    validate(smoke)
    assert set(smoke['sections']) == set(gpu_check.SECTIONS)
    for section, ids in expected_rows().items():
        assert [r['id'] for r in smoke['sections'][section]['rows']] == ids
        assert smoke['sections'][section]['status'] == 'ok'
    assert smoke['smoke'] is True and smoke['device'] == 'cpu'


def test_smoke_figures(smoke):
    sections = smoke['sections']
    for row in sections['correctness']['rows']:  # ours equals timm: fp32 to rounding, AMP as close as timm's
        assert row['status'] == 'ok' and row['passed'] and row['ours_finite'] and row['timm_finite'], row
        if row['dtype'] == 'float32':
            assert max(row['ours_max_abs_err']) < 1e-4
    compiled, *not_compiled = sections['speed_compile']['rows']  # the smoke compiles once
    for row in sections['speed']['rows'] + [compiled]:
        assert row['status'] == 'ok', row
        assert row['ours_img_s'] > 0 and row['timm_img_s'] > 0
        assert row['ratio'] == pytest.approx(row['ours_img_s'] / row['timm_img_s'])
    assert compiled['compile_s'] > 0 and "backend 'eager'" in compiled['note']
    assert all(r['status'] == 'skipped' and 'the smoke compiles 1 row' in r['note'] for r in not_compiled)
    # CPU: the training steps ran, CUDA memory statistics do not exist
    assert {r['status'] for r in sections['memory']['rows']} == {'n/a'}
    models = {r['id']: r for r in sections['models']['rows']}
    assert models['upernet_t']['status'] == 'ok' and models['upernet_t']['anchor_gb'] == gpu_check.UPERNET_ZOO_GB
    assert models['upernet_t']['optim_wrapper'] == 'OptimWrapper (float32)'  # no AmpOptimWrapper on CPU
    assert models['mask_rcnn_t']['status'] == 'ok'  # mmcv's CPU ops are compiled here
    assert all(r['s_per_step'] > 0 for r in models.values())


@pytest.mark.parametrize('section', gpu_check.SECTIONS)
def test_validator_raises_on_a_dropped_row(smoke, section):
    broken = copy.deepcopy(smoke)
    dropped = broken['sections'][section]['rows'].pop(1)
    with pytest.raises(GpuCheckResultError, match=f'lacks rows .*{dropped["id"]}'):
        validate(broken)


def test_validator_raises_on_bad_results(smoke):
    broken = copy.deepcopy(smoke)
    del broken['sections']['memory']
    with pytest.raises(GpuCheckResultError, match="section 'memory' is missing"):
        validate(broken)
    broken = copy.deepcopy(smoke)
    broken['sections']['speed']['rows'][0]['ours_img_s'] = 'fast'
    with pytest.raises(GpuCheckResultError, match='ours_img_s'):
        validate(broken)
    broken = copy.deepcopy(smoke)
    broken['sections']['speed']['rows'][0]['channels_last'] = 1
    with pytest.raises(GpuCheckResultError, match='channels_last'):
        validate(broken)
    broken = copy.deepcopy(smoke)
    broken['sections']['speed']['rows'][0]['ratio'] = None  # an 'ok' row without its figure
    with pytest.raises(GpuCheckResultError, match='has no'):
        validate(broken)
    broken = copy.deepcopy(smoke)
    broken['sections']['models']['rows'][0].update(status='skipped', note='')
    with pytest.raises(GpuCheckResultError, match='without a note'):
        validate(broken)
    broken = copy.deepcopy(smoke)
    broken['sections']['models']['rows'].append(copy.deepcopy(broken['sections']['models']['rows'][0]))
    with pytest.raises(GpuCheckResultError, match='twice'):
        validate(broken)


def test_markdown_has_a_line_per_row(smoke):
    text = gpu_check.markdown(smoke)
    table_rows = [line for line in text.splitlines() if line.startswith('| ') and not line.startswith('| model |')
                  and not line.startswith('| step |') and not line.startswith('| impl |')]
    assert len(table_rows) == sum(len(ids) for ids in expected_rows().values())
    assert '4.23' in text  # the zoo's UperNet figure beside ours


def test_time_limit_skips_rows_and_says_so():
    result = gpu_check.run('cpu', smoke=True, time_limit=0, log=lambda msg: None)
    validate(result)
    for section in gpu_check.SECTIONS:
        rows = result['sections'][section]['rows']
        assert {r['status'] for r in rows} == {'skipped'}, section
        assert all('time limit' in r['note'] for r in rows)


def test_a_failing_section_is_recorded_and_the_run_goes_on(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError('CUDA error: out of memory')
    monkeypatch.setitem(gpu_check.SECTION_FUNCTIONS, 'memory', broken)
    result = gpu_check.run('cpu', smoke=True, time_limit=0, log=lambda msg: None)
    validate(result)
    memory = result['sections']['memory']
    assert memory['status'] == 'error' and 'out of memory' in memory['error']
    assert [r['id'] for r in memory['rows']] == expected_rows()['memory']
    assert all(r['status'] == 'error' and 'out of memory' in r['note'] for r in memory['rows'])
    assert result['sections']['models']['status'] == 'ok'  # the sections after it ran


def test_budget_skip_names_the_budget():
    clock = gpu_check._Clock(budget_s=0.0, deadline=float('inf'))
    assert 'time budget (0 s for this section' in clock.over(1.0)
    assert gpu_check._Clock(budget_s=10.0, deadline=float('inf')).over(1.0) is None


def test_mmcv_ops_status_here():
    ok, note = gpu_check.mmcv_ops(torch.device('cpu'))
    assert ok and 'ops compiled' in note
    ok, note = gpu_check.mmcv_ops(torch.device('cuda'))  # this mmcv is built without CUDA
    assert not ok and 'no CUDA ops' in note


def test_missing_mmcv_ops_get_a_placeholder_that_raises_when_called(monkeypatch):
    import mmcv
    from mmcv.utils import ext_loader
    monkeypatch.setitem(sys.modules, 'mmcv._ext', None)  # `from mmcv import _ext` raises ImportError
    monkeypatch.setattr(mmcv, '_ext', None, raising=False)
    monkeypatch.delattr(mmcv, '_ext')
    ok, note = gpu_check.mmcv_ops(torch.device('cuda'))
    assert not ok and 'no compiled ops' in note
    ext = ext_loader.load_ext('_ext', ['roi_align_forward', 'nms'])  # what every mmcv.ops module does on import
    assert isinstance(ext, gpu_check._MissingExt)
    with pytest.raises(gpu_check.MissingMmcvOp, match='mmcv op roi_align_forward is not compiled'):
        ext.roi_align_forward(torch.zeros(1))
    ok, note = gpu_check.mmcv_ops(torch.device('cpu'))  # the placeholder stays: still no ops
    assert not ok


def test_cli_writes_json_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / 'check.json'
    gpu_check.cli(['--device', 'cpu', '--smoke', '--sections', 'correctness', '--out', str(out)])
    written = json.loads(out.read_text())
    assert [r['id'] for r in written['sections']['correctness']['rows']] == expected_rows()['correctness']
    printed = capsys.readouterr().out
    assert '| v2 | large | float16 |' in printed and str(out) in printed


def test_cuda_device_without_cuda_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(RuntimeError, match='--device cpu --smoke'):
        gpu_check.run('cuda')
