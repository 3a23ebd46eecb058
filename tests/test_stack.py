"""The pinned OpenMMLab stack installs and works: imports, compiled mmcv ops, registries, safe loading."""
import argparse

import numpy as np
import pytest
import torch


def test_stack_imports_at_pinned_versions():
    import mmcv
    import mmdet
    import mmengine
    import mmseg
    import timm
    import torchvision
    assert torch.__version__.startswith('2.14.1')
    assert torchvision.__version__.startswith('0.29.1')
    assert (mmcv.__version__, mmengine.__version__, mmdet.__version__, mmseg.__version__) == \
        ('2.1.0', '0.10.7', '3.3.0', '1.2.2')
    assert timm.__version__.startswith('1.0.')
    assert np.__version__.startswith('2.')


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
    loaded = torch.load(tmp_path / 'epoch_1.pth', weights_only=True)
    buffer = loaded['meta']['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.current() == 0.5
    # ...and nothing else: arbitrary objects are still refused
    torch.save({'x': argparse.Namespace(a=1)}, tmp_path / 'evil.pth')
    with pytest.raises(Exception, match='Unsupported global'):
        torch.load(tmp_path / 'evil.pth', weights_only=True)
    # getattr is resolved for HistoryBuffer's statistics only, not as a way to reach other methods
    torch.save({'x': _GetattrGadget()}, tmp_path / 'gadget.pth')
    with pytest.raises(Exception, match=r"refused getattr\(.*ndarray.*'tofile'\)"):
        torch.load(tmp_path / 'gadget.pth', weights_only=True)


def test_mmengine_checkpoint_loads_in_a_fresh_process(tmp_path):
    """What `tools/test.py CONFIG CKPT` does: no HistoryBuffer exists yet in the loading process."""
    import subprocess
    import sys
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('test_fresh_process')
    hub.update_scalar('train/loss', 0.5)
    torch.save({'meta': {'message_hub': hub.state_dict()}, 'state_dict': {}}, tmp_path / 'ckpt.pth')
    code = ('import torch, convnext_backbone; '
            f'c = torch.load({str(tmp_path / "ckpt.pth")!r}, weights_only=True); '
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
    from conftest import LONGEST_FIRST
    assert request.config.option.loadscopereorder is False
    files = list(dict.fromkeys(item.path.name for item in request.session.items))
    present = [name for name in LONGEST_FIRST if name in files]
    assert files[:len(present)] == present
