"""Export a detector or segmentor to ONNX, then check it in ONNX Runtime against PyTorch.

    python tools/export.py CONFIG [CHECKPOINT] --out model.onnx [--shape H W] [--dynamic] [--no-paste]
    python tools/export.py configs/segmentation/upernet_convnext_t_512_160k_ade20k.py ckpt.pth --out upernet.onnx
    python tools/export.py configs/detection/mask_rcnn_convnext_t_3x.py ckpt.pth --out mask_rcnn.onnx --dynamic

What goes into the graph (the TorchScript ONNX exporter, opset 17, standard ONNX ops only):

- an mmdet two-stage detector whole (Mask R-CNN, Faster R-CNN, Cascade (Mask) R-CNN;
  :mod:`.export_detector`): input ``input`` (1 x 3 x H x W, the resized image) -> ``dets`` (1 x N x 5: x1, y1,
  x2, y2 in the input's pixels, score), ``labels`` (1 x N), ``masks`` (1 x N x H x W mask probabilities; with
  ``--no-paste`` the RoI masks, 1 x N x 28 x 28), mmdeploy's names; the config's ``test_cfg`` (NMS thresholds,
  ``score_thr``, ``max_per_img``) baked in. Batch 1;
- an mmseg segmentor whole: image -> per-class logits at the image's size (the data preprocessor's channel
  flip and mean/std normalisation, backbone, neck, decode head, the bilinear resize of mmseg's whole-image
  inference; argmax is left to the caller). Sliding-window inference (``test_cfg.mode='slide'``) is a loop
  over crops of this graph, done outside it;
- another mmdet detector: its feature extractor (preprocessor normalisation, backbone, neck) and its dense
  heads' raw outputs (e.g. RetinaNet's, FCOS's per-level scores and box deltas), as mmdet's 'tensor' mode
  computes them (the tool says what it left out);
- with ``--backbone-only``: normalisation + backbone only (multi-scale features).

The image input (``image``, ``input`` for two-stage detectors) is float32, N x 3 x H x W, pixel values 0-255 in
the channel order the config's loading pipeline produces (BGR for mmcv's loaders); a two-stage detector pads it
in the graph, the others take it padded as the data preprocessor would pad it. Without a CHECKPOINT the weights
are random (for checking exportability and speed).

After export the file runs in ONNX Runtime on a random image of ``--shape`` (with ``--dynamic`` also on a second
size; batch 2 except for two-stage detectors). A two-stage detector's detections are matched one to one with
mmdet's ``predict`` of the same model (label equal, box within 0.5 px, score within 1e-4, mask IoU >= 0.98);
for the others the tool prints the largest absolute difference of every output to PyTorch's eager model. Both
print the median latency of PyTorch and ONNX Runtime (interleaved runs, ``--repeat``) and exit non-zero when
the check fails (``--tolerance`` for the differences).
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import compat
from .benchmark import interleave
from .common import build_model_from_config, load_config, require
from .export_detector import (INPUT, TwoStageDetectorGraph, is_two_stage, match_detections,  # noqa: F401
                              mmdet_predict)

OPSET = 17


class _Normalize(nn.Module):
    """The data preprocessor's channel flip and mean/std normalisation of a float 0-255 image batch."""

    def __init__(self, preprocessor):
        super().__init__()
        self.flip = bool(getattr(preprocessor, 'channel_conversion', getattr(preprocessor, '_channel_conversion',
                                                                              False)))
        enabled = getattr(preprocessor, '_enable_normalize', False)
        self.register_buffer('mean', preprocessor.mean.view(1, -1, 1, 1).clone() if enabled else None)
        self.register_buffer('std', preprocessor.std.view(1, -1, 1, 1).clone() if enabled else None)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.flip:
            image = image.flip(1)
        if self.mean is not None:
            image = (image - self.mean) / self.std
        return image


class AdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, ``A_h @ x @ A_w^T``, with averaging matrices built from
    the input size: the same windows (rows ``floor(i H / o)`` to ``ceil((i + 1) H / o)``) and values, in ops
    that the TorchScript ONNX exporter takes for any sizes and dynamic shapes (it only exports an adaptive
    pool whose output size divides the input size, e.g. not UperNet's 1/2/3/6-cell pyramid pooling on a
    16x16 map)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    @staticmethod
    def _averaging(size, out: int, x: torch.Tensor) -> torch.Tensor:
        i = torch.arange(out, device=x.device)
        start = torch.div(i * size, out, rounding_mode='floor')
        end = torch.div((i + 1) * size + out - 1, out, rounding_mode='floor')
        j = torch.arange(size, device=x.device)
        window = (j[None] >= start[:, None]) & (j[None] < end[:, None])
        return window.to(x.dtype) / (end - start)[:, None].to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        out_h, out_w = (s if o is None else o for s, o in zip((height, width), self.output_size))
        return self._averaging(height, out_h, x) @ x @ self._averaging(width, out_w, x).transpose(0, 1)


