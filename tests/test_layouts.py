"""Every layout of the table in convnext_backbone/layouts.py: the ecosystem's own implementation with random
weights (norms and layer scale included), saved the way that ecosystem saves it, loaded through init_cfg, gives
the reference's stage features; round trips ours -> X -> ours, and X -> ours -> X for HF and torchvision; bad files
are one clear CheckpointError naming the file; the init_cfg and load_from paths check and report alike."""
import os
import re
import subprocess
import sys

import pytest
import timm
import torch
import torchvision
import transformers
from safetensors.torch import load_file, save_file

from convnext_backbone import CheckpointError, ConvNeXt, convert_from_ours, convert_state_dict
from convnext_backbone.checkpoint import convert_file, infer_arch
from convnext_backbone.layouts import LAYOUT_NAMES, LAYOUTS, Template, detect
from helpers import DEEP, ROOT, layer_norm_2d, official_convnext, pretrained, randomize_
from reference_convnext import (DINOv3ConvNeXt, fcmae_dedense_checkpoint_keys, fcmae_remap_checkpoint_keys,
                                official_stage_outputs)

DEPTHS, DIMS = DEEP['depths'], DEEP['channels']  # as the other ecosystems name them
V1 = dict(use_grn=False, layer_scale_init_value=1e-6)
V2 = dict(use_grn=True, layer_scale_init_value=0)
TOL = 1e-5


@pytest.fixture(scope='module')
def image():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


# --- the reference implementations, saved as their ecosystems save them --------------------------------------
# Each returns (checkpoint path, our variant kwargs, expected layout, the reference's four stage features as our
# outputs must equal them: dense-normed where the layout has dense norms, else layer-normed raw stage outputs).

def _hf(tmp_path, x, cls_name, v2):
    config_cls = transformers.ConvNextV2Config if v2 else transformers.ConvNextConfig
    kwargs = dict(depths=DEPTHS, hidden_sizes=DIMS, num_labels=5)
    if cls_name.endswith('Backbone'):
        kwargs['out_features'] = ['stage1', 'stage2', 'stage3', 'stage4']
    model = randomize_(getattr(transformers, cls_name)(config_cls(**kwargs))).eval()
    model.save_pretrained(tmp_path / 'hf')
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    feats = (list(out.feature_maps) if cls_name.endswith('Backbone')
             else [layer_norm_2d(h) for h in out.hidden_states[1:]])
    return tmp_path / 'hf' / 'model.safetensors', V2 if v2 else V1, 'hf', feats


def _torchvision(tmp_path, x):
    from torchvision.models.convnext import CNBlockConfig
    setting = [CNBlockConfig(DIMS[i], DIMS[i + 1] if i < 3 else None, DEPTHS[i]) for i in range(4)]
    model = randomize_(torchvision.models.convnext.ConvNeXt(setting, num_classes=5)).eval()
    torch.save(model.state_dict(), tmp_path / 'tv.pth')
    feats, y = [], x
    with torch.no_grad():
        for i, layer in enumerate(model.features):
            y = layer(y)
            if i % 2 == 1:
                feats.append(layer_norm_2d(y))
    return tmp_path / 'tv.pth', V1, 'torchvision', feats


def _official_v2(seed=0):
    return randomize_(official_convnext(DEEP, use_grn=True, layer_scale_init_value=0), seed)


_DECODER = {'proj.weight': torch.randn(4, 32, 1, 1), 'proj.bias': torch.zeros(4), 'mask_token': torch.zeros(1, 4, 1, 1),
            'decoder.0.dwconv.weight': torch.randn(4, 1, 7, 7), 'pred.weight': torch.randn(48, 4, 1, 1)}


def _fcmae(tmp_path, x, sparse):
    ref = _official_v2().eval()
    dense = {k: v for k, v in ref.state_dict().items() if not k.startswith('norm')}
    encoder = fcmae_dedense_checkpoint_keys(dense) if sparse else {'encoder.' + k: v for k, v in dense.items()}
    torch.save({'model': {**encoder, **_DECODER}, 'epoch': 1599}, tmp_path / 'fcmae.pt')
    with torch.no_grad():
        feats = [layer_norm_2d(f) for f in official_stage_outputs(ref, x)]
    return tmp_path / 'fcmae.pt', V2, 'fcmae', feats


