"""One import, any OpenMMLab 2.x codebase: the package needs only torch and mmengine, registers in mmengine's
root registries (found from every downstream scope) and in its own scope, and coexists with mmpretrain's ConvNeXt."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from convnext_backbone import ConvNeXt, ConvNeXtLayerDecayOptimizerConstructor
from helpers import ROOT

# Runs in a fresh interpreter with the named packages made unimportable (None in sys.modules makes every
# import of them raise ModuleNotFoundError): the plugin, the backbone and the constructor from mmengine's
# registries, and a detector / segmentor from our configs with whichever codebase is left.
_SCRIPT = textwrap.dedent('''
    import sys
    blocked = [name for name in sys.argv[1].split(',') if name]
    for name in blocked:
        sys.modules[name] = None
    import torch
    import convnext_backbone
    from mmengine.config import Config
    from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS, init_default_scope

    backbone = MODELS.build(dict(type='ConvNeXt', arch='atto'))
    assert type(backbone) is convnext_backbone.ConvNeXt
    assert MODELS.get('convnext_backbone.ConvNeXt') is convnext_backbone.ConvNeXt
    assert [o.shape[1] for o in backbone(torch.randn(1, 3, 64, 64))] == [40, 80, 160, 320]
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='ConvNeXtLayerDecayOptimizerConstructor',
        optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4)),
        paramwise_cfg=dict(decay_rate=0.7, num_layers=6, backbone_prefix='')))
    assert len(constructor(backbone).optimizer.param_groups) > 6
    built = []
    for scope, config in (('mmdet', 'configs/detection/mask_rcnn_convnext_t_3x.py'),
                          ('mmseg', 'configs/segmentation/upernet_convnext_t_512_160k_ade20k.py')):
        if scope in blocked:
            continue
        cfg = Config.fromfile(config)
        cfg.model.backbone.pop('init_cfg', None)
        init_default_scope(scope)
        model = MODELS.build(cfg.model)
        assert type(model.backbone) is convnext_backbone.ConvNeXt, type(model.backbone)
        built.append(type(model).__name__)
    print('BUILT', ','.join(built))
''')


@pytest.mark.parametrize('blocked,expected', [('mmseg', 'MaskRCNN'), ('mmdet', 'EncoderDecoder'),
                                              ('mmdet,mmseg,mmpretrain,timm', '')])
def test_imports_and_builds_without_the_other_codebases(blocked, expected):
    out = subprocess.run([sys.executable, '-c', _SCRIPT, blocked], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f'BUILT {expected}\n' in out.stdout


def test_each_scope_gets_the_convnext_it_names():
    """mmpretrain has a ConvNeXt of its own: its scope finds that one first, the scoped name finds ours;
    mmdet and mmseg have none, so their plain 'ConvNeXt' is ours."""
    from mmdet.registry import MODELS as DET
    from mmpretrain.models import ConvNeXt as MMPretrainConvNeXt
    from mmpretrain.registry import MODELS as PRETRAIN
    from mmseg.registry import MODELS as SEG
    assert PRETRAIN.get('ConvNeXt') is MMPretrainConvNeXt
    assert PRETRAIN.get('convnext_backbone.ConvNeXt') is ConvNeXt
    assert DET.get('ConvNeXt') is ConvNeXt and SEG.get('ConvNeXt') is ConvNeXt
    assert DET.get('mmpretrain.ConvNeXt') is MMPretrainConvNeXt
    assert DET.get('convnext_backbone.ConvNeXt') is ConvNeXt
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
    from mmpretrain.registry import OPTIM_WRAPPER_CONSTRUCTORS as PRETRAIN_CONSTRUCTORS
    assert OPTIM_WRAPPER_CONSTRUCTORS.get('ConvNeXtLayerDecayOptimizerConstructor') is \
        ConvNeXtLayerDecayOptimizerConstructor
    assert PRETRAIN_CONSTRUCTORS.get('ConvNeXtLayerDecayOptimizerConstructor') is \
        ConvNeXtLayerDecayOptimizerConstructor


def test_an_mmpretrain_classifier_config_builds_either_convnext():
    from mmengine.registry import init_default_scope
    from mmpretrain.models import ConvNeXt as MMPretrainConvNeXt
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    head = dict(type='LinearClsHead', num_classes=5, in_channels=320)
    theirs = MODELS.build(dict(type='ImageClassifier', backbone=dict(type='ConvNeXt', arch='atto'),
                               neck=None, head=head))
    ours = MODELS.build(dict(type='ImageClassifier', head=head, neck=None, backbone=dict(
        type='convnext_backbone.ConvNeXt', arch='atto', out_indices=(-1,), gap_before_final_norm=True)))
    assert type(theirs.backbone) is MMPretrainConvNeXt and type(ours.backbone) is ConvNeXt
    x = torch.randn(2, 3, 64, 64)
    assert ours(x, mode='tensor').shape == theirs(x, mode='tensor').shape == (2, 5)


def test_tools_name_the_missing_extra(monkeypatch):
    from convnext_backbone.tools.common import require
    monkeypatch.setitem(sys.modules, 'mmseg', None)
    with pytest.raises(ModuleNotFoundError, match=r"convnext_backbone\[seg\]"):
        require('mmseg', 'config x.py')
    assert require('mmengine', 'anything') is sys.modules['mmengine']


def _package_imports():
    """{module: (modules of the package it imports, those imported inside a function or class)} for the package's
    top-level modules, read from their source."""
    import ast
    import glob
    paths = {os.path.basename(p)[:-3]: p for p in glob.glob(os.path.join(ROOT, 'convnext_backbone', '*.py'))}
    result = {}
    for name, path in paths.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        top = {id(node) for stmt in tree.body for node in ast.walk(stmt)
               if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        imported, lazy = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('convnext_backbone.'):
                targets = [node.module.split('.')[1]]
            elif isinstance(node, ast.Import):
                targets = [a.name.split('.')[1] for a in node.names if a.name.startswith('convnext_backbone.')]
            else:
                continue
            targets = {t.split('.')[0] for t in targets} & set(paths)
            imported |= targets
            if id(node) not in top:
                lazy |= targets
        result[name] = (imported - {'__init__'}, lazy)
    return result


def test_modules_import_one_way():
    """No import circle, and no import of the package's own modules inside a function (the way to dodge one);
    checkpoint files and layouts are read and converted without the model."""
    graph = _package_imports()
    assert {name: lazy for name, (_, lazy) in graph.items() if lazy} == {}

    def reachable(name, path=()):
        path = (*path, name)
        for dep in graph[name][0]:
            assert dep not in path, f'import circle: {" -> ".join((*path, dep))}'
            yield dep
            yield from reachable(dep, path)

    for name in graph:
        list(reachable(name))
    assert not {'convnext', 'loading', 'settings'} & set(reachable('checkpoint'))
    assert not {'convnext', 'loading'} & set(reachable('settings'))


def test_test_modules_import_no_other_test_module():
    """The tests share code through tests/helpers.py (and the reference network, tests/reference_convnext.py) and
    fixtures through conftest.py: no test module imports another, or conftest, at its top or inside a function."""
    import ast
    import glob
    paths = sorted(glob.glob(os.path.join(ROOT, 'tests', 'test_*.py')))
    forbidden = {os.path.basename(p)[:-3] for p in paths} | {'conftest'}
    found = []
    for path in paths:
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or '']
            elif (isinstance(node, ast.Call) and getattr(node.func, 'id', getattr(node.func, 'attr', None)) in (
                    '__import__', 'import_module') and node.args and isinstance(node.args[0], ast.Constant)):
                names = [str(node.args[0].value)]
            else:
                continue
            found += [f'{os.path.basename(path)}:{node.lineno} imports {name}' for name in names
                      if name.split('.')[0] in forbidden]
    assert found == [], 'move what they share into tests/helpers.py (fixtures: conftest.py)'
