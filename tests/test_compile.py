"""torch.compile: the CPU kernels are custom ops that dynamo records as calls and inductor calls (no graph breaks),
numerics equal eager; exporters still get plain ops; the compile configs train and infer like eager. Tiny models:
compiling is slow on small CPUs.

Plain ``torch.compile`` (default options): the first size compiles static, a second one recompiles with dynamic
shapes and that graph serves every later size. torch 2.14's inductor fails on dynamic training graphs that save
permuted 4-D views for backward (pytorch/pytorch#185510); the model keeps such views out of compiled graphs, and
the tests here fail without that."""
import copy
import os
import types

import pytest
import torch
import torch._dynamo
from torch.profiler import ProfilerActivity, profile

from convnext_backbone import ConvNeXt
from convnext_backbone import cpu_kernels
from convnext_backbone.cpu_kernels import ONEDNN, plain_ops
from reference_convnext import randomize_

pytestmark = pytest.mark.skipif(not ONEDNN, reason='this torch build has no oneDNN fused linear (no kernels)')

TINY = dict(depths=[1, 1], channels=[8, 16])
BLOCKS = sum(TINY['depths'])
DYNAMIC_SIZES = ((32, 48), (48, 32))  # see _dynamic_input
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(**kwargs):
    torch.manual_seed(0)
    # drop path 1e-9 is active (the unfused-residual path in every block but the first) yet keeps every path
    return randomize_(ConvNeXt(TINY, out_indices=(0, 1), drop_path_rate=1e-9, **kwargs))


def _step(model, x):
    """One forward + backward; the outputs and gradients (by parameter name, without torch.compile's prefix)."""
    outs = model(x)
    loss = sum((o * (i + 1)).mean() for i, o in enumerate(outs))
    model.zero_grad()
    loss.backward()
    return ([o.detach() for o in outs],
            {n.removeprefix('_orig_mod.'): p.grad.clone() for n, p in model.named_parameters()})


def _compile(model, **kwargs):
    """``torch.compile(model)`` after forgetting earlier compilations: every model here runs the same
    ``forward`` code, and past dynamo's recompile limit new ones would silently run eager."""
    torch._dynamo.reset()
    return torch.compile(model, **kwargs)


def _op_calls(fn):
    """Run ``fn``; how often each ``convnext::`` custom op was called, counted by the profiler (compiled code
    calls them through the dispatcher like eager code)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    return result, {e.key: e.count for e in prof.key_averages() if e.key.startswith('convnext::')}


def _assert_close(a, b, what):
    assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item()), what


@pytest.fixture(scope='module')
def training():
    """A tiny backbone, its eager training step and the compiled one's (second call: after compiling)."""
    model = _model().train()
    x = torch.randn(2, 3, 32, 32)
    eager = _step(model, x)
    compiled = _compile(model)
    _step(compiled, x)
    result, calls = _op_calls(lambda: _step(compiled, x))
    return dict(model=model, compiled=compiled, x=x, eager=eager, result=result, calls=calls)


def test_compiled_training_calls_the_kernels(training):
    """Forward and backward kernels are inductor-called custom ops; traced into plain ops they would be absent."""
    assert training['calls'] == {'convnext::dwconv': BLOCKS, 'convnext::mlp': BLOCKS,
                                 'convnext::dwconv_weight_grad': BLOCKS, 'convnext::mlp_backward': BLOCKS}


def test_compiled_training_equals_eager(training):
    (outs_e, grads_e), (outs_c, grads_c) = training['eager'], training['result']
    for a, b in zip(outs_c, outs_e):
        _assert_close(a, b, 'output')
    assert grads_c.keys() == grads_e.keys()
    for name, g in grads_e.items():
        _assert_close(grads_c[name], g, name)


