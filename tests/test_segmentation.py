"""ADE20K segmentation: the paper recipes in configs/segmentation, stock mmseg ConvNeXt configs with our backbone,
and train -> test (single-scale, TTA, prediction PNGs) end to end on a synthetic ADE20K-format set.

Models are shrunk (helpers.shrink_segmentor: one block per stage, 8..64 channels, small crops) and never download
weights.
"""
import copy
import glob
import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from convnext_backbone import ARCH_SETTINGS
from convnext_backbone.demo import ade20k as synthetic_ade20k
from convnext_backbone.tools import test as test_tool
from convnext_backbone.tools import train as train_tool
from convnext_backbone.tools.common import adapt_to_machine, load_config
from helpers import ROOT, TINY, segmentation_batch, shrink_segmentor, without_scope

SEG_DIR = os.path.join(ROOT, 'configs', 'segmentation')
URL = 'https://dl.fbaipublicfiles.com/convnext/'
# The official recipes (ConvNeXt repo, semantic_segmentation/configs): arch, drop path, lr, num_layers, crop,
# AMP, pre-trained checkpoint.
PAPER = {
    'upernet_convnext_t_512_160k_ade20k': ('tiny', 0.4, 1e-4, 6, 512, True, 'convnext_tiny_1k_224.pth'),
    'upernet_convnext_s_512_160k_ade20k': ('small', 0.3, 1e-4, 12, 512, True, 'convnext_small_1k_224.pth'),
    'upernet_convnext_b_512_160k_ade20k': ('base', 0.4, 1e-4, 12, 512, True, 'convnext_base_1k_224.pth'),
    'upernet_convnext_b_640_160k_ade20k_in22k': ('base', 0.4, 1e-4, 12, 640, True, 'convnext_base_22k_224.pth'),
    'upernet_convnext_l_640_160k_ade20k_in22k': ('large', 0.4, 1e-4, 12, 640, False, 'convnext_large_22k_224.pth'),
    'upernet_convnext_xl_640_160k_ade20k_in22k': ('xlarge', 0.4, 8e-5, 12, 640, False,
                                                  'convnext_xlarge_22k_224.pth'),
    'upernet_convnextv2_b_512_160k_ade20k': ('base', 0.4, 1e-4, 12, 512, True,
                                             'convnextv2/im1k/convnextv2_base_1k_224_ema.pt'),
}
# Recipes beyond the paper (no published numbers; the reasoning for each value is in the config): config:
# (stock mmseg base, arch, drop path, num_layers of the stage-wise decay 0.9, checkpoint).
# tests/test_architectures.py trains them one step.
RECIPES = {
    'mask2former_convnext_t_512_160k_ade20k': ('mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py', 'tiny',
                                               0.4, 6, 'convnext_tiny_1k_224.pth'),
    'mask2former_convnext_b_512_160k_ade20k': ('mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py', 'base',
                                               0.4, 12, 'convnext_base_1k_224.pth'),
}
# A dilated recipe beyond the paper (no published number; reasoning in the config): config: its stock mmseg base,
# whose ResNetV1c-50-D8 it replaces by ConvNeXt-T at the same output stride. test_architectures.py trains it one step.
DILATED = {
    'deeplabv3plus_convnext_t_os8_512_80k_ade20k': 'deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py',
}
STOCK = sorted(os.path.basename(p) for p in glob.glob(os.path.join(
    os.path.dirname(__import__('mmseg').__file__), '.mim', 'configs', 'convnext', '*.py')))

_configs = {}


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny models: see conftest.one_thread


def load(path, **kwargs):
    """Configs take about a second each to parse: parse once per session, hand out copies."""
    if path not in _configs:
        _configs[path] = load_config(path, **kwargs)
    return copy.deepcopy(_configs[path])


def ours(name):
    return load(os.path.join(SEG_DIR, name + '.py'))


def stock(name):
    """A stock mmseg ConvNeXt config with only the backbone type changed and mmpretrain's import dropped."""
    cfg = load('mmseg::convnext/' + name, import_custom_modules=False)
    assert cfg.model.backbone.type == 'mmpretrain.ConvNeXt'
    cfg.model.backbone.type = 'ConvNeXt'
    cfg.pop('custom_imports')
    return cfg