def _timm_tiny(v2):
    name = 'convnextv2_atto' if v2 else 'convnext_atto'
    return randomize_(timm.create_model(name, depths=DEPTHS, dims=DIMS, num_classes=5)).eval()


def _openclip(tmp_path, x, v2):
    trunk = _timm_tiny(v2)
    sd = {'visual.trunk.' + k: v for k, v in trunk.state_dict().items()}
    sd.update({'visual.head.proj.weight': torch.randn(16, 32), 'logit_scale': torch.ones([]),
               'token_embedding.weight': torch.randn(10, 16), 'positional_embedding': torch.randn(7, 16),
               'transformer.resblocks.0.attn.in_proj_weight': torch.randn(48, 16), 'ln_final.weight': torch.ones(16)})
    torch.save(sd, tmp_path / 'open_clip_pytorch_model.bin')
    with torch.no_grad():
        feats = [layer_norm_2d(f) for f in trunk.forward_intermediates(x, intermediates_only=True)]
    return tmp_path / 'open_clip_pytorch_model.bin', V2 if v2 else V1, 'openclip', feats


def _dinov3(tmp_path, x):
    ref = randomize_(DINOv3ConvNeXt(DEPTHS, DIMS)).eval()
    torch.save(ref.state_dict(), tmp_path / 'dinov3_convnext_tiny.pth')
    with torch.no_grad():
        feats = ref.get_intermediate_layers(x)
    feats = [layer_norm_2d(f) for f in feats[:3]] + [feats[3]]  # norms[0..2] are identities in DINOv3
    return tmp_path / 'dinov3_convnext_tiny.pth', V1, 'dinov3', feats


def _hf_dinov3(tmp_path, x):
    config = transformers.DINOv3ConvNextConfig(depths=DEPTHS, hidden_sizes=DIMS)
    model = randomize_(transformers.DINOv3ConvNextModel(config)).eval()
    model.save_pretrained(tmp_path / 'hf')
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    n, c, h, w = out.hidden_states[-1].shape
    last = out.last_hidden_state[:, 1:].transpose(1, 2).reshape(n, c, h, w)  # the normed patch tokens
    feats = [layer_norm_2d(f) for f in out.hidden_states[1:4]] + [last]
    return tmp_path / 'hf' / 'model.safetensors', V1, 'hf-dinov3', feats


CASES = {
    'hf-ConvNextForImageClassification': lambda p, x: _hf(p, x, 'ConvNextForImageClassification', False),
    'hf-ConvNextBackbone': lambda p, x: _hf(p, x, 'ConvNextBackbone', False),
    'hf-ConvNextV2ForImageClassification': lambda p, x: _hf(p, x, 'ConvNextV2ForImageClassification', True),
    'hf-ConvNextV2Backbone': lambda p, x: _hf(p, x, 'ConvNextV2Backbone', True),
    'torchvision': _torchvision,
    'fcmae-sparse': lambda p, x: _fcmae(p, x, sparse=True),
    'fcmae-densified': lambda p, x: _fcmae(p, x, sparse=False),
    'openclip-v1': lambda p, x: _openclip(p, x, False),
    'openclip-v2': lambda p, x: _openclip(p, x, True),
    'dinov3': _dinov3,
    'hf-dinov3': _hf_dinov3,
}


@pytest.mark.parametrize('case', list(CASES))
def test_reference_weights_give_reference_features(tmp_path, image, case, mm_log):
    path, variant, layout, feats = CASES[case](tmp_path, image)
    ours = pretrained(path, arch=DEEP, **variant)
    with torch.no_grad():
        outs = ours(image)
    for i, (out, feat) in enumerate(zip(outs, feats)):
        assert out.shape == feat.shape
        assert (out - feat).abs().max() < TOL, f'stage {i}'
    log = '\n'.join(mm_log)
    assert f'detected the {layout} layout' in log
    if layout == 'fcmae':
        assert re.search(r'dropped \(pretraining-only\): proj.weight, proj.bias, mask_token, '
                         r'decoder.0.dwconv.weight, pred.weight', log)
    if case.startswith('hf-ConvNext') and 'Classification' in case:
        assert re.search(r'skipped .*: classifier.bias, classifier.weight, convnext\w*.layernorm.bias, '
                         r'convnext\w*.layernorm.weight', log)  # safetensors sorts the keys
    if layout == 'openclip':
        assert 'visual.head.proj.weight' in log and 'token_embedding.weight' in log