def test_no_graph_breaks_training_and_inference(training):
    model, x = training['model'], training['x']
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    model.eval()
    try:
        with torch.no_grad():
            explained = torch._dynamo.explain(model)(x)
    finally:
        model.train()
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def _assert_trains_like_eager(model, compiled, size, calls=None, batch=1, dynamic=False):
    """``compiled`` trains at ``size`` (after a warm-up call that may compile) equal to eager ``model``; with
    ``calls`` its custom-op calls are those; ``dynamic``: height and width dynamic from the first call. Returns
    the calls."""
    x = _dynamic_input(batch, size) if dynamic else torch.randn(batch, 3, *size)
    outs_e, grads_e = _step(model, x)
    _step(compiled, x)  # may (re)compile: outside the profiler, tracing would count fake calls
    (outs_c, grads_c), counted = _op_calls(lambda: _step(compiled, x))
    if calls is not None:
        assert counted == calls, size
    for a, b in zip(outs_c, outs_e):
        _assert_close(a, b, f'output at {size}')
    assert grads_c.keys() == grads_e.keys()
    for name, g in grads_e.items():
        _assert_close(grads_c[name], g, f'{name} at {size}')
    return counted


def test_compiled_training_new_input_sizes(training):
    """A second size recompiles with dynamic shapes (no inductor error); it calls the kernels and equals eager."""
    model, compiled = training['model'], training['compiled']
    _assert_trains_like_eager(model, compiled, (40, 56), training['calls'])


def _dynamic_input(batch, size):
    """An input whose height and width dynamo treats as dynamic from the first call: the graph that default
    options recompile at a second size (static first graphs: test_compiled_training_*), compiled once. The
    sizes here are (32, 48) then (48, 32): unequal sides (dynamo gives equal sizes one symbol), and the same
    number of stage-2 pixels (inductor specialises the training graph on it): the second size runs the first
    size's dynamic graph."""
    x = torch.randn(batch, 3, *size)
    torch._dynamo.maybe_mark_dynamic(x, (2, 3))  # as automatic dynamic shapes: specialising stays allowed
    return x


def test_compiled_plain_ops_v2_trains_at_new_sizes():
    """The plain-op blocks (what other devices, dtypes and memory formats run) with ConvNeXt-V2's GRN: dynamic
    height and width from the first size on, no custom op called, equal to eager at two sizes."""
    model = _model(use_grn=True, layer_scale_init_value=0.).train()
    compiled = _compile(model)
    with plain_ops():
        for size in DYNAMIC_SIZES:
            _assert_trains_like_eager(model, compiled, size, calls={}, batch=2, dynamic=True)


@pytest.mark.parametrize('options', [None, {'freezing': True}], ids=['default', 'freezing'])
def test_compiled_inference_calls_the_kernels_and_equals_eager(options):
    """Default options: static, then dynamic shapes from the second size on; freezing: dynamic height and width
    from the first size on (the static first graph is the default options' path)."""
    model = _model().eval()
    compiled = _compile(model, options=options)
    with torch.no_grad():
        for size in ((32, 32), (40, 56)) if options is None else DYNAMIC_SIZES:
            x = torch.randn(1, 3, *size) if options is None else _dynamic_input(1, size)
            compiled(x)  # compiles (outside the profiler: tracing would count fake calls)
            outs, calls = _op_calls(lambda: compiled(x))
            # the whole MLP (with the residual add) per block; the depthwise conv is inductor's (no grad)
            assert calls == {'convnext::mlp_inference': BLOCKS}
            for a, b in zip(outs, model(x)):
                _assert_close(a, b, 'output')


def test_compiled_with_cp_v2_trains_equal_to_eager():
    """Activation checkpointing and ConvNeXt-V2's GRN (convnext::linear under autograd), at two sizes."""
    model = _model(with_cp=True, use_grn=True, layer_scale_init_value=0.).train()
    compiled = _compile(model)
    for size in DYNAMIC_SIZES:
        calls = _assert_trains_like_eager(model, compiled, size, batch=2, dynamic=True)
        # inductor's partitioner recomputes what checkpointing discarded where it chooses (eager: every block
        # twice); at least one forward per block, all through the kernels
        assert calls.keys() == {'convnext::dwconv', 'convnext::dwconv_weight_grad', 'convnext::linear'}, calls
        assert calls['convnext::dwconv_weight_grad'] == BLOCKS and calls['convnext::dwconv'] >= BLOCKS
        assert calls['convnext::linear'] >= 2 * BLOCKS