def build_and_step(cfg):
    """Build the segmentor and its optimizer wrapper as the Runner does, run one training step on a random
    batch; returns (model, optim_wrapper, log_vars, names of parameters the step changed)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    adapt_to_machine(cfg)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log_vars = model.train_step(segmentation_batch(), optim_wrapper)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    return model, optim_wrapper, log_vars, changed


def lr_of(model, optim_wrapper):
    lrs = {id(p): g['lr'] for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    return {n: lrs[id(p)] for n, p in model.named_parameters() if id(p) in lrs}


# --- the paper recipes --------------------------------------------------------------------------------------

def test_every_recipe_is_tested():
    assert sorted(os.path.splitext(f)[0] for f in os.listdir(SEG_DIR) if f.endswith('.py')) == sorted(
        [*PAPER, *RECIPES, *DILATED])


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_beyond_the_paper_inherits_the_stock_one(name):
    """Everything but the backbone, the head's input channels and the optimizer's paramwise rule is the stock
    recipe."""
    base, arch, drop_path, num_layers, checkpoint = RECIPES[name]
    cfg, stock = ours(name), load('mmseg::' + base)
    backbone = cfg.model.backbone
    # the stock config's own import (mmdet.models, for the Mask2Former head's parts) and ours
    stock_imports = stock.custom_imports['imports']
    assert cfg.custom_imports == dict(stock.custom_imports, imports=[stock_imports, 'convnext_backbone'])
    assert (backbone.type, backbone.arch, tuple(backbone.out_indices), backbone.drop_path_rate) == (
        'ConvNeXt', arch, (0, 1, 2, 3), drop_path)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=URL + checkpoint) and \
        cfg.checkpoint_file == URL + checkpoint
    assert list(cfg.model.decode_head.in_channels) == ARCH_SETTINGS[arch][1]
    optim = cfg.optim_wrapper
    assert optim.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert (optim.paramwise_cfg.decay_rate, optim.paramwise_cfg.decay_type, optim.paramwise_cfg.num_layers) == (
        0.9, 'stage_wise', num_layers)
    # the decay replaces the stock flat 0.1x backbone lr; the stock no-decay keys stay
    custom_keys = optim.paramwise_cfg.custom_keys
    assert 'backbone' not in custom_keys
    assert custom_keys == {k: v for k, v in stock.optim_wrapper.paramwise_cfg.custom_keys.items() if k != 'backbone'}
    for c in (cfg, stock):
        c.model.pop('backbone'), c.optim_wrapper.pop('paramwise_cfg'), c.pop('custom_imports', None)
        c.pop('convnext_t', None)  # the backbone our configs take (configs/_base_/models/convnext_t.py)
        c.pop('checkpoint_file', None)
    assert cfg.optim_wrapper.pop('constructor') == 'ConvNeXtLayerDecayOptimizerConstructor'
    cfg.model.decode_head.in_channels = stock.model.decode_head.in_channels
    assert without_scope(cfg.to_dict()) == without_scope(stock.to_dict())


@pytest.mark.parametrize('name', sorted(DILATED))
def test_dilated_recipe_inherits_the_stock_one(name):
    """The stock DeepLabV3+ recipe but for the backbone (ConvNeXt-T at the stock ResNetV1c's output stride 8), the
    heads' input channels and the optimizer (the paper's ADE20K AdamW with stage-wise decay, and the schedule
    it needs: the stock poly decay would stop at its eta_min 1e-4, AdamW's lr)."""
    cfg, stock = ours(name), load('mmseg::' + DILATED[name])
    backbone, channels = cfg.model.backbone, ARCH_SETTINGS['tiny'][1]
    assert cfg.custom_imports == dict(imports=['convnext_backbone'], allow_failed_imports=False)
    assert (stock.model.backbone.strides, stock.model.backbone.dilations) == ((1, 2, 1, 1), (1, 1, 2, 4))
    assert (backbone.type, backbone.arch, tuple(backbone.out_indices), backbone.output_stride, backbone.drop_path_rate,
            backbone.layer_scale_init_value) == ('ConvNeXt', 'tiny', (0, 1, 2, 3), 8, 0.3, 1.0)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=URL + 'convnext_tiny_1k_224.pth')
    assert cfg.model.pretrained is None  # the stock ResNet checkpoint would be handed to our backbone
    decode, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert (decode.in_index, decode.in_channels, decode.c1_in_channels) == (3, channels[3], channels[0])
    assert (aux.in_index, aux.in_channels) == (2, channels[2])
    optim = cfg.optim_wrapper
    assert (optim.type, optim.clip_grad) == (stock.optim_wrapper.type, stock.optim_wrapper.clip_grad)
    assert dict(optim.optimizer) == dict(cfg.optimizer) == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                                                                 weight_decay=0.05)
    assert optim.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert dict(optim.paramwise_cfg) == dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6)
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.begin, warmup.end) == ('LinearLR', 1e-6, 0, 1500)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == ('PolyLR', 1.0, 0.0, 1500,
                                                                           stock.train_cfg.max_iters)
    for c in (cfg, stock):
        for key in ('backbone', 'pretrained'):
            c.model.pop(key)
        for key in ('in_channels', 'c1_in_channels'):
            c.model.decode_head.pop(key)
        c.model.auxiliary_head.pop('in_channels')
        for key in ('optimizer', 'optim_wrapper', 'param_scheduler', 'custom_imports', 'checkpoint_file', 'convnext_t'):
            c.pop(key, None)
    assert without_scope(cfg.to_dict()) == without_scope(stock.to_dict())


