"""The backbone itself: architecture, arguments, shapes, fast path == official reference, freezing, cp."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from convnext_backbone import ARCH_SETTINGS, ConvNeXt, compat
from convnext_backbone.convnext import Block
from convnext_backbone.cpu_kernels import ONEDNN as _ONEDNN
from helpers import DEEP, TINY, autograd_nodes, official_convnext, outputs_and_grads, randomize_
from reference_convnext import OfficialConvNeXt


@pytest.mark.parametrize('arch', list(ARCH_SETTINGS))
def test_every_arch_shapes_strides_channels(arch):
    depths, channels = ARCH_SETTINGS[arch]
    with torch.device('meta'):  # shapes only: no memory or compute for the billion-parameter archs
        model = ConvNeXt(arch)
        outs = model(torch.empty(1, 3, 223, 301))
    assert model.depths == depths and model.out_channels == channels
    # stride-4 stem then three stride-2 downsamplings, each flooring
    sizes = [(55, 75), (27, 37), (13, 18), (6, 9)]
    assert [tuple(o.shape) for o in outs] == [(1, c, *s) for c, s in zip(channels, sizes)]


def test_known_arch_sizes():
    assert ARCH_SETTINGS['tiny'] == ([3, 3, 9, 3], [96, 192, 384, 768])
    assert ARCH_SETTINGS['small'] == ([3, 3, 27, 3], [96, 192, 384, 768])
    assert ARCH_SETTINGS['xlarge'] == ([3, 3, 27, 3], [256, 512, 1024, 2048])
    assert ARCH_SETTINGS['huge'] == ([3, 3, 27, 3], [352, 704, 1408, 2816])
    n_params = sum(p.numel() for n, p in ConvNeXt('tiny').named_parameters() if not n.startswith('norm'))
    assert abs(n_params - 27.82e6) < 0.05e6  # paper: ConvNeXt-T 28M (27.8M without the head)


def test_real_forward_odd_size_and_out_indices():
    model = ConvNeXt('atto', out_indices=(-1, 1)).eval()
    outs = model(torch.randn(2, 3, 97, 131))
    assert model.out_indices == (1, 3)
    assert [tuple(o.shape) for o in outs] == [(2, 80, 12, 16), (2, 320, 3, 4)]
    assert all(o.is_contiguous() for o in outs)
    assert hasattr(model, 'norm1') and hasattr(model, 'norm3') and not hasattr(model, 'norm0')


def test_official_argument_names():
    model = ConvNeXt(in_chans=4, depths=TINY['depths'], dims=TINY['channels'], out_indices=[0, 1, 2, 3])
    assert model.in_channels == 4 and model.depths == TINY['depths'] and model.channels == TINY['channels']
    assert model(torch.randn(1, 4, 64, 64))[3].shape == (1, 64, 2, 2)


@pytest.mark.parametrize('use_grn,ls', [(False, 1e-6), (True, 0.0)])
def test_fast_path_equals_official_forward_and_gradients(use_grn, ls):
    depths, dims = [2, 2, 3, 2], [16, 32, 48, 64]
    ref = randomize_(OfficialConvNeXt(depths=depths, dims=dims, use_grn=use_grn, layer_scale_init_value=ls))
    ours = ConvNeXt(depths=depths, dims=dims, use_grn=use_grn, layer_scale_init_value=ls)
    assert set(ours.state_dict()) == set(ref.state_dict())  # official names, one to one
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 67, 93)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    outs_ref, outs_ours = ref(x_ref), ours(x_ours)
    for a, b in zip(outs_ref, outs_ours):
        assert (a - b).abs().max() < 1e-5
    weights = [torch.randn_like(o) for o in outs_ref]
    sum((o * w).sum() for o, w in zip(outs_ref, weights)).backward()
    sum((o * w).sum() for o, w in zip(outs_ours, weights)).backward()
    assert (x_ref.grad - x_ours.grad).abs().max() < 1e-5
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        g_ref = ref_grads[name].grad
        assert (p.grad - g_ref).abs().max() < 1e-5 * max(1.0, g_ref.abs().max().item()), name


def test_depthwise_conv_fast_weight_gradient_gradcheck():
    from convnext_backbone.cpu_kernels import dwconv
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dwconv, (x, weight, bias), fast_mode=True)
    assert torch.autograd.gradcheck(dwconv, (x, weight, None), fast_mode=True)
    # dilated (output stride 16 / 8): a 3x3 kernel keeps the numerical Jacobian small
    x, weight = x[:1, :2].detach().requires_grad_(), weight[:2, :, :3, :3].detach().requires_grad_()
    assert torch.autograd.gradcheck(dwconv, (x, weight, bias[:2].detach().requires_grad_(), 2), fast_mode=True)


@pytest.mark.parametrize('channels_last,bias,input_grad,contiguous_grad,dilation', [
    (True, True, True, True, 1), (False, True, True, False, 1), (True, False, False, True, 1),
    (True, True, False, False, 1), (True, True, True, True, 2), (False, True, True, False, 4)])
def test_depthwise_conv_fast_weight_gradient_equals_autograd(channels_last, bias, input_grad, contiguous_grad,
                                                             dilation):
    from convnext_backbone.cpu_kernels import dwconv
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 5, kernel_size=7, padding=3 * dilation, dilation=dilation, groups=5, bias=bias)
    x = torch.randn(3, 5, 9, 13)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 5, 9, 13) if contiguous_grad else torch.randn(3, 5, 13, 9).transpose(2, 3)
    x_ref, x_ours = x.clone().requires_grad_(input_grad), x.clone().requires_grad_(input_grad)

    def inputs(x_):
        return tuple(t for t in (x_, conv.weight, conv.bias) if t is not None and t.requires_grad)
    out_ref = conv(x_ref)
    ref = torch.autograd.grad(out_ref, inputs(x_ref), grad)
    out_ours = dwconv(x_ours, conv.weight, conv.bias, dilation)
    ours = torch.autograd.grad(out_ours, inputs(x_ours), grad)
    assert (out_ref - out_ours).abs().max() < 1e-6
    assert len(ref) == len(ours) == 1 + int(bias) + int(input_grad)
    for a, b in zip(ref, ours):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-5 * max(1.0, a.abs().max().item())


@pytest.mark.parametrize('ls', [1e-6, 0.0])
def test_fused_training_path_equals_plain_ops_with_active_drop_path(ls):
    """The fused CPU nodes (depthwise conv, MLP without the residual fused, as drop path needs) give the
    plain-op gradients; drop_path_rate 1e-9 is active but keeps every path."""
    from convnext_backbone.cpu_kernels import plain_ops
    torch.manual_seed(0)
    model = randomize_(ConvNeXt(DEEP, drop_path_rate=1e-9, layer_scale_init_value=ls)).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    outs_fast, grads_fast = outputs_and_grads(model, x)
    with plain_ops():
        torch.manual_seed(1)
        outs_plain, grads_plain = outputs_and_grads(model, x)
    for a, b in zip(outs_fast, outs_plain):
        assert (a - b).abs().max() < 1e-5
    for name, g in grads_plain.items():
        assert (grads_fast[name] - g).abs().max() < 1e-5 * max(1.0, g.abs().max().item()), name


# autograd nodes of the kernels' custom ops (torch.library names them after the op; on torch < 2.4 they are
# autograd functions named after the op, see compat)
_DWCONV_NODE, _MLP_NODE, _LINEAR_NODE = (
    f'GeneratedBackwardFor_convnext_{op}_defaultBackward' if compat.HAS_CUSTOM_OP else f'convnext_{op}Backward'
    for op in ('dwconv', 'mlp', 'linear'))


@pytest.mark.skipif(not _ONEDNN, reason="this torch build has no oneDNN fused linear")
def test_cpu_training_takes_the_fused_autograd_nodes():
    """On CPU float32 a training step runs the depthwise conv and the whole MLP through our own autograd
    nodes (faster weight gradient; one buffer fewer); GRN blocks and no-grad forwards keep the other paths."""
    model = ConvNeXt(DEEP, drop_path_rate=0.2).train()
    nodes = autograd_nodes(model(torch.randn(1, 3, 64, 64))[3])
    assert {_DWCONV_NODE, _MLP_NODE} <= nodes
    nodes = autograd_nodes(ConvNeXt(DEEP, use_grn=True, layer_scale_init_value=0.0)(torch.randn(1, 3, 64, 64))[3])
    assert _MLP_NODE not in nodes and _LINEAR_NODE in nodes


@pytest.mark.parametrize('use_grn,ls', [(False, 1e-6), (True, 0.0)])
def test_inference_fast_path_equals_official(use_grn, ls, monkeypatch):
    """No-grad forward takes the fused kernels on CPU: the whole MLP in row chunks (100 rows here, so that every
    stage runs several chunks and a partial last one), or with GRN the linear+GELU and linear+residual kernels."""
    from torch.profiler import ProfilerActivity, profile

    from convnext_backbone import cpu_kernels
    monkeypatch.setattr(cpu_kernels, 'MLP_CHUNK_ROWS', 100)
    depths, dims = [2, 2, 3, 2], [16, 32, 48, 64]
    ref = randomize_(OfficialConvNeXt(depths=depths, dims=dims, use_grn=use_grn, layer_scale_init_value=ls))
    ours = ConvNeXt(depths=depths, dims=dims, use_grn=use_grn, layer_scale_init_value=ls).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 67, 93)  # 2 x 16 x 23 = 736 rows in stage 0, 2 x 2 x 2 = 8 in stage 3
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        outs = ours(x)
    calls = {e.key: e.count for e in prof.key_averages() if e.key.startswith('convnext::')}
    blocks = sum(depths)
    assert calls == ({'convnext::linear': 2 * blocks} if use_grn else {'convnext::mlp_inference': blocks})
    with torch.no_grad():
        for a, b in zip(ref(x), outs):
            assert (a - b).abs().max() < 1e-5


def test_training_path_with_active_drop_path_matches_reference_when_paths_are_kept():
    torch.manual_seed(0)
    ours = randomize_(ConvNeXt(DEEP, drop_path_rate=1e-9)).train()  # active drop path, keeps every path
    ref = official_convnext(DEEP)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(ref(x), ours(x)):
        assert (a - b).abs().max() < 1e-5


def test_with_cp_and_channels_last_match_eager_including_drop_path():
    torch.manual_seed(0)
    eager = randomize_(ConvNeXt(DEEP, drop_path_rate=0.3)).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    outs_e, grads_e = outputs_and_grads(eager, x)
    for kwargs in (dict(with_cp=True), dict(channels_last=True), dict(with_cp=True, channels_last=True)):
        other = ConvNeXt(DEEP, drop_path_rate=0.3, **kwargs).train()
        other.load_state_dict(eager.state_dict())
        torch.manual_seed(1)  # the same drop-path masks
        outs_o, grads_o = outputs_and_grads(other, x)
        for a, b in zip(outs_e, outs_o):
            assert torch.allclose(a, b, atol=1e-6), kwargs
        for name in grads_e:
            assert torch.allclose(grads_e[name], grads_o[name], atol=1e-6), (kwargs, name)
        if kwargs.get('channels_last'):
            assert outs_o[0].is_contiguous(memory_format=torch.channels_last)


def test_with_cp_really_recomputes_blocks_in_backward(monkeypatch):
    calls = []
    forward = Block.forward
    monkeypatch.setattr(Block, 'forward', lambda self, x: calls.append(1) or forward(self, x))
    counts = {}
    for with_cp in (False, True):
        calls.clear()
        model = ConvNeXt(DEEP, with_cp=with_cp).train()
        model(torch.randn(1, 3, 64, 64))[3].sum().backward()
        counts[with_cp] = len(calls)
    # 6 blocks; checkpointed ones run again during backward: all but the last stage's (one block here)
    assert counts == {False: 6, True: 11}


def test_drop_path_linear_schedule():
    model = ConvNeXt(dict(depths=[2, 2, 4, 2], channels=[8, 16, 24, 32]), drop_path_rate=0.3)
    rates = [block.drop_path_rate for stage in model.stages for block in stage]
    assert rates == pytest.approx([0.3 * i / 9 for i in range(10)])


def test_drop_path_is_active_in_training_only():
    model = ConvNeXt(DEEP, drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    assert torch.equal(model(x)[3], model(x)[3])
    model.train()
    torch.manual_seed(0)
    a = model(x)[3]
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x)[3])


def test_layer_scale_and_grn_parameters():
    model = ConvNeXt(DEEP, layer_scale_init_value=0.5)
    assert torch.all(model.stages[0][0].gamma == 0.5)
    v2 = ConvNeXt(DEEP, layer_scale_init_value=0, use_grn=True)
    block = v2.stages[1][0]
    assert block.gamma is None and block.grn.gamma.shape == (1, 1, 1, 4 * 16)


def test_frozen_stages_stay_frozen_after_train():
    model = ConvNeXt(DEEP, frozen_stages=2, drop_path_rate=0.2)
    model.train()
    for i in range(4):
        frozen = i < 2
        for module in (model.downsample_layers[i], model.stages[i]):
            assert all(p.requires_grad != frozen for p in module.parameters())
            assert all(m.training != frozen for m in module.modules())
    assert all(p.requires_grad for i in range(4) for p in getattr(model, f'norm{i}').parameters())
    # frozen blocks behave as in eval: no stochastic depth
    x = torch.randn(1, 3, 64, 64)
    feats = [model.stages[0](model.downsample_layers[0](x)) for _ in range(2)]
    assert torch.equal(*feats)
    model(x)[3].sum().backward()
    assert all(p.grad is None for p in model.stages[0].parameters())
    assert model.stages[2][0].dwconv.weight.grad is not None


def test_gap_before_final_norm_matches_mmpretrain_semantics():
    model = ConvNeXt(DEEP, gap_before_final_norm=True, out_indices=3).eval()
    x = torch.randn(2, 3, 64, 64)
    pooled = model(x)[0]
    dense = ConvNeXt(DEEP, out_indices=3).eval()
    dense.load_state_dict(model.state_dict())
    with torch.no_grad():
        feat = dense.stages[3](dense.downsample_layers[3](dense.stages[2](dense.downsample_layers[2](
            dense.stages[1](dense.downsample_layers[1](dense.stages[0](dense.downsample_layers[0](x)))))))).mean((2, 3))
    assert pooled.shape == (2, 32)
    assert torch.allclose(pooled, F.layer_norm(feat, (32,), model.norm3.weight, model.norm3.bias, 1e-6), atol=1e-5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='tinyy'), 'unknown arch .*Valid archs: atto, femto, pico, nano, tiny'),
    (dict(arch=dict(depths=[1, 1])), 'exactly the keys `depths` and `channels`'),
    (dict(arch=dict(depths=[1, 1], channels=[8])), 'same length'),
    (dict(out_indices=(0, 4)), r'out_indices \[0, 4\] has 4.*\[-4, 3\]'),
    (dict(out_indices=(1, -3)), 'names a stage twice'),
    (dict(out_indices=()), 'non-empty'),
    (dict(frozen_stages=5), r'frozen_stages must be an int in \[-1, 4\]'),
    (dict(drop_path_rate=1.0), 'drop_path_rate'),
    (dict(layer_scale_init_value=-1), 'layer_scale_init_value'),
    (dict(depths=[1, 1, 1, 1]), '`depths` and `dims` must be given together'),
    (dict(arch='tiny', stem_patch_sizee=4), 'unknown arguments'),
    # every argument's type and range, checked where the arguments are resolved (settings.py), not in a forward
    (dict(in_channels=0), r'in_channels \(the input image channels\) must be a positive int, got 0'),
    (dict(in_chans=2.0), 'in_channels .* must be a positive int, got 2.0'),
    (dict(with_cp='yes'), "with_cp must be True or False, got 'yes'"),
    (dict(channels_last=None), 'channels_last must be True or False, got None'),
    (dict(drop_path_rate='0.1'), r"drop_path_rate must be a number in \[0, 1\), got '0.1'"),
    (dict(layer_scale_init_value=float('inf')), 'layer_scale_init_value must be a number >= 0'),
    (dict(frozen_stages=True), r'frozen_stages must be an int in \[-1, 4\], got True'),
    (dict(out_indices=(True, 2)), r'out_indices \[True, 2\] has True'),
    (dict(arch=dict(depths=[1, 1, 1, 1.5], channels=[8, 8, 8, 8])), 'must be positive ints'),
    (dict(arch=dict(depths='1111', channels='8888')), 'must be non-empty and of the same length'),
    (dict(init_cfg='Pretrained'), "init_cfg must be a dict with a 'type' or a list of them"),
    (dict(init_cfg=[dict(type='Pretrained', checkpoint='a.pth')] * 2), 'more than one Pretrained'),
    (dict(pretrained=1), 'pretrained must be a checkpoint path or URL, got 1'),
    (dict(pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='a.pth')), 'either `pretrained` or'),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ConvNeXt(**kwargs)


def test_registered_in_mmdet_and_mmseg():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    for registry in (DET, SEG):
        model = registry.build(dict(type='ConvNeXt', arch='atto', out_indices=(0, 1, 2, 3)))
        assert isinstance(model, ConvNeXt)


def test_cpu_autocast_training_skips_the_float32_kernels():
    """Under CPU autocast the blocks take the plain ops (which autocast); our float32 nodes would mix dtypes."""
    block = Block(8).train()
    x = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(x)
    assert not {_DWCONV_NODE, _MLP_NODE} & autograd_nodes(out)
    out.float().sum().backward()
    assert x.grad is not None and block.dwconv.weight.grad is not None and block.pwconv1.weight.grad is not None