def test_exporters_get_plain_ops():
    """Deployment graphs (torch.export, jit.trace) hold portable aten ops, never our custom ops."""
    model = _model().eval()
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == 'call_function'}
    assert 'aten.linear.default' in targets or 'aten.addmm.default' in targets or 'aten.mm.default' in targets
    assert not any('convnext' in t for t in targets), targets
    for a, b in zip(exported.module()(x), model(x)):
        _assert_close(a, b, 'export output')
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
    assert 'convnext::' not in str(traced.inlined_graph)
    assert 'aten::linear' in str(traced.inlined_graph)


_eager_runs = {}  # the uncompiled model's run, by model config: the two UperNet configs share one


def _train_and_infer(model, batch, optim_cfg):
    """One training step (drop path drawn from torch's generator, seeded), then features and predictions."""
    from mmengine.optim import build_optim_wrapper
    # inductor draws drop-path masks with its own generator unless it falls back to torch's
    with torch._inductor.config.patch(fallback_random=True):
        model.train()
        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(optim_cfg))
        torch.manual_seed(1)
        log_vars = model.train_step(copy.deepcopy(batch), optim_wrapper)
        model.eval()
        with torch.no_grad():
            data = model.data_preprocessor(copy.deepcopy(batch), False)
            feats = model.extract_feat(data['inputs'])
            preds = model.test_step(copy.deepcopy(batch))
    return log_vars, feats, preds


@pytest.mark.parametrize('name', ['mask_rcnn_convnext_t_3x_compile', 'upernet_convnext_t_512_160k_ade20k_compile',
                                  'upernet_convnext_t_512_160k_ade20k_compile_train_step'])
def test_compile_configs_train_and_infer_like_eager(name):
    """The configs' CompileBackboneHook compiles the backbone in place, or mmengine's ``compile=True`` (the
    Runner's own code) the whole ``train_step``; a training step (losses, updated weights) and inference equal
    the same model uncompiled."""
    from mmengine.runner import Runner
    import test_detection
    import test_segmentation
    from convnext_backbone.tools.common import adapt_to_machine, load_config, revert_sync_bn
    from mmengine.logging import MMLogger
    from mmengine.registry import HOOKS, MODELS, init_default_scope
    cfg = load_config(os.path.join(ROOT, 'configs', 'compile', name + '.py'))
    if cfg.default_scope == 'mmdet':
        test_detection._shrink(cfg)
        # one block a stage (as test_segmentation's): compiling, not depth, is what this test pays for
        cfg.model.backbone.arch = dict(test_segmentation.TINY)
        cfg.model.neck.in_channels = test_segmentation.TINY['channels']
        make_batch = test_detection._random_batch
    else:
        test_segmentation.shrink(cfg)
        make_batch = test_segmentation.random_batch
    adapt_to_machine(cfg)
    revert_sync_bn(cfg.model)
    init_default_scope(cfg.default_scope)
    key = repr(cfg.model.to_dict())
    if key not in _eager_runs:
        torch.manual_seed(0)
        batch = make_batch()
        eager = MODELS.build(cfg.model)
        eager.init_weights()
        initial = copy.deepcopy(eager)
        with torch.no_grad():
            data = eager.data_preprocessor(copy.deepcopy(batch), False)
            feats_before = eager.eval().extract_feat(data['inputs'])
        _eager_runs[key] = (batch, initial, feats_before, _train_and_infer(eager, batch, cfg.optim_wrapper))
    batch, initial, feats_before, (logs_e, feats_e, preds_e) = _eager_runs[key]
    compiled = copy.deepcopy(initial)
    torch._dynamo.reset()  # see _compile
    if cfg.get('compile'):
        Runner._maybe_compile(types.SimpleNamespace(cfg=cfg, model=compiled, logger=MMLogger.get_current_instance()),
                              'train_step')
        assert hasattr(compiled.train_step, '_torchdynamo_orig_callable')
    else:
        for hook in cfg.custom_hooks:
            HOOKS.build(hook).before_run(types.SimpleNamespace(model=compiled))
        assert compiled.backbone._compiled_call_impl is not None and initial.backbone._compiled_call_impl is None
    with torch.no_grad():
        data = compiled.data_preprocessor(copy.deepcopy(batch), False)
        for a, b in zip(compiled.eval().extract_feat(data['inputs']), feats_before):
            _assert_close(a, b, 'features before the step')
    logs_c, feats_c, preds_c = _train_and_infer(compiled, batch, cfg.optim_wrapper)
    assert logs_e.keys() == logs_c.keys()
    for key, value in logs_e.items():
        assert torch.isfinite(torch.as_tensor(value)).all(), key
        _assert_close(torch.as_tensor(logs_c[key]), torch.as_tensor(value), key)
    for a, b in zip(feats_c, feats_e):
        # AdamW's first step moves every weight by about +-lr whatever its gradient's size: float rounding that
        # flips a near-zero gradient's sign moves the weight 2 lr the other way (lr 1e-4 here)
        assert torch.isfinite(a).all()
        assert (a - b).abs().max() <= 2e-3 * max(1.0, b.abs().max().item()), 'features after the step'
    if cfg.default_scope == 'mmseg':
        for a, b in zip(preds_c, preds_e):
            _assert_close(a.seg_logits.data, b.seg_logits.data, 'seg logits')
    else:
        for a in preds_c:
            assert torch.isfinite(a.pred_instances.bboxes).all() and torch.isfinite(a.pred_instances.scores).all()