def test_fcmae_conversion_is_the_official_remap(tmp_path):
    """Tensor for tensor what ConvNeXt-V2's remap_checkpoint_keys gives, and the inverse is its dedense."""
    dense = {k: v for k, v in _official_v2(seed=3).state_dict().items() if not k.startswith('norm')}
    sparse = fcmae_dedense_checkpoint_keys(dense)
    assert sparse['encoder.stages.1.1.dwconv.kernel'].shape == (49, 16)
    assert sparse['encoder.downsample_layers.2.1.kernel'].shape == (4, 16, 24)
    ours = convert_state_dict({**sparse, **_DECODER})
    official = fcmae_remap_checkpoint_keys(sparse)
    assert ours.format == 'fcmae' and sorted(ours.dropped) == sorted(_DECODER)
    assert set(ours.state_dict) == set(official) == set(dense)
    for k, v in official.items():
        assert ours.state_dict[k].shape == v.shape and torch.equal(ours.state_dict[k], v), k
        assert torch.equal(v, dense[k]), k
    back = convert_from_ours(dense, 'fcmae').state_dict
    assert set(back) == set(sparse) and all(torch.equal(back[k], sparse[k]) for k in sparse)
    # the kernel transposes matter: a plain reshape is another (wrong) conv
    kernel = sparse['encoder.stages.0.0.dwconv.kernel']
    assert not torch.equal(kernel.permute(1, 0).reshape(8, 1, 7, 7), dense['stages.0.0.dwconv.weight'])


# --- round trips -------------------------------------------------------------------------------------------

# layouts with no place for (some of) our tensors: our dense norms, GRN or layer scale
_NO_PLACE = {'timm': r'^norm\d', 'openclip': r'^norm\d', 'torchvision': r'^norm\d|\.grn\.',
             'fcmae': r'^norm\d|\.\d+\.gamma$',
             'hf-dinov3': r'^norm[012]\.|\.grn\.', 'official': None, 'mmpretrain': None, 'hf': None, 'dinov3': None}


@pytest.mark.parametrize('layout', LAYOUT_NAMES)
@pytest.mark.parametrize('v2', [False, True])
def test_round_trip_ours_layout_ours(layout, v2):
    original = randomize_(ConvNeXt(arch=DEEP, **(V2 if v2 else V1))).state_dict()
    there = convert_from_ours(original, layout)
    no_place = _NO_PLACE[layout]
    expected_skipped = [k for k in original if no_place and re.search(no_place, k)]
    assert sorted(there.skipped) == sorted(expected_skipped)
    back = convert_state_dict(there.state_dict)
    assert back.format == layout
    assert set(back.state_dict) == set(original) - set(expected_skipped)
    for k, v in back.state_dict.items():
        assert v.shape == original[k].shape and torch.equal(v, original[k]), k


@pytest.mark.parametrize('cls_name,v2', [('ConvNextBackbone', False), ('ConvNextV2Backbone', True)])
def test_hf_round_trip_is_exact(tmp_path, cls_name, v2):
    config_cls = transformers.ConvNextV2Config if v2 else transformers.ConvNextConfig
    config = config_cls(depths=DEPTHS, hidden_sizes=DIMS, out_features=['stage1', 'stage2', 'stage3', 'stage4'])
    model = randomize_(getattr(transformers, cls_name)(config))
    model.save_pretrained(tmp_path)
    original = load_file(str(tmp_path / 'model.safetensors'))
    ours = convert_state_dict(original)
    assert ours.format == 'hf' and not ours.skipped
    back = convert_from_ours(ours.state_dict, 'hf')
    assert not back.skipped and set(back.state_dict) == set(original)
    assert all(torch.equal(back.state_dict[k], original[k]) for k in original)
    # and transformers itself takes the written file
    save_file({k: v.contiguous() for k, v in back.state_dict.items()}, str(tmp_path / 'model.safetensors'),
              metadata={'format': 'pt'})
    reloaded = getattr(transformers, cls_name).from_pretrained(tmp_path)
    assert all(torch.equal(reloaded.state_dict()[k], original[k]) for k in original)


