"""The backbone in every architecture users pair it with, each built from the installed package's own stock
config (mmdet::, mmseg::, mmpretrain::) with only the backbone (and the neck / head input channels and feature
levels) changed to ours, trained one step through the optim wrapper the config builds and run in predict mode
on a tiny synthetic batch.

Heads are shrunk where the stock config is heavy (fewer queries and transformer layers, small images, fewer
sampled RoIs) but keep their type. Frozen stages, activation checkpointing (with_cp) and our layer-decay
optimizer constructor alternate over the parametrisation, and each is checked where it is on: frozen
parameters get no gradient and stay put (and our constructor leaves them out of the optimizer), with_cp really
checkpoints, decayed learning rates differ between stages. Our recipes beyond the paper (DINO, Mask2Former) run
through the same step.
"""
import math
import os

import pytest
import torch

from convnext_backbone import ConvNeXt
from convnext_backbone.tools.common import adapt_to_machine, load_config
from helpers import ROOT, SIZE, TINY

LAYER_WISE = dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6)
STAGE_WISE = dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6)


# --- per-architecture changes to the stock config ----------------------------------------------------------

def _walk(cfg):
    """Every dict inside a config (the config included)."""
    if isinstance(cfg, dict):
        yield cfg
        for value in cfg.values():
            yield from _walk(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            yield from _walk(value)


def _keep_all_detections(model):
    """Random heads score below the stock thresholds: keep every box so the output shapes are checked on real
    detections, not on empty tensors; ten of them per image (mask heads run on each)."""
    test_cfg = model.get('test_cfg') or {}
    for d in _walk(test_cfg.get('rcnn', test_cfg)):
        if 'score_thr' in d:
            d['score_thr'] = 0.0
        for key in ('max_per_img', 'max_per_image'):
            if key in d:
                d[key] = min(d[key], 10)


def _fewer_rois(model):
    """Two-stage detectors: 64 sampled RoIs per image in training, 100 proposals at test time."""
    for d in _walk(model.train_cfg):
        if d.get('type') == 'RandomSampler' and d.get('num', 0) > 64:
            d['num'] = 64
    model.test_cfg.rpn.update(nms_pre=100, max_per_img=100)


def _fpn(model):
    model.neck.in_channels = TINY['channels']


def _two_stage(model):
    _fpn(model)
    _fewer_rois(model)


def _detr(model, indices=(1, 2, 3), queries=20):
    """DINO / Deformable DETR: three backbone levels, ChannelMapper adds the fourth (stock), fewer queries and
    one encoder / decoder layer."""
    model.backbone.out_indices = indices
    model.neck.in_channels = [TINY['channels'][i] for i in indices]
    model.num_queries = queries
    model.encoder.num_layers = model.decoder.num_layers = 1
    if 'dn_cfg' in model:
        model.dn_cfg.group_cfg.num_dn_queries = 10


def _mask2former_head(head, train_cfg, queries=10):
    head.in_channels = TINY['channels']
    head.num_queries = queries
    head.pixel_decoder.encoder.num_layers = 1
    head.transformer_decoder.num_layers = 2  # stock 9: three rounds over the 3 levels; 2 still visits two
    train_cfg.num_points = 256  # points sampled per mask for the matching cost and the mask losses


def _mask2former_det(model):
    _mask2former_head(model.panoptic_head, model.train_cfg)
    for augment in model.data_preprocessor.batch_augments:
        augment.size = (SIZE, SIZE)


def _rtmdet_ins(model):
    model.backbone.out_indices = (1, 2, 3)  # strides 8, 16, 32 as CSPNeXt's (2, 3, 4)
    model.neck.in_channels = TINY['channels'][1:]


def _seg_size(model):
    model.data_preprocessor.size = (SIZE, SIZE)


def _upernet(model):
    _seg_size(model)
    model.decode_head.update(in_channels=TINY['channels'], channels=32)
    model.auxiliary_head.update(in_channels=TINY['channels'][model.auxiliary_head.in_index], channels=16)


def _mask2former_seg(model):
    _seg_size(model)
    _mask2former_head(model.decode_head, model.decode_head.train_cfg)


def _segformer(model):
    _seg_size(model)
    model.decode_head.update(in_channels=TINY['channels'], channels=32)


def _sem_fpn(model):
    _seg_size(model)
    model.neck.in_channels = TINY['channels']


def _deeplabv3plus(model):
    _seg_size(model)
    # ASPP on the last stage, low-level features from stage 0 (stride 4): ResNet-50's 256 channels (the stock
    # config), ConvNeXt-T's 96 (our recipe)
    assert model.decode_head.in_index == 3 and model.decode_head.c1_in_channels in (256, 96)
    model.decode_head.update(in_channels=TINY['channels'][3], c1_in_channels=TINY['channels'][0], channels=32)
    model.auxiliary_head.update(in_channels=TINY['channels'][model.auxiliary_head.in_index], channels=16)


def _classifier(model):
    model.backbone.update(out_indices=(3,), gap_before_final_norm=True)
    model.head.in_channels = TINY['channels'][3]


# name: (stock config, change, frozen_stages, with_cp, layer decay or None, instance masks in the output)
ARCHITECTURES = {
    'retinanet': ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', _fpn, 1, False, LAYER_WISE, False),
    'fcos': ('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', _fpn, 0, True, None, False),
    'mask_rcnn': ('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', _two_stage, 0, False, LAYER_WISE, True),
    'cascade_mask_rcnn': ('mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', _two_stage, 1, True,
                          None, True),
    'htc': ('mmdet::htc/htc_r50_fpn_1x_coco.py', _two_stage, 2, False, LAYER_WISE, True),
    'dino': ('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', _detr, 1, True, LAYER_WISE, False),
    'deformable_detr': ('mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', _detr, 0, False, None,
                        False),
    'mask2former_instance': ('mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py', _mask2former_det, 0,
                             True, LAYER_WISE, True),
    'rtmdet_ins': ('mmdet::rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py', _rtmdet_ins, 1, False, None, True),
    'upernet': ('mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py', _upernet, 1, True, STAGE_WISE, None),
    'mask2former_semantic': ('mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py', _mask2former_seg,
                             0, False, STAGE_WISE, None),
    'segformer_head': ('mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py', _segformer, 0, True,
                       None, None),
    'fpn_head': ('mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py', _sem_fpn, 2, False, None, None),
    'deeplabv3plus': ('mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py', _deeplabv3plus,
                      0, False, STAGE_WISE, None),
    'image_classifier': ('mmpretrain::convnext/convnext-tiny_32xb128_in1k.py', _classifier, 1, True, LAYER_WISE,
                         None),
}


def test_options_are_exercised_across_architectures():
    """Each option is on somewhere and off somewhere, in every codebase it applies to."""
    rows = ARCHITECTURES.values()
    for package in ('mmdet', 'mmseg', 'mmpretrain'):
        mine = [r for r in rows if r[0].startswith(package + '::')]
        assert any(r[2] > 0 for r in mine) and any(r[3] for r in mine) and any(r[4] for r in mine), package
    assert not all(r[2] for r in rows) and not all(r[3] for r in rows) and not all(r[4] for r in rows)


def stock_config(name):
    """The stock config with our backbone: a type the scope resolves to ours (in mmpretrain's scope its own
    ConvNeXt wins 'ConvNeXt': name ours by its scope), the tiny arch, the option under test."""
    path, change, frozen_stages, with_cp, decay, _ = ARCHITECTURES[name]
    cfg = load_config(path, import_custom_modules=False)
    scope = cfg.default_scope
    cfg.model.backbone = dict(type='convnext_backbone.ConvNeXt' if scope == 'mmpretrain' else 'ConvNeXt',
                              arch=dict(TINY), frozen_stages=frozen_stages, with_cp=with_cp)
    change(cfg.model)
    if cfg.get('data_preprocessor') is not None:  # mmpretrain's, given beside the model: the Runner's merge
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    cfg.model.pop('pretrained', None)  # mmseg's ResNet checkpoint, not ours
    _keep_all_detections(cfg.model)
    if decay is not None:
        custom_keys = cfg.optim_wrapper.get('paramwise_cfg', {}).get('custom_keys')
        cfg.optim_wrapper.constructor = 'ConvNeXtLayerDecayOptimizerConstructor'
        cfg.optim_wrapper.paramwise_cfg = dict(decay, **({'custom_keys': custom_keys} if custom_keys else {}))
    return cfg


# --- synthetic batches -------------------------------------------------------------------------------------

BOXES = torch.tensor([[4.0, 6.0, 40.0, 36.0], [20.0, 24.0, 60.0, 62.0]])


def _det_batch(num_classes):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData, PixelData
    inputs, samples = [], []
    for i in range(2):
        boxes = BOXES + 2 * i
        masks = torch.zeros(len(boxes), SIZE, SIZE, dtype=torch.uint8)
        semantic = torch.full((1, SIZE, SIZE), 255, dtype=torch.long)
        for j, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[j, y1:y2, x1:x2] = 1
            semantic[:, y1:y2, x1:x2] = j + 1
        sample = DetDataSample(metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE),
                                             scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([1, num_classes - 1]),
                                           masks=BitmapMasks(masks.numpy(), SIZE, SIZE))
        sample.gt_sem_seg = PixelData(sem_seg=semantic)  # HTC's semantic branch
        inputs.append(torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _seg_batch(num_classes):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    inputs, samples = [], []
    for _ in range(2):
        label = torch.randint(0, num_classes, (1, SIZE, SIZE))
        label[:, :8] = 255  # some ignored pixels
        sample = SegDataSample(metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE)))
        sample.gt_sem_seg = PixelData(data=label)
        inputs.append(torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _cls_batch(num_classes):
    from mmpretrain.structures import DataSample
    return dict(inputs=[torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8) for _ in range(2)],
                data_samples=[DataSample().set_gt_label(c) for c in (0, num_classes - 1)])


