"""Issue 18: ours is a superset of mmpretrain 1.2's ConvNeXt (same arguments, same numbers) and takes timm's
ablation knobs (kernel sizes, conv bias, ls_init_value) with timm's numbers.

mmpretrain's ConvNeXt and ImageClassifier and timm's ConvNeXt are the references: the same random weights
(every norm, layer scale and GRN randomised) loaded into both, forward and backward compared."""
import pytest
import timm.models.convnext as timm_convnext
import torch
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint
from mmpretrain.models.backbones.convnext import ConvNeXt as MMPretrainConvNeXt
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS

import convnext_backbone.settings as settings_module
from convnext_backbone import ConvNeXt, convert_from_ours, convert_state_dict, cpu_kernels
from helpers import DEEP, assert_close, autograd_nodes, randomize_

TOL = 1e-5


def _grads(model, x, outs):
    """Input and parameter gradients of a fixed random projection of the outputs."""
    gen = torch.Generator().manual_seed(7)
    loss = sum((out * torch.randn(out.shape, generator=gen)).sum() for out in outs)
    x.grad = None
    model.zero_grad()
    loss.backward()
    return x.grad.clone(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


def _as_linear(value):
    return value.flatten(1) if value.ndim == 4 and value.shape[-2:] == (1, 1) else value


def assert_same_model(ours, theirs, theirs_format, size=64, in_channels=3, final_norm=None, forward=None):
    """Outputs (train and eval) and all gradients of ``ours`` equal ``theirs`` (weights already shared).

    ``final_norm``: (our name, their name) of a norm whose names no conversion maps (timm's pooled head.norm);
    ``forward``: how to run ``theirs`` when it is not ``theirs(x)``."""
    forward = forward or theirs
    x = torch.randn(2, in_channels, size, size, generator=torch.Generator().manual_seed(3))
    for train in (True, False):
        ours.train(train)
        theirs.train(train)
        x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        outs_ours, outs_theirs = ours(x_ours), forward(x_theirs)
        assert len(outs_ours) == len(outs_theirs)
        for a, b in zip(outs_ours, outs_theirs):
            assert a.shape == b.shape
            assert (a - b).abs().max() < TOL  # features are O(1): absolute
        if not train:
            continue
        grad_x, grads_ours = _grads(ours, x_ours, outs_ours)
        grad_x_theirs, grads_theirs = _grads(theirs, x_theirs, outs_theirs)
        assert_close(grad_x, grad_x_theirs, 'input', tol=TOL)
        mapped = convert_state_dict(grads_theirs, theirs_format, is_classifier=False).state_dict
        if final_norm:
            for suffix in ('weight', 'bias'):
                mapped[f'{final_norm[0]}.{suffix}'] = grads_theirs[f'{final_norm[1]}.{suffix}']
        assert set(mapped) == set(grads_ours)
        for name, grad in grads_ours.items():
            assert_close(_as_linear(grad), _as_linear(mapped[name]), name, tol=TOL)
    ours.eval(), theirs.eval()
    with torch.no_grad():  # the inference kernels too
        for a, b in zip(ours(x), forward(x)):
            assert (a - b).abs().max() < TOL


MMPRETRAIN_CASES = {
    'defaults (pooled, last stage)': dict(),
    'dense, all stages': dict(gap_before_final_norm=False, out_indices=(0, 1, 2, 3)),
    'linear_pw_conv=False': dict(linear_pw_conv=False, out_indices=(0, 1, 2, 3), gap_before_final_norm=False),
    'linear_pw_conv=False, pooled': dict(linear_pw_conv=False),
    'V2 (GRN, no layer scale)': dict(use_grn=True, layer_scale_init_value=0.0, out_indices=(1, 3)),
    'V2, linear_pw_conv=False': dict(use_grn=True, layer_scale_init_value=0.0, linear_pw_conv=False,
                                     gap_before_final_norm=False, out_indices=(0, 2, 3)),
    'stem_patch_size=2': dict(stem_patch_size=2, gap_before_final_norm=False, out_indices=(0, 3)),
    'stem_patch_size=8, linear_pw_conv=False': dict(stem_patch_size=8, linear_pw_conv=False),
    'norm_cfg eps 1e-3': dict(norm_cfg=dict(type='LN2d', eps=1e-3), gap_before_final_norm=False,
                              out_indices=(0, 1, 2, 3)),
    'norm_cfg without eps (1e-5)': dict(norm_cfg=dict(type='LN2d'), linear_pw_conv=False),
    'act_cfg GELU': dict(act_cfg=dict(type='GELU'), out_indices=(0, 1, 2, 3)),
    'act_cfg ReLU': dict(act_cfg=dict(type='ReLU'), gap_before_final_norm=False, out_indices=(0, 1, 2, 3)),
    'act_cfg tanh GELU, linear_pw_conv=False': dict(act_cfg=dict(type='GELU', approximate='tanh'),
                                                    linear_pw_conv=False, out_indices=(1, 2)),
    'act_cfg SiLU, V2': dict(act_cfg=dict(type='SiLU'), use_grn=True, layer_scale_init_value=0.0),
    'in_channels=1': dict(in_channels=1, gap_before_final_norm=False, out_indices=(0, 1, 2, 3)),
    'all at once': dict(in_channels=4, stem_patch_size=2, norm_cfg=dict(type='LN2d', eps=1e-4),
                        act_cfg=dict(type='ReLU'), linear_pw_conv=False, use_grn=True,
                        layer_scale_init_value=0.5, out_indices=(1, 3), gap_before_final_norm=True),
}


def test_mmpretrain_arguments_in_its_positional_order():
    """mmpretrain's signature is ours up to its last argument (ours then adds timm's and the official names). The
    defaults that read differently: the two ours are dense in (None, resolved by the scope), and None / NOT_GIVEN
    for mmpretrain's norm, activation, layer scale and init (the same values: test_same_arguments_same_numbers)."""
    import inspect
    theirs = list(inspect.signature(MMPretrainConvNeXt).parameters.values())
    ours = list(inspect.signature(ConvNeXt).parameters.values())
    assert [p.name for p in ours[:len(theirs)]] == [p.name for p in theirs]
    differ = {p.name for p, q in zip(ours, theirs) if p.default != q.default}
    assert differ == {'out_indices', 'gap_before_final_norm', 'norm_cfg', 'act_cfg', 'layer_scale_init_value',
                      'init_cfg'}
    positional = ConvNeXt(DEEP, 4, 2, None, None, False, True, 0.1, 0.0, (1, 3), 1, False, True)
    assert (positional.in_channels, positional.strides[0], positional.linear_pw_conv, positional.use_grn) == (
        4, 2, False, True)
    assert (positional.out_indices, positional.frozen_stages, positional.with_cp) == ((1, 3), 1, True)


@pytest.mark.parametrize('kwargs', list(MMPRETRAIN_CASES.values()), ids=list(MMPRETRAIN_CASES))
def test_same_arguments_same_numbers_as_mmpretrain(kwargs):
    """Built with the same arguments (mmpretrain's defaults passed explicitly where ours differ), the same
    random weights give mmpretrain's outputs and gradients, on the fast path and on the plain one."""
    kwargs = dict(kwargs)
    theirs = randomize_(MMPretrainConvNeXt(arch=DEEP, **kwargs))
    kwargs.setdefault('out_indices', -1)
    kwargs.setdefault('gap_before_final_norm', True)
    ours = ConvNeXt(arch=DEEP, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    assert_same_model(ours, theirs, 'mmpretrain', in_channels=kwargs.get('in_channels', 3))


@pytest.mark.parametrize('theirs_linear', [True, False])
def test_checkpoint_of_either_pointwise_form_loads_into_the_other(theirs_linear):
    """Linear and 1x1-conv pointwise weights are reshaped on loading: mmpretrain's of one form into ours of the
    other, and ours into ours both ways."""
    theirs = randomize_(MMPretrainConvNeXt(arch=DEEP, linear_pw_conv=theirs_linear, out_indices=(0, 1, 2, 3),
                                           gap_before_final_norm=False))
    ours = ConvNeXt(arch=DEEP, linear_pw_conv=not theirs_linear)
    ours.load_state_dict(theirs.state_dict())
    assert ours.stages[1][1].pwconv1.weight.ndim == (2 if not theirs_linear else 4)
    assert_same_model(ours, theirs, 'mmpretrain')
    back = ConvNeXt(arch=DEEP, linear_pw_conv=theirs_linear)
    back.load_state_dict(ours.state_dict())
    for name, value in back.state_dict().items():
        assert value.shape == ours.state_dict()[name].shape or _as_linear(value).equal(
            _as_linear(ours.state_dict()[name])), name


def test_fast_path_is_taken_only_for_the_configurations_it_implements():
    """Defaults and exact GELU (any eps, kernel size, bias) keep the fused CPU nodes; the rest the plain ops."""
    def nodes(**kwargs):
        model = ConvNeXt(arch=dict(depths=[1], channels=[8]), **kwargs).train()
        graph = autograd_nodes(model(torch.randn(1, 3, 16, 16))[0])
        fused = 'GeneratedBackwardFor_convnext_mlp_defaultBackward' in graph
        assert fused == (model.stages[0][0].fast_path_ok and cpu_kernels.ONEDNN)
        return model.stages[0][0].fast_path_ok

    assert nodes()
    assert nodes(act_cfg=dict(type='GELU'), kernel_size=3, conv_bias=False, norm_cfg=dict(type='LN', eps=1e-5))
    assert not nodes(linear_pw_conv=False)
    assert not nodes(act_cfg=dict(type='ReLU'))
    assert not nodes(act_cfg=dict(type='GELU', approximate='tanh'))


TIMM_CASES = {
    'kernel sizes per stage, no conv bias': dict(kernel_sizes=(3, 5, 7, 9), conv_bias=False, ls_init_value=0.5),
    'kernel 11, V2 without layer scale': dict(kernel_sizes=11, use_grn=True, ls_init_value=None),
    'kernel 3, ls_init_value 1e-6': dict(kernel_sizes=3, ls_init_value=1e-6),
}


@pytest.mark.parametrize('kwargs', list(TIMM_CASES.values()), ids=list(TIMM_CASES))
def test_timm_knobs_give_timm_numbers(kwargs):
    """timm's kernel_sizes / conv_bias / ls_init_value under timm's names; weights loaded from timm's layout,
    its pooled head.norm into our last norm (gap_before_final_norm)."""
    arch = dict(depths=DEEP['depths'], dims=DEEP['channels'])
    theirs = randomize_(timm_convnext.ConvNeXt(**arch, num_classes=0, **kwargs))
    ours = ConvNeXt(**arch, out_indices=-1, gap_before_final_norm=True, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    assert [s[0].dwconv.kernel_size for s in ours.stages] == [s.blocks[0].conv_dw.kernel_size for s in theirs.stages]
    # timm's features pooled, then its head norm: ours in gap mode
    assert_same_model(ours, theirs, 'timm', final_norm=('norm3', 'head.norm'),
                      forward=lambda x: (theirs.forward_head(theirs.forward_features(x), pre_logits=True),))


@pytest.mark.parametrize('depths', [[2, 2, 6, 2], [3, 3, 9, 3], [3, 3, 27, 3]], ids=['atto', 'tiny', 'small'])
def test_layer_depth_for_mmpretrain_layer_decay(depths):
    """mmpretrain's LearningRateDecayOptimWrapperConstructor asks the backbone for get_layer_depth."""
    arch = dict(depths=depths, channels=[8, 8, 8, 8])
    theirs, ours = MMPretrainConvNeXt(arch=arch), ConvNeXt(arch=arch, out_indices=-1, gap_before_final_norm=True)
    names = [f'backbone.{name}' for name, _ in theirs.named_parameters()] + ['head.fc.weight']
    assert [ours.get_layer_depth(n, 'backbone.') for n in names] == [
        theirs.get_layer_depth(n, 'backbone.') for n in names]


@pytest.mark.parametrize('conv_mlp', [False, True])
def test_channels_first_model_exports_to_timm(conv_mlp):
    """A linear_pw_conv=False model's 4-D pointwise weights export to timm's linear or conv MLP alike."""
    ours = randomize_(ConvNeXt(arch=DEEP, linear_pw_conv=False))
    theirs = timm_convnext.ConvNeXt(depths=DEEP['depths'], dims=DEEP['channels'], conv_mlp=conv_mlp)
    converted = convert_from_ours(ours.state_dict(), 'timm', conv_mlp=conv_mlp).state_dict
    missing, unexpected = theirs.load_state_dict(converted, strict=False)
    assert not unexpected and all(k.startswith('head.') for k in missing)
    assert torch.equal(theirs.stages[1].blocks[1].mlp.fc2.weight.flatten(1),
                       ours.stages[1][1].pwconv2.weight.flatten(1))


def test_norm_cfg_requires_grad_false_freezes_the_same_norms_as_mmpretrain():
    cfg = dict(type='LN2d', eps=1e-6, requires_grad=False)
    theirs = MMPretrainConvNeXt(arch=DEEP, norm_cfg=cfg)
    ours = ConvNeXt(arch=DEEP, norm_cfg=cfg, out_indices=-1, gap_before_final_norm=True).train()
    frozen = [sorted(n for n, p in m.named_parameters() if not p.requires_grad) for m in (ours, theirs)]
    assert frozen[0] == frozen[1] and len(frozen[0]) == 2 * (4 + sum(DEEP['depths']) + 1)  # stem/downsample, blocks, output


def test_kernel_size_one_or_per_stage_and_ls_alias():
    model = ConvNeXt(arch=DEEP, kernel_size=[3, 5, 7, 9], conv_bias=False, ls_init_value=None)
    assert [s[0].dwconv.kernel_size for s in model.stages] == [(3, 3), (5, 5), (7, 7), (9, 9)]
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1)
    assert model.downsample_layers[0][0].bias is None and model.downsample_layers[2][1].bias is None
    assert model.stages[0][0].gamma is None and model.layer_scale_init_value == 0
    assert ConvNeXt(arch=DEEP, kernel_size=5, kernel_sizes=(5, 5, 5, 5)).kernel_sizes == [5, 5, 5, 5]
    same = ConvNeXt(arch=DEEP, layer_scale_init_value=0.25, ls_init_value=0.25)
    assert torch.equal(same.stages[0][0].gamma, torch.full((8,), 0.25))


def _classifier(backbone, num_classes=5):
    return MMPRETRAIN_MODELS.build(dict(
        type='ImageClassifier', backbone=backbone,
        head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=DEEP['channels'][-1],
                  loss=dict(type='CrossEntropyLoss'))))


@pytest.fixture
def mmpretrain_scope():
    import mmpretrain.models  # noqa: F401  (registers ImageClassifier, LinearClsHead, ...)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


def test_image_classifier_with_ours_gives_mmpretrain_logits(tmp_path, mmpretrain_scope, monkeypatch, mm_log):
    """An mmpretrain config that names ours (no out_indices / gap given: mmpretrain's defaults, logged once)
    and mmpretrain's classification checkpoint: mmpretrain's logits, loaded whole or through init_cfg."""
    monkeypatch.setattr(settings_module, '_logged_mmpretrain_defaults', False)
    theirs = _classifier(dict(type='ConvNeXt', arch=DEEP, use_grn=True, layer_scale_init_value=0.0))
    assert type(theirs.backbone) is MMPretrainConvNeXt
    randomize_(theirs)
    path = str(tmp_path / 'mmpretrain_cls.pth')
    torch.save({'state_dict': theirs.state_dict(), 'meta': {}}, path)

    ours = _classifier(dict(type='convnext_backbone.ConvNeXt', arch=DEEP, use_grn=True, layer_scale_init_value=0.0))
    _classifier(dict(type='convnext_backbone.ConvNeXt', arch=DEEP))
    assert type(ours.backbone) is ConvNeXt
    assert ours.backbone.out_indices == (3,) and ours.backbone.gap_before_final_norm
    assert sum("mmpretrain's defaults" in m for m in mm_log) == 1  # logged once, not per model
    load_checkpoint(theirs, path)
    load_checkpoint(ours, path)
    x = torch.randn(3, 3, 64, 64)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        logits = theirs(x, mode='tensor')
        assert (ours(x, mode='tensor') - logits).abs().max() < TOL

    # init_cfg: the backbone's last norm takes the classifier's final pooled norm (it used to be skipped)
    backbone = ConvNeXt(arch=DEEP, use_grn=True, layer_scale_init_value=0.0,
                        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    backbone.init_weights()
    assert torch.equal(backbone.norm3.weight, theirs.backbone.norm3.weight)
    with torch.no_grad():
        assert (backbone.eval()(x)[0] - theirs.backbone(x)[0]).abs().max() < TOL


def test_dense_mode_still_skips_the_classifier_final_norm(tmp_path, mm_log):
    """Official classification checkpoint (pooled ``norm`` + ``head``): gap mode loads ``norm`` into the last
    output norm and reproduces the classifier's features; dense mode leaves the output norms fresh."""
    source = randomize_(ConvNeXt(arch=DEEP, out_indices=-1, gap_before_final_norm=True))
    state = {k: v for k, v in source.state_dict().items() if not k.startswith('norm3.')}
    state.update({'norm.weight': source.norm3.weight.detach(), 'norm.bias': source.norm3.bias.detach(),
                  'head.weight': torch.randn(5, 32), 'head.bias': torch.zeros(5)})
    path = str(tmp_path / 'official_cls.pth')
    torch.save({'model': state}, path)
    init = dict(type='Pretrained', checkpoint=path)
    pooled = ConvNeXt(arch=DEEP, out_indices=-1, gap_before_final_norm=True, init_cfg=init)
    pooled.init_weights()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (pooled.eval()(x)[0] - source.eval()(x)[0]).abs().max() < TOL
    assert any('loads into norm3' in m for m in mm_log)
    dense = ConvNeXt(arch=DEEP, init_cfg=init)
    dense.init_weights()
    assert torch.equal(dense.norm3.weight, torch.ones(32))  # fresh, as before
    whole = ConvNeXt(arch=DEEP, out_indices=-1, gap_before_final_norm=True)
    whole.load_state_dict(state, strict=False)  # the model's own hook, without init_cfg
    assert torch.equal(whole.norm3.bias, source.norm3.bias)


def test_defaults_ours_outside_mmpretrain_scope_mmpretrain_inside(mmpretrain_scope):
    inside = ConvNeXt(arch=DEEP)
    explicit = ConvNeXt(arch=DEEP, out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    assert (inside.out_indices, inside.gap_before_final_norm) == ((3,), True)
    assert (explicit.out_indices, explicit.gap_before_final_norm) == ((0, 1, 2, 3), False)
    with DefaultScope.overwrite_default_scope('mmdet'):
        outside = ConvNeXt(arch=DEEP)
    assert (outside.out_indices, outside.gap_before_final_norm) == ((0, 1, 2, 3), False)


def test_mmpretrain_unit_test_assertions_pass_with_ours(mmpretrain_scope):
    """mmpretrain 1.2's own ConvNeXt unit test (tests/test_models/test_backbones/test_convnext.py) with our
    class in its place, as an mmpretrain config builds it (mmpretrain's scope). Its AssertionErrors are our
    ValueErrors; images are 32 px (64 for the five-stage arch) instead of 224 to keep it fast."""
    for bad in (dict(arch='unknown'), dict(arch=dict(channels=[2, 3, 4, 5])),
                dict(arch=dict(depths=[2, 3, 4], channels=[2, 3, 4, 5]))):
        with pytest.raises(ValueError):
            ConvNeXt(**bad)

    def run(model, size=32):
        return model(torch.randn(1, 3, size, size))

    model = ConvNeXt(arch='tiny', out_indices=-1)
    model.init_weights()
    model.train()
    feat = run(model)
    assert len(feat) == 1 and feat[0].shape == (1, 768)

    feat = run(ConvNeXt(arch='small', out_indices=(0, 1, 2, 3)))
    assert [f.shape for f in feat] == [(1, 96), (1, 192), (1, 384), (1, 768)]

    model = ConvNeXt(arch=dict(depths=[2, 3, 4, 5, 6], channels=[16, 32, 64, 128, 256]), out_indices=(0, 1, 2, 3, 4))
    model.init_weights()
    model.train()
    feat = run(model, 64)
    assert [f.shape for f in feat] == [(1, 16), (1, 32), (1, 64), (1, 128), (1, 256)]

    feat = run(ConvNeXt(arch='small', out_indices=(0, 1, 2, 3), gap_before_final_norm=False))
    assert [f.shape for f in feat] == [(1, 96, 8, 8), (1, 192, 4, 4), (1, 384, 2, 2), (1, 768, 1, 1)]

    model = ConvNeXt(arch='small', out_indices=(0, 1, 2, 3), frozen_stages=2)
    model.init_weights()
    model.train()
    for i in range(2):
        assert not model.downsample_layers[i].training and not model.stages[i].training
    for i in range(2, 4):
        assert model.downsample_layers[i].training and model.stages[i].training

    for kwargs in (dict(with_cp=True), dict(linear_pw_conv=False)):
        model = ConvNeXt(arch='tiny', out_indices=-1, **kwargs)
        model.init_weights()
        model.train()
        feat = run(model)
        assert len(feat) == 1 and feat[0].shape == (1, 768)


@pytest.mark.parametrize('kwargs,match', [
    (dict(norm_cfg=dict(type='BN')), r"norm_cfg \{'type': 'BN'\} is not supported.*type='LN2d'"),
    (dict(norm_cfg=dict(type='LN2d', eps=0)), 'eps must be a positive number'),
    (dict(norm_cfg=dict(type='LN2d', momentum=0.1)), r"keys \['momentum'\].*valid keys: type, eps"),
    (dict(norm_cfg='LN2d'), 'is not supported'),
    (dict(stem_patch_size=0), 'stem_patch_size .* must be a positive int, got 0'),
    (dict(stem_patch_size=2.0), 'stem_patch_size .* must be a positive int'),
    (dict(act_cfg=dict(type='NoSuchActivation')), "act_cfg .*NoSuchActivation.* cannot be built.*type='ReLU'"),
    (dict(act_cfg='GELU'), "act_cfg must be a dict with a 'type'"),
    (dict(kernel_size=6), 'kernel_size must be an odd positive int .* got 6'),
    (dict(kernel_size=[3, 5]), 'sequence of 4'),
    (dict(kernel_size=7, kernel_sizes=5), '`kernel_size`=7 and its alias `kernel_sizes`=5 disagree'),
    (dict(layer_scale_init_value=1e-6, ls_init_value=0.1), 'alias `ls_init_value`=0.1 disagree'),
    (dict(layer_scale_init_value=1e-6, ls_init_value=None), 'disagree'),
    (dict(linear_pw_conv='no'), 'linear_pw_conv must be True or False'),
    (dict(gap_before_final_norm=1), 'gap_before_final_norm must be True or False'),
    (dict(conv_bias=None), 'conv_bias must be True or False'),
])
def test_rejected_values_raise_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvNeXt(arch=DEEP, **kwargs)
