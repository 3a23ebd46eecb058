"""Checkpoint interop: every layout loads (through init_cfg and load_state_dict), equals timm numerically,
classification-only keys are skipped and reported, and every bad checkpoint fails with a clear error."""
import re

import pytest
import timm
import torch
from safetensors.torch import save_file

from convnext_backbone import CheckpointError, ConvNeXt, convert_from_ours, convert_state_dict
from convnext_backbone.checkpoint import convert_key, detect_format, split_backbone
from helpers import ATTO, ROOT, TINY, layer_norm_2d, official_convnext, pretrained, randomize_


def _timm_stage_features(model, x):
    feats, y = [], model.stem(x)
    for stage in model.stages:
        y = stage(y)
        feats.append(y)
    return feats


# --- pure key conversion -----------------------------------------------------------------------------

@pytest.mark.parametrize('key,fmt,expected', [
    ('stem.0.weight', 'timm', 'downsample_layers.0.0.weight'),
    ('stem.1.bias', 'timm', 'downsample_layers.0.1.bias'),
    ('stages.2.downsample.0.weight', 'timm', 'downsample_layers.2.0.weight'),
    ('stages.2.downsample.1.bias', 'timm', 'downsample_layers.2.1.bias'),
    ('stages.1.blocks.3.conv_dw.weight', 'timm', 'stages.1.3.dwconv.weight'),
    ('stages.1.blocks.3.norm.weight', 'timm', 'stages.1.3.norm.weight'),
    ('stages.1.blocks.3.mlp.fc1.weight', 'timm', 'stages.1.3.pwconv1.weight'),
    ('stages.1.blocks.3.mlp.fc2.bias', 'timm', 'stages.1.3.pwconv2.bias'),
    ('stages.1.blocks.3.mlp.grn.weight', 'timm', 'stages.1.3.grn.gamma'),
    ('stages.1.blocks.3.mlp.grn.bias', 'timm', 'stages.1.3.grn.beta'),
    ('stages.1.blocks.3.gamma', 'timm', 'stages.1.3.gamma'),
    ('head.norm.weight', 'timm', None),
    ('head.fc.weight', 'timm', None),
    ('stages.0.1.depthwise_conv.weight', 'mmpretrain', 'stages.0.1.dwconv.weight'),
    ('stages.0.1.pointwise_conv1.bias', 'mmpretrain', 'stages.0.1.pwconv1.bias'),
    ('stages.0.1.pointwise_conv2.weight', 'mmpretrain', 'stages.0.1.pwconv2.weight'),
    ('stages.0.1.grn.gamma', 'mmpretrain', 'stages.0.1.grn.gamma'),
    ('downsample_layers.1.0.weight', 'mmpretrain', 'downsample_layers.1.0.weight'),
    ('stages.3.2.dwconv.weight', 'official', 'stages.3.2.dwconv.weight'),
    ('norm.weight', 'official', None),
    ('head.weight', 'official', None),
    ('norm2.bias', 'official', 'norm2.bias'),
])
def test_convert_key(key, fmt, expected):
    assert convert_key(key, fmt) == expected


def test_detect_format():
    assert detect_format(['stem.0.weight', 'stages.0.blocks.0.conv_dw.weight']) == 'timm'
    assert detect_format(['downsample_layers.0.0.weight', 'stages.0.0.depthwise_conv.weight']) == 'mmpretrain'
    assert detect_format(['downsample_layers.0.0.weight', 'stages.0.0.dwconv.weight', 'head.weight']) == 'official'
    with pytest.raises(CheckpointError, match='Not a ConvNeXt checkpoint.*layer1.0.conv1.weight'):
        detect_format(['conv1.weight', 'layer1.0.conv1.weight'])


def test_split_backbone_prefixes():
    sd = {'backbone.stem.0.weight': torch.zeros(1), 'neck.x': torch.zeros(1), 'head.fc.weight': torch.zeros(1)}
    inside, outside, has_head = split_backbone(sd)
    assert list(inside) == ['stem.0.weight'] and outside == ['neck.x', 'head.fc.weight'] and has_head
    with pytest.raises(CheckpointError, match="prefix 'encoder.'"):
        split_backbone(sd, prefix='encoder')


# --- numerical equivalence with timm --------------------------------------------------------------

@pytest.mark.parametrize('timm_name,arch,v2', [
    ('convnext_atto', 'atto', False), ('convnext_tiny', 'tiny', False),
    ('convnextv2_atto', 'atto', True), ('convnextv2_tiny', 'tiny', True)])