def _num_classes(model_cfg):
    for d in _walk(model_cfg):
        for key in ('num_classes', 'num_things_classes'):
            if d.get(key):
                return d[key]
    raise AssertionError('no num_classes in the config')


BATCHES = {'mmdet': _det_batch, 'mmseg': _seg_batch, 'mmpretrain': _cls_batch}


# --- the test ----------------------------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures('one_thread')  # tiny models: see conftest.one_thread


def _registry(scope):
    import importlib
    return importlib.import_module(f'{scope}.registry').MODELS


def _lrs(model, optimizer):
    lrs = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    return {n: lrs.get(id(p)) for n, p in model.named_parameters()}


@pytest.mark.parametrize('name', sorted(ARCHITECTURES))
def test_architecture_trains_and_predicts(name, monkeypatch):
    _, _, frozen_stages, with_cp, decay, masks = ARCHITECTURES[name]
    train_and_predict(stock_config(name), frozen_stages, with_cp, decay, masks, monkeypatch)


# Our recipes beyond the paper (configs/detection, configs/segmentation; their hyperparameters are tested in
# test_detection.py / test_segmentation.py): config: the architecture whose shrinking applies.
RECIPES = {
    'detection/dino_4scale_convnext_t_12e': 'dino',
    'detection/dino_4scale_convnext_b_12e': 'dino',
    'detection/mask2former_convnext_t_50e': 'mask2former_instance',
    'segmentation/mask2former_convnext_t_512_160k_ade20k': 'mask2former_semantic',
    'segmentation/mask2former_convnext_b_512_160k_ade20k': 'mask2former_semantic',
    'segmentation/deeplabv3plus_convnext_t_os8_512_80k_ade20k': 'deeplabv3plus',  # output stride 8
}


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_beyond_the_paper_trains_and_predicts(name, monkeypatch):
    """As the recipe says (drop path, our constructor with its decay) but with the tiny arch, no download and
    the heads shrunk as for the stock architecture."""
    _, change, _, _, _, masks = ARCHITECTURES[RECIPES[name]]
    cfg = load_config(os.path.join(ROOT, 'configs', name + '.py'))
    backbone = cfg.model.backbone
    assert backbone.type == 'ConvNeXt' and backbone.drop_path_rate > 0
    backbone.arch = dict(TINY)
    backbone.pop('init_cfg')
    change(cfg.model)
    _keep_all_detections(cfg.model)
    assert cfg.optim_wrapper.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    train_and_predict(cfg, 0, False, cfg.optim_wrapper.paramwise_cfg, masks, monkeypatch)


