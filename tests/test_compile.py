"""torch.compile: the CPU kernels are custom ops that dynamo records as calls and inductor calls (no graph breaks),
numerics equal eager; exporters still get plain ops; the compile configs train and infer like eager. Tiny models:
compiling is slow on small CPUs.

Plain ``torch.compile`` (default options): the first size compiles static, a second one recompiles with dynamic
shapes and that graph serves every later size. torch 2.14's inductor fails on dynamic training graphs that save
permuted 4-D views for backward (pytorch/pytorch#185510); the model keeps such views out of compiled graphs, and
the tests here fail without that. The compile configs: test_compile_configs.py."""
import pytest
import torch
import torch._dynamo
from torch.profiler import ProfilerActivity, profile

from convnext_backbone import ConvNeXt
from convnext_backbone import cpu_kernels
from convnext_backbone.cpu_kernels import ONEDNN, plain_ops
from helpers import TWO_STAGES, assert_close, outputs_and_grads, randomize_

pytestmark = pytest.mark.skipif(not ONEDNN, reason='this torch build has no oneDNN fused linear (no kernels)')

BLOCKS = sum(TWO_STAGES['depths'])
DYNAMIC_SIZES = ((32, 48), (48, 32))  # see _dynamic_input


def _model(**kwargs):
    torch.manual_seed(0)
    # drop path 1e-9 is active (the unfused-residual path in every block but the first) yet keeps every path
    return randomize_(ConvNeXt(TWO_STAGES, out_indices=(0, 1), drop_path_rate=1e-9, **kwargs))


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


@pytest.fixture(scope='module')
def training():
    """A tiny backbone, its eager training step and the compiled one's (second call: after compiling)."""
    model = _model().train()
    x = torch.randn(2, 3, 32, 32)
    eager = outputs_and_grads(model, x)
    compiled = _compile(model)
    outputs_and_grads(compiled, x)
    result, calls = _op_calls(lambda: outputs_and_grads(compiled, x))
    return dict(model=model, compiled=compiled, x=x, eager=eager, result=result, calls=calls)


def test_compiled_training_calls_the_kernels(training):
    """Forward and backward kernels are inductor-called custom ops; traced into plain ops they would be absent."""
    assert training['calls'] == {'convnext::dwconv': BLOCKS, 'convnext::mlp': BLOCKS,
                                 'convnext::dwconv_weight_grad': BLOCKS, 'convnext::mlp_backward': BLOCKS}


def test_compiled_training_equals_eager(training):
    (outs_e, grads_e), (outs_c, grads_c) = training['eager'], training['result']
    for a, b in zip(outs_c, outs_e):
        assert_close(a, b, 'output')
    assert grads_c.keys() == grads_e.keys()
    for name, g in grads_e.items():
        assert_close(grads_c[name], g, name)


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
    outs_e, grads_e = outputs_and_grads(model, x)
    outputs_and_grads(compiled, x)  # may (re)compile: outside the profiler, tracing would count fake calls
    (outs_c, grads_c), counted = _op_calls(lambda: outputs_and_grads(compiled, x))
    if calls is not None:
        assert counted == calls, size
    for a, b in zip(outs_c, outs_e):
        assert_close(a, b, f'output at {size}')
    assert grads_c.keys() == grads_e.keys()
    for name, g in grads_e.items():
        assert_close(grads_c[name], g, f'{name} at {size}')
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
                assert_close(a, b, 'output')


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
        assert_close(a, b, 'export output')
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
    assert 'convnext::' not in str(traced.inlined_graph)
    assert 'aten::linear' in str(traced.inlined_graph)


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