def test_timm_weights_give_timm_features(tmp_path, timm_name, arch, v2, mm_log):
    reference = randomize_(timm.create_model(timm_name, pretrained=False)).eval()
    torch.save(reference.state_dict(), tmp_path / 'timm.pth')
    ours = pretrained(tmp_path / 'timm.pth', arch=arch, use_grn=v2, layer_scale_init_value=0 if v2 else 1e-6)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        outs = ours(x)
        feats = _timm_stage_features(reference, x)
    for out, feat in zip(outs, feats):
        assert (out - layer_norm_2d(feat)).abs().max() < 1e-5
    log = '\n'.join(mm_log)
    assert 'detected the timm layout' in log
    assert 'skipped (classification-only or outside the backbone): head.norm.weight, head.norm.bias' in log
    assert re.search(r'missing \(kept their initialisation\): norm0.weight', log)


def test_timm_conv_mlp_variant_is_reshaped(tmp_path):
    reference = randomize_(timm.create_model('convnext_atto', pretrained=False, conv_mlp=True)).eval()
    assert reference.state_dict()['stages.0.blocks.0.mlp.fc1.weight'].ndim == 4
    torch.save(reference.state_dict(), tmp_path / 'timm.pth')
    ours = pretrained(tmp_path / 'timm.pth', arch='atto')
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for out, feat in zip(ours(x), _timm_stage_features(reference, x)):
            assert (out - layer_norm_2d(feat)).abs().max() < 1e-5


def test_timm_linear_mlp_variant(tmp_path):
    reference = randomize_(timm.create_model('convnext_atto', pretrained=False, conv_mlp=False)).eval()
    torch.save(reference.state_dict(), tmp_path / 'timm.pth')
    ours = pretrained(tmp_path / 'timm.pth', arch='atto')
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for out, feat in zip(ours(x), _timm_stage_features(reference, x)):
            assert (out - layer_norm_2d(feat)).abs().max() < 1e-5


@pytest.mark.parametrize('v2', [False, True])
def test_round_trip_ours_timm_ours(v2):
    kwargs = dict(arch='atto', use_grn=v2, layer_scale_init_value=0 if v2 else 1e-6)
    ours = randomize_(ConvNeXt(**kwargs)).eval()
    to_timm = convert_from_ours(ours.state_dict(), 'timm', conv_mlp=True)  # timm's atto is conv-MLP
    assert sorted(to_timm.skipped) == sorted(k for k in ours.state_dict() if k.startswith('norm'))
    reference = timm.create_model('convnextv2_atto' if v2 else 'convnext_atto', pretrained=False)
    result = reference.load_state_dict(to_timm.state_dict, strict=False)
    assert not result.unexpected_keys and all(k.startswith('head.') for k in result.missing_keys)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours.norm0.reset_parameters()  # identity-initialised, as timm's features are compared un-normed
        assert (ours(x)[0] - layer_norm_2d(_timm_stage_features(reference.eval(), x)[0])).abs().max() < 1e-5
    linear = convert_from_ours(ours.state_dict(), 'timm')
    assert linear.state_dict['stages.0.blocks.0.mlp.fc1.weight'].ndim == 2
    back = convert_state_dict(to_timm.state_dict)
    assert back.format == 'timm'
    original = ours.state_dict()
    assert set(back.state_dict) == {k for k in original if not k.startswith('norm')}
    assert all(torch.equal(back.state_dict[k], original[k]) for k in back.state_dict)


# --- other layouts ---------------------------------------------------------------------------------

def _official(v2=False, identity_norms=False):
    model = randomize_(official_convnext(ATTO, use_grn=v2, layer_scale_init_value=0 if v2 else 1e-6)).eval()
    if identity_norms:  # as a classifier's weights give them: fresh output norms
        with torch.no_grad():
            for i in range(4):
                getattr(model, f'norm{i}').weight.fill_(1.0)
                getattr(model, f'norm{i}').bias.zero_()
    return model


def _official_classifier_state_dict(model):
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith('norm')}
    sd['norm.weight'], sd['norm.bias'] = torch.ones(320), torch.zeros(320)  # final pooled norm
    sd['head.weight'], sd['head.bias'] = torch.randn(1000, 320), torch.zeros(1000)
    return sd


