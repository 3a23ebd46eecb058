"""Our configs state only what differs from their ``_base_`` chain (the installed mmdet / mmseg configs and ours)."""
import glob
import importlib
import os

import pytest
from mmengine.config import Config

ROOT = os.path.join(os.path.dirname(__file__), '..')
CONFIGS = sorted(f for f in glob.glob(os.path.join(ROOT, 'configs', '*', '*.py')) if '_base_' not in f)


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


def restated(config: str) -> list:
    namespace = {}
    with open(config) as f:
        exec(compile(f.read(), config, 'exec'), namespace)  # the file's own assignments, before any merge
    bases = namespace.get('_base_', [])
    merged = Config()
    for base in [bases] if isinstance(bases, str) else bases:
        merged.merge_from_dict(Config.fromfile(_base_path(config, base), import_custom_modules=False).to_dict())
    merged = merged.to_dict()
    found = []
    for name, value in namespace.items():
        # top-level plain values (crop_size = ...) are the file's own variables, used to build its dicts
        if name.startswith('_') or not isinstance(value, dict):
            continue
        for path, leaf in _leaves(value, (name,)):
            if _lookup(merged, path) == leaf:
                found.append(f'{".".join(map(str, path))} = {leaf!r}')
    return found


@pytest.mark.parametrize('config', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_restates_nothing_its_bases_set(config):
    assert restated(config) == []


def test_the_check_finds_a_restated_value(tmp_path):
    base = tmp_path / 'base.py'
    base.write_text("model = dict(backbone=dict(arch='tiny', drop_path_rate=0.4))\n")
    child = tmp_path / 'child.py'
    child.write_text("_base_ = './base.py'\nmodel = dict(backbone=dict(arch='tiny', drop_path_rate=0.1))\n"
                     "other = dict(x=dict(_delete_=True, arch='tiny'))\n")
    assert restated(str(child)) == ["model.backbone.arch = 'tiny'"]
