"""Detection: every shipped config builds and trains, the paper's hyperparameters, train/test/dist tools end
to end on a synthetic COCO set, exact resume, stock mmdet configs, official fine-tuned checkpoints."""
import glob
import json
import math
import os
import shutil
import subprocess

import pytest
import torch

from convnext_backbone import safe_load
from convnext_backbone.tools import test as test_tool
from convnext_backbone.tools import train as train_tool
from convnext_backbone.tools.common import adapt_to_machine, load_config, revert_sync_bn
from helpers import (ROOT, SIZE, SMALL, detection_batch, official_convnext, randomize_, shrink_detector,
                     shrink_detector_heads, tiny_detection_config, without_scope)

ALL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'detection', '*.py')))
URL = 'https://dl.fbaipublicfiles.com/convnext/'


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny models: see conftest.one_thread


def _one_train_step(cfg):
    from mmdet.registry import MODELS
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    adapt_to_machine(cfg)
    revert_sync_bn(cfg.model)
    model = MODELS.build(cfg.model)
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    before = model.backbone.stages[3][0].pwconv1.weight.detach().clone()
    log_vars = model.train_step(detection_batch(SIZE), optim_wrapper)
    assert math.isfinite(float(log_vars['loss'])) and float(log_vars['loss']) > 0
    assert {'loss_rpn_cls', 'loss_mask'} <= {k.split('.')[-1] for k in log_vars} | set(log_vars)
    assert not torch.equal(before, model.backbone.stages[3][0].pwconv1.weight)
    return model, optim_wrapper


PAPER = {  # config: (detector, arch, drop_path, lr, decay, num_layers, amp, checkpoint)
    'mask_rcnn_convnext_t_3x': ('MaskRCNN', 'tiny', 0.4, 1e-4, 0.95, 6, True, 'convnext_tiny_1k_224.pth'),
    'cascade_convnext_t_3x': ('CascadeRCNN', 'tiny', 0.4, 2e-4, 0.7, 6, True, 'convnext_tiny_1k_224.pth'),
    'cascade_convnext_s_3x': ('CascadeRCNN', 'small', 0.6, 2e-4, 0.7, 12, True, 'convnext_small_1k_224.pth'),
    'cascade_convnext_b_3x': ('CascadeRCNN', 'base', 0.7, 2e-4, 0.8, 12, True, 'convnext_base_1k_224.pth'),
    'cascade_convnext_b_3x_in22k': ('CascadeRCNN', 'base', 0.6, 1e-4, 0.8, 12, True, 'convnext_base_22k_224.pth'),
    'cascade_convnext_l_3x_in22k': ('CascadeRCNN', 'large', 0.7, 1e-4, 0.7, 12, False,
                                    'convnext_large_22k_224.pth'),
    'cascade_convnext_xl_3x_in22k': ('CascadeRCNN', 'xlarge', 0.8, 1e-4, 0.7, 12, False,
                                     'convnext_xlarge_22k_224.pth'),
    'mask_rcnn_convnextv2_b_3x': ('MaskRCNN', 'base', 0.4, 1e-4, 0.8, 12, True,
                                  'convnextv2/im1k/convnextv2_base_1k_224_ema.pt'),
}


# Recipes beyond the paper (no published numbers; the reasoning for each value is in the config): config:
# (detector, stock mmdet base, arch, drop_path, decay, num_layers, checkpoint). tests/test_architectures.py trains
# them one step.
RECIPES = {
    'dino_4scale_convnext_t_12e': ('DINO', 'dino/dino-4scale_r50_8xb2-12e_coco.py', 'tiny', 0.2, 0.7, 6,
                                   'convnext_tiny_1k_224.pth'),
    'dino_4scale_convnext_b_12e': ('DINO', 'dino/dino-4scale_r50_8xb2-12e_coco.py', 'base', 0.4, 0.8, 12,
                                   'convnext_base_1k_224.pth'),
    'mask2former_convnext_t_50e': ('Mask2Former', 'mask2former/mask2former_r50_8xb2-lsj-50e_coco.py', 'tiny', 0.4,
                                   0.7, 6, 'convnext_tiny_1k_224.pth'),
}