@pytest.mark.parametrize('v2', [False, True])
def test_official_classification_checkpoint(tmp_path, v2, mm_log):
    ref = _official(v2, identity_norms=True)
    torch.save({'model': _official_classifier_state_dict(ref)}, tmp_path / 'official.pth')
    ours = pretrained(tmp_path / 'official.pth', arch='atto', use_grn=v2, layer_scale_init_value=0 if v2 else 1e-6)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(ours(x), ref(x)):  # both output norms identity-initialised
        assert (a - b).abs().max() < 1e-5
    log = '\n'.join(mm_log)
    assert 'detected the official layout' in log
    assert 'norm.weight, norm.bias, head.weight, head.bias' in log


def _to_mmpretrain(sd):
    out = {}
    for k, v in sd.items():
        k = k.replace('.dwconv.', '.depthwise_conv.').replace('.pwconv1.', '.pointwise_conv1.')
        k = k.replace('.pwconv2.', '.pointwise_conv2.')
        if '.grn.' in k:
            v = v.flatten()
        out['backbone.' + k] = v
    return out


@pytest.mark.parametrize('v2', [False, True])
def test_mmpretrain_classifier_checkpoint_skips_pooled_norm(tmp_path, v2, mm_log):
    ref = _official(v2, identity_norms=True)
    sd = _to_mmpretrain({k: v for k, v in ref.state_dict().items() if not k.startswith('norm')})
    sd['backbone.norm3.weight'], sd['backbone.norm3.bias'] = torch.full((320,), 3.0), torch.ones(320)
    sd['head.fc.weight'], sd['head.fc.bias'] = torch.randn(1000, 320), torch.zeros(1000)
    torch.save({'state_dict': sd, 'meta': {'epoch': 300}}, tmp_path / 'mmpretrain.pth')
    ours = pretrained(tmp_path / 'mmpretrain.pth', arch='atto', use_grn=v2,
                      layer_scale_init_value=0 if v2 else 1e-6)
    assert torch.all(ours.norm3.weight == 1)  # the classifier's pooled norm is not a dense output norm
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(ours(x), ref(x)):
        assert (a - b).abs().max() < 1e-5
    log = '\n'.join(mm_log)
    assert 'detected the mmpretrain layout' in log
    assert 'skipped (classification-only or outside the backbone): head.fc.weight, head.fc.bias, ' \
           'norm3.weight, norm3.bias' in log


def test_mmdet_model_zoo_detector_checkpoint_via_prefix(tmp_path):
    ref = _official()
    sd = _to_mmpretrain(ref.state_dict())
    sd['neck.lateral_convs.0.conv.weight'] = torch.randn(4, 40, 1, 1)
    torch.save({'state_dict': sd}, tmp_path / 'mask_rcnn.pth')
    ours = ConvNeXt(arch='atto', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'mask_rcnn.pth'),
                                               prefix='backbone.'))
    ours.init_weights()
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(ours.eval()(x), ref(x)):  # the dense norms come from the checkpoint this time
        assert (a - b).abs().max() < 1e-5


def test_official_finetuned_dense_checkpoint_and_safetensors(tmp_path):
    ref = _official(v2=True)
    sd = {'backbone.' + k: v for k, v in ref.state_dict().items()}
    sd['decode_head.conv_seg.weight'] = torch.randn(150, 512, 1, 1)
    torch.save({'state_dict': sd, 'meta': {'CLASSES': ['a']}}, tmp_path / 'upernet.pth')
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / 'upernet.safetensors'))
    x = torch.randn(1, 3, 64, 64)
    for name in ('upernet.pth', 'upernet.safetensors'):
        ours = pretrained(tmp_path / name, arch='atto', use_grn=True, layer_scale_init_value=0)
        for a, b in zip(ours(x), ref(x)):
            assert (a - b).abs().max() < 1e-5


def test_ddp_module_prefix_is_stripped(tmp_path):
    ref = _official()
    torch.save({'model': {'module.' + k: v for k, v in ref.state_dict().items()}}, tmp_path / 'ddp.pth')
    ours = pretrained(tmp_path / 'ddp.pth', arch='atto')
    x = torch.randn(1, 3, 64, 64)
    assert (ours(x)[2] - ref(x)[2]).abs().max() < 1e-5


def test_load_state_dict_converts_on_the_fly_inside_a_parent_module():
    """The path a whole detector's `load_from` takes: keys under `backbone.` in another layout."""
    ref = _official(v2=True)
    parent = torch.nn.Module()
    parent.backbone = ConvNeXt('atto', use_grn=True, layer_scale_init_value=0)
    parent.load_state_dict(_to_mmpretrain(ref.state_dict()))  # strict: every key must map
    x = torch.randn(1, 3, 64, 64)
    assert (parent.backbone.eval()(x)[3] - ref(x)[3]).abs().max() < 1e-5


