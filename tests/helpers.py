"""What the test modules share: paths, the tiny architectures, model and config builders, comparisons. No test
module imports another (tests/test_dropin.py checks it); what two of them need lives here, their shared fixtures
in conftest.py. ``reference_convnext`` (the official network, written out) is the tests' other shared module.

Importable without the suite's conftest and with only torch installed: conftest imports it before it puts
mmpretrain on sys.path, and the device run collects tests/test_cuda_paths.py with ``--noconftest`` and neither
mmcv, mmdet nor mmseg. So nothing here imports convnext_backbone, mmengine or a codebase at import time (the
package sets up mmcls / mmpretrain stand-in scopes by what it finds importable): functions import what they use.
"""
import os

import torch
import torch.nn.functional as F

from reference_convnext import OfficialConvNeXt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
STACK = os.environ.get('CONVNEXT_STACK', 'pinned')  # the OpenMMLab stack under test (docs/stack.md)

# pytest-xdist (--dist loadfile) hands the files to its workers in collection order: the longest first, so that the
# last file a worker starts is a short one and both workers finish together. Seconds per file under `make test` on an
# idle 2-core host, Dec 3 2026 (the rest take under 10 s each): compile 241, compile_configs 227, crash_safe 160,
# demo 140, tools 122, detection 75, segmentation 49, dropin 34, export 30, architectures 28, configs 22, old_scopes
# 12. A wrong order costs time, never correctness.
LONGEST_FIRST = ('test_compile.py', 'test_compile_configs.py', 'test_crash_safe.py', 'test_demo.py', 'test_tools.py',
                 'test_detection.py', 'test_segmentation.py', 'test_dropin.py', 'test_export.py',
                 'test_architectures.py', 'test_configs.py', 'test_old_scopes.py')

# --- tiny architectures: our `arch` dicts (official_convnext builds the reference network of one) ----------

TINY = dict(depths=[1, 1, 1, 1], channels=[8, 16, 32, 64])  # the default: four stages of one block
DEEP = dict(depths=[1, 2, 2, 1], channels=[8, 16, 24, 32])  # blocks past a stage's first: keys, drop path, dilation
TWO_STAGES = dict(depths=[1, 1], channels=[8, 16])  # torch.compile tests: compiling time grows with the graph
DECAY = dict(depths=[1, 1, 3, 1], channels=[8, 8, 8, 8])  # layer_wise decay spreads stage 2's three blocks over ids
SMALL = dict(depths=[1, 1, 1, 1], channels=[16, 32, 48, 64])  # the detectors: exported detections measured with it
PRETRAIN = dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128])  # pretraining that learns in half the demo's time
ATTO = dict(depths=[2, 2, 6, 2], channels=[40, 80, 160, 320])  # the real atto: official files for arch='atto'

SIZE = 64  # the image size of the synthetic data and the shrunk detection / segmentation configs


def official_convnext(arch: dict, **kwargs) -> OfficialConvNeXt:
    """The official network of ``arch`` (reference_convnext.OfficialConvNeXt names the channels ``dims``)."""
    return OfficialConvNeXt(depths=arch['depths'], dims=arch['channels'], **kwargs)


def randomize_(model, seed=0):
    """Give every parameter a non-trivial value (norm affine, layer scale and GRN included), at a scale that
    keeps activations well-conditioned so float32 comparisons are meaningful."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and 'grn' not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            else:
                base = 1.0 if name.endswith('weight') and 'grn' not in name else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
    return model


def pretrained(path, **kwargs):
    """Our backbone (``kwargs``) with ``path`` loaded through its init_cfg, in eval mode."""
    from convnext_backbone import ConvNeXt
    model = ConvNeXt(init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)
    model.init_weights()
    return model.eval()


def layer_norm_2d(x):
    """What our identity-initialised (fresh) output norms compute: LayerNorm over the channels of NCHW ``x``."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=1e-6).permute(0, 3, 1, 2)


