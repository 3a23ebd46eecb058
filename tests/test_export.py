"""Deployable and precision-safe.

- The fused CPU kernels run in eager CPU inference and step aside for every tracer / exporter, per thread.
- V1 and V2 (tiny archs) through torch.jit.trace, the TorchScript ONNX exporter (opset 17, dynamic batch / height /
  width), torch.export.export and the dynamo ONNX exporter; ONNX Runtime equals PyTorch at a second input size.
- tools/export.py end to end on a shrunk UperNet (image -> logits); whole shrunk Mask R-CNN, Cascade Mask R-CNN and
  ConvNeXt-V2 Mask R-CNN (dets / labels / masks) matched one to one with mmdet's predict in stock ONNX Runtime.
- fp16 / bf16: CPU autocast forward and training step, model.half() / .bfloat16() inference, activations that
  overflow the hand-written fp16 LayerNorm and GRN.
"""
import copy
import os
import re
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.utils.flop_counter  # noqa: F401  (not imported by `import torch` on torch 2.1)

from convnext_backbone import ConvNeXt, compat, cpu_kernels
from convnext_backbone.convnext import GRN, LayerNorm2d
from convnext_backbone.tools import export as export_tool
from convnext_backbone.tools.common import build_model_from_config, dummy_batch, load_config
from helpers import ROOT, TINY, official_convnext, randomize_, shrink_detector, shrink_detector_heads
from reference_convnext import OfficialConvNeXt, OfficialGRN, OfficialLayerNorm

NUM_BLOCKS = sum(TINY['depths'])
EXPORT_INPUT = (2, 3, 64, 64)
SECOND_INPUT = (1, 3, 96, 160)  # another batch, height and width: exercises the dynamic shapes


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny models: see conftest.one_thread


def tiny(version: str, **kwargs) -> ConvNeXt:
    """V1 (layer scale) or V2 (GRN, no layer scale), every parameter non-trivial."""
    v2 = version == 'v2'
    return randomize_(ConvNeXt(TINY, use_grn=v2, layer_scale_init_value=0.0 if v2 else 1e-6, **kwargs))


def official(version: str) -> OfficialConvNeXt:
    v2 = version == 'v2'
    return official_convnext(TINY, use_grn=v2, layer_scale_init_value=0.0 if v2 else 1e-6)


@pytest.fixture(scope='module', params=['v1', 'v2'])
def model(request):
    return tiny(request.param).eval()