def test_custom_ops_pass_opcheck(monkeypatch):
    """Schemas, fake implementations (shapes and strides dynamo traces with) and autograd registrations agree
    with the real kernels (torch.library.opcheck)."""
    torch.manual_seed(0)
    x = torch.randn(2 * 5 * 3, 8, requires_grad=True)  # the (N*H*W, C) rows of a 2 x 8 x 5 x 3 map
    w1, b1 = torch.randn(32, 8, requires_grad=True), torch.randn(32, requires_grad=True)
    w2, b2 = torch.randn(8, 32, requires_grad=True), torch.randn(8, requires_grad=True)
    # the residual: the block's input, NCHW in channels-last memory; with it the ops return that form
    other = torch.randn(2, 8, 5, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    other32 = torch.randn(2, 32, 5, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    ops = torch.ops.convnext
    cases = [(ops.linear, (x, w1, b1)), (ops.linear, (x.detach(), w1.detach(), b1.detach(), None, True)),
             (ops.linear, (x, w1, b1, other32)),
             (ops.mlp, (x, w1, b1, w2, b2, other, True)), (ops.mlp, (x, w1, b1, w2, b2, None, False)),
             (ops.mlp_backward, (torch.randn(30, 8), x.detach(), w1.detach(), torch.randn(30, 32), w2.detach(),
                                 torch.empty(0), [True, False, True, True, False])),
             (ops.dwconv, (torch.randn(2, 3, 6, 5).contiguous(memory_format=torch.channels_last).requires_grad_(),
                           torch.randn(3, 1, 7, 7, requires_grad=True), torch.randn(3, requires_grad=True))),
             (ops.dwconv_weight_grad, (torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 5), 7)),
             (ops.dwconv, (torch.randn(2, 3, 6, 5).contiguous(memory_format=torch.channels_last).requires_grad_(),
                           torch.randn(3, 1, 3, 3, requires_grad=True), None, 2)),  # dilated (output stride 8)
             (ops.dwconv_weight_grad, (torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 5), 3, 2)),
             # inference only (no autograd): 30 rows in chunks of 8 (monkeypatched below), the last one partial
             (ops.mlp_inference, (x.detach(), w1.detach(), b1.detach(), w2.detach(), b2.detach(), other.detach())),
             (ops.mlp_inference, (x.detach(), w1.detach(), b1.detach(), w2.detach(), b2.detach(), None))]
    monkeypatch.setattr(cpu_kernels, 'MLP_CHUNK_ROWS', 8)
    for op, args in cases:
        torch.library.opcheck(op.default, args)
    with pytest.raises(RuntimeError, match='inference-only'):  # linear + GELU keeps no pre-activation
        ops.linear(x, w1, b1, None, True).sum().backward()