def exportable(graph: nn.Module) -> nn.Module:
    """A copy of ``graph`` with the modules the TorchScript exporter cannot take replaced by equivalents."""
    graph = copy.deepcopy(graph)
    for name, module in list(graph.named_modules()):
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size not in (1, (1, 1)):
            parent, _, attr = name.rpartition('.')
            setattr(graph.get_submodule(parent), attr, AdaptiveAvgPool2d(module.output_size))
    return graph


class SegmentorGraph(nn.Module):
    """image -> logits (N x classes x H x W), mmseg's whole-image inference without the argmax."""

    def __init__(self, segmentor):
        super().__init__()
        self.normalize = _Normalize(segmentor.data_preprocessor)
        self.segmentor = segmentor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.segmentor.extract_feat(self.normalize(image))
        logits = self.segmentor.decode_head.forward(features)
        return F.interpolate(logits, size=image.shape[2:], mode='bilinear',
                             align_corners=self.segmentor.decode_head.align_corners)


class DetectorGraph(nn.Module):
    """image -> the neck's features, then each dense head's raw outputs (flattened: output, then level)."""

    def __init__(self, detector, heads):
        super().__init__()
        self.normalize = _Normalize(detector.data_preprocessor)
        self.detector = detector
        self.heads = list(heads)

    def forward(self, image: torch.Tensor):
        features = self.detector.extract_feat(self.normalize(image))
        outputs = list(features)
        for name in self.heads:
            for per_level in getattr(self.detector, name)(features):
                outputs.extend(per_level)
        return tuple(outputs)


class BackboneGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.normalize = _Normalize(model.data_preprocessor)
        self.backbone = model.backbone

    def forward(self, image: torch.Tensor):
        return tuple(self.backbone(self.normalize(image)))


def dense_heads(detector) -> list[str]:
    """The detector's heads that mmdet's 'tensor' mode runs as plain convolutions on the features."""
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
    return [name for name in ('rpn_head', 'bbox_head')
            if isinstance(getattr(detector, name, None), BaseDenseHead)]


def export_graph(cfg, checkpoint: str | None = None, backbone_only: bool = False, paste_masks: bool = True):
    """The exportable graph of a config's model (eval mode) and what of the model it leaves out."""
    model, scope = build_model_from_config(cfg)
    if checkpoint:
        from mmengine.runner import load_checkpoint
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    if backbone_only:
        return BackboneGraph(model).eval(), ['everything after the backbone (--backbone-only)']
    if scope == 'mmseg':
        left_out = ['auxiliary_head (training only)'] if getattr(model, 'with_auxiliary_head', False) else []
        return SegmentorGraph(model).eval(), left_out
    if is_two_stage(model):
        return TwoStageDetectorGraph(model, paste_masks).eval(), []
    heads = dense_heads(model)
    left_out = ['the dense heads\' box decoding and NMS (an mmcv op)'] if heads else []
    if getattr(model, 'roi_head', None) is not None:
        left_out.append('roi_head (RoIAlign: an mmcv op)')
    if left_out:
        left_out.append('plain ONNX export writes mmcv ops as custom ops; mmdeploy rewrites them (see docs/deploy.md)')
    return DetectorGraph(model, heads).eval(), left_out


def _output_names(graph, sample) -> list[str]:
    if isinstance(graph, DetectorGraph):
        with torch.no_grad():
            features = graph.detector.extract_feat(graph.normalize(sample))
        names = [f'feat_{i}' for i in range(len(features))]
        for head in graph.heads:
            with torch.no_grad():
                outputs = getattr(graph.detector, head)(features)
            names += [f'{head}_{k}_{level}' for k, per_level in enumerate(outputs) for level in range(len(per_level))]
        return names
    with torch.no_grad():
        outputs = graph(sample)
    return ['logits'] if isinstance(outputs, torch.Tensor) else [f'backbone_{i}' for i in range(len(outputs))]