def train_and_predict(cfg, frozen_stages, with_cp, decay, masks, monkeypatch):
    """Build the model and its optim wrapper as the Runner does, check the options are taken, run one training
    step (finite loss, every unfrozen stage moved, frozen ones not) and predict (output shapes)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    scope = cfg.default_scope
    adapt_to_machine(cfg)
    init_default_scope(scope)
    torch.manual_seed(0)
    model = _registry(scope).build(cfg.model)
    model.init_weights()
    model.train()
    assert type(model.backbone) is ConvNeXt
    backbone = model.backbone
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lrs = _lrs(model, optim_wrapper.optimizer)

    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    expected_frozen = {n for n, _ in backbone.named_parameters()
                       if n.split('.')[0] in ('downsample_layers', 'stages') and int(n.split('.')[1]) < frozen_stages}
    assert frozen == expected_frozen and (frozen_stages == 0) == (not frozen)
    if decay is not None:  # our constructor: frozen parameters skipped, learning rates grow with depth
        assert all(lrs['backbone.' + n] is None for n in frozen)
        assert all('lr_scale' in g for g in optim_wrapper.optimizer.param_groups)
        assert lrs['backbone.stages.2.0.pwconv1.weight'] < lrs['backbone.stages.3.0.pwconv1.weight']
    else:
        assert not any('lr_scale' in g for g in optim_wrapper.optimizer.param_groups)

    checkpoints = []
    if with_cp:  # count the checkpointed block calls: the option must really be taken
        import torch.utils.checkpoint as cp
        original = cp.checkpoint
        monkeypatch.setattr(cp, 'checkpoint', lambda fn, *a, **k: checkpoints.append(fn) or original(fn, *a, **k))

    num_classes = _num_classes(cfg.model)
    # With drop path on, a block's residual branch may be dropped for the whole (2-image) batch and get no
    # gradient; the stem and downsampling layers, on the identity path, always do.
    dropping = any(block.drop_path_rate > 0 for stage in backbone.stages for block in stage)
    parts = ('downsample_layers',) if dropping else ('downsample_layers', 'stages')
    trunk = {n for n, _ in backbone.named_parameters() if n.split('.')[0] in parts}
    got_grad = set()
    for n, p in backbone.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(
                lambda p, n=n: got_grad.add(n) if torch.isfinite(p.grad).all() and p.grad.any() else None)
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    log_vars = model.train_step(BATCHES[scope](num_classes), optim_wrapper)
    loss = float(log_vars['loss'])
    assert math.isfinite(loss) and loss > 0, log_vars
    # every unfrozen parameter of the stem, downsampling layers (and blocks) gets a finite, non-zero gradient
    assert trunk - frozen <= got_grad and not got_grad & frozen, sorted(trunk - frozen - got_grad)
    changed = {n for n, p in backbone.named_parameters() if not torch.equal(before[n], p.detach())}
    assert not changed & frozen
    for stage in range(frozen_stages, 4):  # the step moved every unfrozen stage
        for prefix in (f'{part}.{stage}.' for part in parts):
            assert any(n.startswith(prefix) for n in changed), (prefix, sorted(changed))
    # every unfrozen block except the last stage's goes through torch.utils.checkpoint (ConvNeXt._checkpointed)
    assert len(checkpoints) == (sum(TINY['depths'][:3]) if with_cp else 0)

    model.eval()
    with torch.no_grad():
        inputs = model.data_preprocessor(BATCHES[scope](num_classes), False)['inputs']
        features = backbone(inputs)
        outputs = model.test_step(BATCHES[scope](num_classes))
    assert inputs.shape == (2, 3, SIZE, SIZE)
    if backbone.gap_before_final_norm:  # pooled, then the last norm
        expected = [(2, TINY['channels'][i]) for i in backbone.out_indices]
    else:
        expected = [(2, TINY['channels'][i], SIZE // s, SIZE // s) for i, s in zip(backbone.out_indices,
                                                                                    backbone.out_strides)]
    assert [tuple(f.shape) for f in features] == expected
    assert len(outputs) == 2
    for out in outputs:
        if scope == 'mmdet':
            pred = out.pred_instances
            n = len(pred)
            assert n > 0 and pred.bboxes.shape == (n, 4) and pred.scores.shape == pred.labels.shape == (n,)
            assert torch.isfinite(pred.bboxes).all()
            if masks:
                assert pred.masks.shape == (n, SIZE, SIZE)
            else:
                assert 'masks' not in pred
        elif scope == 'mmseg':
            assert out.seg_logits.data.shape == (num_classes, SIZE, SIZE)
            assert out.pred_sem_seg.data.shape == (1, SIZE, SIZE)
            assert torch.isfinite(out.seg_logits.data).all()
        else:
            assert out.pred_score.shape == (num_classes,) and out.pred_label.shape == (1,)
            assert torch.isfinite(out.pred_score).all()
