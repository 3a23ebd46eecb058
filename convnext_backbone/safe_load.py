"""Let torch's safe loader (``weights_only=True``, the default since torch 2.6) read mmengine checkpoints.

mmengine 0.10.7 stores its MessageHub in ``meta``: ``HistoryBuffer`` objects holding numpy arrays, whose
pickles also refer to the buffer's statistics methods as ``getattr(HistoryBuffer, 'min')``. The safe unpickler
rejects them, so ``--resume`` and loading any checkpoint that mmengine wrote fail with
``Unsupported global: mmengine.logging.history_buffer.HistoryBuffer``. Instead of turning safe loading off
we allow-list exactly those classes, and a ``getattr`` that resolves nothing but HistoryBuffer's statistics
methods (a general ``getattr`` would hand a pickle any method of any allowed object, e.g.
``ndarray.tofile``); everything else stays forbidden.
"""
import pickle

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from .compat import add_safe_globals


def _numpy_globals():
    # What numpy arrays and scalars pickle into. numpy 2 moved numpy.core to numpy._core; pickles written
    # with either name must load, so allow both where they exist.
    names = []
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            mod = __import__(module, fromlist=['_reconstruct', 'scalar'])
        except ImportError:
            continue
        names += [(getattr(mod, '_reconstruct'), f'{module}._reconstruct'),
                  (getattr(mod, 'scalar'), f'{module}.scalar')]
    # every plain numeric / bool dtype class (data descriptions, no code): e.g. numpy's RNG state is uint32
    dtypes = {type(np.dtype(code)) for code in '?bBhHiIlLqQefdgFDG'}
    return names + [np.ndarray, np.dtype] + sorted(dtypes, key=lambda t: t.__name__)


def history_buffer_getattr(obj, name):
    """The only ``getattr`` a safely loaded pickle may call: HistoryBuffer's statistics methods."""
    # The built-in four are listed explicitly: mmengine fills _statistics_methods only when the first
    # HistoryBuffer is created, which a fresh process that just loads a checkpoint has not done yet.
    allowed = {'min', 'max', 'current', 'mean'} | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed and hasattr(HistoryBuffer, name):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'weights_only load refused getattr({obj!r}, {name!r}): only HistoryBuffer '
                                 'statistics methods are allow-listed (see convnext_backbone.safe_load).')


MMENGINE_SAFE_GLOBALS = [HistoryBuffer, (history_buffer_getattr, 'builtins.getattr')] + _numpy_globals()


def allow_mmengine_metadata() -> bool:
    """Register :data:`MMENGINE_SAFE_GLOBALS` with the safe loader (False where torch < 2.4 has no allow-list).
    Called at import and again before each of our own safe loads: onedl-mmengine loads inside
    ``torch.serialization.safe_globals([HistoryBuffer, numpy types, ...])``, whose exit *removes* those entries
    from the process-wide list, ours included (registering is a set union: nothing is added twice)."""
    return add_safe_globals(MMENGINE_SAFE_GLOBALS)


allow_mmengine_metadata()


def load_mmengine_checkpoint(path, **kwargs):
    """``torch.load`` of a checkpoint that mmengine wrote (it pickles its MessageHub into ``meta``): safely
    (``weights_only=True``, with :mod:`convnext_backbone.safe_load`'s allow-list) where torch can be taught those
    classes, else as mmengine itself loads it on that torch (torch < 2.4: its default, a full unpickle of a
    file from the run's own work_dir)."""
    if not allow_mmengine_metadata():
        return torch.load(path, weights_only=False, **kwargs)
    return torch.load(path, weights_only=True, **kwargs)
