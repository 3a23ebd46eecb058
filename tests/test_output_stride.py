"""output_stride 16 / 8: timm's dilated ConvNeXt (same features with the same weights), the same parameters as the
paper's network, the per-stage strides, the CPU kernels running dilated blocks (against the plain ops), with_cp,
frozen stages, channels_last and layer decay at a dilated stride, and one clear error for every bad value.
(Export at stride 8: tests/test_export.py; the DeepLabV3+ OS8 recipe: test_architectures / test_segmentation.)"""
import pytest
import timm
import torch

from convnext_backbone import ConvNeXt, cpu_kernels
from convnext_backbone.convnext import Block, PadConv2d
from convnext_backbone.tools import benchmark
from helpers import (DEEP, build_layer_decay, layer_norm_2d, lr_and_decay, official_convnext, outputs_and_grads,
                     pretrained, randomize_, weighted_loss)

STRIDES = {None: ((4, 2, 2, 2), (1, 1, 1, 1), [4, 8, 16, 32]),
           32: ((4, 2, 2, 2), (1, 1, 1, 1), [4, 8, 16, 32]),
           16: ((4, 2, 2, 1), (1, 1, 1, 2), [4, 8, 16, 16]),
           8: ((4, 2, 1, 1), (1, 1, 2, 4), [4, 8, 8, 8])}


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny models: see conftest.one_thread


@pytest.mark.parametrize('output_stride', [16, 8])
@pytest.mark.parametrize('timm_name,arch,v2,size', [
    ('convnext_atto', 'atto', False, (64, 96)), ('convnextv2_atto', 'atto', True, (64, 96)),
    ('convnext_tiny', 'tiny', False, (64, 64)), ('convnextv2_tiny', 'tiny', True, (64, 64))])
def test_timm_features_at_output_stride(tmp_path, timm_name, arch, v2, size, output_stride):
    """timm's features_only model at the same output_stride, its weights loaded into ours: the same four maps
    (ours through identity output norms) and the same strides."""
    reference = randomize_(timm.create_model(timm_name, pretrained=False, features_only=True,
                                             output_stride=output_stride)).eval()
    torch.save(benchmark.timm_features_layout(reference.state_dict()), tmp_path / 'timm.pth')
    ours = pretrained(tmp_path / 'timm.pth', arch=arch, use_grn=v2, layer_scale_init_value=0 if v2 else 1e-6,
                       output_stride=output_stride)
    assert ours.out_strides == reference.feature_info.reduction() == STRIDES[output_stride][2]
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs, feats = ours(x), reference(x)
    assert [o.shape for o in outs] == [f.shape for f in feats]
    for out, feat in zip(outs, feats):
        assert (out - layer_norm_2d(feat)).abs().max() < 1e-5


@pytest.mark.parametrize('output_stride', [None, 32, 16, 8])
def test_strides_dilations_and_out_strides(output_stride):
    strides, dilations, out_strides = STRIDES[output_stride]
    model = ConvNeXt(DEEP, output_stride=output_stride)
    assert (model.strides, model.dilations, model.out_strides) == (strides, dilations, out_strides)
    assert [block.dwconv.dilation for stage in model.stages for block in stage] == [
        (d, d) for d, depth in zip(dilations, DEEP['depths']) for _ in range(depth)]
    assert model.out_channels == DEEP['channels']  # unchanged
    subset = ConvNeXt(DEEP, output_stride=output_stride, out_indices=(1, 3))
    assert subset.out_strides == [out_strides[1], out_strides[3]]
    outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape[2:]) for o in outs] == [(64 // s, 96 // s) for s in out_strides]


def test_default_and_32_are_the_papers_network_bit_for_bit():
    default = randomize_(ConvNeXt(DEEP)).eval()
    os32 = ConvNeXt(DEEP, output_stride=32).eval()
    os32.load_state_dict(default.state_dict())
    assert repr(default) == repr(os32) and 'dilation' not in repr(default) and 'PadConv2d' not in repr(default)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(default(x), os32(x)))


@pytest.mark.parametrize('output_stride', [16, 8])
@pytest.mark.parametrize('kwargs', [dict(), dict(use_grn=True, layer_scale_init_value=0.0),
                                    dict(linear_pw_conv=False)], ids=['v1', 'v2', 'conv_pw'])
def test_same_parameters_as_the_papers_network(output_stride, kwargs):
    """Dilation changes no weight's shape: the state dict (keys and shapes) is the OS32 model's, so every
    checkpoint layout loads as before (the official one strictly, here)."""
    def shapes(model):
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}
    dilated = ConvNeXt(DEEP, output_stride=output_stride, **kwargs)
    assert shapes(dilated) == shapes(ConvNeXt(DEEP, **kwargs))
    official = randomize_(official_convnext(DEEP, use_grn=kwargs.get('use_grn', False),
                                            layer_scale_init_value=kwargs.get('layer_scale_init_value', 1e-6)))
    dilated.load_state_dict(official.state_dict())  # strict (the official keys are ours, output norms included)
    assert torch.equal(dilated.downsample_layers[3][1].weight, official.downsample_layers[3][1].weight)