def test_torchvision_round_trip_is_exact_and_arch_from_shapes():
    model = torchvision.models.convnext_tiny(weights=None)
    original = {k: v for k, v in model.state_dict().items() if not k.startswith('classifier.')}
    ours = convert_state_dict(model.state_dict())
    assert ours.format == 'torchvision'
    assert sorted(ours.skipped) == sorted(k for k in model.state_dict() if k.startswith('classifier.'))
    arch = infer_arch(ours.state_dict)
    assert (arch.name, arch.use_grn, arch.layer_scale) == ('tiny', False, True)
    back = convert_from_ours(ours.state_dict, 'torchvision')
    assert set(back.state_dict) == set(original)
    assert all(torch.equal(back.state_dict[k], original[k]) for k in original)
    result = torchvision.models.convnext_tiny(weights=None).load_state_dict(back.state_dict, strict=False)
    assert not result.unexpected_keys and all(k.startswith('classifier.') for k in result.missing_keys)


# --- the table itself ----------------------------------------------------------------------------------

def test_templates_with_affine_fields():
    t = Template('features.{2s+1}.{b}.block.0.')
    assert t.match('features.5.2.block.0.weight') == ({'s': 2, 'b': 2}, 'weight')
    assert t.match('features.4.2.block.0.weight') is None  # even indices are torchvision's downsample layers
    assert t.format({'s': 3, 'b': 0}, 'bias') == 'features.7.0.block.0.bias'
    assert Template('hidden_states_norms.stage{s+1}.').match('hidden_states_norms.stage0.weight') is None


def test_every_layout_is_detected_from_its_own_keys():
    ours = ConvNeXt(arch=DEEP, **V1).state_dict()
    ours_v2 = ConvNeXt(arch=DEEP, **V2).state_dict()
    for layout in LAYOUTS:
        keys = set(convert_from_ours(ours, layout.name).state_dict) | set(convert_from_ours(ours_v2, layout.name)
                                                                           .state_dict)
        assert detect(keys).layout.name == layout.name


# --- bad files -------------------------------------------------------------------------------------------

def test_nan_and_inf_weights_are_refused_by_both_loading_paths(tmp_path):
    sd = ConvNeXt(arch=DEEP, **V1).state_dict()
    sd['stages.1.0.pwconv1.weight'][0, 0] = float('nan')
    sd['stages.3.0.gamma'][1] = float('inf')
    torch.save({'state_dict': sd}, tmp_path / 'diverged.pth')
    message = r"Checkpoint '.*diverged.pth': 2 backbone tensor\(s\) hold non-finite values: " \
              r'stages.1.0.pwconv1.weight \(1 NaN of \d+ values\), stages.3.0.gamma \(1 Inf of \d+ values\).*diverged'
    with pytest.raises(CheckpointError, match=message):
        pretrained(tmp_path / 'diverged.pth', arch=DEEP, **V1)
    parent = torch.nn.Module()
    parent.backbone = ConvNeXt(arch=DEEP, **V1)
    with pytest.raises(CheckpointError, match=r'^The checkpoint being loaded: 2 backbone tensor\(s\) hold '
                                              r'non-finite values: backbone.stages.1.0.pwconv1.weight'):
        parent.load_state_dict({'backbone.' + k: v for k, v in sd.items()})


def _pickled_object_file(path):
    import argparse
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'args': argparse.Namespace(lr=1)}, path)