def inputs(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def max_diff(outputs, expected) -> float:
    assert len(outputs) == len(expected)
    for a, b in zip(outputs, expected):
        assert tuple(a.shape) == tuple(b.shape)
    return max((torch.as_tensor(a) - b).abs().max().item() for a, b in zip(outputs, expected))


def eager(model, x):
    with torch.no_grad():
        return model(x)


# --- the CPU kernels' gate ---------------------------------------------------------------------------------

@pytest.fixture
def fused_calls(monkeypatch):
    """The threads that ran each call of cpu_kernels.block_forward (the fused path) during the test."""
    calls = []
    original = cpu_kernels.block_forward

    def counted(block, x):
        calls.append(threading.get_ident())
        return original(block, x)

    monkeypatch.setattr(cpu_kernels, 'block_forward', counted)
    return calls


@pytest.mark.skipif(not cpu_kernels.ONEDNN, reason='this torch build has no oneDNN fused linear')
def test_fused_kernels_run_in_eager_inference_and_never_while_tracing(model, fused_calls, tmp_path):
    x = inputs(EXPORT_INPUT)
    eager(model, x)
    assert len(fused_calls) == NUM_BLOCKS  # every block took the fused path
    routes = {
        'jit.trace': lambda: torch.jit.trace(model, x, check_trace=False),  # the check would re-run eagerly
        'onnx (TorchScript)': lambda: compat.onnx_export(model, (x,), str(tmp_path / 'm.onnx'),
                                                        opset_version=17),
        'torch.export': lambda: torch.export.export(model, (x,)),
        'fx.symbolic_trace': lambda: torch.fx.symbolic_trace(model),
        'FlopCounterMode (a dispatch mode)': lambda: eager_under(torch.utils.flop_counter.FlopCounterMode(
            display=False), model, x),
        'plain_ops()': lambda: eager_under(cpu_kernels.plain_ops(), model, x),
        'CPU autocast': lambda: eager_under(torch.autocast('cpu', dtype=torch.bfloat16), model, x),
    }
    for route, run in routes.items():
        fused_calls.clear()
        with torch.no_grad():
            run()
        assert not fused_calls, f'{route} ran the fused CPU kernels'


def eager_under(context, model, x):
    with context:
        return model(x)


@pytest.mark.skipif(not cpu_kernels.ONEDNN, reason='this torch build has no oneDNN fused linear')
def test_gate_is_what_keeps_the_kernels_out_of_traces(monkeypatch):
    """Without the tracing check the fused kernels reach the tracer: the graph then holds our custom ops
    (convnext::*), which no exporter or runtime knows. With it, plain aten ops only."""
    model, x = tiny('v1').eval(), inputs(EXPORT_INPUT)
    assert 'convnext::' not in str(torch.jit.trace(model, x).inlined_graph)
    monkeypatch.setattr(cpu_kernels, 'tracing', lambda: False)
    assert 'convnext::' in str(torch.jit.trace(model, x, check_trace=False).inlined_graph)


@pytest.mark.skipif(not cpu_kernels.ONEDNN, reason='this torch build has no oneDNN fused linear')
def test_plain_ops_is_per_thread(fused_calls):
    """A thread inside plain_ops() runs plain ops while another thread, at the same time, keeps the fused path."""
    model, x = tiny('v1').eval(), inputs(EXPORT_INPUT)
    inside, done = threading.Event(), threading.Event()
    worker_ids = []

    def worker():
        worker_ids.append(threading.get_ident())
        with cpu_kernels.plain_ops():
            inside.set()
            done.wait(60)
            eager(model, x)  # still inside plain_ops: no fused calls from this thread

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(60)
    eager(model, x)  # the main thread while the worker is inside plain_ops
    done.set()
    thread.join(60)
    assert fused_calls == [threading.get_ident()] * NUM_BLOCKS
    assert worker_ids[0] not in fused_calls


# --- export routes, V1 and V2 ------------------------------------------------------------------------------

def ort_outputs(path_or_bytes, x):
    session = ort.InferenceSession(path_or_bytes, providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def assert_portable_and_dynamic(path):
    """Standard ONNX ops only (no custom domains), and batch / height / width symbolic in the input."""
    graph = onnx.load(path).graph
    assert {node.domain for node in graph.node} <= {'', 'ai.onnx'}
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]


def test_jit_trace(model):
    traced = torch.jit.trace(model, inputs(EXPORT_INPUT))
    x = inputs(SECOND_INPUT, seed=1)
    assert max_diff(traced(x), eager(model, x)) < 1e-5


def torchscript_onnx(model, path):
    """The TorchScript exporter, opset 17, batch / height / width dynamic in the input and every output."""
    names = [f'out{i}' for i in range(4)]
    compat.onnx_export(model, (inputs(EXPORT_INPUT),), path, opset_version=17, input_names=['image'],
                      output_names=names,
                      dynamic_axes={n: {0: 'batch', 2: f'{n}_h', 3: f'{n}_w'} for n in ['image', *names]})
    assert_portable_and_dynamic(path)


def test_onnx_torchscript_exporter_dynamic_shapes_in_onnxruntime(model, tmp_path):
    path = str(tmp_path / 'convnext.onnx')
    torchscript_onnx(model, path)
    assert onnx.load(path).opset_import[0].version == 17
    for shape in (EXPORT_INPUT, SECOND_INPUT):
        x = inputs(shape, seed=1)
        assert max_diff(ort_outputs(path, x), eager(model, x)) < 1e-4


@pytest.fixture(scope='module')
def exported_program(model):
    dim = torch.export.Dim
    return torch.export.export(model, (inputs(EXPORT_INPUT),), dynamic_shapes={
        'x': {0: dim('batch'), 2: dim('height', min=64), 3: dim('width', min=64)}})


def test_torch_export_dynamic_shapes(model, exported_program):
    x = inputs(SECOND_INPUT, seed=1)
    assert max_diff(exported_program.module()(x), eager(model, x)) < 1e-5
    assert 'mkldnn' not in str(exported_program.graph)


def test_onnx_dynamo_exporter_in_onnxruntime(model, exported_program, tmp_path):
    path = str(tmp_path / 'convnext_dynamo.onnx')
    torch.onnx.export(exported_program, dynamo=True).save(path)
    assert_portable_and_dynamic(path)
    for shape in (EXPORT_INPUT, SECOND_INPUT):
        x = inputs(shape, seed=1)
        assert max_diff(ort_outputs(path, x), eager(model, x)) < 1e-4


@pytest.mark.parametrize('version', ['v1', 'v2'])
def test_output_stride_8_jit_trace_and_onnxruntime(version, tmp_path):
    """Dilated stages (stride-1 downsampling with its asymmetric 'same' zero pad, dilated depthwise convs) trace
    and export with dynamic shapes: equal to eager at a second size."""
    model = tiny(version, output_stride=8).eval()
    traced = torch.jit.trace(model, inputs(EXPORT_INPUT))
    path = str(tmp_path / 'convnext_os8.onnx')
    torchscript_onnx(model, path)
    x = inputs(SECOND_INPUT, seed=1)
    expected = eager(model, x)
    assert [tuple(e.shape[2:]) for e in expected] == [(24, 40), (12, 20), (12, 20), (12, 20)]
    assert max_diff(traced(x), expected) < 1e-5
    assert max_diff(ort_outputs(path, x), expected) < 1e-4


# --- tools/export.py ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('size,out', [((16, 16), 3), ((16, 16), 6), ((7, 10), (3, 4)), ((5, 9), (2, None))])
def test_exportable_adaptive_avg_pool_equals_torch(size, out):
    x = inputs((2, 5, *size))
    assert (export_tool.AdaptiveAvgPool2d(out)(x) - nn.AdaptiveAvgPool2d(out)(x)).abs().max() < 1e-6


def shrunk_config(tmp_path, base, overrides):
    """A config file inheriting a shipped one, with a tiny backbone and narrow heads."""
    path = tmp_path / 'tiny.py'
    path.write_text(f'_base_ = {os.path.join(ROOT, "configs", base)!r}\n_ch = {TINY["channels"]!r}\n'
                    f'model = dict(backbone=dict(arch=dict(_delete_=True, **{TINY!r}), init_cfg=None), {overrides})\n')
    return str(path)


def random_checkpoint(tmp_path, config):
    """A whole-model checkpoint with non-trivial weights (all norms and layer scales off their init)."""
    model, _ = build_model_from_config(load_config(config))
    randomize_(model, seed=3)
    path = str(tmp_path / 'model.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    return path, model


def test_export_timing_takes_turns_as_the_benchmark_does_and_returns_the_last_outputs():
    """export.py times PyTorch and ONNX Runtime with benchmark.interleave: each round starts one further along,
    the warm-up round is dropped, and the outputs handed back are those of the last round."""
    calls = []

    def run(name):
        def call():
            calls.append(name)
            return len(calls)
        return call

    torch_out, ort_out, torch_s, ort_s = export_tool._interleaved(run('torch'), run('ort'), warmup=1, repeat=3)
    assert calls == ['torch', 'ort', 'ort', 'torch', 'torch', 'ort', 'ort', 'torch']
    assert (torch_out, ort_out) == (8, 7) and torch_s >= 0 and ort_s >= 0


def run_export_tool(capsys, *args):
    worst = export_tool.main(list(args))
    out = capsys.readouterr().out
    lines = re.findall(r'input (\d+)x3x(\d+)x(\d+): max abs diff onnxruntime vs pytorch (\S+) .*latency pytorch '
                       r'([\d.]+) ms, onnxruntime ([\d.]+) ms', out)
    return worst, out, lines


def test_export_tool_segmentor_whole_image_to_logits(tmp_path, capsys):
    config = shrunk_config(tmp_path, 'segmentation/upernet_convnext_t_512_160k_ade20k.py',
                           'decode_head=dict(in_channels=_ch, channels=16), '
                           'auxiliary_head=dict(in_channels=_ch[2], channels=8)')
    checkpoint, model = random_checkpoint(tmp_path, config)
    onnx_path = str(tmp_path / 'upernet.onnx')
    worst, out, lines = run_export_tool(capsys, config, checkpoint, '--out', onnx_path, '--shape', '64', '96',
                                        '--dynamic', '--repeat', '1')
    assert worst < 1e-4
    assert [line[:3] for line in lines] == [('1', '64', '96'), ('2', '96', '160')]  # the second, dynamic size
    assert all(float(line[4]) > 0 and float(line[5]) > 0 for line in lines)
    assert 'not exported: auxiliary_head' in out
    assert_portable_and_dynamic(onnx_path)
    # the graph is mmseg's own whole-image inference of the checkpoint's model (preprocessing included)
    batch = dummy_batch('mmseg', (80, 112))
    data = model.data_preprocessor(batch, False)
    with torch.no_grad():
        expected = model.encode_decode(data['inputs'], [dict(img_shape=(80, 112))])
    got, = ort_outputs(onnx_path, batch['inputs'][0][None].float())
    assert got.shape == (1, 150, 80, 112) and np.abs(got - expected.numpy()).max() < 1e-4


# --- whole two-stage detectors: tools/export.py vs mmdet's predict -------------------------------------------

def two_stage_config(tmp_path, base, **rcnn_test_cfg):
    """A shipped detection config shrunk as the detection tests shrink it (SMALL backbone, 16-channel heads, the
    config's own test_cfg: 1000 proposals, 80 classes), with ``rcnn_test_cfg`` overrides and RoI levels mapped
    from a finer scale (8 px, not 56)."""
    cfg = load_config(os.path.join(ROOT, 'configs', 'detection', base))
    shrink_detector(cfg)
    shrink_detector_heads(cfg)
    cfg.model.test_cfg.rcnn.update(rcnn_test_cfg)
    for name in ('bbox_roi_extractor', 'mask_roi_extractor'):  # a 64 px image's RoIs over all four levels
        for extractor in cfg.model.roi_head[name] if isinstance(cfg.model.roi_head[name], list) else [
                cfg.model.roi_head[name]]:
            extractor.finest_scale = 8
    path = str(tmp_path / f'tiny_{base}')
    cfg.dump(path)
    return path


def initialised_checkpoint(tmp_path, config, classifier_scale=1.0):
    """The detector as mmdet initialises it (seeded ``init_weights()``: near-uniform class scores, small box
    deltas), its RoI classifiers (every cascade stage's) scaled by ``classifier_scale``: peaked class scores, so
    that the config's own score threshold (0.05) keeps a few confident detections, as a trained detector's would."""
    torch.manual_seed(0)
    model, _ = build_model_from_config(load_config(config))
    model.init_weights()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if 'roi_head' in name and 'fc_cls' in name:
                parameter.mul_(classifier_scale)
    path = str(tmp_path / 'model.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    return path, model


DETECTION_LINE = (r'input 1x3x(\d+)x(\d+): detections pytorch (\d+), onnxruntime (\d+), matched (\d+) '
                  r'\(max box diff (\S+) px, max score diff (\S+)(?:, min mask IoU (\S+))?\)')


@pytest.mark.parametrize('base,weights', [
    ('mask_rcnn_convnext_t_3x.py', 'random'),        # score_thr 0: every one of the 100 slots filled
    ('cascade_convnext_t_3x.py', 'random'),
    ('mask_rcnn_convnextv2_b_3x.py', 'confident'),   # the config's threshold, a few confident detections
    ('cascade_convnext_t_3x.py', 'confident'),
])
def test_export_tool_two_stage_detector_equals_mmdet_predict(base, weights, tmp_path, capsys):
    """The whole detector in one file of standard ONNX ops: ONNX Runtime's dets / labels / masks match mmdet's own
    predict of the checkpoint one to one (label, box within 0.5 px, score within 1e-4, mask IoU >= 0.98), at the
    export size and at a second size that is not a multiple of the padding divisor."""
    config = two_stage_config(tmp_path, base, **({'score_thr': 0.0} if weights == 'random' else {}))
    checkpoint, model = initialised_checkpoint(tmp_path, config, 1.0 if weights == "random" else 30.0)
    onnx_path = str(tmp_path / 'detector.onnx')
    export_tool.main([config, checkpoint, '--out', onnx_path, '--shape', '64', '96', '--dynamic', '--repeat', '1'])
    out = capsys.readouterr().out
    lines = re.findall(DETECTION_LINE, out)
    assert [line[:2] for line in lines] == [('64', '96'), ('104', '72')], out
    for _, _, pytorch, onnxruntime, matched, box, score, mask_iou in lines:
        assert int(pytorch) == int(onnxruntime) == int(matched)
        assert int(pytorch) == 100 if weights == 'random' else int(pytorch) > 0
        assert float(box) <= 0.5 and float(score) <= 1e-4 and float(mask_iou) >= 0.98
    graph = onnx.load(onnx_path).graph
    assert {node.domain for node in graph.node} <= {'', 'ai.onnx'}  # stock onnxruntime, no custom-op library
    assert {'RoiAlign', 'NonMaxSuppression', 'TopK', 'GridSample'} <= {node.op_type for node in graph.node}
    assert [i.name for i in graph.input] == ['input'] and [o.name for o in graph.output] == ['dets', 'labels', 'masks']
    assert [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 'height', 'width']
    # the test's own look at a third image: box layout, label range, masks at the input's size
    image = torch.rand(1, 3, 80, 112, generator=torch.Generator().manual_seed(5)) * 255
    dets, labels, masks = ort_outputs(onnx_path, image)
    boxes, scores, expected_labels, expected_masks = export_tool.mmdet_predict(model, image)
    assert dets.shape == (1, len(scores), 5) and labels.shape == (1, len(scores))
    assert masks.shape == (1, len(scores), 80, 112)
    assert np.abs(np.sort(dets[0, :, 4])[::-1] - np.sort(scores)[::-1]).max() < 1e-4
    assert scores.min() > 0.05 and scores.max() > 0.5 if weights == 'confident' else len(scores) == 100
    assert sorted(labels[0].tolist()) == sorted(expected_labels.tolist())
    assert (dets[0, :, [0, 2]] <= 112).all() and (dets[0, :, [1, 3]] <= 80).all() and (dets[0, :, :4] >= 0).all()


def test_export_tool_no_paste_gives_roi_mask_probabilities(tmp_path):
    config = two_stage_config(tmp_path, 'mask_rcnn_convnext_t_3x.py', score_thr=0.0, max_per_img=20)
    cfg = load_config(config)
    cfg.model.test_cfg.rpn.update(nms_pre=100, max_per_img=100)
    graph, _ = export_tool.export_graph(cfg, paste_masks=False)
    path = str(tmp_path / 'unpasted.onnx')
    export_tool.export_onnx(graph, torch.rand(1, 3, 64, 64) * 255, path, dynamic=True)
    image = torch.rand(1, 3, 96, 64) * 255
    dets, labels, masks = ort_outputs(path, image)
    assert dets.shape == (1, 20, 5) and masks.shape == (1, 20, 28, 28)
    with torch.no_grad():
        expected = graph(image)
    assert max_diff([dets, masks], [expected[0], expected[2]]) < 1e-3  # pixels, probabilities
    assert (labels == expected[1].numpy()).all()


def test_two_stage_detector_without_detections(tmp_path):
    """A threshold nothing passes: empty outputs of the right ranks in ONNX Runtime, as mmdet's predict."""
    cfg = load_config(two_stage_config(tmp_path, 'cascade_convnext_t_3x.py', score_thr=1.0))
    cfg.model.test_cfg.rpn.update(nms_pre=100, max_per_img=100)
    graph, _ = export_tool.export_graph(cfg)
    path = str(tmp_path / 'empty.onnx')
    export_tool.export_onnx(graph, torch.rand(1, 3, 64, 64) * 255, path, dynamic=True)
    image = torch.rand(1, 3, 96, 64) * 255
    assert [o.shape for o in ort_outputs(path, image)] == [(1, 0, 5), (1, 0), (1, 0, 96, 64)]
    boxes, _, _, masks = export_tool.mmdet_predict(graph.detector, image)
    assert boxes.shape == (0, 4) and masks.shape == (0, 96, 64)


def test_roi_align_and_nms_export_as_mmcv_computes_them(tmp_path):
    """The two mmcv ops against ONNX Runtime's standard ops: RoIAlign (aligned, adaptive sampling) on boxes
    inside, across and outside the map, tiny and large; NMS on clustered boxes with IoUs around the threshold."""
    from convnext_backbone.tools import export_detector as ed
    generator = torch.Generator().manual_seed(0)
    feature = torch.randn(1, 8, 13, 17, generator=generator)
    corner = torch.rand(60, 2, generator=generator) * 80 - 8
    boxes = torch.cat([corner, corner + torch.rand(60, 2, generator=generator) ** 3 * 60 + 0.01], 1)

    class Ops(nn.Module):
        def forward(self, feature, boxes, scores):
            align = ed._RoIAlign.apply(feature, boxes, torch.zeros_like(boxes[:, 0], dtype=torch.int64), (7, 7),
                                       0.25, 0, True)
            return align, ed.nms(boxes, scores, 0.5, 25)

    scores = torch.rand(60, generator=generator)
    path = str(tmp_path / 'ops.onnx')
    compat.onnx_export(Ops(), (feature, boxes, scores), path, opset_version=export_tool.OPSET,
                      input_names=['f', 'b', 's'], dynamic_axes={'b': {0: 'n'}, 's': {0: 'n'}})
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    kept = []
    for n in (60, 0):
        align, keep = session.run(None, {'f': feature.numpy(), 'b': boxes[:n].numpy(), 's': scores[:n].numpy()})
        expected_align, expected_keep = Ops()(feature, boxes[:n], scores[:n])
        assert align.shape == (n, 8, 7, 7) and np.abs(align - expected_align.numpy()).max(initial=0) < 1e-5
        assert keep.tolist() == expected_keep.tolist()
        kept.append(len(keep))
    assert 0 < kept[0] <= 25 and kept[1] == 0


def test_unsupported_test_cfg_is_named(tmp_path):
    config = two_stage_config(tmp_path, 'mask_rcnn_convnext_t_3x.py', nms=dict(type='soft_nms', iou_threshold=0.5))
    with pytest.raises(ValueError, match='test_cfg.rcnn.nms.*soft_nms'):
        export_tool.export_graph(load_config(config))


def test_detection_check_fails_on_a_moved_box_a_label_a_mask_or_a_missing_detection():
    """The tool's comparison is what makes it fail: each kind of difference is reported."""
    rng = np.random.default_rng(0)
    boxes = np.array([[2, 3, 30, 40], [10, 10, 50, 60], [5, 5, 20, 25]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    labels = np.array([1, 2, 1])
    masks = np.zeros((3, 64, 64), bool)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
        mask[y1:y2, x1:x2] = True
    expected = (boxes, scores, labels, masks)

    def got(boxes=boxes, scores=scores, labels=labels, masks=masks):
        order = rng.permutation(len(scores))  # any order
        dets = np.concatenate([boxes, scores[:, None]], 1)[order]
        return dets[None], labels[order][None], masks[order][None].astype(np.float32)

    assert export_tool.match_detections(expected, got())['failures'] == []
    moved = boxes.copy()
    moved[1, 2] += 0.6
    assert 'no match' in export_tool.match_detections(expected, got(boxes=moved))['failures'][0]
    assert export_tool.match_detections(expected, got(labels=np.array([1, 2, 0])))['failures']
    assert export_tool.match_detections(expected, got(scores=scores + np.float32(2e-4)))['failures']
    eroded = masks.copy()
    eroded[0, 3:10] = False
    assert 'mask IoU' in export_tool.match_detections(expected, got(masks=eroded))['failures'][0]
    report = export_tool.match_detections(expected, tuple(x[:, :2] for x in got()))
    assert report['matched'] == 2 and len(report['failures']) == 1


# --- mixed precision ---------------------------------------------------------------------------------------

def loss_and_grads(model, x):
    model.zero_grad()
    outputs = model(x)
    loss = sum((out.float() ** 2).mean() for out in outputs)
    loss.backward()
    return outputs, loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('version', ['v1', 'v2'])
def test_cpu_autocast_forward_and_training_step_close_to_float32(version, dtype):
    """Under autocast the convolutions and linears run in low precision, the norms in float32; outputs, loss and
    gradients stay finite and near float32, and an optimizer step keeps the weights finite."""
    model = tiny(version).train()
    x = inputs((2, 3, 64, 64))
    outs32, loss32, grads32 = loss_and_grads(model, x)
    with torch.autocast('cpu', dtype=dtype):
        outs, loss, grads = loss_and_grads(model, x)
    tolerance = 1e-2 if dtype == torch.float16 else 5e-2  # bf16 keeps 8 mantissa bits
    assert max_diff([o.float() for o in outs], outs32) < tolerance * max(o.abs().max() for o in outs32)
    assert torch.isfinite(loss) and abs(loss - loss32) < tolerance * loss32
    for name, g32 in grads32.items():
        g = grads[name]
        assert torch.isfinite(g).all(), name
        assert (g - g32).norm() <= tolerance * g32.norm() + 1e-6, name
    torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('version', ['v1', 'v2'])
def test_half_and_bfloat16_models_infer(version, dtype):
    model = tiny(version).eval()
    x = inputs((2, 3, 64, 64))
    expected = eager(model, x)
    outputs = eager(copy.deepcopy(model).to(dtype), x.to(dtype))
    assert all(out.dtype == dtype and torch.isfinite(out).all() for out in outputs)
    tolerance = 1e-2 if dtype == torch.float16 else 5e-2
    assert max_diff([o.float() for o in outputs], expected) < tolerance * max(o.abs().max() for o in expected)


def test_large_activations_overflow_the_handwritten_fp16_layernorm_not_ours():
    """Activations of a few thousand: the official channels-first LayerNorm's (x - mean)^2 overflows fp16 (its
    output collapses to the bias); ours computes in float32 and matches the float32 model."""
    x = inputs((2, 3, 64, 64)) * 2000
    ours = tiny('v1').eval()
    ref = official('v1').eval()
    ref.load_state_dict(ours.state_dict())
    expected = eager(ours, x)
    scale = max(o.abs().max() for o in expected)
    outputs = eager(copy.deepcopy(ours).half(), x.half())
    assert all(torch.isfinite(o).all() for o in outputs)
    assert max_diff([o.float() for o in outputs], expected) < 2e-2 * scale
    naive = eager(copy.deepcopy(ref).half(), x.half())
    assert not all(torch.isfinite(o).all() for o in naive) or max_diff([o.float() for o in naive], expected) > scale / 2

    norm, naive_norm = LayerNorm2d(16, eps=1e-6), OfficialLayerNorm(16, eps=1e-6, data_format='channels_first')
    y = inputs((1, 16, 8, 8)) * 1000
    assert (copy.deepcopy(norm).half()(y.half()).float() - norm(y)).abs().max() < 1e-2
    assert (copy.deepcopy(naive_norm).half()(y.half()).float() - naive_norm(y)).abs().max() > 0.5


@pytest.mark.parametrize('dtype,autocast', [(torch.float16, False), (torch.float16, True), (torch.bfloat16, False)])
def test_grn_stays_finite_where_the_naive_fp16_norm_overflows(dtype, autocast):
    """A 64x64 map of values ~2000: the spatial L2 norm (~1.3e5) exceeds fp16's 65504. The official GRN in fp16
    divides inf by inf (NaN); ours takes the norm in float32 and equals the float32 GRN to fp16 rounding."""
    grn, naive = GRN(32), OfficialGRN(32)
    randomize_(grn)
    naive.load_state_dict(grn.state_dict())
    x = (1000 + 1000 * torch.rand(2, 64, 64, 32, generator=torch.Generator().manual_seed(0))).to(dtype)
    expected = grn(x.float())
    context = torch.autocast('cpu', dtype=dtype) if autocast else torch.no_grad()
    with context:
        got = (grn if autocast else copy.deepcopy(grn).to(dtype))(x)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert ((got.float() - expected).abs() / expected.abs()).max() < 1e-2
    if dtype == torch.float16:
        assert torch.isinf(torch.norm(x, p=2, dim=(1, 2))).all()  # the naive norm overflows...
        assert torch.isnan(naive.half()(x)).all()  # ...and poisons the whole output


@pytest.mark.parametrize('opset', [11, 17])  # mmdeploy's default opset, ours
def test_grn_exports_with_its_norm_in_float32_in_fp16_onnx(opset, tmp_path):
    """mmdeploy#2669 (ConvNeXt-V2 Mask R-CNN): nothing in our V2 block stops an export. In an fp16 graph our GRN's
    spatial L2 norm is a float32 ReduceL2 (a Cast to float32 in front of it), so a runtime that computes in the
    declared types (TensorRT fp16, onnx's reference evaluator) stays finite where the official GRN's fp16
    ReduceL2 overflows (norm ~1e5 > 65504: NaN). ONNX Runtime's CPU runs both (it computes fp16 reductions in
    float32) and, for the whole fp16 V2 backbone, stays within fp16 rounding of float32 PyTorch."""
    from onnx.reference import ReferenceEvaluator
    grn = randomize_(GRN(32))
    naive = OfficialGRN(32)
    naive.load_state_dict(grn.state_dict())
    x = (1000 + 1000 * torch.rand(1, 64, 64, 32, generator=torch.Generator().manual_seed(0))).half()
    expected = eager(grn, x.float())
    for module, finite in ((grn, True), (naive, False)):
        path = str(tmp_path / 'grn.onnx')
        compat.onnx_export(copy.deepcopy(module).half().eval(), (x,), path, opset_version=opset)
        model = onnx.load(path)
        producer = {out: node for node in model.graph.node for out in node.output}
        reduce_l2 = next(node for node in model.graph.node if node.op_type == 'ReduceL2')
        cast = producer.get(reduce_l2.input[0])
        assert (cast is not None and cast.op_type == 'Cast' and cast.attribute[0].i == onnx.TensorProto.FLOAT) is finite
        got = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})[0]
        assert bool(np.isfinite(got).all()) is finite
        if finite:
            assert (np.abs(got.astype(np.float32) - expected.numpy()) / np.abs(expected.numpy())).max() < 1e-2
    backbone = tiny('v2').eval()
    path = str(tmp_path / 'v2_fp16.onnx')
    image = inputs((1, 3, 64, 96))
    compat.onnx_export(copy.deepcopy(backbone).half(), (image.half(),), path, opset_version=opset)
    outputs, expected = ort_outputs(path, image.half()), eager(backbone, image)
    assert all(o.dtype == np.float16 for o in outputs)
    assert max_diff([o.astype(np.float32) for o in outputs], expected) < 1e-2 * max(e.abs().max() for e in expected)
