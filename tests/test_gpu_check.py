"""`tools/benchmark.py check` (the device run's measuring half): the CPU smoke writes every row of every section, the
result is valid JSON that the schema accepts, and the validator rejects a result with a row dropped, a section
missing or a field mistyped. The CUDA correctness checks are tests: tests/test_cuda_paths.py."""
import copy
import json
import subprocess
import sys

import pytest
import torch

from convnext_backbone.tools import benchmark
from convnext_backbone.tools.benchmark import CheckResultError, expected_rows, validate


@pytest.fixture(scope='module')
def smoke():
    """One whole smoke run (every section), through JSON as the CLI writes it."""
    return json.loads(json.dumps(benchmark.check('cpu', smoke=True, log=lambda msg: None)))


def test_smoke_writes_every_expected_row(smoke):
    validate(smoke)
    assert set(smoke['sections']) == set(benchmark.SECTIONS)
    for section, ids in expected_rows().items():
        assert [r['id'] for r in smoke['sections'][section]['rows']] == ids
        assert smoke['sections'][section]['status'] == 'ok'
    assert smoke['smoke'] is True and smoke['device'] == 'cpu'
    assert smoke['env']['torch'] == torch.__version__ and smoke['env']['simd'] in ('AVX-512', 'AVX2', 'no AVX2')


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
    assert models['upernet_t']['status'] == 'ok' and models['upernet_t']['anchor_gb'] == benchmark.UPERNET_ZOO_GB
    assert models['upernet_t']['optim_wrapper'] == 'OptimWrapper (float32)'  # no AmpOptimWrapper on CPU
    assert models['mask_rcnn_t']['status'] == 'ok'  # mmcv's CPU ops are compiled here
    assert all(r['s_per_step'] > 0 for r in models.values())


def test_correctness_rows_fail_when_ours_is_off(monkeypatch):
    """The check's correctness figures are checked: ours with one block's bias off by 0.1 fails the fp32 rows."""
    real = benchmark.timm_pair

    def off_pair(*args, **kwargs):
        ours, reference = real(*args, **kwargs)
        with torch.no_grad():
            bias = ours.stages[0][0].pwconv2.bias
            bias.add_(0.1 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(0)))
        return ours, reference
    monkeypatch.setattr(benchmark, 'timm_pair', off_pair)
    rows = benchmark.check('cpu', smoke=True, sections=['correctness'], log=lambda msg: None)['sections'][
        'correctness']['rows']
    fp32 = [r for r in rows if r['dtype'] == 'float32']
    assert fp32 and all(r['status'] == 'ok' and r['passed'] is False and 'FAILED (fp32' in r['note'] for r in fp32)


@pytest.mark.parametrize('section', benchmark.SECTIONS)
def test_validator_raises_on_a_dropped_row(smoke, section):
    broken = copy.deepcopy(smoke)
    dropped = broken['sections'][section]['rows'].pop(1)
    with pytest.raises(CheckResultError, match=f'lacks rows .*{dropped["id"]}'):
        validate(broken)


def test_validator_raises_on_bad_results(smoke):
    broken = copy.deepcopy(smoke)
    del broken['sections']['memory']
    with pytest.raises(CheckResultError, match="section 'memory' is missing"):
        validate(broken)
    broken = copy.deepcopy(smoke)
    broken['sections']['speed']['rows'][0]['ours_img_s'] = 'fast'
    with pytest.raises(CheckResultError, match='ours_img_s'):
        validate(broken)
    broken = copy.deepcopy(smoke)
    broken['sections']['speed']['rows'][0]['channels_last'] = 1
    with pytest.raises(CheckResultError, match='channels_last'):
        validate(broken)
    broken = copy.deepcopy(smoke)
    broken['sections']['speed']['rows'][0]['ratio'] = None  # an 'ok' row without its figure
    with pytest.raises(CheckResultError, match='has no'):
        validate(broken)
    broken = copy.deepcopy(smoke)
    broken['sections']['models']['rows'][0].update(status='skipped', note='')
    with pytest.raises(CheckResultError, match='without a note'):
        validate(broken)
    broken = copy.deepcopy(smoke)
    broken['sections']['models']['rows'].append(copy.deepcopy(broken['sections']['models']['rows'][0]))
    with pytest.raises(CheckResultError, match='twice'):
        validate(broken)


