"""Parameters and FLOPs (multiply-accumulates, the paper's convention) of a ConvNeXt backbone or a whole model.

    python tools/get_flops.py --arch tiny --size 224                      # backbone, 224x224
    python tools/get_flops.py --arch tiny --size 512 --output-stride 8    # dilated backbone (DeepLab-style)
    python tools/get_flops.py --config configs/detection/mask_rcnn_convnext_t_3x.py --size 800 1280
    python tools/get_flops.py --config configs/segmentation/upernet_convnext_t_512_160k_ade20k.py --size 512 2048

--size is H W (the paper's "1280x800" is W x H: --size 800 1280). Counted with torch's FlopCounterMode at
dispatch level: convolutions, matrix multiplies and attention, as fvcore does; one MAC = one FLOP of the
paper. Detectors run in mmdet's 'tensor' mode (RPN proposals, box head on them, mask head on the first 100),
segmentors in whole-image 'tensor' mode, as mmdet's / mmseg's get_flops do. Cascade RoI heads follow the
same convention (box heads of every stage on all proposals, mask heads on the first 100), which is what the
paper's numbers were counted with (mmdet 2's forward_dummy); mmdet 3's CascadeRoIHead 'tensor' mode runs the
mask heads on every proposal instead, which would triple the count (Cascade Mask R-CNN T: 2171G, not 741G).
A model whose forward has no value-dependent shapes (segmentors, single-stage heads) is counted on fake tensors
(shapes only: the same count in a second, not a minute's CPU forward at 512x2048); a two-stage detector runs for
real, because NMS decides how many proposals its RoI heads see, and so does a model with compiled extension ops
(mmcv's deformable convolutions read their inputs' data).
"""
import argparse
import os

import torch
# FakeTensorMode has no public import path on torch 2.1-2.14 (torch's own docs import it from here); counting on
# shapes alone needs it; test_tools.test_whole_model_flops_match_the_paper counts a segmentor through it (pinned)
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from convnext_backbone import ConvNeXt
from convnext_backbone.cpu_kernels import plain_ops
from convnext_backbone.tools.common import build_model_from_config, dummy_batch, load_config


def count_macs(fn) -> float:
    """MACs of everything ``fn()`` runs (FlopCounterMode counts 2 FLOPs per multiply-accumulate)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), plain_ops(), counter:
        fn()
    return counter.get_total_flops() / 2


def backbone_complexity(arch, size, **kwargs):
    model = ConvNeXt(arch, **kwargs).eval()
    x = torch.zeros(1, 3, *size)
    params = sum(p.numel() for p in model.parameters())
    return count_macs(lambda: model(x)), params


def _cascade_forward(model, inputs, data_samples):
    """mmdet's 'tensor' mode for a Cascade detector, with the mask heads on the first 100 refined RoIs.

    The one place that calls mmdet's private ``CascadeRoIHead._refine_roi`` / ``_mask_forward``: its public
    'tensor' mode runs the mask heads on every proposal (not the paper's count) and no public method runs the
    stages one by one. ``test_tools.test_whole_model_flops_match_the_paper`` (Cascade T: the paper's 741G)
    fails if they change."""
    from mmdet.structures.bbox import bbox2roi
    x = model.extract_feat(inputs)
    proposals = [r.bboxes for r in model.rpn_head.predict(x, data_samples, rescale=False)]
    metas = [sample.metainfo for sample in data_samples]
    roi_head = model.roi_head
    rois, _, _ = roi_head._refine_roi(x, bbox2roi(proposals), metas, tuple(len(p) for p in proposals))
    for stage in range(roi_head.num_stages):
        roi_head._mask_forward(stage, x, torch.cat(rois)[:100])


def model_complexity(config, size):
    """(MACs, parameters, backbone parameters, counted on shapes alone) of a detector / segmentor config at
    ``size`` (H, W). On fake tensors where the forward allows it, else a real forward (see the module doc)."""
    cfg = load_config(config) if isinstance(config, str) else config
    model, scope = build_model_from_config(cfg)
    batch = model.data_preprocessor(dummy_batch(scope, size, 'cpu'), False)
    params = sum(p.numel() for p in model.parameters())
    backbone_params = sum(p.numel() for p in model.backbone.parameters())

    from mmdet.models.roi_heads import CascadeRoIHead
    if isinstance(getattr(model, 'roi_head', None), CascadeRoIHead) and model.roi_head.with_mask:
        def run(inputs):
            _cascade_forward(model, inputs, batch['data_samples'])
    else:
        def run(inputs):
            model(inputs, batch['data_samples'], mode='tensor')
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as fake:  # the weights stay real; no compute is done
            return count_macs(lambda: run(fake.from_tensor(batch['inputs']))), params, backbone_params, True
    except RuntimeError:
        # a shape depends on values (NMS: DataDependentOutputException, DynamicOutputShapeException), or a compiled
        # extension op (mmcv's DCN, ...) reads the data of a fake tensor: count on a real forward, where a genuine
        # error in the model raises again
        return count_macs(lambda: run(batch['inputs'])), params, backbone_params, False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', default='tiny', help='backbone arch (ignored with --config)')
    parser.add_argument('--config', help='a detector / segmentor config (mmdet::, mmseg:: for packaged ones)')
    parser.add_argument('--size', type=int, nargs='+', default=[224], help='H [W]')
    parser.add_argument('--output-stride', type=int,
                        help="the backbone's output_stride, 16 or 8 (ignored with --config)")
    args = parser.parse_args(argv)
    size = args.size if len(args.size) == 2 else args.size * 2
    if args.config:
        macs, params, backbone, shapes_only = model_complexity(args.config, size)
        how = 'shapes only' if shapes_only else 'a real forward: a shape or an op needs the values'
        print(f'{args.config} at {size[0]}x{size[1]} (HxW): FLOPs {macs / 1e9:.1f}G, params {params / 1e6:.1f}M '
              f'(backbone {backbone / 1e6:.1f}M; counted on {how})')
    else:
        macs, params = backbone_complexity(args.arch, size, output_stride=args.output_stride)
        at_stride = f' (output stride {args.output_stride})' if args.output_stride else ''
        print(f'ConvNeXt-{args.arch} backbone at {size[0]}x{size[1]}{at_stride}: FLOPs {macs / 1e9:.2f}G, '
              f'params {params / 1e6:.1f}M')
    return macs


if __name__ == '__main__':
    main()