@pytest.mark.parametrize('name', sorted(PAPER))
def test_recipe_hyperparameters(name):
    arch, drop_path, lr, num_layers, crop, amp, checkpoint = PAPER[name]
    cfg = ours(name)
    backbone = cfg.model.backbone
    assert backbone.type == 'ConvNeXt' and backbone.arch == arch
    assert tuple(backbone.out_indices) == (0, 1, 2, 3)
    assert backbone.drop_path_rate == drop_path
    v2 = 'convnextv2' in name
    assert backbone.get('use_grn', False) is v2
    assert backbone.layer_scale_init_value == (0.0 if v2 else 1.0)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=URL + checkpoint)
    assert cfg.checkpoint_file == backbone.init_cfg.checkpoint  # no stale top-level copies in the dumped config
    assert cfg.custom_imports == dict(imports=['convnext_backbone'], allow_failed_imports=False)
    assert cfg.default_scope == 'mmseg'

    # UperNet (channels 512) + FCN auxiliary head on stage 2, 150 classes, SyncBN; inputs match the backbone
    channels = ARCH_SETTINGS[arch][1]
    decode, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert (decode.type, decode.channels, decode.num_classes, list(decode.in_channels)) == (
        'UPerHead', 512, 150, channels)
    assert (aux.type, aux.in_index, aux.num_classes, aux.in_channels) == ('FCNHead', 2, 150, channels[2])
    assert decode.norm_cfg.type == aux.norm_cfg.type == 'SyncBN'

    optim = cfg.optim_wrapper
    assert optim.type == ('AmpOptimWrapper' if amp else 'OptimWrapper')
    assert optim.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert dict(optim.paramwise_cfg) == dict(decay_rate=0.9, decay_type='stage_wise', num_layers=num_layers)
    assert dict(optim.optimizer) == dict(cfg.optimizer) == dict(type='AdamW', lr=lr, betas=(0.9, 0.999),
                                                                 weight_decay=0.05)
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.begin, warmup.end, warmup.by_epoch) == (
        'LinearLR', 1e-6, 0, 1500, False)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end, poly.by_epoch) == (
        'PolyLR', 1.0, 0.0, 1500, 160000, False)
    assert (cfg.train_cfg.type, cfg.train_cfg.max_iters, cfg.train_cfg.val_interval) == (
        'IterBasedTrainLoop', 160000, 16000)
    assert (cfg.default_hooks.checkpoint.interval, cfg.default_hooks.checkpoint.by_epoch) == (16000, False)
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = 16

    # crop size, sliding-window inference, and the matching ADE20K pipeline (short side 512 or 640)
    stride = {512: 341, 640: 426}[crop]
    assert cfg.model.data_preprocessor.size == (crop, crop)
    assert dict(cfg.model.test_cfg) == dict(mode='slide', crop_size=(crop, crop), stride=(stride, stride))
    train_pipeline = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train_pipeline['RandomResize'].scale == (4 * crop, crop)
    assert train_pipeline['RandomCrop'].crop_size == (crop, crop)
    assert train_pipeline['LoadAnnotations'].reduce_zero_label is True
    test_pipeline = {t.type: t for t in cfg.test_dataloader.dataset.pipeline}
    assert test_pipeline['Resize'].scale == (4 * crop, crop)
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'

    # test-time augmentation: six scales x {no flip, flip}
    assert cfg.tta_model.type == 'SegTTAModel'
    resizes, flips = cfg.tta_pipeline[1].transforms[:2]
    assert [t.scale_factor for t in resizes] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert [(t.prob, t.direction) for t in flips] == [(0.0, 'horizontal'), (1.0, 'horizontal')]