def _truncated_file(path):
    torch.save({'state_dict': ConvNeXt(arch=DEEP, **V1).state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize('kind,make,message', [
    ('empty', lambda p: p.write_bytes(b''), 'is an empty file'),
    ('truncated', _truncated_file, 'truncated or corrupt'),
    ('truncated-safetensors', lambda p: p.write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"a": {"dtype"'),
     'truncated or corrupt'),
    ('html', lambda p: p.write_text('<!DOCTYPE html>\n<html><body>404 Not Found</body></html>'),
     "is a text file, not a checkpoint .*<!DOCTYPE html>.*web page"),
    ('lfs-pointer', lambda p: p.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n'),
     'Git LFS pointer'),
    ('pickled-object', _pickled_object_file, 'pickles an object of type argparse.Namespace, which is not loaded'),
])
def test_bad_files_are_one_clear_error_naming_the_file(tmp_path, kind, make, message):
    path = tmp_path / (f'{kind}.safetensors' if 'safetensors' in kind else f'{kind}.pth')
    make(path)
    with pytest.raises(CheckpointError, match=re.escape(repr(str(path))) + '.*' + message):
        pretrained(path, arch=DEEP, **V1)


# --- one loading path ---------------------------------------------------------------------------------------

def test_init_cfg_and_load_from_apply_the_same_checks_and_messages(tmp_path, mm_log):
    timm_v2 = _timm_tiny(True).state_dict()
    torch.save(timm_v2, tmp_path / 'v2.pth')
    with pytest.raises(CheckpointError) as via_init_cfg:
        pretrained(tmp_path / 'v2.pth', arch=DEEP, **V1)
    parent = torch.nn.Module()
    parent.backbone = ConvNeXt(arch=DEEP, **V1)
    with pytest.raises(CheckpointError) as via_load_from:
        parent.load_state_dict({'backbone.' + k: v for k, v in timm_v2.items()}, strict=False)
    tail = re.compile(r'\(timm layout\) does not fit .*')
    assert tail.search(str(via_init_cfg.value)).group() == tail.search(str(via_load_from.value)).group()
    assert 'missing stages.0.0.gamma' in str(via_load_from.value)
    # and a good checkpoint logs the same report either way
    timm_v1 = _timm_tiny(False).state_dict()
    torch.save(timm_v1, tmp_path / 'v1.pth')
    mm_log.clear()
    pretrained(tmp_path / 'v1.pth', arch=DEEP, **V1)
    parent.load_state_dict({'backbone.' + k: v for k, v in timm_v1.items()}, strict=False)
    reports = [m.split(': ', 1)[1] for m in mm_log if m.startswith('Loaded ')]
    assert len(reports) == 2 and reports[0] == reports[1]
    assert reports[0].startswith('detected the timm layout.\n  skipped (classification-only or outside the '
                                 'backbone): head.norm.weight, head.norm.bias, head.fc.weight, head.fc.bias')


def test_dense_norms_of_unused_stages_are_skipped(tmp_path, mm_log):
    ref = randomize_(official_convnext(DEEP))
    torch.save({'state_dict': {'backbone.' + k: v for k, v in ref.state_dict().items()}}, tmp_path / 'det.pth')
    model = ConvNeXt(arch=DEEP, out_indices=(2, 3),
                     init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'det.pth')))
    model.init_weights()
    assert torch.equal(model.norm2.weight, ref.norm2.weight) and not hasattr(model, 'norm0')
    assert 'skipped (classification-only or outside the backbone): norm0.weight, norm0.bias, norm1.weight' \
        in '\n'.join(mm_log)


# --- the tool ----------------------------------------------------------------------------------------------

def test_convert_tool_to_every_ecosystem(tmp_path, capsys):
    """The CLI once (a subprocess), then the package function it calls for the other targets."""
    tool = [sys.executable, os.path.join(ROOT, 'tools', 'convert_checkpoint.py')]
    trunk = _timm_tiny(True)
    torch.save({'state_dict': {'visual.trunk.' + k: v for k, v in trunk.state_dict().items()}},
               tmp_path / 'clip.pth')
    run = subprocess.run(tool + [str(tmp_path / 'clip.pth'), str(tmp_path / 'ours.pth'), '--progress'],
                         capture_output=True, text=True, check=True)
    assert 'detected the openclip layout' in run.stdout
    assert f'arch: custom (depths {DEPTHS}, channels {DIMS}), ConvNeXt-V2 (GRN), no layer scale' in run.stdout
    assert 'skipped 4 ' in run.stdout and 'visual.trunk.head.fc.weight' in run.stdout
    assert 'converting: 100%' in run.stderr
    ours = torch.load(tmp_path / 'ours.pth', weights_only=True)['state_dict']
    for to, name in [('hf', 'model.safetensors'), ('timm', 'timm.pth'), ('torchvision', 'tv.pth')]:
        convert_file(str(tmp_path / 'ours.pth'), str(tmp_path / to / name), to, conv_mlp=to == 'timm')
        out = capsys.readouterr().out
        assert 'detected the official layout' in out and f'({to} layout' in out
    assert 'no place in torchvision' in out and 'stages.0.0.grn.gamma' in out
    hf = load_file(str(tmp_path / 'hf' / 'model.safetensors'))
    assert torch.equal(hf['encoder.stages.1.layers.1.grn.weight'], ours['stages.1.1.grn.gamma'])
    timm_back = torch.load(tmp_path / 'timm' / 'timm.pth', weights_only=True)  # atto-style: 1x1-conv MLPs
    assert all(torch.equal(timm_back[k], v) for k, v in trunk.state_dict().items() if not k.startswith('head.'))