@pytest.mark.parametrize('name', sorted(PAPER))
def test_config_builds_and_trains_one_step(name):
    cfg = load_config(os.path.join(ROOT, 'configs', 'detection', name + '.py'))
    shrink_detector(cfg)
    shrink_detector_heads(cfg)
    _one_train_step(cfg)


def test_every_config_is_in_the_table():
    assert sorted([*PAPER, *RECIPES]) == sorted(os.path.basename(p)[:-3] for p in ALL_CONFIGS)


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_beyond_the_paper_inherits_the_stock_one(name):
    """Everything but the backbone, its input channels and the optimizer's paramwise rule is the stock recipe."""
    from convnext_backbone import ARCH_SETTINGS
    detector, base, arch, drop_path, decay, num_layers, checkpoint = RECIPES[name]
    cfg = load_config(os.path.join(ROOT, 'configs', 'detection', name + '.py'))
    stock = load_config('mmdet::' + base)
    backbone = cfg.model.backbone
    assert cfg.custom_imports['imports'] == ['convnext_backbone']
    assert (cfg.model.type, backbone.type, backbone.arch, backbone.drop_path_rate) == (detector, 'ConvNeXt', arch,
                                                                                       drop_path)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=URL + checkpoint)
    channels = ARCH_SETTINGS[arch][1]
    if detector == 'DINO':  # 3 backbone levels, ChannelMapper's extra conv makes the fourth
        assert tuple(backbone.out_indices) == (1, 2, 3) and cfg.model.neck.in_channels == channels[1:]
        assert cfg.model.neck.num_outs == 4
        cfg.model.neck.in_channels = stock.model.neck.in_channels
    else:
        assert tuple(backbone.out_indices) == (0, 1, 2, 3) and cfg.model.panoptic_head.in_channels == channels
        cfg.model.panoptic_head.in_channels = stock.model.panoptic_head.in_channels
    optim = cfg.optim_wrapper
    assert optim.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert (optim.paramwise_cfg.decay_rate, optim.paramwise_cfg.decay_type, optim.paramwise_cfg.num_layers) == (
        decay, 'layer_wise', num_layers)
    assert 'backbone' not in optim.paramwise_cfg.get('custom_keys', {})  # the decay replaces the flat 0.1x
    for c in (cfg, stock):
        c.model.pop('backbone'), c.optim_wrapper.pop('paramwise_cfg'), c.pop('custom_imports', None)
        c.pop('convnext_t', None)  # the backbone our configs take (configs/_base_/models/convnext_t.py)
    assert cfg.optim_wrapper.pop('constructor') == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert without_scope(cfg.to_dict()) == without_scope(stock.to_dict())


@pytest.mark.parametrize('name', sorted(PAPER))
def test_paper_hyperparameters(name):
    from convnext_backbone import ARCH_SETTINGS
    detector, arch, drop_path, lr, decay, num_layers, amp, checkpoint = PAPER[name]
    cfg = load_config(os.path.join(ROOT, 'configs', 'detection', name + '.py'))
    backbone, optim = cfg.model.backbone, cfg.optim_wrapper
    assert cfg.custom_imports['imports'] == ['convnext_backbone']
    assert (cfg.model.type, backbone.type, backbone.arch, backbone.drop_path_rate) == (detector, 'ConvNeXt', arch,
                                                                                       drop_path)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=URL + checkpoint)
    assert cfg.model.neck.in_channels == ARCH_SETTINGS[arch][1]
    assert optim.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert optim.type == ('AmpOptimWrapper' if amp else 'OptimWrapper')
    assert optim.optimizer == dict(type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=0.05)
    assert optim.paramwise_cfg == dict(decay_rate=decay, decay_type='layer_wise', num_layers=num_layers)
    assert cfg.train_cfg.max_epochs == 36 and cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16
    steps = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR'][0]
    assert steps.milestones == [27, 33] and steps.gamma == 0.1
    warmup = [s for s in cfg.param_scheduler if s.type == 'LinearLR'][0]
    assert (warmup.end, warmup.start_factor, warmup.by_epoch) == (1000, 0.001, False)
    choices = [t for t in cfg.train_pipeline if t['type'] == 'RandomChoice'][0]['transforms']
    assert choices[1][1]['type'] == 'RandomCrop' and choices[1][1]['crop_size'] == (384, 600)
    if v2 := name.startswith('mask_rcnn_convnextv2'):
        assert backbone.use_grn and backbone.layer_scale_init_value == 0
    else:
        assert backbone.layer_scale_init_value == 1.0
    if detector == 'CascadeRCNN':
        heads = cfg.model.roi_head.bbox_head
        assert len(heads) == 3 and not v2
        for head in heads:
            assert (head.num_shared_convs, head.num_shared_fcs, head.norm_cfg.type, head.loss_bbox.type) == \
                (4, 1, 'SyncBN', 'GIoULoss')
            assert head.reg_decoded_bbox