@pytest.mark.parametrize('name', sorted(PAPER))
def test_recipe_trains_one_step(name):
    cfg = shrink_segmentor(ours(name))
    num_layers = cfg.optim_wrapper.paramwise_cfg.num_layers
    base_lr = cfg.optim_wrapper.optimizer.lr
    model, optim_wrapper, log_vars, changed = build_and_step(cfg)
    loss = float(log_vars['loss'].detach())
    assert math.isfinite(loss) and loss > 0
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(log_vars)
    assert 'backbone.stages.0.0.pwconv1.weight' in changed and 'decode_head.conv_seg.weight' in changed
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # SyncBN -> BN on this machine
    if 'convnextv2' in name:
        assert model.backbone.stages[0][0].grn is not None and model.backbone.stages[0][0].gamma is None
    # stage-wise decay 0.9: downsample layers 0, stage s -> s + 1, heads 1.0
    lrs = lr_of(model, optim_wrapper)
    for param, layer_id in [('backbone.downsample_layers.0.0.weight', 0), ('backbone.stages.0.0.dwconv.weight', 1),
                            ('backbone.stages.3.0.pwconv2.weight', 4), ('decode_head.conv_seg.weight', num_layers + 1)]:
        assert lrs[param] == pytest.approx(base_lr * 0.9 ** (num_layers + 1 - layer_id)), param


# --- stock mmseg configs with our backbone --------------------------------------------------------------------

def test_stock_configs_found():
    assert len(STOCK) == 6


@pytest.mark.parametrize('name', STOCK)
def test_stock_mmseg_config_trains_one_step_with_our_backbone(name):
    cfg = stock(name)
    arch = cfg.model.backbone.arch
    # the full-size heads fit our backbone's outputs
    assert list(cfg.model.decode_head.in_channels) == ARCH_SETTINGS[arch][1]
    assert cfg.model.auxiliary_head.in_channels == ARCH_SETTINGS[arch][1][2]
    model, optim_wrapper, log_vars, changed = build_and_step(shrink_segmentor(cfg))
    assert type(model.backbone).__module__ == 'convnext_backbone.convnext'
    assert math.isfinite(float(log_vars['loss'].detach()))
    assert 'backbone.stages.0.0.gamma' in changed
    # mmseg's LearningRateDecayOptimizerConstructor recognises our parameter names: stage-wise decayed lrs
    lrs = lr_of(model, optim_wrapper)
    assert lrs['backbone.downsample_layers.0.0.weight'] < lrs['backbone.stages.0.0.dwconv.weight'] \
        < lrs['backbone.stages.3.0.dwconv.weight'] < lrs['decode_head.conv_seg.weight']


# --- synthetic data, train, test ------------------------------------------------------------------------------

def test_synthetic_ade20k_layout(tmp_path):
    counts = synthetic_ade20k.make_ade20k(tmp_path / 'a', num_train=5, num_val=2, size=(48, 64), seed=1)
    assert counts == dict(training=5, validation=2)
    labels = []
    for split, prefix, count in (('training', 'ADE_train', 5), ('validation', 'ADE_val', 2)):
        images = sorted(os.listdir(tmp_path / 'a' / 'images' / split))
        annotations = sorted(os.listdir(tmp_path / 'a' / 'annotations' / split))
        assert images == [f'{prefix}_{i:08d}.jpg' for i in range(1, count + 1)]
        assert annotations == [f[:-4] + '.png' for f in images]
        for image, annotation in zip(images, annotations):
            assert np.asarray(Image.open(tmp_path / 'a' / 'images' / split / image)).shape == (48, 64, 3)
            label = np.asarray(Image.open(tmp_path / 'a' / 'annotations' / split / annotation))
            assert label.shape == (48, 64) and label.dtype == np.uint8
            labels.append(label)
    assert set(np.unique(np.stack(labels))) == {0, 1, 2, 3}  # background + the three shapes
    # the same seed writes the same set
    synthetic_ade20k.make_ade20k(tmp_path / 'b', num_train=5, num_val=2, size=(48, 64), seed=1)
    for path in glob.glob(str(tmp_path / 'a' / '*' / '*' / '*')):
        with open(path, 'rb') as a, open(path.replace(os.sep + 'a' + os.sep, os.sep + 'b' + os.sep), 'rb') as b:
            assert a.read() == b.read()