def test_load_checkpoint_into_the_backbone_itself_unwraps_an_official_classifier(tmp_path):
    """mmengine's load_checkpoint of an official classifier ({'model': ...}, which mmengine does not unwrap) into a
    bare backbone: it lands, as through init_cfg."""
    from mmengine.runner import load_checkpoint
    ref = _official(identity_norms=True)
    torch.save({'model': _official_classifier_state_dict(ref)}, tmp_path / 'official.pth')
    ours = ConvNeXt('atto')
    load_checkpoint(ours, str(tmp_path / 'official.pth'))
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(ours.eval()(x), ref(x)):
        assert (a - b).abs().max() < 1e-5


def test_ema_checkpoints_load_through_init_cfg_as_the_whole_model_refusal_says(tmp_path):
    """An official training checkpoint holds 'model' and, with EMA, 'model_ema': init_cfg reads 'model' first
    and an EMA-only file's EMA; the whole model's load_from refuses the EMA-only file naming init_cfg (the same
    wrapper keys in both places)."""
    ref, ema = _official(identity_norms=True), _official(identity_norms=True)
    with torch.no_grad():
        for name, p in ema.named_parameters():
            if not name.startswith('norm'):  # the output norms stay fresh, as a classifier's file gives them
                p.add_(0.5)
    torch.save({'model': _official_classifier_state_dict(ref), 'model_ema': _official_classifier_state_dict(ema)},
               tmp_path / 'train.pth')
    torch.save({'model_ema': _official_classifier_state_dict(ema)}, tmp_path / 'ema.pth')
    x = torch.randn(1, 3, 64, 64)
    for path, expected in (('train.pth', ref), ('ema.pth', ema)):
        ours = pretrained(tmp_path / path, arch='atto')
        for a, b in zip(ours.eval()(x), expected(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    parent = torch.nn.Module()
    parent.backbone = ConvNeXt('atto')
    with pytest.raises(CheckpointError, match=r"nests its weights under 'model_ema'.*init_cfg="):
        parent.load_state_dict(torch.load(tmp_path / 'ema.pth'))


def test_a_parent_module_refuses_a_backbone_only_state_dict():
    """torch's load_state_dict too (strict or not): the keys are the parent's to place, none is the backbone's.
    (mmengine's Runner on our detector and segmentor configs: tests/test_load_from.py.)"""
    parent = torch.nn.Module()
    parent.backbone = ConvNeXt('atto')
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=r"is a backbone checkpoint \(official layout.*init_cfg="):
            parent.load_state_dict(_official().state_dict(), strict=strict)


# --- errors --------------------------------------------------------------------------------------------

def test_garbage_file_is_a_clear_error(tmp_path):
    (tmp_path / 'garbage.pth').write_bytes(b'\x00\x13not a checkpoint' * 10)
    with pytest.raises(CheckpointError, match="Cannot read checkpoint .*garbage.pth.*weights_only=True"):
        pretrained(tmp_path / 'garbage.pth', arch='atto')
    with pytest.raises(CheckpointError, match='does not exist'):
        pretrained(tmp_path / 'missing.pth', arch='atto')


def test_truncated_files_are_told_by_their_structure(tmp_path):
    """A .safetensors file whose tensors are cut off (its header intact) is told from the header's offsets; a
    legacy (pre-zip) torch file cut off shows torch's own reason."""
    save_file({'w': torch.zeros(1000)}, str(tmp_path / 'cut.safetensors'))
    data = (tmp_path / 'cut.safetensors').read_bytes()
    (tmp_path / 'cut.safetensors').write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"cut.safetensors' is truncated or corrupt"):
        pretrained(tmp_path / 'cut.safetensors', arch='atto')
    torch.save({'w': torch.zeros(1000)}, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
    data = (tmp_path / 'legacy.pth').read_bytes()
    (tmp_path / 'legacy.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"Cannot read checkpoint '.*legacy.pth': RuntimeError: "):
        pretrained(tmp_path / 'legacy.pth', arch='atto')


def test_pickled_objects_are_refused(tmp_path):
    import argparse
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'evil': argparse.Namespace(a=1)}, tmp_path / 'obj.pth')
    with pytest.raises(CheckpointError,
                       match='obj.pth.*pickles an object of type argparse.Namespace.*weights_only=True'):
        pretrained(tmp_path / 'obj.pth', arch='atto')


