"""Our configs state only what differs from their ``_base_`` chain (the installed mmdet / mmseg configs and ours), and
the backbone is written once: configs/_base_/models/convnext_t.py, which every recipe takes and changes."""
import ast
import glob
import importlib
import os

import pytest
from mmengine.config import Config, ConfigDict

from helpers import ROOT

CONFIGS = sorted(f for f in glob.glob(os.path.join(ROOT, 'configs', '*', '*.py')) if '_base_' not in f)
ALL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True))


def _base_path(config: str, base: str) -> str:
    if '::' in base:  # mmdet::path, mmseg::path: configs shipped inside the installed package
        package, rel = base.split('::', 1)
        package = importlib.import_module({'mmsegmentation': 'mmseg'}.get(package, package))
        return os.path.join(os.path.dirname(package.__file__), '.mim', 'configs', rel)
    return os.path.normpath(os.path.join(os.path.dirname(config), base))


def _leaves(value, path=()):
    """(path, value) of every leaf the file sets; a dict with ``_delete_`` replaces its base entry, so what is
    inside it is not a restatement."""
    if isinstance(value, dict) and value:
        if value.get('_delete_'):
            return
        for key, item in value.items():
            yield from _leaves(item, path + (key,))
    else:
        yield path, value


def _lookup(cfg, path):
    for key in path:
        if not isinstance(cfg, dict) or key not in cfg:
            return KeyError
        cfg = cfg[key]
    return cfg


def _is_base(node) -> bool:
    return isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == '_base_' for t in node.targets)


def restated(config: str) -> list:
    """What the file sets to the value its bases already give: plain entries, and the changes it makes to a base
    variable it takes (``dict(_base_.convnext_t, _delete_=True, key=value)``)."""
    with open(config) as f:
        tree = ast.parse(f.read())
    bases = [ast.literal_eval(node.value) for node in tree.body if _is_base(node)]
    bases = bases[0] if bases else []
    merged = Config()
    for base in [bases] if isinstance(bases, str) else bases:
        merged.merge_from_dict(Config.fromfile(_base_path(config, base), import_custom_modules=False).to_dict())
    merged = merged.to_dict()
    # the file's own assignments, before any merge, with `_base_.x` read from its bases (as mmengine does)
    namespace = {'_base_': ConfigDict(merged)}
    own = ast.Module([node for node in tree.body if not _is_base(node)], type_ignores=[])
    exec(compile(own, config, 'exec'), namespace)
    found = []
    for name, value in namespace.items():
        # top-level plain values (crop_size = ...) are the file's own variables, used to build its dicts
        if name.startswith('_') or not isinstance(value, dict):
            continue
        for path, leaf in _leaves(value, (name,)):
            if _lookup(merged, path) == leaf:
                found.append(f'{".".join(map(str, path))} = {leaf!r}')
    for call in ast.walk(tree):  # dict(_base_.x, key=value): value restates x[key]
        if isinstance(call, ast.Call) and getattr(call.func, 'id', None) == 'dict' and call.args and \
                ast.unparse(call.args[0]).startswith('_base_.'):
            taken = eval(ast.unparse(call.args[0]), namespace)
            for keyword in call.keywords:
                if keyword.arg in taken and eval(ast.unparse(keyword.value), namespace) == taken[keyword.arg]:
                    found.append(f'{ast.unparse(call.args[0])[len("_base_."):]}.{keyword.arg} = '
                                 f'{ast.unparse(keyword.value)}')
    return found


@pytest.mark.parametrize('config', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_restates_nothing_its_bases_set(config):
    assert restated(config) == []


def test_the_check_finds_a_restated_value(tmp_path):
    base = tmp_path / 'base.py'
    base.write_text("model = dict(backbone=dict(arch='tiny', drop_path_rate=0.4))\n"
                    "convnext = dict(type='ConvNeXt', arch='tiny', drop_path_rate=0.4)\n")
    child = tmp_path / 'child.py'
    child.write_text("_base_ = './base.py'\nmodel = dict(backbone=dict(arch='tiny', drop_path_rate=0.1))\n"
                     "other = dict(x=dict(_delete_=True, arch='tiny'))\n"
                     "taken = dict(_base_.convnext, _delete_=True, arch='base', drop_path_rate=0.4)\n")
    assert restated(str(child)) == ["model.backbone.arch = 'tiny'", 'convnext.drop_path_rate = 0.4']


def test_the_backbone_is_written_once():
    """One file names the ConvNeXt type; every other config takes the backbone from it (or from a config that
    does)."""
    naming = [os.path.relpath(f, ROOT) for f in ALL_CONFIGS if "type='ConvNeXt'" in open(f).read()]
    assert naming == [os.path.join('configs', '_base_', 'models', 'convnext_t.py')]
    for config in CONFIGS:
        assert Config.fromfile(config, import_custom_modules=False).model.backbone.type == 'ConvNeXt', config
