"""Register our modules in mmdet's and mmseg's registries (``custom_imports`` is all a project needs)."""
from mmdet.registry import HOOKS as MMDET_HOOKS
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMDET_CONSTRUCTORS
from mmseg.registry import HOOKS as MMSEG_HOOKS
from mmseg.registry import MODELS as MMSEG_MODELS
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMSEG_CONSTRUCTORS

from .compile_hook import CompileBackboneHook
from .convnext import ConvNeXt
from .layer_decay import ConvNeXtLayerDecayOptimizerConstructor
from .rng_state import RNGStateHook

for registry in (MMDET_MODELS, MMSEG_MODELS):
    registry.register_module(module=ConvNeXt)
for registry in (MMDET_CONSTRUCTORS, MMSEG_CONSTRUCTORS):
    registry.register_module(module=ConvNeXtLayerDecayOptimizerConstructor)
for registry in (MMDET_HOOKS, MMSEG_HOOKS):
    registry.register_module(module=RNGStateHook)
    registry.register_module(module=CompileBackboneHook)