def test_non_convnext_checkpoint_is_a_clear_error(tmp_path):
    torch.save({'state_dict': {'conv1.weight': torch.zeros(64, 3, 7, 7)}}, tmp_path / 'resnet.pth')
    with pytest.raises(CheckpointError, match='Not a ConvNeXt checkpoint.*conv1.weight'):
        pretrained(tmp_path / 'resnet.pth', arch='atto')
    torch.save({'meta': {'x': 1}}, tmp_path / 'empty.pth')
    with pytest.raises(CheckpointError, match='no state dict of tensors'):
        pretrained(tmp_path / 'empty.pth', arch='atto')


def test_checkpoint_of_another_arch_names_key_and_shapes(tmp_path):
    torch.save(timm.create_model('convnext_atto').state_dict(), tmp_path / 'atto.pth')
    expected = re.escape("'downsample_layers.0.0.weight' has shape (40, 3, 4, 4) but ConvNeXt(depths=[2, 2, 6, 2], "
                         "channels=[48, 96, 192, 384], use_grn=False) expects (48, 3, 4, 4)")
    with pytest.raises(CheckpointError, match=expected + '.*Set the backbone `arch`'):
        pretrained(tmp_path / 'atto.pth', arch='femto')


def test_checkpoint_of_another_variant_or_depth_is_an_error(tmp_path):
    torch.save(timm.create_model('convnextv2_atto').state_dict(), tmp_path / 'v2.pth')
    with pytest.raises(CheckpointError, match=r'missing stages.0.0.gamma.*unexpected stages.0.0.grn.gamma.*'
                                              r'V2 weights need use_grn=True and layer_scale_init_value=0'):
        pretrained(tmp_path / 'v2.pth', arch='atto')
    torch.save(timm.create_model('convnext_atto').state_dict(), tmp_path / 'atto.pth')
    with pytest.raises(CheckpointError, match=r'missing stages.2.6.gamma, stages.2.6.dwconv.weight'):
        pretrained(tmp_path / 'atto.pth', arch=dict(depths=[2, 2, 8, 2], channels=[40, 80, 160, 320]))


