"""Old configs naming ``type='mmcls.ConvNeXt'`` (mmsegmentation#2991) or ``type='mmpretrain.ConvNeXt'`` (mmdet's and
mmseg's own ConvNeXt configs) build ours where that package is absent, with its defaults for what the config leaves
out; where it is installed, or becomes importable later in the process, its own class is what the name means."""
import json
import os
import subprocess
import sys
import textwrap

import torch

from convnext_backbone import ConvNeXt
from helpers import ROOT, TINY

# A fresh interpreter without the test extras on sys.path: neither mmcls nor mmpretrain is importable.
_SCRIPT = f'TINY = {TINY!r}\n' + textwrap.dedent('''
    import importlib, importlib.util, json, logging, os, sys
    assert importlib.util.find_spec('mmcls') is None and importlib.util.find_spec('mmpretrain') is None
    import convnext_backbone
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import MODELS, init_default_scope

    messages = []
    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())
    MMLogger.get_current_instance().addHandler(Collect())

    def describe(b):
        return dict(cls=f'{type(b).__module__}.{type(b).__name__}', out_indices=list(b.out_indices),
                    gap=b.gap_before_final_norm, channels=list(getattr(b, 'channels', [])),
                    layer_scale=getattr(b, 'layer_scale_init_value', None),
                    last_drop_path=round(getattr(b.stages[-1][-1], 'drop_path_rate', -1), 6))

    def packaged(package, config):
        return os.path.join(os.path.dirname(importlib.import_module(package).__file__), '.mim', 'configs', config)

    out = {'configs': {}, 'defaults': {}}
    configs = {'mmseg': packaged('mmseg', 'convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'),
               'mmdet': packaged('mmdet', 'convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py')}
    try:  # their custom_imports=dict(imports=['mmpretrain.models']) with mmpretrain absent
        Config.fromfile(configs['mmseg'])
        out['custom_imports'] = 'loaded'
    except ImportError as exc:
        out['custom_imports'] = f'ImportError: {exc}'
    for scope, path in configs.items():
        cfg = Config.fromfile(path, import_custom_modules=False)
        cfg.model.backbone.pop('init_cfg')
        init_default_scope(scope)
        for old in ('mmpretrain', 'mmcls'):
            cfg.model.backbone.type = f'{old}.ConvNeXt'
            model = MODELS.build(cfg.model)
            out['configs'][f'{scope} {old}'] = dict(describe(model.backbone), model=type(model).__name__)
        for old in ('mmpretrain', 'mmcls'):
            for given in ({}, {'out_indices': [1, 2]}, {'gap_before_final_norm': False}):
                b = MODELS.build(dict(type=f'{old}.ConvNeXt', arch=TINY, **given))
                out['defaults'][f'{scope} {old} {sorted(given)}'] = [list(b.out_indices), b.gap_before_final_norm]
    out['logged'] = {old: sum(f"type='{old}.ConvNeXt': {old} is not installed" in m for m in messages)
                     for old in ('mmpretrain', 'mmcls')}

    # mmpretrain becomes importable in this process: its own class takes the name, its registry the scope
    sys.path.insert(0, sys.argv[1])
    importlib.invalidate_caches()
    import mmpretrain.utils.dependency
    mmpretrain.utils.dependency.WITH_MULTIMODAL = False  # as tests/conftest.py: the tests use its vision models
    import mmpretrain.registry
    from mmpretrain.models import ConvNeXt as Theirs
    init_default_scope('mmdet')
    later = MODELS.build(dict(type='mmpretrain.ConvNeXt', arch=TINY, out_indices=[0, 1, 2, 3],
                              gap_before_final_norm=False))
    out['later'] = dict(mmpretrain_is_theirs=type(later) is Theirs,
                        scope_is_theirs=MODELS.children['mmpretrain'] is mmpretrain.registry.MODELS,
                        mmcls=describe(MODELS.build(dict(type='mmcls.ConvNeXt', arch=TINY)))['cls'])
    print('RESULT ' + json.dumps(out))
''')

OURS = 'convnext_backbone.convnext.ConvNeXt'


def test_old_scope_names_build_ours_where_the_package_is_absent():
    extras = os.path.join(sys.prefix, 'test-extras')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['PYTHONPATH'] = ROOT  # this checkout's convnext_backbone, and nothing from the test extras
    run = subprocess.run([sys.executable, '-c', _SCRIPT, extras], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.split('RESULT ', 1)[1])
    # the configs' custom_imports fail before anything is built, as mmengine does for any absent import
    assert out['custom_imports'].startswith('ImportError') and 'mmpretrain' in out['custom_imports']
    # mmseg's and mmdet's own ConvNeXt-T configs: ours, every argument they give honoured
    for name, model in (('mmseg', 'EncoderDecoder'), ('mmdet', 'MaskRCNN')):
        for old in ('mmpretrain', 'mmcls'):
            assert out['configs'][f'{name} {old}'] == dict(
                cls=OURS, model=model, out_indices=[0, 1, 2, 3], gap=False, channels=[96, 192, 384, 768],
                layer_scale=1.0, last_drop_path=0.4), (name, old)
    # what the config leaves out takes mmpretrain's / mmcls' defaults (last stage, pooled), as their class would
    for name in ('mmseg', 'mmdet'):
        for old in ('mmpretrain', 'mmcls'):
            assert out['defaults'][f'{name} {old} []'] == [[3], True]
            assert out['defaults'][f"{name} {old} ['out_indices']"] == [[1, 2], True]
            assert out['defaults'][f"{name} {old} ['gap_before_final_norm']"] == [[3], False]
    assert out['logged'] == {'mmpretrain': 1, 'mmcls': 1}
    assert out['later'] == dict(mmpretrain_is_theirs=True, scope_is_theirs=True, mmcls=OURS)


def test_installed_mmpretrain_keeps_its_own_class():
    """The tests put mmpretrain on sys.path before importing us: nothing stands in for it, mmcls (absent) is ours."""
    import mmpretrain.registry
    from mmengine.registry import MODELS
    from mmpretrain.models import ConvNeXt as Theirs

    from convnext_backbone import registry
    theirs = MODELS.build(dict(type='mmpretrain.ConvNeXt', arch=TINY, _scope_='mmpretrain'))
    assert type(theirs) is Theirs and MODELS.children['mmpretrain'] is mmpretrain.registry.MODELS
    assert list(registry._STAND_INS) == ['mmcls']
    ours = MODELS.build(dict(type='mmcls.ConvNeXt', arch=TINY, out_indices=[0, 1, 2, 3]))
    assert type(ours) is ConvNeXt and ours.gap_before_final_norm  # mmcls' default where the config is silent
    assert [tuple(f.shape) for f in ours(torch.randn(1, 3, 32, 32))] == [(1, 8), (1, 16), (1, 32), (1, 64)]
