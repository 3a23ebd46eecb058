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

Nothing here imports mmdet, mmseg or mmpretrain: the package needs only torch and mmengine.
"""
from mmengine.registry import HOOKS as ROOT_HOOKS
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as ROOT_CONSTRUCTORS
from mmengine.registry import Registry

from .compile_hook import CompileBackboneHook
from .convnext import ConvNeXt
from .crash_safe import CrashSafeHook
from .layer_decay import ConvNeXtLayerDecayOptimizerConstructor
from .rng_state import RNGStateHook

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
    registry.register_module(module=CompileBackboneHook)