def test_synthetic_classes_are_shapes_and_patterns_not_colours():
    """No colour tells the classes apart: each class's objects come in all sorts of colours, and every class's
    pixels spread over the whole colour range alike."""
    rng = np.random.default_rng(0)
    pixels, object_colours = {1: [], 2: [], 3: []}, {1: [], 2: [], 3: []}
    for _ in range(60):
        image, label = synthetic_ade20k.make_sample(rng, (96, 96))
        for cls in pixels:
            pixels[cls].append(image[label == cls].astype(float))
            if (label == cls).any():
                object_colours[cls].append(image[label == cls].astype(float).mean(0))
    for cls in pixels:
        values = np.concatenate(pixels[cls])
        assert np.abs(values.mean(0) - 127.5).max() < 25 and values.std(0).min() > 60, cls
        # a pattern's two colours average towards grey, but no class keeps a fixed colour pair
        assert len(object_colours[cls]) >= 20 and np.std(object_colours[cls], axis=0).min() > 12, cls


def test_synthetic_patterns_are_two_colour_stripes_checks_and_dots():
    """Each class has its own pattern (0 stripes, 1 checks, 2 dots), whatever the colours, angle and scale."""
    rng = np.random.default_rng(1)
    for kind in range(3):
        for _ in range(30):
            channel = synthetic_ade20k.pattern_fill(kind, (64, 64), rng)[..., 0].astype(float)
            low, high = np.percentile(channel, 2), np.percentile(channel, 98)
            assert high - low > 40  # two colours, not one
            on = (channel > (low + high) / 2).astype(float)
            coverage = min(on.mean(), 1 - on.mean())
            # stripes have edges in one direction only: the structure tensor's coherence is ~1, 2-D patterns ~0
            gx, gy = cv2.Sobel(on, cv2.CV_64F, 1, 0), cv2.Sobel(on, cv2.CV_64F, 0, 1)
            small, large = np.linalg.eigvalsh([[(gx * gx).sum(), (gx * gy).sum()], [(gx * gy).sum(), (gy * gy).sum()]])
            coherence = (large - small) / (large + small)
            if kind == 0:
                assert coherence > 0.8 and coverage > 0.4, (coherence, coverage)
            else:  # checks cover half, dots (a disc of radius cell / 3 per cell) pi / 9
                assert coherence < 0.3 and (coverage > 0.45 if kind == 1 else 0.3 < coverage < 0.4), (kind, coverage)


