"""A whole model's ``load_from`` and the backbone: tried as a user would, with mmengine's Runner on our Mask R-CNN and
UperNet configs (tiny). A backbone-only checkpoint (an ImageNet classifier: official ``{'model': ...}``,
``{'state_dict': ...}`` or raw, a timm state dict) loads nothing into a whole model, so ``load_from`` refuses it,
naming the backbone's ``init_cfg`` as the fix, and that fix loads it; whole-model checkpoints load as before
(facebookresearch/ConvNeXt#133, #138)."""
import copy
import os

import pytest
import timm.models.convnext as timm_convnext
import torch
from mmengine.runner import Runner

from convnext_backbone import CheckpointError, convert_state_dict
from convnext_backbone.checkpoint import unwrap_state_dict
from convnext_backbone.tools.common import load_config, revert_sync_bn
from helpers import (ROOT, TINY, official_convnext, randomize_, shrink_detector, shrink_detector_heads,
                     shrink_segmentor)

FIX = r"model\.backbone\.init_cfg=dict\(type='Pretrained', checkpoint=<this file>\)"

pytestmark = pytest.mark.usefixtures('one_thread')  # tiny models: see conftest.one_thread


def _detector():
    cfg = load_config(os.path.join(ROOT, 'configs', 'detection', 'mask_rcnn_convnext_t_3x.py'))
    shrink_detector(cfg, TINY)
    shrink_detector_heads(cfg)
    return 'mmdet', cfg.model


def _segmentor():
    cfg = load_config(os.path.join(ROOT, 'configs', 'segmentation', 'upernet_convnext_t_512_160k_ade20k.py'))
    return 'mmseg', shrink_segmentor(cfg).model


MODELS = {'detector': _detector, 'segmentor': _segmentor}


def _runner(tmp_path, model_cfg, scope, load_from):
    revert_sync_bn(model_cfg)
    name = f'runner_{len(os.listdir(tmp_path))}'
    return Runner(model=model_cfg, work_dir=str(tmp_path / name), experiment_name=name, default_scope=scope,
                  load_from=str(load_from))


def _classifier():
    """The official classifier's state dict: blocks, the final pooled `norm`, the `head`."""
    official = randomize_(official_convnext(TINY))
    state = {k: v for k, v in official.state_dict().items() if not k.startswith('norm')}
    last = TINY['channels'][-1]
    state.update({'norm.weight': torch.rand(last) + 0.5, 'norm.bias': torch.randn(last),
                  'head.weight': torch.randn(10, last), 'head.bias': torch.randn(10)})
    return state


BACKBONE_ONLY = {  # layout: what the file holds
    "official {'model': ...}": lambda: {'model': _classifier()},
    "official {'state_dict': ...}": lambda: {'state_dict': _classifier()},
    'official raw': _classifier,
    'timm': lambda: randomize_(timm_convnext.ConvNeXt(depths=TINY['depths'], dims=TINY['channels'],
                                                      num_classes=10)).state_dict(),
}


@pytest.mark.parametrize('layout', list(BACKBONE_ONLY))
@pytest.mark.parametrize('kind', list(MODELS))
def test_load_from_a_backbone_only_checkpoint_is_refused_naming_init_cfg(tmp_path, kind, layout):
    """8 cases (4 layouts x detector / segmentor): Runner.load_or_resume stops before anything is loaded, with an
    error that says why and names the fix; the fix (the backbone's init_cfg) loads the same file."""
    path = tmp_path / 'classifier.pth'
    saved = BACKBONE_ONLY[layout]()
    torch.save(saved, path)
    scope, model_cfg = MODELS[kind]()
    runner = _runner(tmp_path, copy.deepcopy(model_cfg), scope, path)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    nested = "nests its weights under 'model'" if layout.endswith("{'model': ...}") else \
        rf"is a backbone checkpoint \({'timm' if layout == 'timm' else 'official'} layout"
    with pytest.raises(CheckpointError, match=rf"^The checkpoint being loaded {nested}.* leave the backbone at its "
                                              rf'initialisation.*{FIX}'):
        runner.load_or_resume()
    assert all(torch.equal(v, before[k]) for k, v in runner.model.state_dict().items())

    # the fix the message names: the same file through the backbone's init_cfg
    model_cfg.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(path))
    fixed = _runner(tmp_path, model_cfg, scope, path).model
    fixed.init_weights()
    expected = convert_state_dict(unwrap_state_dict(saved)).state_dict
    loaded = fixed.backbone.state_dict()
    assert len(expected) == len(loaded) - 2 * len(TINY['depths'])  # all but the four dense output norms
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize('kind', list(MODELS))
def test_load_from_a_whole_model_checkpoint_loads_it_all(tmp_path, kind):
    """A whole detector / segmentor checkpoint (ours, and its backbone in the mmpretrain model-zoo layout) loads
    every tensor, as before; one without backbone keys (heads only) is mmengine's to report, not refused."""
    scope, model_cfg = MODELS[kind]()
    source = randomize_(_runner(tmp_path, copy.deepcopy(model_cfg), scope, 'unused').model)
    state = source.state_dict()
    zoo = {k.replace('.dwconv.', '.depthwise_conv.').replace('.pwconv1.', '.pointwise_conv1.')
           .replace('.pwconv2.', '.pointwise_conv2.'): v for k, v in state.items()}
    heads = {k: v for k, v in state.items() if not k.startswith('backbone.')}
    for name, saved in (('ours', state), ('zoo', zoo), ('heads', heads)):
        path = tmp_path / f'{name}.pth'
        torch.save({'state_dict': saved, 'meta': {'epoch': 12}}, path)
        runner = _runner(tmp_path, copy.deepcopy(model_cfg), scope, path)
        backbone_before = {k: v.clone() for k, v in runner.model.backbone.state_dict().items()}
        runner.load_or_resume()
        loaded = runner.model.state_dict()
        for key, value in state.items():
            if name == 'heads' and key.startswith('backbone.'):
                assert torch.equal(loaded[key], backbone_before[key[len('backbone.'):]]), (name, key)
            else:
                assert torch.equal(loaded[key], value), (name, key)
