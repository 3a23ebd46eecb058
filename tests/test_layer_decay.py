"""Layer-wise / stage-wise lr decay: param-by-param against tables written out from the rules."""
import re

import pytest
import torch
import torch.nn as nn

from convnext_backbone import ConvNeXt, ConvNeXtLayerDecayOptimizerConstructor, get_layer_id
from convnext_backbone.layer_decay import default_num_layers, validate_num_layers
from helpers import BASE_LR, BASE_WD, DECAY, TINY, build_layer_decay, lr_and_decay

# Expected layer ids, written out from the rules (first matching regex wins).
T_LAYER_WISE_6 = [
    (r'downsample_layers\.0\.', 0), (r'stages\.0\.', 1), (r'downsample_layers\.1\.', 2), (r'stages\.1\.', 2),
    (r'downsample_layers\.2\.', 3), (r'stages\.2\.[012]\.', 3), (r'stages\.2\.[345]\.', 4),
    (r'stages\.2\.[678]\.', 5), (r'downsample_layers\.3\.', 6), (r'stages\.3\.', 6), (r'norm\d\.', 7)]
S_LAYER_WISE_12 = [
    (r'downsample_layers\.0\.', 0), (r'stages\.0\.', 1), (r'downsample_layers\.1\.', 2), (r'stages\.1\.', 2),
    (r'downsample_layers\.2\.', 3)] + [
    (rf'stages\.2\.{b}\.', 3 + b // 3) for b in range(27)] + [
    (r'downsample_layers\.3\.', 12), (r'stages\.3\.', 12), (r'norm\d\.', 13)]
STAGE_WISE = [(r'downsample_layers\.', 0), (r'stages\.0\.', 1), (r'stages\.1\.', 2), (r'stages\.2\.', 3),
              (r'stages\.3\.', 4), (r'norm\d\.', None)]  # None: num_layers + 1


def _expected_id(name, table, num_layers):
    for pattern, layer_id in table:
        if re.match(pattern, name):
            return num_layers + 1 if layer_id is None else layer_id
    raise AssertionError(f'no rule for {name}')


class Detector(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.GroupNorm(2, 8))
        self.head = nn.Linear(8, 3)


def _no_decay(name):
    return (name.endswith('.bias') or '.norm.' in name or re.search(r'norm\d\.', name) is not None
            or re.match(r'downsample_layers\.0\.1\.', name) is not None
            or re.match(r'downsample_layers\.[123]\.0\.', name) is not None
            or name.endswith('.gamma') or '.grn.' in name or name.startswith(('neck.1.', 'neck.2.')))


@pytest.mark.parametrize('arch,num_layers,decay_rate,decay_type,table', [
    ('tiny', 6, 0.7, 'layer_wise', T_LAYER_WISE_6),
    ('tiny', 6, 0.95, 'layer_wise', T_LAYER_WISE_6),
    ('small', 12, 0.7, 'layer_wise', S_LAYER_WISE_12),
    ('tiny', 6, 0.9, 'stage_wise', STAGE_WISE),
    ('small', 12, 0.9, 'stage_wise', STAGE_WISE),
])
def test_every_parameter_lr_and_weight_decay(arch, num_layers, decay_rate, decay_type, table):
    with torch.device('meta'):
        model = Detector(ConvNeXt(arch))
    wrapper = build_layer_decay(model, decay_rate=decay_rate, decay_type=decay_type, num_layers=num_layers)
    groups = lr_and_decay(wrapper, model)
    assert set(groups) == {n for n, _ in model.named_parameters()}
    for name, (lr, wd) in groups.items():
        if name.startswith('backbone.'):
            layer_id = _expected_id(name[len('backbone.'):], table, num_layers)
        else:
            layer_id = num_layers + 1
        assert lr == pytest.approx(BASE_LR * decay_rate ** (num_layers + 1 - layer_id)), name
        assert wd == (0.0 if _no_decay(name[len('backbone.'):] if name.startswith('backbone.') else name)
                      else BASE_WD), name


def test_official_quirks_reproduced():
    # stage_wise with num_layers 12: the last stage is scaled by decay_rate ** 9 (as the paper's ADE20K runs)
    assert get_layer_id('stages.3.0.dwconv.weight', [3, 3, 27, 3], 12, 'stage_wise') == 4
    assert 0.9 ** (12 + 1 - 4) == pytest.approx(0.9 ** 9)
    # layer_wise T: the last three blocks of stage 2 share id 5, stage 3 has 6
    assert [get_layer_id(f'stages.2.{b}.norm.weight', [3, 3, 9, 3], 6) for b in range(9)] == [3] * 3 + [4] * 3 + [5] * 3


@pytest.mark.parametrize('depths', [[2, 2, 6, 2], [2, 2, 8, 2], [3, 3, 9, 3], [3, 4, 30, 3], [3, 3, 27, 3]])
@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
def test_schedule_monotonic_and_at_most_one_for_any_depth(depths, decay_type):
    for num_layers in (default_num_layers(depths), 3, 20):
        ids = [get_layer_id('downsample_layers.0.0.weight', depths, num_layers, decay_type)]
        for s in range(4):
            if decay_type == 'layer_wise':  # stage_wise puts every downsample layer at 0 (official)
                ids.append(get_layer_id(f'downsample_layers.{s}.1.weight', depths, num_layers, decay_type))
            ids += [get_layer_id(f'stages.{s}.{b}.dwconv.weight', depths, num_layers, decay_type)
                    for b in range(depths[s])]
        ids.append(get_layer_id('norm3.weight', depths, num_layers, decay_type))
        assert ids == sorted(ids) and max(ids) == num_layers + 1 and min(ids) >= 0


def test_default_num_layers_is_official():
    assert default_num_layers([3, 3, 9, 3]) == 6 and default_num_layers([3, 3, 27, 3]) == 12


def test_first_group_has_base_lr_and_frozen_params_left_out():
    model = Detector(ConvNeXt(DECAY, frozen_stages=1))
    wrapper = build_layer_decay(model, decay_rate=0.7, num_layers=6)
    assert wrapper.optimizer.param_groups[0]['lr'] == BASE_LR
    assert wrapper.get_lr()['lr'][0] == BASE_LR  # what mmengine logs
    in_optimizer = {id(p) for g in wrapper.optimizer.param_groups for p in g['params']}
    for name, p in model.named_parameters():
        assert (id(p) in in_optimizer) == p.requires_grad, name
    assert not any(id(p) in in_optimizer for p in model.backbone.stages[0].parameters())


def test_custom_keys_multiply_onto_decay():
    model = Detector(ConvNeXt(DECAY))
    groups = lr_and_decay(build_layer_decay(model, decay_rate=0.5, num_layers=6, custom_keys={
        'head': dict(lr_mult=10.0), 'stages.3': dict(lr_mult=2.0, decay_mult=0.5),
        'stages.3.0.pwconv1': dict(lr_mult=3.0)}), model)
    assert groups['head.weight'] == (pytest.approx(BASE_LR * 10), BASE_WD)
    assert groups['backbone.stages.3.0.dwconv.weight'] == (pytest.approx(BASE_LR * 0.5 * 2), BASE_WD * 0.5)
    # the longest matching key wins
    assert groups['backbone.stages.3.0.pwconv1.weight'] == (pytest.approx(BASE_LR * 0.5 * 3), BASE_WD)
    assert groups['backbone.stages.0.0.dwconv.weight'][0] == pytest.approx(BASE_LR * 0.5 ** 6)


def test_backbone_prefix_and_model_wrappers():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.convnext = ConvNeXt(DECAY)
            self.fc = nn.Linear(8, 2)

    model = Toy()
    with pytest.raises(ValueError, match=r'no ConvNeXt backbone at model.backbone.*backbone_prefix'):
        build_layer_decay(model, decay_rate=0.7)
    groups = lr_and_decay(build_layer_decay(model, decay_rate=0.7, num_layers=6, backbone_prefix='encoder.convnext'),
                          model)
    assert groups['encoder.convnext.downsample_layers.0.0.weight'][0] == pytest.approx(BASE_LR * 0.7 ** 7)
    assert groups['fc.weight'][0] == BASE_LR

    class FakeDDP(nn.Module):  # what is_model_wrapper recognises: a registered wrapper holding .module
        pass
    from mmengine.registry import MODEL_WRAPPERS
    MODEL_WRAPPERS.register_module(module=FakeDDP, force=True)
    wrapped = FakeDDP()
    wrapped.module = Detector(ConvNeXt(DECAY))
    groups = lr_and_decay(build_layer_decay(wrapped, decay_rate=0.7, num_layers=6), wrapped.module)
    assert groups['backbone.stages.0.0.dwconv.weight'][0] == pytest.approx(BASE_LR * 0.7 ** 6)

    alone = ConvNeXt(DECAY)
    groups = lr_and_decay(build_layer_decay(alone, decay_rate=0.7, num_layers=6, backbone_prefix=''), alone)
    assert groups['norm0.weight'] == (BASE_LR, 0.0)


def test_table_is_logged_once(mm_log):
    build_layer_decay(Detector(ConvNeXt(DECAY)), decay_rate=0.7, num_layers=6)
    tables = [m for m in mm_log if m.startswith('ConvNeXt layer_wise lr decay')]
    assert len(tables) == 1
    assert re.search(r'layer_0_decay\s+\d+\s+0.08235\s+0.05\s+backbone.downsample_layers.0.0.weight', tables[0])


@pytest.mark.parametrize('paramwise,match', [
    (dict(decay_rate=0.7, decay_type='block_wise'), r"Unknown decay_type 'block_wise'; valid: layer_wise, stage_wise"),
    (dict(decay_type='layer_wise'), 'needs paramwise_cfg.decay_rate'),
    (dict(decay_rate=1.5), r'decay_rate must be in \(0, 1\]'),
    (dict(decay_rate=0.7, norm_decay_mult=0.0), r"unsupported paramwise_cfg keys \['norm_decay_mult'\]"),
])
def test_bad_configs_fail_at_construction(paramwise, match):
    with pytest.raises(ValueError, match=match):
        ConvNeXtLayerDecayOptimizerConstructor(dict(optimizer=dict(type='AdamW', lr=1e-4)), paramwise)


@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
def test_bad_num_layers_names_valid_range(decay_type):
    with pytest.raises(ValueError, match=r'num_layers=2 is invalid .*integers >= 3 \(default 6\)'):
        build_layer_decay(Detector(ConvNeXt('tiny')), decay_rate=0.7, decay_type=decay_type, num_layers=2)
    with pytest.raises(ValueError, match='4-stage'):
        validate_num_layers(6, [1, 1, 1], decay_type)


def test_cascade_mask_rcnn_from_shipped_config_gets_expected_groups():
    """The real thing: Cascade Mask R-CNN ConvNeXt-T (lr 2e-4, layer_wise 0.7, num_layers 6) from its config."""
    import os
    import sys
    from mmdet.registry import MODELS
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from convnext_backbone.tools.common import adapt_to_machine, load_config
    root = os.path.join(os.path.dirname(__file__), '..')
    cfg = load_config(os.path.join(root, 'configs', 'detection', 'cascade_convnext_t_3x.py'))
    cfg.model.backbone.pop('init_cfg')
    adapt_to_machine(cfg)  # SyncBN -> BN, fp32 on this CPU machine; the grouping is the same
    init_default_scope('mmdet')
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    groups = lr_and_decay(wrapper, model)
    lr = 2e-4
    expected = {
        'backbone.downsample_layers.0.0.weight': (lr * 0.7 ** 7, 0.05),
        'backbone.stages.0.2.pwconv1.weight': (lr * 0.7 ** 6, 0.05),
        'backbone.stages.1.0.gamma': (lr * 0.7 ** 5, 0.0),
        'backbone.stages.2.8.dwconv.weight': (lr * 0.7 ** 2, 0.05),
        'backbone.stages.3.2.norm.weight': (lr * 0.7, 0.0),
        'backbone.norm2.weight': (lr, 0.0),
        'neck.fpn_convs.0.conv.weight': (lr, 0.05),
        'roi_head.bbox_head.2.shared_convs.3.bn.weight': (lr, 0.0),  # SyncBN (BN here): no decay
        'roi_head.bbox_head.2.shared_convs.3.conv.weight': (lr, 0.05),
        'roi_head.mask_head.0.conv_logits.bias': (lr, 0.0),
    }
    for name, (want_lr, want_wd) in expected.items():
        assert groups[name][0] == pytest.approx(want_lr), name
        assert groups[name][1] == want_wd, name
    assert wrapper.optimizer.param_groups[0]['lr'] == lr
    assert len(groups) == sum(1 for p in model.parameters() if p.requires_grad)


def test_optimizer_step_compiles():
    """mmengine's ``compile=True`` compiles ``train_step`` and with it the optimizer step: dynamo cannot iterate
    the ConfigDicts OPTIMIZERS.build makes of the groups, so the constructor hands torch plain dicts. (Dynamo is
    what fails on ConfigDicts, so the eager backend proves it without inductor's code generation.)"""
    import copy
    torch.manual_seed(0)
    model = ConvNeXt(TINY, out_indices=(3,))
    twin = copy.deepcopy(model)
    from mmengine.config import ConfigDict
    wrappers = [ConvNeXtLayerDecayOptimizerConstructor(  # a ConfigDict, as configs give it
        ConfigDict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD)),
        paramwise_cfg=dict(decay_rate=0.7, num_layers=4, backbone_prefix=''))(m) for m in (model, twin)]
    assert all(type(g) is dict for w in wrappers for g in w.optimizer.param_groups)
    x = torch.randn(1, 3, 32, 32)
    for m, wrapper, step in zip((model, twin), wrappers,
                                (wrappers[0].optimizer.step, torch.compile(wrappers[1].optimizer.step, backend='eager'))):
        m(x)[0].square().mean().backward()
        step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