@pytest.mark.parametrize('output_stride', [16, 8])
def test_dilated_blocks_run_the_kernels_equal_to_plain_ops(output_stride, monkeypatch):
    """The fused kernels implement the dilated depthwise conv: every block runs them (the MLP kernels, and in
    training convnext::dwconv with its fast weight gradient at the stage's dilation), in inference and training,
    with the plain ops' outputs and gradients."""
    from torch.profiler import ProfilerActivity, profile
    model = randomize_(ConvNeXt(DEEP, output_stride=output_stride))
    dilations = STRIDES[output_stride][1]
    assert all(block.fast_path_ok for stage in model.stages for block in stage)
    blocks = sum(DEEP['depths'])
    x = torch.randn(2, 3, 64, 64)
    used, dwconv = [], cpu_kernels.dwconv  # the dilation each block's kernel gets
    monkeypatch.setattr(cpu_kernels, 'dwconv', lambda x, w, b, d: used.append(d) or dwconv(x, w, b, d))
    for train in (False, True):
        model.train(train)
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(train), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            outs = model(x)
            if train:
                weighted_loss(outs).backward()
        calls = {e.key: e.count for e in prof.key_averages() if e.key.startswith('convnext::')}
        if train:
            assert calls == {'convnext::dwconv': blocks, 'convnext::dwconv_weight_grad': blocks,
                             'convnext::mlp': blocks, 'convnext::mlp_backward': blocks}, calls
            assert used == [d for stage, d in zip(model.stages, dilations) for _ in stage]
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            model.zero_grad(set_to_none=True)
        else:
            assert calls == {'convnext::mlp_inference': blocks}, calls
        with cpu_kernels.plain_ops(), torch.set_grad_enabled(train):
            expected = model(x)
            if train:
                weighted_loss(expected).backward()
        assert all((a - b).abs().max() < 1e-5 for a, b in zip(outs, expected))
        if train:
            for name, p in model.named_parameters():
                assert (grads[name] - p.grad).abs().max() <= 1e-5 * max(1.0, p.grad.abs().max().item()), name


def test_training_step_with_cp_frozen_stages_and_channels_last_at_output_stride_8(monkeypatch):
    torch.manual_seed(0)
    plain = randomize_(ConvNeXt(DEEP, output_stride=8, frozen_stages=1, drop_path_rate=0.2)).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    outs_plain, grads_plain = outputs_and_grads(plain, x)
    calls = []
    forward = Block.forward
    monkeypatch.setattr(Block, 'forward', lambda self, x: calls.append(1) or forward(self, x))
    for kwargs in (dict(with_cp=True), dict(channels_last=True)):
        calls.clear()
        other = ConvNeXt(DEEP, output_stride=8, frozen_stages=1, drop_path_rate=0.2, **kwargs).train()
        other.load_state_dict(plain.state_dict())
        torch.manual_seed(1)  # the same drop-path masks
        outs, grads = outputs_and_grads(other, x)
        for a, b in zip(outs, outs_plain):
            assert torch.allclose(a, b, atol=1e-6), kwargs
        for name, g in grads_plain.items():
            frozen = name.startswith(('downsample_layers.0.', 'stages.0.'))
            assert (grads[name] is None) == frozen == (g is None), name
            assert frozen or (torch.isfinite(grads[name]).all() and torch.allclose(grads[name], g, atol=1e-6)), name
        if kwargs.get('with_cp'):  # the unfrozen blocks before the last stage ran again in backward
            assert len(calls) == sum(DEEP['depths']) + sum(DEEP['depths'][1:3])
        else:
            assert all(o.is_contiguous(memory_format=torch.channels_last) for o in outs)


def test_layer_decay_groups_do_not_change_with_output_stride():
    """A parameter's depth is its name's: the same groups (lr, weight decay, parameters) at OS8 as at OS32."""
    def groups(output_stride):
        with torch.device('meta'):
            model = ConvNeXt('tiny', output_stride=output_stride)
        return lr_and_decay(build_layer_decay(model, decay_rate=0.7, decay_type='layer_wise', num_layers=6,
                                              backbone_prefix=''), model)
    os32 = groups(None)
    assert groups(8) == os32 and len(set(os32.values())) > 6


@pytest.mark.parametrize('output_stride', [4, 12, 0, -8, 64, 16.0, '16', True, [16]])
def test_bad_output_stride_names_the_valid_values(output_stride):
    with pytest.raises(ValueError, match=r'output_stride must be None or one of 8, 16, 32 \(the strides this '
                                         r"arch's stages after the first have with stem_patch_size 4\), got "):
        ConvNeXt(DEEP, output_stride=output_stride)


def test_output_stride_on_other_stage_counts_and_stems():
    """The rule is the stride stages 1.. reach: a 3-stage arch (strides 4, 8, 16) takes 8 or 16, not 32; a
    one-stage arch has nothing to dilate; a 2-pixel stem shifts every value."""
    three = dict(depths=[1, 1, 1], channels=[8, 16, 24])
    model = ConvNeXt(three, output_stride=8)
    assert (model.strides, model.dilations, model.out_strides) == ((4, 2, 1), (1, 1, 2), [4, 8, 8])
    assert ConvNeXt(three, output_stride=16).out_strides == ConvNeXt(three).out_strides == [4, 8, 16]
    assert [tuple(o.shape[2:]) for o in model(torch.randn(1, 3, 32, 32))] == [(8, 8), (4, 4), (4, 4)]
    with pytest.raises(ValueError, match=r'None or one of 8, 16 \(.*\), got 32'):
        ConvNeXt(three, output_stride=32)
    with pytest.raises(ValueError, match='this arch has one stage, no downsampling layer to keep at stride 1'):
        ConvNeXt(dict(depths=[1], channels=[8]), output_stride=8)
    stem2 = ConvNeXt(DEEP, stem_patch_size=2, output_stride=4)
    assert stem2.out_strides == [2, 4, 4, 4]
    assert isinstance(stem2.downsample_layers[2][1], PadConv2d)
    with pytest.raises(ValueError, match=r'None or one of 4, 8, 16 \(.*stem_patch_size 2\), got 32'):
        ConvNeXt(DEEP, stem_patch_size=2, output_stride=32)
