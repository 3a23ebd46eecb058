"""Registration: one import makes our modules available to every OpenMMLab 2.x codebase.

``import convnext_backbone`` (or ``custom_imports=dict(imports=['convnext_backbone'])``) registers ``ConvNeXt``,
``ConvNeXtLayerDecayOptimizerConstructor`` and our hooks twice:

1. In mmengine's root registries (``MODELS``, ``OPTIM_WRAPPER_CONSTRUCTORS``, ``HOOKS``). Every downstream
   codebase's registries (mmdet, mmseg, mmpretrain, mmpose, mmyolo, mmrotate, a lab's own) are children of
   these, and a registry that has no entry of a name looks it up in its parents: ``type='ConvNeXt'`` works in
   any scope that has no ``ConvNeXt`` of its own.
2. In our own scope, ``convnext_backbone``, whose registries are children of the root: the scoped name
   ``type='convnext_backbone.ConvNeXt'`` means ours from any scope, by OpenMMLab's usual ``scope.Name`` rule.

Where a codebase has a ``ConvNeXt`` of its own (mmpretrain), its scope finds that one first: in an
mmpretrain config, ``type='ConvNeXt'`` is mmpretrain's and ``type='convnext_backbone.ConvNeXt'`` is ours.
mmdet 3 and mmseg 1 have none, so there ``type='ConvNeXt'`` is ours.

Old scopes. mmdet's and mmseg's own ConvNeXt configs name ``type='mmpretrain.ConvNeXt'``, older ones
``type='mmcls.ConvNeXt'`` (mmcls was renamed mmpretrain, mmsegmentation#2991). Where that package is not
installed (when ``convnext_backbone`` is imported), ``mmcls`` / ``mmpretrain`` get a stand-in scope in mmengine's
root ``MODELS`` (:func:`_stand_in`, the ``scope.Name`` lookup finds a scope among the root's children) holding
just ``ConvNeXt``: ours, with that package's defaults for what the config leaves out (``out_indices=-1``,
``gap_before_final_norm=True``, as its class would do; given arguments are honoured), logged once per scope.
Where the package is installed nothing is registered and its own class is what the name means. mmengine allows
one registry per scope, so should the package become importable later in the process (``sys.path`` grows), a
``sys.meta_path`` entry (:class:`_RetireStandIns`, it finds and loads nothing itself) removes the stand-in as the
real package is imported, and its own registry takes the scope. Other names in those scopes (``mmpretrain.ResNet``)
are not stood in for.

``ResumableBatchSampler`` (mid-epoch resume, convnext_backbone/crash_safe.py) is in mmengine's root ``DATA_SAMPLERS``.

Nothing here imports mmdet, mmseg or mmpretrain: the package needs only torch and mmengine.
"""
import importlib.util
import sys

from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS as ROOT_DATA_SAMPLERS
from mmengine.registry import HOOKS as ROOT_HOOKS
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as ROOT_CONSTRUCTORS
from mmengine.registry import Registry

from .compile_hook import CompileBackboneHook
from .convnext import ConvNeXt
from .crash_safe import CrashSafeCheckpointHook, CrashSafeHook, ResumableBatchSampler
from .layer_decay import ConvNeXtLayerDecayOptimizerConstructor
from .rng_state import RNGStateHook
from .settings import MMPRETRAIN_DEFAULTS, mmpretrain_defaults

SCOPE = 'convnext_backbone'
MODELS = Registry('model', parent=ROOT_MODELS, scope=SCOPE)
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor', parent=ROOT_CONSTRUCTORS, scope=SCOPE)
HOOKS = Registry('hook', parent=ROOT_HOOKS, scope=SCOPE)

for registry in (ROOT_MODELS, MODELS):
    registry.register_module(module=ConvNeXt)
for registry in (ROOT_CONSTRUCTORS, OPTIM_WRAPPER_CONSTRUCTORS):
    registry.register_module(module=ConvNeXtLayerDecayOptimizerConstructor)
for registry in (ROOT_HOOKS, HOOKS):
    registry.register_module(module=RNGStateHook)
    registry.register_module(module=CrashSafeHook)
    registry.register_module(module=CrashSafeCheckpointHook)
    registry.register_module(module=CompileBackboneHook)
ROOT_DATA_SAMPLERS.register_module(module=ResumableBatchSampler)  # mid-epoch resume (crash_safe.resume_config)


# --- old scopes: mmcls.ConvNeXt / mmpretrain.ConvNeXt where that package is absent ---------------------------

OLD_SCOPES = ('mmcls', 'mmpretrain')
_STAND_INS: dict = {}  # scope -> its stand-in registry in ROOT_MODELS
_logged_stand_ins: set = set()


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module object without a spec is in sys.modules: something is there
        return True


def _stand_in(scope: str):
    """``scope.ConvNeXt`` without ``scope`` installed: our class with that scope's defaults for what is not given."""
    def ConvNeXt_stand_in(**kwargs):  # noqa: N802  (the registry calls it as the class it stands for)
        out_indices, gap_before_final_norm, _ = mmpretrain_defaults(
            kwargs.pop('out_indices', None), kwargs.pop('gap_before_final_norm', None))
        model = ConvNeXt(out_indices=out_indices, gap_before_final_norm=gap_before_final_norm, **kwargs)
        if scope not in _logged_stand_ins:
            _logged_stand_ins.add(scope)
            defaults = ', '.join(f'{k}={v!r}' for k, v in MMPRETRAIN_DEFAULTS.items())
            print_log(f"type='{scope}.ConvNeXt': {scope} is not installed, so convnext_backbone.ConvNeXt is "
                      f"built in its place, with {scope}'s defaults {defaults} where the config leaves them out. "
                      f"Install {scope} for its own class, or write type='convnext_backbone.ConvNeXt' to silence "
                      'this.', logger='current')
        return model
    ConvNeXt_stand_in.__qualname__ = f'{scope}.ConvNeXt stand-in'
    return ConvNeXt_stand_in


class _RetireStandIns:
    """First in ``sys.meta_path`` while stand-ins exist: when a stood-in package is imported and is now really
    importable, remove its stand-in so that the package's own registry can take the scope. Loads nothing itself."""

    def __init__(self):
        self._searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _STAND_INS and not self._searching:
            self._searching = True
            try:
                real = importlib.util.find_spec(fullname)
            finally:
                self._searching = False
            if real is not None:
                registry = _STAND_INS.pop(fullname)
                if ROOT_MODELS.children.get(fullname) is registry:
                    del ROOT_MODELS.children[fullname]
                if not _STAND_INS and self in sys.meta_path:
                    sys.meta_path.remove(self)
        return None


for _scope in OLD_SCOPES:
    if not _installed(_scope) and _scope not in ROOT_MODELS.children:
        _STAND_INS[_scope] = Registry('model', parent=ROOT_MODELS, scope=_scope, locations=[__name__])
        _STAND_INS[_scope].register_module(name='ConvNeXt', module=_stand_in(_scope))
if _STAND_INS:
    sys.meta_path.insert(0, _RetireStandIns())