# --- end to end on synthetic data ----------------------------------------------------------------------

def _losses(work_dir):
    logs = sorted(glob.glob(os.path.join(work_dir, '*', 'vis_data', 'scalars.json')))
    rows = [json.loads(line) for log in logs for line in open(log)]
    return {r['iter']: (r['loss'], r['lr']) for r in rows if 'loss' in r}


@pytest.fixture(scope='module')
def trained(tmp_path_factory, coco):
    """A 2-epoch config (drop path on: the RNG state must carry over) trained straight through, and the same run
    stopped after its first epoch's checkpoint (train_cfg.max_epochs=1): the end-to-end test evaluates that
    checkpoint, the resume test continues it."""
    directory = tmp_path_factory.mktemp('trained')
    cfg = tiny_detection_config(directory, coco, epochs=2, drop_path=0.2)
    straight, interrupted = str(directory / 'straight'), str(directory / 'interrupted')
    train_tool.main([cfg, '--work-dir', straight])
    train_tool.main([cfg, '--work-dir', interrupted, '--cfg-options', 'train_cfg.max_epochs=1'])
    return dict(cfg=cfg, straight=straight, interrupted=interrupted)


def test_train_then_test_tools_end_to_end(tmp_path, trained):
    cfg, work_dir = trained['cfg'], trained['interrupted']
    checkpoint = os.path.join(work_dir, 'epoch_1.pth')
    assert os.path.exists(checkpoint) and len(_losses(work_dir)) == 4
    metrics = test_tool.main([cfg, checkpoint, '--work-dir', str(tmp_path / 'test'), '--out',
                              str(tmp_path / 'preds.pkl'), '--show-dir', str(tmp_path / 'vis')])
    assert {'coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'} <= set(metrics)
    # COCO reports -1 for an area range without ground truth (large objects in 64 px images)
    assert all(metrics[k] == -1.0 or 0.0 <= metrics[k] <= 1.0 for k in metrics if k.startswith('coco/'))
    assert os.path.getsize(tmp_path / 'preds.pkl') > 0
    assert len(glob.glob(str(tmp_path / 'vis' / '**' / '*.jpg'), recursive=True)) == 4
    assert json.load(open(tmp_path / 'test' / 'metrics.json'))['coco/bbox_mAP'] == metrics['coco/bbox_mAP']


