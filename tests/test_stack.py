"""Each tested OpenMMLab stack installs and works: the versions its requirements file pins, compiled mmcv ops,
registries, safe loading, an install of this package that moves nothing, and the private torch internals that the
CPU kernels lean on. Runs on every stack (conftest.STACK_SUITE)."""
import argparse
import json
import os
import re
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convnext_backbone import compat, safe_load
from convnext_backbone.checkpoint import read_checkpoint
from helpers import LONGEST_FIRST, ROOT, STACK, TINY

# the distributions a user's stack consists of: installing this package must not move any of them
USER_STACK = {'torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'onedl-mmcv', 'onedl-mmengine',
              'onedl-mmdetection', 'onedl-mmsegmentation', 'numpy', 'timm'}


def _pins(stack: str) -> dict:
    path = os.path.join(ROOT, 'requirements', f'{stack}.txt')
    with open(path) as f:
        return dict(re.match(r'([A-Za-z0-9_.-]+)==(\S+)', line).groups() for line in f if re.match(r'[A-Za-z].*==', line))


def test_stack_is_installed_at_its_pinned_versions():
    pins = _pins(STACK)
    assert {'torch', 'torchvision', 'timm', 'numpy'} <= set(pins)
    for name, version in pins.items():
        installed = metadata.version(name)
        # torch's local version (+cpu, +cu121) is the wheel's flavour, not another release
        assert installed.split('+')[0] == version, f'{name}: requirements/{STACK}.txt pins {version}, installed {installed}'
    import mmcv
    import mmdet
    import mmengine
    import mmseg
    for module in (mmcv, mmdet, mmengine, mmseg):  # the modules are the ones of the pinned distributions
        dist = next(d for d in pins if d.replace('onedl-', '').replace('mmdetection', 'mmdet')
                    .replace('mmsegmentation', 'mmseg') == module.__name__)
        assert module.__version__ == pins[dist]


def test_installing_this_package_moves_nothing_of_the_stack(tmp_path):
    """What `pip install convnext_backbone` (with the extras of the stack's ecosystem) would install here: nothing of
    torch / mmcv / mmengine / mmdet / mmseg / numpy / timm (pip resolves install_requires against the venv)."""
    extras = 'onedl' if STACK == 'onedl' else 'all'
    report = tmp_path / 'report.json'
    out = subprocess.run([sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-build-isolation', '--no-index',
                          '--quiet', '--report', str(report), f'{ROOT}[{extras}]'],
                         capture_output=True, text=True, env={**os.environ, 'PIP_CONSTRAINT': ''})
    assert out.returncode == 0, out.stderr[-3000:]
    installs = {item['metadata']['name'].lower() for item in json.loads(report.read_text())['install']}
    assert installs == {'convnext-backbone'} or installs == {'convnext_backbone'}, installs
    assert not installs & USER_STACK


def test_kernels_step_aside_where_the_onednn_linear_is_missing_or_answers_otherwise(monkeypatch):
    """The import-time probe of oneDNN's fused linear is the gate of every kernel (torch 2.0.1's op refuses the
    ``'none'`` post-op: there the blocks run their plain ops instead of failing in training)."""
    from convnext_backbone import cpu_kernels
    assert cpu_kernels._onednn_linear_available() is True

    def refuses(*args, **kwargs):
        raise RuntimeError('Fusion behavior undefined.')

    monkeypatch.setattr(cpu_kernels, '_onednn_linear', refuses)
    assert cpu_kernels._onednn_linear_available() is False
    monkeypatch.setattr(cpu_kernels, '_onednn_linear', lambda x, weight, bias, post_op='none', other=None:
                        F.linear(x, weight, bias))  # ignores the fused GELU / residual add
    assert cpu_kernels._onednn_linear_available() is False
    monkeypatch.setattr(cpu_kernels, 'ONEDNN', False)
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    assert not cpu_kernels.applies(x)


def test_private_torch_internals_the_kernels_use_still_behave():
    """The CPU kernels call oneDNN's fused linear, ``torch.ops.mkldnn._linear_pointwise`` (no public API fuses the
    bias / GELU / residual add), and ask ``torch._C._len_torch_dispatch_stack`` whether a dispatch mode is active.
    FX symbolic tracing is asked of ``torch.fx._symbolic_trace``. All are private: this fails on the stack whose
    torch changes them (the kernels try the op once at import and step aside where it is missing or answers
    otherwise, as torch 2.0's does: see the next test)."""
    from convnext_backbone import cpu_kernels
    assert cpu_kernels.ONEDNN, 'oneDNN fused linear missing: the CPU kernels would run as plain ops'
    assert torch._C._len_torch_dispatch_stack() == 0
    x, w, b, other = torch.randn(6, 8), torch.randn(5, 8), torch.randn(5), torch.randn(6, 5)
    torch.testing.assert_close(torch.ops.mkldnn._linear_pointwise(x, w, b, 'none', [], ''), F.linear(x, w, b))
    torch.testing.assert_close(torch.ops.mkldnn._linear_pointwise(x, w, b, 'gelu', [], 'none'), F.gelu(F.linear(x, w, b)))
    torch.testing.assert_close(torch.ops.mkldnn._linear_pointwise.binary(x, other, w, b, 'add'), F.linear(x, w, b) + other)
    # FX symbolic tracing is told by torch.fx._symbolic_trace (no public query): the gate must see it
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, t):
            seen.append(cpu_kernels.tracing())
            return t + 1

    torch.fx.symbolic_trace(Probe())
    Probe()(torch.zeros(1))
    assert seen == [True, False]