def _data_options(data_root):
    """--cfg-options for the synthetic set and a shrunk model (the CLI's syntax; values parsed by DictAction)."""
    depths, channels = (str(TINY[key]).replace(' ', '') for key in ('depths', 'channels'))  # as shrink_segmentor
    options = [f'model.backbone.depths={depths}', f'model.backbone.dims={channels}', 'model.backbone.init_cfg=None',
               f'model.decode_head.in_channels={channels}', 'model.decode_head.channels=16',
               f"model.auxiliary_head.in_channels={TINY['channels'][2]}", 'model.auxiliary_head.channels=8',
               # the synthetic set's 3 classes (metrics still run over ADE20K's 150, absent ones are skipped)
               'model.decode_head.num_classes=3', 'model.auxiliary_head.num_classes=3',
               # 128 px images: 64 px training crops at short side ~64 px; testing at short side 96 px in
               # 2 x 2 sliding 64 px windows (TTA rescales the 128 px originals: 1 to 36 windows per view)
               'model.data_preprocessor.size=(64,64)',
               'model.test_cfg.crop_size=(64,64)', 'model.test_cfg.stride=(32,32)',
               'train_dataloader.dataset.pipeline.2.scale=(256,64)',
               'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
               'val_dataloader.dataset.pipeline.1.scale=(384,96)',
               'test_dataloader.dataset.pipeline.1.scale=(384,96)']
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={data_root}', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False']
    return options


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Four iterations of the T recipe on 6 synthetic images, validating and checkpointing at iteration 4."""
    tmp = tmp_path_factory.mktemp('seg')
    data_root = str(tmp / 'ade')
    synthetic_ade20k.make_ade20k(data_root, num_train=6, num_val=3, size=(128, 128), seed=0)
    config = os.path.join(SEG_DIR, 'upernet_convnext_t_512_160k_ade20k.py')
    options = _data_options(data_root)
    work_dir = str(tmp / 'work')
    runner = train_tool.main([config, '--work-dir', work_dir, '--cfg-options', *options,
                              'train_cfg.max_iters=4', 'train_cfg.val_interval=4', 'randomness.seed=0',
                              'default_hooks.checkpoint.interval=4', 'default_hooks.logger.interval=1'])
    return dict(tmp=tmp, data_root=data_root, config=config, options=options, work_dir=work_dir, runner=runner)


def test_train_runs_validates_and_checkpoints(trained):
    runner = trained['runner']
    assert runner.iter == 4
    assert os.path.isfile(os.path.join(trained['work_dir'], 'iter_4.pth'))
    scalars = runner.message_hub.log_scalars
    assert math.isfinite(scalars['train/loss'].current())
    assert 0.0 <= scalars['val/mIoU'].current() <= 100.0
    # the AMP recipe fell back to fp32 on this machine, and the stage-wise decay is in place (num_layers 6):
    # downsample layers 0, stages 1..4, everything else 7
    assert type(runner.optim_wrapper).__name__ == 'OptimWrapper'
    scales = {round(g['lr_scale'], 9) for g in runner.optim_wrapper.optimizer.param_groups}
    assert scales == {round(0.9 ** (7 - layer_id), 9) for layer_id in (0, 1, 2, 3, 4, 7)}


def _test(trained, name, *extra):
    work_dir = str(trained['tmp'] / name)
    metrics = test_tool.main([trained['config'], os.path.join(trained['work_dir'], 'iter_4.pth'),
                              '--work-dir', work_dir, *extra, '--cfg-options', *trained['options']])
    with open(os.path.join(work_dir, 'metrics.json')) as f:
        assert json.load(f) == pytest.approx(metrics)
    return metrics


def test_test_single_scale_and_tta(trained):
    single = _test(trained, 'single')
    tta = _test(trained, 'tta', '--tta')
    for metrics in (single, tta):
        assert set(metrics) == {'aAcc', 'mIoU', 'mAcc'}
        assert all(0.0 < v <= 100.0 for v in metrics.values())
    assert single['aAcc'] != tta['aAcc']  # the average over 12 augmented views predicts differently


def test_test_out_writes_prediction_pngs_and_show_dir_drawings(trained):
    out, show = trained['tmp'] / 'preds', trained['tmp'] / 'vis'
    _test(trained, 'out', '--out', str(out), '--show-dir', str(show))
    names = sorted(os.listdir(out))
    assert names == [f'ADE_val_{i:08d}.png' for i in range(1, 4)]
    for name in names:
        prediction = np.asarray(Image.open(out / name))
        # full resolution, in ADE20K's label format: reduce_zero_label undone, the 3 classes are 1..3 again
        assert prediction.shape == (128, 128) and prediction.dtype == np.uint8
        assert set(np.unique(prediction)) <= {1, 2, 3}
    drawn = sorted(glob.glob(str(show / '**' / '*.png'), recursive=True))
    assert [os.path.basename(p) for p in drawn] == [f'test_ADE_val_{i:08d}.jpg_0.png' for i in range(1, 4)]


def test_test_cli_in_a_fresh_process(trained):
    """The command line as users run it: a new process whose first checkpoint read is the trained one."""
    work_dir = trained['tmp'] / 'cli'
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'test.py'), trained['config'],
         os.path.join(trained['work_dir'], 'iter_4.pth'), '--work-dir', str(work_dir),
         '--cfg-options', *trained['options']],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(work_dir / 'metrics.json') as f:
        assert set(json.load(f)) == {'aAcc', 'mIoU', 'mAcc'}