def test_resume_continues_exactly(tmp_path, trained):
    cfg, straight = trained['cfg'], trained['straight']
    # the 2-epoch run killed after its first checkpoint (a copy: the end-to-end test evaluates the original)...
    interrupted = str(tmp_path / 'interrupted')
    shutil.copytree(trained['interrupted'], interrupted)
    with open(os.path.join(interrupted, 'last_checkpoint'), 'w') as f:
        f.write(os.path.join(interrupted, 'epoch_1.pth'))
    state = safe_load.load_mmengine_checkpoint(os.path.join(interrupted, 'epoch_1.pth'))  # safe loading where torch can
    assert state['meta']['iter'] == 4 and state['optimizer']['state'] and state['param_schedulers']
    # ...resumed from it
    runner = train_tool.main([cfg, '--work-dir', interrupted, '--resume'])
    assert runner.iter == 8 and runner.epoch == 2
    expected, resumed = _losses(straight), _losses(interrupted)
    assert sorted(resumed) == list(range(1, 9)), sorted(glob.glob(interrupted + '/**', recursive=True))  # iteration count continued from 5
    for it in range(5, 9):
        assert resumed[it][1] == pytest.approx(expected[it][1])  # scheduler state (lr) restored
        assert resumed[it][0] == pytest.approx(expected[it][0], rel=1e-4, abs=1e-5), it


def test_dist_train_two_cpu_processes(tmp_path, coco):
    cfg = tiny_detection_config(tmp_path, coco)
    work_dir = str(tmp_path / 'dist')
    env = dict(os.environ, PORT='29531', OMP_NUM_THREADS='1')
    # with activation checkpointing, whose backward-time recomputation DDP must cope with
    out = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'dist_train.sh'), cfg, '2', '--work-dir', work_dir,
                          '--cfg-options', 'model.backbone.with_cp=True'],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = open(glob.glob(os.path.join(work_dir, '*', '*.log'))[0]).read()
    # torchrun exits 0 only when every rank did; mmengine logs the world size as 'GPU number'
    assert 'GPU number: 2' in log and "dist_cfg: {'backend': 'gloo'}" in log and 'Epoch(train) [1][2/2]' in log
    assert os.path.exists(os.path.join(work_dir, 'epoch_1.pth'))
    assert max(_losses(work_dir)) == 2  # 8 images / (2 processes x 2 images)


@pytest.mark.parametrize('name', ['mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
                                  'cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'])
def test_stock_mmdet_convnext_configs_run_with_our_backbone(name):
    cfg = load_config('mmdet::convnext/' + name, import_custom_modules=False)
    assert cfg.model.backbone.type == 'mmpretrain.ConvNeXt'
    cfg.pop('custom_imports')
    cfg.model.backbone.type = 'ConvNeXt'  # the only change a user makes
    cfg.model.backbone.pop('init_cfg')  # no downloads in tests
    shrink_detector_heads(cfg)
    _one_train_step(cfg)


def test_official_finetuned_checkpoint_loads_into_our_detector(tmp_path):
    """An official (mmdet-2 era) Mask R-CNN checkpoint, and an mmdet-3 model-zoo one (mmpretrain layout)."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    init_default_scope('mmdet')
    cfg = load_config(os.path.join(ROOT, 'configs', 'detection', 'mask_rcnn_convnext_t_3x.py'))
    shrink_detector(cfg)
    model = MODELS.build(cfg.model)
    official = randomize_(official_convnext(SMALL))
    heads = {k: torch.randn_like(v) for k, v in model.state_dict().items() if not k.startswith('backbone.')}
    backbone = {'backbone.' + k: v for k, v in official.state_dict().items()}
    torch.save({'state_dict': {**backbone, **heads}, 'meta': {'mmdet_version': '2.25.0', 'CLASSES': ['a'] * 80}},
               tmp_path / 'official.pth')
    zoo = {k.replace('.dwconv.', '.depthwise_conv.').replace('.pwconv1.', '.pointwise_conv1.')
           .replace('.pwconv2.', '.pointwise_conv2.'): v for k, v in backbone.items()}
    torch.save({'state_dict': {**zoo, **heads}}, tmp_path / 'zoo.pth')
    for name in ('official.pth', 'zoo.pth'):
        for p in model.parameters():
            torch.nn.init.zeros_(p)
        load_checkpoint(model, str(tmp_path / name), strict=True)  # raises on any missing / unexpected key
        for key, value in {**backbone, **heads}.items():
            assert torch.equal(model.state_dict()[key], value), (name, key)