def _convert_tool():
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location('convert_checkpoint',
                                                  os.path.join(ROOT, 'tools', 'convert_checkpoint.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_convert_checkpoint_tool(tmp_path, capsys):
    """timm -> ours -> timm through the tool's entry point (the CLI itself runs in test_layouts)."""
    tool = _convert_tool()
    reference = randomize_(timm.create_model('convnext_atto', pretrained=False)).eval()
    torch.save({'model': reference.state_dict()}, tmp_path / 'timm.pth')
    tool.main([str(tmp_path / 'timm.pth'), str(tmp_path / 'ours.safetensors')])
    out = capsys.readouterr().out
    assert 'timm layout' in out and 'head.norm.weight' in out and "arch: atto (depths [2, 2, 6, 2]" in out
    ours = pretrained(tmp_path / 'ours.safetensors', arch='atto')
    tool.main([str(tmp_path / 'ours.safetensors'), str(tmp_path / 'back.pth'), '--to', 'timm', '--conv-mlp'])
    back = torch.load(tmp_path / 'back.pth', weights_only=True)
    original = reference.state_dict()
    assert set(back) == {k for k in original if not k.startswith('head.')}
    assert all(torch.equal(back[k], original[k]) for k in back)
    assert ours.downsample_layers[0][0].weight.shape == (40, 3, 4, 4)
    (tmp_path / 'bad.pth').write_bytes(b'junk')
    with pytest.raises(SystemExit, match=r"error: Checkpoint '.*bad.pth' is a text file"):
        tool.main([str(tmp_path / 'bad.pth'), str(tmp_path / 'x.pth')])


# --- non-finite weights: one check on every loading path, naming the file and the keys -----------------------

BAD_KEY = 'backbone.stages.2.0.pwconv1.weight'  # (128, 32): 4096 values
_FIX = 're-download it, or pick an earlier checkpoint'


class _Detector(torch.nn.Module):
    """What a detector's load_from loads into, in miniature: our backbone and a head of its own."""

    def __init__(self):
        super().__init__()
        self.backbone = ConvNeXt(TINY)
        self.head = torch.nn.Conv2d(64, 4, 1)


def _detector_file(tmp_path, key=None, value=float('nan')):
    sd = _Detector().state_dict()
    if key is not None:
        sd[key] = sd[key].clone()
        sd[key].view(-1)[:3] = value
    path = tmp_path / 'detector.pth'
    torch.save({'state_dict': sd, 'meta': {'epoch': 12}}, path)
    return path, sd


def _refusal(path, key=BAD_KEY, counts='3 NaN', total=4096):
    """The message; ``path`` None: a file mmengine read (its own log line names it), not ours."""
    source = f"Checkpoint '{re.escape(str(path))}'" if path else 'The checkpoint being loaded'
    return (f"{source}: 1 backbone tensor\\(s\\) hold non-finite values: "
            f'{re.escape(key)} \\({counts} of {total} values\\)\\. The file is corrupt or was saved from a '
            f'diverged run: {_FIX}')


@pytest.mark.parametrize('value,counts', [(float('nan'), '3 NaN'), (float('-inf'), '3 Inf')])
def test_load_checkpoint_refuses_non_finite_backbone_weights(tmp_path, value, counts, capsys):
    """mmengine's load_checkpoint (a whole detector's checkpoint, as init_detector / tools/test.py load it): the file
    is mmengine's to name (its line just before the error), ours to refuse."""
    from mmengine.runner import load_checkpoint
    path, _ = _detector_file(tmp_path, BAD_KEY, value)
    model = _Detector()
    before = model.backbone.stages[2][0].pwconv1.weight.detach().clone()
    with pytest.raises(CheckpointError, match='^' + _refusal(None, counts=counts)):
        load_checkpoint(model, str(path))
    assert torch.equal(model.backbone.stages[2][0].pwconv1.weight, before)  # nothing half-loaded
    assert f'Loads checkpoint by local backend from path: {path}' in capsys.readouterr().out


def test_runner_load_from_refuses_non_finite_backbone_weights(tmp_path):
    from mmengine.runner import Runner
    path, _ = _detector_file(tmp_path, BAD_KEY)
    runner = Runner(model=_Detector(), work_dir=str(tmp_path / 'work'), load_from=str(path))
    with pytest.raises(CheckpointError, match='^' + _refusal(None)):
        runner.load_or_resume()


def test_load_checkpoint_clean_backbone_loads_and_the_head_is_not_ours_to_check(tmp_path):
    """A clean file loads exactly; a NaN in the head is left to the detector's codebase (only the backbone's keys
    are checked); a state dict not loaded from a file is refused without a file name."""
    from mmengine.runner import load_checkpoint
    for key in (None, 'head.weight'):
        path, saved = _detector_file(tmp_path, key)
        model = _Detector()
        load_checkpoint(model, str(path))
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, saved[name], rtol=0, atol=0, equal_nan=True)
    assert model.head.weight.isnan().sum() == 3
    _, saved = _detector_file(tmp_path, BAD_KEY)
    with pytest.raises(CheckpointError, match=f'^The checkpoint being loaded: .*{re.escape(BAD_KEY)} '):
        _Detector().load_state_dict(saved)


def test_init_cfg_and_convert_tool_refuse_non_finite_weights_with_the_same_message(tmp_path):
    path, _ = _detector_file(tmp_path, BAD_KEY, float('inf'))
    with pytest.raises(CheckpointError, match=_refusal(path, counts='3 Inf')):
        pretrained(path, arch=TINY)
    with pytest.raises(SystemExit, match='error: ' + _refusal(path, counts='3 Inf')):
        _convert_tool().main([str(path), str(tmp_path / 'out.pth')])
    assert not (tmp_path / 'out.pth').exists()


def test_non_finite_final_pooled_norm_is_refused_where_it_would_load(tmp_path):
    """gap_before_final_norm mode loads a classifier's final pooled norm into the last output norm: checked too."""
    ref = official_convnext(TINY, out_indices=())
    sd = dict(ref.state_dict(), **{'norm.weight': torch.full((64,), float('nan')), 'norm.bias': torch.zeros(64),
                                   'head.weight': torch.zeros(10, 64), 'head.bias': torch.zeros(10)})
    torch.save({'model': sd}, tmp_path / 'classifier.pth')
    with pytest.raises(CheckpointError, match=_refusal(tmp_path / 'classifier.pth', 'norm.weight', '64 NaN', 64)):
        pretrained(tmp_path / 'classifier.pth', out_indices=-1, gap_before_final_norm=True, arch=TINY)
