"""ConvNeXt backbone plugin for OpenMMLab 2.x.

``import convnext_backbone`` (or ``custom_imports=dict(imports=['convnext_backbone'])`` in a config) registers
``ConvNeXt``, ``ConvNeXtLayerDecayOptimizerConstructor`` and our hooks in mmengine's root registries, which every
codebase's registries (mmdet's, mmseg's, ...) search, and in our own scope ``convnext_backbone``
(:mod:`convnext_backbone.registry`); and it lets torch's safe loader read mmengine checkpoints (``--resume``). On the
onedl fork it also lets mmengine find ``mmseg::`` base configs (:func:`compat.alias_onedl_distributions`).

Modules: :mod:`~convnext_backbone.convnext` the network, :mod:`~convnext_backbone.settings` its arguments,
:mod:`~convnext_backbone.arch` the arch table, :mod:`~convnext_backbone.checkpoint` checkpoint files and layouts
(:mod:`~convnext_backbone.layouts`), :mod:`~convnext_backbone.loading` loading them into the backbone,
:mod:`~convnext_backbone.layer_decay` the lr-decay constructor, :mod:`~convnext_backbone.compat` what differs between
the torch versions.
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
from .arch import ARCH_SETTINGS
from .checkpoint import CheckpointError, convert_from_ours, convert_state_dict
from .convnext import ConvNeXt
from .layer_decay import ConvNeXtLayerDecayOptimizerConstructor, get_layer_id
from .loading import load_pretrained
from . import registry  # noqa: F401,E402

__version__ = '0.1.0'
__all__ = ['ARCH_SETTINGS', 'CheckpointError', 'ConvNeXt', 'ConvNeXtLayerDecayOptimizerConstructor',
           'convert_from_ours', 'convert_state_dict', 'get_layer_id', 'load_pretrained']
