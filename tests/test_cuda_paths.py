"""CUDA code paths. Checked without a GPU: the CPU kernels step aside for non-CPU tensors, with_cp under autocast
gives the gradients of no checkpointing, cudnn.benchmark is left alone, and the mixed-precision optimizer-wrapper
snippets of docs/gpu.md merge into their recipes and build. Checked on a GPU (the ``on_cuda`` tests, skipped without
one; ``bash tools/gpu_check.sh run`` runs them on the device machine): ours with timm's weights equals timm in fp32
and under autocast bf16 / fp16, the plain ops on CUDA equal the CPU kernels, with_cp under fp16 autocast."""
import copy
import os
import re
from unittest import mock

import pytest
import torch

import convnext_backbone.convnext as convnext_module
from convnext_backbone import ConvNeXt, cpu_kernels
from convnext_backbone.convnext import Block
from convnext_backbone.tools import benchmark
from helpers import DEEP, ROOT, randomize_

ON_CUDA = pytest.param('cuda', id='on_cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                      reason='no CUDA device here'))
DEVICES = [pytest.param('cpu', id='on_cpu'), ON_CUDA]


def _reports_cuda():
    """Make every tensor report device 'cuda' (the data stays on the CPU): what the dispatch sees on a GPU."""
    return mock.patch.object(torch.Tensor, 'device', property(lambda self: torch.device('cuda', 0)))


# --- (a) the CPU kernels step aside on CUDA ----------------------------------------------------------------

def test_kernels_apply_to_a_cpu_tensor_and_not_to_a_cuda_one():
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    assert cpu_kernels.applies(x)  # the gate is open for this tensor on CPU ...
    with _reports_cuda():
        assert x.device.type == 'cuda'
        assert not cpu_kernels.applies(x)  # ... and closed when the same tensor is on CUDA


def test_kernels_do_not_apply_to_a_meta_tensor():
    x = torch.empty(2, 8, 6, 6, device='meta').contiguous(memory_format=torch.channels_last)
    assert type(x) is torch.Tensor and x.dtype == torch.float32  # every other condition holds
    assert not cpu_kernels.applies(x)


def test_a_block_on_cuda_runs_the_plain_ops(monkeypatch):
    block = Block(8).eval()
    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = block(x)  # the fused kernels
    calls = []
    monkeypatch.setattr(cpu_kernels, 'block_forward', lambda *args: calls.append(args) or expected)
    with torch.no_grad():
        block(x)
    assert len(calls) == 1  # on CPU the block dispatches to the kernels
    with torch.no_grad(), _reports_cuda():
        out = block(x)
    assert len(calls) == 1  # on "CUDA" it did not
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# --- (b) with_cp under autocast ----------------------------------------------------------------------------

def _grads(model, x, dtype):
    torch.manual_seed(3)  # the same drop-path masks for both models
    with torch.autocast(x.device.type, dtype=dtype):
        loss = sum((o.float() ** 2).mean() for o in model(x))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('device,dtype', [pytest.param('cpu', torch.bfloat16, id='on_cpu-bf16'),
                                          pytest.param(*ON_CUDA.values, torch.float16, id='on_cuda-fp16',
                                                       marks=ON_CUDA.marks)])
def test_with_cp_under_autocast_gives_the_same_grads(monkeypatch, device, dtype):
    torch.manual_seed(0)
    plain = ConvNeXt(DEEP, drop_path_rate=0.3, layer_scale_init_value=1.0).train()
    checkpointed = ConvNeXt(DEEP, drop_path_rate=0.3, layer_scale_init_value=1.0, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    for model in (plain, checkpointed):  # a frozen stem: stage 0's first block gets an input without grad
        model.downsample_layers[0].requires_grad_(False)
        model.to(device)
    reentrant = []
    real = convnext_module.cp.checkpoint
    monkeypatch.setattr(convnext_module.cp, 'checkpoint',
                        lambda fn, x, use_reentrant: reentrant.append(use_reentrant) or real(
                            fn, x, use_reentrant=use_reentrant))
    x = torch.randn(2, 3, 32, 32, device=device)
    expected = _grads(plain, x, dtype)
    assert reentrant == []
    got = _grads(checkpointed, x, dtype)
    # both kinds (the first block's input has no grad); the last stage is not checkpointed
    assert reentrant == [False] + [True] * (sum(DEEP['depths'][:3]) - 1)
    assert got.keys() == expected.keys() and len(got) == sum(p.requires_grad for p in plain.parameters())
    for name in expected:  # the recomputation runs under the same autocast state: same low-precision rounding
        torch.testing.assert_close(got[name], expected[name], rtol=1e-2, atol=1e-4, msg=name)


# --- (b2) numerics on the device: ours vs timm, the plain ops vs the CPU kernels ------------------------------

@pytest.mark.parametrize('v2', [False, True], ids=['v1', 'v2'])
@pytest.mark.parametrize('device', DEVICES)
def test_ours_with_timms_weights_matches_timm_in_fp32_and_under_autocast(device, v2):
    """The check's correctness measurement (``benchmark.compare_with_timm``) with non-trivial weights everywhere
    (norm affines, layer scale, GRN): fp32 (TF32 off) within 1e-4; under autocast bf16 / fp16 ours finite, also on
    an input x1000 (whose squares overflow fp16: our norms compute in fp32), and no further off than timm's."""
    ours, reference = (m.to(device) for m in benchmark.timm_pair(DEEP, v2, init=randomize_))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(device)
    for scale in (1.0, benchmark.LARGE_INPUT_SCALE):
        for dtype in benchmark.DTYPES:
            if not benchmark.autocast_takes(device, dtype):
                assert device == 'cpu' and dtype == 'float16', f'autocast on {device} lacks {dtype}'
                continue  # torch < 2.2: CPU autocast takes bfloat16 only
            row = benchmark.compare_with_timm(ours, reference, x * scale, dtype)
            assert row['passed'] and row['ours_finite'], (scale, dtype, row)
            if dtype == 'float32':
                assert max(row['ours_max_abs_err']) < 1e-4, row


@pytest.mark.parametrize('device', [ON_CUDA])
def test_the_plain_ops_on_cuda_equal_the_cpu_kernels(device):
    """The same model and input: the CPU kernels (fused MLP, depthwise weight gradient) against the plain ops that
    run on CUDA (float32, TF32 off): outputs and every gradient."""
    model = randomize_(ConvNeXt(DEEP, layer_scale_init_value=1.0)).train()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    def step(model, x):
        outs = model(x.contiguous(memory_format=torch.channels_last))
        sum((o ** 2).mean() for o in outs).backward()
        return [o.detach().cpu() for o in outs], {n: p.grad.cpu() for n, p in model.named_parameters()}
    calls = []
    real = cpu_kernels.block_forward
    with mock.patch.object(cpu_kernels, 'block_forward', lambda *a: calls.append(1) or real(*a)):
        outs, grads = step(model, x)
        assert len(calls) == sum(DEEP['depths'])  # the kernels ran on CPU ...
        with benchmark.exact_float32():
            cuda_outs, cuda_grads = step(copy.deepcopy(model).to(device), x.to(device))
        assert len(calls) == sum(DEEP['depths'])  # ... and not on CUDA
    torch.testing.assert_close(cuda_outs, outs, rtol=1e-4, atol=1e-4)
    assert cuda_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(cuda_grads[name], grads[name], rtol=1e-4, atol=1e-4, msg=name)


# --- (c) cudnn.benchmark is left to the user ------------------------------------------------------------

@pytest.mark.parametrize('value', [False, True])
def test_building_and_running_the_model_leaves_cudnn_benchmark_alone(value, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', value)
    model = ConvNeXt(DEEP, with_cp=True)
    model.init_weights()
    loss = sum(o.mean() for o in model(torch.randn(1, 3, 32, 32)))
    loss.backward()
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 32, 32))
    assert torch.backends.cudnn.benchmark is value


def test_neither_the_package_nor_the_configs_set_cudnn_benchmark():
    setter = re.compile(r'cudnn\.benchmark\s*=(?!=)|setattr\([^)]*cudnn[^)]*benchmark'
                        r'|cudnn_benchmark\s*=\s*(True|False)')
    offenders = []
    for top in ('convnext_backbone', 'configs', 'tools'):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith('.py'):
                    path = os.path.join(folder, name)
                    offenders += [f'{path}: {m.group(0)}' for m in setter.finditer(open(path, encoding='utf-8').read())]
    assert offenders == []
    assert setter.search('torch.backends.cudnn.benchmark = True')  # the pattern finds what it looks for


# --- (d) the mixed-precision snippets of docs/gpu.md --------------------------------------------------

def _snippets():
    text = open(os.path.join(ROOT, 'docs', 'gpu.md'), encoding='utf-8').read()
    return re.findall(r'<!-- snippet: (\S+) -->\n```python\n(.*?)```', text, flags=re.S)


def test_docs_have_fp16_and_bf16_snippets_for_both_recipes():
    found = {(config.split('/')[1], 'bfloat16' in code) for config, code in _snippets()}
    assert found == {('detection', False), ('detection', True), ('segmentation', False), ('segmentation', True)}


@pytest.mark.parametrize('config,code', _snippets(), ids=lambda v: v if v.endswith('.py') else v.strip()[-24:])
def test_docs_snippet_merges_into_its_recipe_and_builds(tmp_path, config, code):
    from mmengine.optim import AmpOptimWrapper, build_optim_wrapper

    from convnext_backbone.tools.common import build_model_from_config, dummy_train_batch, load_config
    user_config = tmp_path / 'my_config.py'
    user_config.write_text(f'_base_ = [{os.path.join(ROOT, config)!r}]\n{code}')
    cfg = load_config(str(user_config))
    recipe = load_config(os.path.join(ROOT, config))
    bf16 = 'bfloat16' in code
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.get('dtype') == (
        'bfloat16' if bf16 else None)
    for key in ('constructor', 'optimizer', 'paramwise_cfg'):  # the recipe's settings are kept
        assert cfg.optim_wrapper[key] == recipe.optim_wrapper[key]
    benchmark.shrink_model_cfg(cfg, benchmark.SMOKE['arch'])
    if cfg.default_scope == 'mmseg':
        cfg.model.data_preprocessor.size = (64, 64)
    model, scope = build_model_from_config(cfg)
    # mmengine's AmpOptimWrapper refuses to start without a GPU; past that check it builds on CPU
    with mock.patch('mmengine.optim.optimizer.amp_optimizer_wrapper.is_cuda_available', return_value=True):
        optim_wrapper = build_optim_wrapper(model.train(), cfg.optim_wrapper)
    assert type(optim_wrapper) is AmpOptimWrapper
    assert optim_wrapper.cast_dtype == (torch.bfloat16 if bf16 else None)  # None: autocast's fp16 on CUDA
    assert type(optim_wrapper.optimizer).__name__ == 'AdamW' and len(optim_wrapper.optimizer.param_groups) > 2
    if bf16 and scope == 'mmseg':  # CPU autocast takes bf16: one training step through the wrapper
        before = model.backbone.stages[3][0].pwconv1.weight.detach().clone()
        log_vars = model.train_step(dummy_train_batch(scope, (64, 64), 2, num_classes=150), optim_wrapper)
        assert torch.isfinite(log_vars['loss'])
        assert not torch.equal(before, model.backbone.stages[3][0].pwconv1.weight)