def export_onnx(graph, sample, path: str, dynamic: bool = False) -> list[str]:
    if isinstance(graph, TwoStageDetectorGraph):
        return _export_two_stage(graph, sample, path, dynamic)
    names = _output_names(graph, sample)
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {'image': {0: 'batch', 2: 'height', 3: 'width'}}
        dynamic_axes.update({name: {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'} for name in names})
    with torch.no_grad():
        compat.onnx_export(exportable(graph), (sample,), path, opset_version=OPSET, input_names=['image'],
                          output_names=names, dynamic_axes=dynamic_axes)
    return names


def _export_two_stage(graph, sample, path: str, dynamic: bool) -> list[str]:
    """Input ``input`` (batch 1, height and width always dynamic: the detector's point is to take any resized
    image), outputs ``dets``, ``labels``[, ``masks``] (N detections: dynamic). ``dynamic`` is not needed."""
    if sample.shape[0] != 1:
        raise ValueError(f'a whole two-stage detector exports for batch 1, not {sample.shape[0]}: '
                         'run the file once per image.')
    names = graph.output_names()
    mask_axes = {1: 'num_dets', 2: 'height', 3: 'width'} if graph.paste_masks else {1: 'num_dets'}
    axes = {INPUT: {2: 'height', 3: 'width'}, 'dets': {1: 'num_dets'}, 'labels': {1: 'num_dets'}, 'masks': mask_axes}
    with torch.no_grad():
        compat.onnx_export(graph, (sample,), path, opset_version=OPSET, input_names=[INPUT],
                          output_names=names, dynamic_axes={name: axes[name] for name in [INPUT, *names]})
    return names


def compare_detector(graph, session, image: torch.Tensor, repeat: int = 3, warmup: int = 1):
    """ONNX Runtime's detections matched one to one with mmdet's ``predict`` of the same model on ``image``
    (``export_detector.match_detections``), and both median latencies (s), interleaved."""
    feed = {INPUT: image.numpy()}
    expected, got, torch_time, ort_time = _interleaved(lambda: mmdet_predict(graph.detector, image),
                                                       lambda: session.run(None, feed), warmup, repeat)
    if not graph.paste_masks:  # the RoI masks cannot be compared with mmdet's pasted ones
        expected = (*expected[:3], None)
    return match_detections(expected, got), torch_time, ort_time


def _interleaved(run_torch, run_ort, warmup: int, repeat: int):
    """PyTorch and ONNX Runtime in turn (``benchmark.interleave``), ``warmup + repeat`` rounds: their last outputs
    and median seconds after the warm-up."""
    last = {}
    times = interleave({'torch': lambda: last.__setitem__('torch', run_torch()),
                        'ort': lambda: last.__setitem__('ort', run_ort())}, warmup, repeat)
    return last['torch'], last['ort'], times['torch']['median'], times['ort']['median']


def _flat(outputs):
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def compare(graph, session, image: torch.Tensor, repeat: int = 3, warmup: int = 1):
    """Largest absolute difference per output, and PyTorch / ONNX Runtime median latencies (s), interleaved."""
    feed = {'image': image.numpy()}
    with torch.no_grad():
        expected, got, torch_time, ort_time = _interleaved(lambda: _flat(graph(image)),
                                                           lambda: session.run(None, feed), warmup, repeat)
    if len(got) != len(expected):
        raise RuntimeError(f'ONNX Runtime returned {len(got)} outputs, PyTorch {len(expected)}.')
    diffs = []
    for a, b in zip(expected, got):
        if tuple(a.shape) != b.shape:
            raise RuntimeError(f'ONNX Runtime output shape {b.shape} differs from PyTorch {tuple(a.shape)}.')
        diffs.append((a - torch.from_numpy(b)).abs().max().item())
    return diffs, torch_time, ort_time


def main(argv=None):
    parser = argparse.ArgumentParser(prog='tools/export.py', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?', help='weights to load (default: random weights)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', nargs=2, type=int, metavar=('H', 'W'),
                        help='sample image size (default: the config crop size for segmentors, 800 1216 else)')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width, checked at a second size (two-stage detectors: '
                             'height and width are always dynamic; this adds the check)')
    parser.add_argument('--backbone-only', action='store_true', help='export normalisation + backbone only')
    parser.add_argument('--no-paste', action='store_true',
                        help='two-stage detectors: output the RoI mask probabilities (1 x N x M x M), not pasted')
    parser.add_argument('--repeat', type=int, default=3, help='timed runs of each (after one warm-up)')
    parser.add_argument('--threads', type=int, default=None,
                        help='intra-op threads of both PyTorch and ONNX Runtime (default: torch.get_num_threads())')
    parser.add_argument('--tolerance', type=float, default=1e-3,
                        help='largest allowed absolute difference to PyTorch')
    args = parser.parse_args(argv)
    require('onnx', 'tools/export.py (the ONNX exporter)')
    if args.shape and min(args.shape) < 32:
        parser.error(f'--shape {args.shape[0]} {args.shape[1]}: height and width must be >= 32 (ConvNeXt '
                     'downsamples by 32)')

    cfg = load_config(args.config)
    graph, left_out = export_graph(cfg, args.checkpoint, args.backbone_only, paste_masks=not args.no_paste)
    size = tuple(args.shape) if args.shape else default_shape(cfg)
    torch.manual_seed(0)
    sample = torch.rand(1, 3, *size) * 255
    start = time.perf_counter()
    names = export_onnx(graph, sample, args.out, args.dynamic)
    two_stage = isinstance(graph, TwoStageDetectorGraph)
    shape = ('1 x 3 x H x W (dynamic)' if two_stage else 'N x 3 x H x W (dynamic)' if args.dynamic
             else 'x'.join(map(str, sample.shape)))
    print(f'exported {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s:'
          f' {INPUT if two_stage else "image"} {shape} -> {", ".join(names)}')
    if left_out:
        print('not exported: ' + '; '.join(left_out))

    session = ort_session(args.out, args.threads)
    if isinstance(graph, TwoStageDetectorGraph):
        return check_detector(graph, session, sample, args)
    images = [sample]
    if args.dynamic:
        images.append(torch.rand(2, 3, size[0] + 32, size[1] + 64) * 255)
    worst = 0.0
    for image in images:
        diffs, torch_s, ort_s = compare(graph, session, image, repeat=args.repeat)
        worst = max(worst, *diffs)
        print(f'input {"x".join(map(str, image.shape))}: max abs diff onnxruntime vs pytorch {max(diffs):.3g} '
              f'(per output: {", ".join(f"{d:.2g}" for d in diffs)}); latency pytorch {torch_s * 1000:.1f} ms, '
              f'onnxruntime {ort_s * 1000:.1f} ms (median of {args.repeat}, interleaved)')
    if worst > args.tolerance:
        raise SystemExit(f'ONNX Runtime differs from PyTorch by {worst:.3g} > --tolerance {args.tolerance}')
    return worst


def check_detector(graph, session, sample, args):
    """Prints the one-to-one comparison with mmdet's predict (and the second, odd size with --dynamic); fails
    when a detection or a mask is out of tolerance."""
    images = [sample]
    if args.dynamic:  # another height and width, neither a multiple of the padding divisor
        images.append(torch.rand(1, 3, sample.shape[2] + 40, sample.shape[3] - 24) * 255)
    failures = []
    for image in images:
        report, torch_s, ort_s = compare_detector(graph, session, image, repeat=args.repeat)
        failures += report['failures']
        masks = '' if report['min_mask_iou'] is None else f', min mask IoU {report["min_mask_iou"]:.4f}'
        print(f'input {"x".join(map(str, image.shape))}: detections pytorch {report["pytorch"]}, onnxruntime '
              f'{report["onnxruntime"]}, matched {report["matched"]} (max box diff {report["max_box_diff"]:.3g} px, '
              f'max score diff {report["max_score_diff"]:.3g}{masks}); latency pytorch {torch_s * 1000:.1f} ms, '
              f'onnxruntime {ort_s * 1000:.1f} ms (median of {args.repeat}, interleaved)')
    if failures:
        raise SystemExit('ONNX Runtime differs from mmdet\'s predict (tolerances: box 0.5 px, score 1e-4, mask '
                         'IoU 0.98):\n' + '\n'.join(failures))
    return 0.0


def ort_session(path: str, threads: int | None = None):
    """A CPU ONNX Runtime session with as many intra-op threads as PyTorch uses (or ``threads`` for both).
    Its threads do not spin-wait after a run: spinning ones would steal the cores from PyTorch's run that
    follows in the interleaved timing."""
    ort = require('onnxruntime', 'tools/export.py (checking the exported file)')
    if threads:
        torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def default_shape(cfg) -> tuple[int, int]:
    if cfg.get('default_scope') == 'mmseg':
        crop = cfg.model.get('test_cfg', {}).get('crop_size') or cfg.model.data_preprocessor.get('size')
        return tuple(crop) if crop else (512, 512)
    return (800, 1216)
