"""ConvNeXt backbone plugin for OpenMMLab 2.x.

``import convnext_backbone`` (or ``custom_imports=dict(imports=['convnext_backbone'])`` in a config)
registers ``ConvNeXt`` in mmdet's and mmseg's MODELS and ``ConvNeXtLayerDecayOptimizerConstructor`` in their
optimizer-wrapper constructors, and lets torch's safe loader read mmengine checkpoints (``--resume``). On the onedl
fork it also lets mmengine find ``mmseg::`` base configs (:func:`compat.alias_onedl_distributions`).
"""
try:
    import mmengine  # noqa: F401
except ImportError as exc:  # not in install_requires: OpenMMLab and the onedl fork name its distribution differently
    raise ImportError('convnext_backbone needs mmengine >= 0.10: `pip install mmengine` (OpenMMLab) or '
                      '`pip install onedl-mmengine` (the onedl fork), whichever your mmdet / mmseg come from '
                      '(docs/stack.md).') from exc
from . import safe_load  # noqa: F401  (must run before any checkpoint is read)
from .compat import alias_onedl_distributions
alias_onedl_distributions()  # on the onedl fork: mmengine finds `mmseg::` base configs (see compat)
from .checkpoint import CheckpointError, convert_from_ours, convert_state_dict, load_pretrained
from .convnext import ARCH_SETTINGS, ConvNeXt
from .layer_decay import ConvNeXtLayerDecayOptimizerConstructor, get_layer_id
from . import registry  # noqa: F401,E402

__version__ = '0.1.0'
__all__ = ['ARCH_SETTINGS', 'CheckpointError', 'ConvNeXt', 'ConvNeXtLayerDecayOptimizerConstructor',
           'convert_from_ours', 'convert_state_dict', 'get_layer_id', 'load_pretrained']