# --- comparing models ----------------------------------------------------------------------------------------

def assert_close(a, b, what='', tol=1e-4):
    """Same shape, max abs error within ``tol``, relative to the reference ``b``'s magnitude where it exceeds 1 (a
    parameter gradient summed over every pixel of a batch is O(100): float32 rounding alone is then ~1e-5)."""
    assert a.shape == b.shape, what
    assert (a - b).abs().max() <= tol * max(1.0, b.abs().max().item()), what


def weighted_loss(outs):
    """A loss that weighs each output differently (outputs swapped between stages would show)."""
    return sum((o * (i + 1)).mean() for i, o in enumerate(outs))


def outputs_and_grads(model, x):
    """One forward and backward of :func:`weighted_loss`: the outputs and every parameter's gradient (None where
    it got none), by parameter name without torch.compile's ``_orig_mod.`` prefix."""
    outs = model(x)
    loss = weighted_loss(outs)
    model.zero_grad()
    loss.backward()
    return ([o.detach() for o in outs],
            {n.removeprefix('_orig_mod.'): None if p.grad is None else p.grad.clone()
             for n, p in model.named_parameters()})


def autograd_nodes(tensor):
    """The class names of every autograd node ``tensor`` was computed through."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


# --- layer decay ---------------------------------------------------------------------------------------------

BASE_LR, BASE_WD = 1e-4, 0.05


def build_layer_decay(model, **paramwise):
    """Our optimizer-wrapper constructor on ``model`` (AdamW at BASE_LR / BASE_WD) with ``paramwise``."""
    from convnext_backbone import ConvNeXtLayerDecayOptimizerConstructor
    constructor = ConvNeXtLayerDecayOptimizerConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD)),
        paramwise_cfg=paramwise)
    return constructor(model)


def lr_and_decay(optim_wrapper, model):
    """{parameter name: (lr, weight decay)} as the optimizer holds them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g['lr'], g['weight_decay']) for g in optim_wrapper.optimizer.param_groups
            for p in g['params']}


# --- configs -------------------------------------------------------------------------------------------------

def without_scope(cfg):
    """A config as plain data, without the '_scope_' keys mmengine adds to dicts inherited across packages."""
    if isinstance(cfg, dict):
        return {k: without_scope(v) for k, v in cfg.items() if k != '_scope_'}
    if isinstance(cfg, (list, tuple)):
        return [without_scope(v) for v in cfg]
    return cfg


def shrink_detector(cfg, arch=SMALL):
    """The backbone of a detection config: ``arch``, no pre-trained download; the neck takes its channels."""
    cfg.model.backbone.arch = dict(arch)
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.neck.in_channels = arch['channels']


def shrink_detector_heads(cfg):
    """16-channel FPN, RPN and RoI heads (one mask conv), fewer proposals and sampled RoIs: what the train-step
    tests prove is the config's structure (detector, heads, losses, optimizer), not its width."""
    model = cfg.model
    model.neck.out_channels = 16
    model.rpn_head.update(in_channels=16, feat_channels=16)
    roi = model.roi_head
    roi.bbox_roi_extractor.out_channels = roi.mask_roi_extractor.out_channels = 16
    for head in roi.bbox_head if isinstance(roi.bbox_head, list) else [roi.bbox_head]:
        head.update(in_channels=16, fc_out_channels=32, **({'conv_out_channels': 16}
                                                            if head.get('num_shared_convs') else {}))
    roi.mask_head.update(in_channels=16, conv_out_channels=16, num_convs=1)
    model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
    for rcnn in model.train_cfg.rcnn if isinstance(model.train_cfg.rcnn, list) else [model.train_cfg.rcnn]:
        rcnn.sampler.num = 64