def test_the_kernels_are_custom_ops_where_torch_has_them_else_autograd_functions():
    from convnext_backbone import cpu_kernels
    if hasattr(torch.library, 'custom_op'):
        assert compat.HAS_CUSTOM_OP and hasattr(torch.ops.convnext, 'mlp')
        assert compat.KERNELS_UNDER_COMPILE == hasattr(torch.compiler, 'is_exporting')
    else:
        assert isinstance(cpu_kernels.mlp, compat._AutogradOp) and not compat.KERNELS_UNDER_COMPILE
    x = torch.randn(1, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    out = cpu_kernels.dwconv(x, w, None, 1)
    out.square().sum().backward()
    ref_x, ref_w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(ref_x, ref_w, padding=1, groups=8).square().sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('autocast', [False, True], ids=['float32', 'autocast-bf16'])
def test_torch_compile_traces_the_backbone_as_one_graph(autocast):
    """Nothing in the forward stops dynamo on this stack's torch, V1 and V2, training and inference, float32 and
    under autocast. torch 2.8 cannot trace ``torch.amp.is_autocast_available``: asked in forward, it broke the
    graph at every LayerNorm (15 graphs for this tiny model; compiled bf16 training at half timm's speed on a GPU)."""
    from convnext_backbone.convnext import ConvNeXt
    x = torch.randn(1, 3, 64, 64)
    for use_grn in (False, True):
        model = ConvNeXt(arch=TINY, out_indices=(0, 1, 2, 3), use_grn=use_grn, layer_scale_init_value=0. if use_grn
                         else 1e-6)
        for training in (True, False):
            model.train(training)
            torch._dynamo.reset()
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast), torch.set_grad_enabled(training):
                explained = torch._dynamo.explain(model)(x)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons[:2]


def test_paper_configs_find_their_package_base_configs():
    """``mmdet::`` / ``mmseg::`` base configs resolve on every stack; on the onedl fork only through the
    distribution aliases that ``import convnext_backbone`` installs (mmengine asks for ``mmsegmentation``)."""
    import sys
    from mmengine.config import Config
    if STACK == 'onedl':
        assert any(isinstance(f, compat.OnedlDistributionAliases) for f in sys.meta_path)
        assert metadata.version('mmsegmentation') == metadata.version('onedl-mmsegmentation')
    else:
        assert not any(isinstance(f, compat.OnedlDistributionAliases) for f in sys.meta_path)
    for config in ('segmentation/upernet_convnext_t_512_160k_ade20k.py', 'detection/cascade_convnext_t_3x.py'):
        cfg = Config.fromfile(os.path.join(ROOT, 'configs', config))
        assert cfg.model.backbone.type == 'ConvNeXt' and cfg.train_dataloader.dataset.type