def test_markdown_has_a_line_per_row(smoke):
    text = benchmark.check_markdown(smoke)
    table_rows = [line for line in text.splitlines() if line.startswith('| ') and not line.startswith('| model |')
                  and not line.startswith('| step |') and not line.startswith('| impl |')]
    assert len(table_rows) == sum(len(ids) for ids in expected_rows().values())
    assert '4.23' in text  # the zoo's UperNet figure beside ours


def test_time_limit_skips_rows_and_says_so():
    result = benchmark.check('cpu', smoke=True, time_limit=0, log=lambda msg: None)
    validate(result)
    for section in benchmark.SECTIONS:
        rows = result['sections'][section]['rows']
        assert {r['status'] for r in rows} == {'skipped'}, section
        assert all('time limit' in r['note'] for r in rows)


def test_a_failing_section_is_recorded_and_the_run_goes_on(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError('CUDA error: out of memory')
    monkeypatch.setitem(benchmark.SECTION_FUNCTIONS, 'memory', broken)
    result = benchmark.check('cpu', smoke=True, time_limit=0, log=lambda msg: None)
    validate(result)
    memory = result['sections']['memory']
    assert memory['status'] == 'error' and 'out of memory' in memory['error']
    assert [r['id'] for r in memory['rows']] == expected_rows()['memory']
    assert all(r['status'] == 'error' and 'out of memory' in r['note'] for r in memory['rows'])
    assert result['sections']['models']['status'] == 'ok'  # the sections after it ran


def test_budget_skip_names_the_budget():
    clock = benchmark.Clock(budget_s=0.0, deadline=float('inf'))
    assert 'time budget (0 s for this section' in clock.over(1.0)
    assert benchmark.Clock(budget_s=10.0, deadline=float('inf')).over(1.0) is None


def test_mmcv_ops_status_here():
    assert benchmark.mmcv_ops(torch.device('cpu'))[:2] == (True, True)
    importable, on_device, note = benchmark.mmcv_ops(torch.device('cuda'))  # this mmcv is built without CUDA
    assert importable and not on_device and 'no CUDA ops' in note


def test_without_mmcv_ops_the_model_rows_are_skipped_and_say_why(monkeypatch):
    """mmcv-lite: ``mmcv.ops`` does not import. Nothing is faked: both model rows are skipped, naming the reason."""
    monkeypatch.setitem(sys.modules, 'mmcv.ops', None)  # `from mmcv.ops import ...` raises ImportError
    importable, _, note = benchmark.mmcv_ops(torch.device('cpu'))
    assert not importable and 'has no compiled ops (mmcv.ops does not import' in note
    rows = benchmark.check('cpu', smoke=True, sections=['models'], log=lambda msg: None)['sections']['models']['rows']
    assert [(r['id'], r['status']) for r in rows] == [('upernet_t', 'skipped'), ('mask_rcnn_t', 'skipped')]
    assert "mmseg's models import mmcv.ops" in rows[0]['note'] and "mmdet's models import mmcv.ops" in rows[1]['note']


def test_cli_writes_json_and_markdown(tmp_path):
    """The command line, as tools/gpu_check.sh runs it: JSON and the Markdown tables beside it."""
    out = tmp_path / 'check.json'
    run = subprocess.run([sys.executable, benchmark.config_path('tools/benchmark.py'), 'check', '--device', 'cpu',
                          '--smoke', '--sections', 'correctness', '--out', str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    written = json.loads(out.read_text())
    assert [r['id'] for r in written['sections']['correctness']['rows']] == expected_rows()['correctness']
    markdown = (tmp_path / 'check.md').read_text()
    assert '| v2 | large | float16 |' in markdown and markdown.strip() in run.stdout
    assert f'written: {out}' in run.stdout


def test_cuda_device_without_cuda_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(RuntimeError, match='--device cpu --smoke'):
        benchmark.check('cuda')