def tiny_detection_config(tmp_path, coco, base='mask_rcnn_convnext_t_3x.py', epochs=1, drop_path=0.1):
    """A config file inheriting a shipped one: SMALL backbone, 16-channel neck and heads (as shrink_detector_heads),
    SIZE px, 3 classes, CPU-sized loaders, on the synthetic COCO set ``coco`` (conftest's fixture)."""
    from convnext_backbone.demo import coco as synthetic_coco
    from convnext_backbone.tools.common import load_config
    base = os.path.join(ROOT, 'configs', 'detection', base)
    path = tmp_path / 'tiny.py'
    pipeline = ("[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),"
                f" dict(type='Resize', scale=({SIZE}, {SIZE}), keep_ratio=True), dict(type='RandomFlip', prob=0.5),"
                " dict(type='PackDetInputs')]")
    test_pipeline = (f"[dict(type='LoadImageFromFile'), dict(type='Resize', scale=({SIZE}, {SIZE}), "
                     "keep_ratio=True),"
                     " dict(type='LoadAnnotations', with_bbox=True, with_mask=True), dict(type='PackDetInputs',"
                     " meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]")
    path.write_text(f'''
_base_ = {base!r}
model = dict(backbone=dict(arch=dict(_delete_=True, **{SMALL!r}), drop_path_rate={drop_path}, init_cfg=None),
             neck=dict(in_channels={SMALL['channels']!r}, out_channels=16),
             rpn_head=dict(in_channels=16, feat_channels=16),
             roi_head=dict(bbox_roi_extractor=dict(out_channels=16), mask_roi_extractor=dict(out_channels=16),
                           bbox_head=dict(num_classes=3, in_channels=16, fc_out_channels=32),
                           mask_head=dict(num_classes=3, in_channels=16, conv_out_channels=16, num_convs=1)),
             train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100), rcnn=dict(sampler=dict(num=64))))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline={pipeline}))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline={test_pipeline}))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs={epochs}, val_interval=100)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3),
                   dict(type='MultiStepLR', begin=0, end={epochs}, by_epoch=True, milestones=[1], gamma=0.5)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
randomness = dict(seed=0)
''')
    cfg = load_config(str(path))
    cfg.merge_from_dict({k: v for k, v in synthetic_coco.dataset_cfg_options(coco, SIZE).items()
                         if not k.startswith('model.')})
    cfg.dump(str(path))  # one self-contained file for the tools
    return str(path)


def shrink_segmentor(cfg):
    """TINY backbone, small heads and crops, no pre-trained download; every other setting (drop path, layer scale,
    GRN, heads, losses, optimizer recipe) stays as the config has it."""
    model = cfg.model
    model.backbone.arch = dict(TINY)
    model.backbone.pop('init_cfg', None)
    model.decode_head.update(in_channels=TINY['channels'], channels=16)
    model.auxiliary_head.update(in_channels=TINY['channels'][model.auxiliary_head.in_index], channels=8)
    model.data_preprocessor.size = (SIZE, SIZE)
    model.test_cfg.update(crop_size=(SIZE, SIZE), stride=(SIZE // 2, SIZE // 2))
    return cfg


# --- batches -------------------------------------------------------------------------------------------------

def detection_batch(size=128, num_classes=80):
    """One image of ``size`` px with two boxes and their masks, as a detector's data preprocessor takes it."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                         scale_factor=(1.0, 1.0), batch_input_shape=(size, size)))
    boxes = torch.tensor([[10.0, 12.0, 70.0, 60.0], [40.0, 50.0, 120.0, 118.0]]) * (size / 128)
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([1, num_classes - 1]),
                                       masks=BitmapMasks(masks.numpy(), size, size))
    return dict(inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8)], data_samples=[sample])


def segmentation_batch(batch_size=2):
    """``batch_size`` SIZE px images with ADE20K-like labels (150 classes, some ignored pixels)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8))
        label = torch.randint(0, 150, (1, SIZE, SIZE))
        label[:, :8] = 255  # some ignored pixels, as reduce_zero_label produces
        sample = SegDataSample(metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE)))
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)