def test_roi_align_on_cpu_known_answer():
    from mmcv.ops import RoIAlign
    # f(y, x) = 4y + x is linear, so bilinear samples average to f at the sample centroid.
    feature = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])  # batch index, x1, y1, x2, y2
    out = RoIAlign(output_size=(2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feature, rois)
    # aligned: the box spans [-0.5, 3.5); bins are 2 px; samples at {0, 1} and {2, 3} on each axis
    assert torch.allclose(out, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_nms_on_cpu_known_answer():
    from mmcv.ops import nms
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(0, 1) = 81 / 119 = 0.68 > 0.5: box 1 goes; box 2 does not overlap
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torch.allclose(dets[:, 4], torch.tensor([0.9, 0.7]))
    _, keep = nms(boxes, scores, iou_threshold=0.7)
    assert keep.tolist() == [0, 1, 2]


def test_mmdet_and_mmseg_registries_initialise():
    import convnext_backbone  # noqa: F401  (adds ConvNeXt to both)
    from mmdet.registry import MODELS as DET_MODELS
    from mmdet.utils import register_all_modules as register_det
    from mmseg.registry import MODELS as SEG_MODELS
    from mmseg.utils import register_all_modules as register_seg
    register_det(init_default_scope=False)
    register_seg(init_default_scope=False)
    for name in ('MaskRCNN', 'CascadeRCNN', 'FPN', 'ConvNeXt'):
        assert DET_MODELS.get(name) is not None, name
    for name in ('EncoderDecoder', 'UPerHead', 'FCNHead', 'ConvNeXt'):
        assert SEG_MODELS.get(name) is not None, name


def test_mmengine_checkpoint_metadata_loads_with_weights_only(tmp_path):
    """--resume on torch >= 2.6: mmengine's HistoryBuffer (with numpy inside) is allow-listed..."""
    import convnext_backbone  # noqa: F401
    from mmengine.logging import HistoryBuffer, MessageHub
    hub = MessageHub.get_instance('test_safe_load')
    hub.update_scalar('train/loss', np.float64(0.5))
    hub.update_scalar('train/lr', 1e-4)
    ckpt = {'meta': {'message_hub': hub.state_dict(), 'epoch': 1, 'seed': np.int64(3)},
            'state_dict': {'w': torch.ones(2)}, 'optimizer': {'state': {}, 'param_groups': []}}
    torch.save(ckpt, tmp_path / 'epoch_1.pth')
    loaded = safe_load.load_mmengine_checkpoint(tmp_path / 'epoch_1.pth')
    buffer = loaded['meta']['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.current() == 0.5
    if not compat.HAS_SAFE_GLOBALS:  # torch < 2.4: nothing to allow-list; mmengine loads as it does there
        assert safe_load.load_mmengine_checkpoint(tmp_path / 'epoch_1.pth')['meta']['epoch'] == 1
        return
    # ...and nothing else: arbitrary objects are still refused
    torch.save({'x': argparse.Namespace(a=1)}, tmp_path / 'evil.pth')
    with pytest.raises(Exception, match='Unsupported global'):
        torch.load(tmp_path / 'evil.pth', weights_only=True)
    # getattr is resolved for HistoryBuffer's statistics only, not as a way to reach other methods
    torch.save({'x': _GetattrGadget()}, tmp_path / 'gadget.pth')
    with pytest.raises(Exception, match=r"refused getattr\(.*ndarray.*'tofile'\)"):
        torch.load(tmp_path / 'gadget.pth', weights_only=True)


@pytest.mark.skipif(not hasattr(torch.serialization, 'safe_globals'), reason='torch < 2.5 has no safe_globals scope')
def test_mmengine_checkpoint_loads_after_a_safe_globals_scope_removed_our_entries(tmp_path):
    """onedl-mmengine loads checkpoints inside ``torch.serialization.safe_globals([HistoryBuffer, numpy ...])``,
    whose exit removes those entries from the process-wide allow-list, ours included: the package's own loads
    (crash-safe checks, tools) must not depend on the process-wide list surviving that."""
    from mmengine.logging import HistoryBuffer, MessageHub
    from convnext_backbone.safe_load import MMENGINE_SAFE_GLOBALS
    hub = MessageHub.get_instance('test_scope_removal')
    hub.update_scalar('train/loss', np.float64(0.25))
    torch.save({'meta': {'message_hub': hub.state_dict()}, 'state_dict': {'w': torch.ones(2)}}, tmp_path / 'ckpt.pth')
    try:
        # both of our loaders: the test helper's and init_cfg's (read_checkpoint)
        for load in (safe_load.load_mmengine_checkpoint, lambda path: read_checkpoint(str(path))):
            with torch.serialization.safe_globals([HistoryBuffer, np.ndarray, np.dtype]):
                pass
            assert HistoryBuffer not in torch.serialization.get_safe_globals()  # what the scope's exit does
            loaded = load(tmp_path / 'ckpt.pth')
            assert loaded['meta']['message_hub']['log_scalars']['train/loss'].current() == 0.25
    finally:
        compat.add_safe_globals(MMENGINE_SAFE_GLOBALS)


def test_mmengine_checkpoint_loads_in_a_fresh_process(tmp_path):
    """What `tools/test.py CONFIG CKPT` does: no HistoryBuffer exists yet in the loading process."""
    import subprocess
    import sys
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('test_fresh_process')
    hub.update_scalar('train/loss', 0.5)
    torch.save({'meta': {'message_hub': hub.state_dict()}, 'state_dict': {}}, tmp_path / 'ckpt.pth')
    code = ('import torch, convnext_backbone; from convnext_backbone import safe_load; '
            f'c = safe_load.load_mmengine_checkpoint({str(tmp_path / "ckpt.pth")!r}); '
            "print(c['meta']['message_hub']['log_scalars']['train/loss'].current())")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith('0.5'), out.stderr[-2000:]


class _GetattrGadget:
    """Pickles as getattr(numpy.ndarray, 'tofile'): what an attacker would use to write files."""

    def __reduce__(self):
        return getattr, (np.ndarray, 'tofile')


def test_the_suite_hands_out_its_longest_files_first(request):
    """``make test``'s two workers finish together only if the longest files start first: conftest orders them so
    and keeps pytest-xdist from re-sorting the files by their number of tests (its default)."""
    assert request.config.option.loadscopereorder is False
    files = list(dict.fromkeys(item.path.name for item in request.session.items))
    present = [name for name in LONGEST_FIRST if name in files]
    assert files[:len(present)] == present
