"""What differs between the torch versions the package runs on, in one place.

The package runs on the three stacks of docs/stack.md: torch 2.1 (the classic OpenMMLab stack), torch 2.8 (the
onedl fork) and the pinned torch 2.14. Everything else in the package calls the functions here instead of asking
torch for an API that one of them lacks; each entry says which torch brought the API and what happens without it.

- ``torch.library.custom_op`` (torch 2.4): the CPU kernels are custom ops, opaque to ``torch.compile``. Before
  2.4, :func:`custom_op` makes each kernel a plain ``torch.autograd.Function`` with the same forward and
  backward: eager runs the same kernels, and ``torch.compile`` sees the plain block instead
  (:data:`KERNELS_UNDER_COMPILE`).
- ``torch.compiler.is_exporting`` (torch 2.7): without it, :func:`is_exporting` is False, so nothing tells an
  exporter's dynamo trace from a compile; the kernels then also step aside under every ``torch.compile``.
- ``torch.onnx.export(dynamo=...)`` (torch 2.5; the dynamo exporter is the default from 2.9): :func:`onnx_export`
  always runs the TorchScript-based exporter.
- ``torch.serialization.add_safe_globals`` (torch 2.4): where it is missing, safe loading (``weights_only=True``)
  cannot be taught mmengine's checkpoint metadata; :func:`convnext_backbone.safe_load.load_mmengine_checkpoint`
  then reads mmengine's own checkpoints the way mmengine does on that torch.
"""
from __future__ import annotations

import inspect
import re

import torch

TORCH_VERSION: tuple[int, int] = tuple(int(part) for part in re.match(r'(\d+)\.(\d+)', torch.__version__).groups())

HAS_CUSTOM_OP = hasattr(torch.library, 'custom_op')
HAS_IS_EXPORTING = hasattr(getattr(torch, 'compiler', None), 'is_exporting')
HAS_SAFE_GLOBALS = hasattr(torch.serialization, 'add_safe_globals')
# The kernels run inside torch.compile only as opaque custom ops, and only where an export can be told apart.
KERNELS_UNDER_COMPILE = HAS_CUSTOM_OP and HAS_IS_EXPORTING


def _is_compiling_function():
    check = getattr(getattr(torch, 'compiler', None), 'is_compiling', None)  # torch >= 2.3
    if check is None:
        from torch import _dynamo  # torch 2.1 / 2.2: the same function under its first name
        check = _dynamo.is_compiling
    return check


is_compiling = _is_compiling_function()  # whether dynamo is tracing (torch.compile, and torch.export's trace)


def is_exporting() -> bool:
    """Whether ``torch.export`` (or the dynamo ONNX exporter) is tracing; False on torch < 2.7 (see above)."""
    return HAS_IS_EXPORTING and torch.compiler.is_exporting()


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``torch.is_autocast_enabled(device)`` is torch >= 2.4)."""
    if TORCH_VERSION >= (2, 4):
        return autocast_supported(device_type) and torch.is_autocast_enabled(device_type)
    if device_type == 'cpu':
        return torch.is_autocast_cpu_enabled()
    if device_type == 'cuda':
        return torch.is_autocast_enabled()
    return False


def _autocast_available(device_type: str) -> bool:
    available = getattr(torch.amp, 'is_autocast_available', None)
    if available is None:
        return device_type in ('cpu', 'cuda')
    try:
        return bool(available(device_type))
    except RuntimeError:  # a device type this torch does not know
        return False


# Asked once here, not in forward: torch.compile cannot trace ``torch.amp.is_autocast_available`` (its builtin
# ``torch._C._is_autocast_available``) on torch 2.8 and 2.11 (2.14 can), and broke the graph at every LayerNorm
# (15 breaks in a tiny ConvNeXt on torch 2.8; ours 0.5x timm's compiled bf16 training on an H200 with torch 2.11).
# A dict lookup traces (tests/test_stack.py checks one graph on every stack).
_AUTOCAST_DEVICE_TYPES = {device_type: _autocast_available(device_type)
                          for device_type in ('cpu', 'cuda', 'xpu', 'mps', 'hpu', 'mtia', 'xla', 'ipu')}


def autocast_supported(device_type: str) -> bool:
    """Whether autocast exists for ``device_type`` (``torch.amp.is_autocast_available``, torch >= 2.3), known at
    import for the common device types, so that ``torch.compile`` traces through it."""
    supported = _AUTOCAST_DEVICE_TYPES.get(device_type)
    if supported is None:
        supported = _AUTOCAST_DEVICE_TYPES[device_type] = _autocast_available(device_type)
    return supported


def add_safe_globals(safe_globals: list) -> bool:
    """Allow-list ``safe_globals`` for ``torch.load(weights_only=True)``; False where this torch cannot.

    ``(obj, 'module.name')`` pairs (an object allowed under another name) are torch >= 2.6 (torch 2.5 would store
    the pair and then fail every safe load reading its ``__module__``); before, only the plain entries are
    registered."""
    if not HAS_SAFE_GLOBALS:
        return False
    if TORCH_VERSION < (2, 6):
        safe_globals = [entry for entry in safe_globals if not isinstance(entry, tuple)]
    torch.serialization.add_safe_globals(safe_globals)
    return True


class _AutogradOp:
    """A kernel as a ``torch.autograd.Function`` where torch has no ``custom_op`` (torch < 2.4): the same
    ``register_fake`` / ``register_autograd`` interface, called like the custom op (keywords allowed)."""

    def __init__(self, name: str, fn):
        self.name, self._fn, self._function = name, fn, None
        self._signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__

    def register_fake(self, fake):
        return fake  # no fake tensors to serve: dynamo never sees these (KERNELS_UNDER_COMPILE is False)

    def register_autograd(self, backward, setup_context):
        fn = self._fn

        def forward(ctx, *args):
            output = fn(*args)
            setup_context(ctx, args, output)
            return output

        # named after the op: its autograd nodes are `convnext_<op>Backward`
        self._function = type(self.name.replace('::', '_'), (torch.autograd.Function,),
                              {'forward': staticmethod(forward), 'backward': staticmethod(backward)})

    def __call__(self, *args, **kwargs):
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with torch.profiler.record_function(self.name):  # profiles name the op as they name a custom op
            if self._function is not None and torch.is_grad_enabled():
                return self._function.apply(*bound.args)
            return self._fn(*bound.args)


def custom_op(name: str, mutates_args=()):
    """``torch.library.custom_op`` where torch has it (2.4), else the same kernel as an autograd function."""
    if HAS_CUSTOM_OP:
        return torch.library.custom_op(name, mutates_args=mutates_args)
    return lambda fn: _AutogradOp(name, fn)


def onnx_export(*args, **kwargs):
    """``torch.onnx.export`` with the TorchScript-based exporter on every torch: from torch 2.5 it takes
    ``dynamo=`` (and from 2.9 defaults to the dynamo exporter), before that the TorchScript one is the only one."""
    if 'dynamo' in inspect.signature(torch.onnx.export).parameters:
        kwargs.setdefault('dynamo', False)
    return torch.onnx.export(*args, **kwargs)


# --- mmengine: the onedl fork's distribution names ---------------------------------------------------------

ONEDL_DISTRIBUTIONS = {'mmsegmentation': 'onedl-mmsegmentation', 'mmdet': 'onedl-mmdetection',
                       'mmcv': 'onedl-mmcv', 'mmengine': 'onedl-mmengine', 'mmpretrain': 'onedl-mmpretrain'}


class OnedlDistributionAliases:
    """An ``importlib.metadata`` distribution finder (the documented extension point: an object on
    ``sys.meta_path`` with ``find_distributions``) that answers OpenMMLab's distribution names with the onedl
    fork's, where only the fork is installed.

    mmengine finds a ``mmseg::configs/...`` base config by *distribution*: ``mmseg`` -> ``mmsegmentation`` ->
    ``importlib.metadata.version('mmsegmentation')``, and says "mmsegmentation is not installed" where the fork
    installed the same ``mmseg`` module as ``onedl-mmsegmentation`` (onedl-mmengine 0.10.12 still asks for the old
    name). ``mmdet::`` works there only because mmengine falls back to the module name, which for mmdet is the same.
    """

    def find_spec(self, fullname, path=None, target=None):
        return None  # finds no modules: only distributions

    def find_distributions(self, context=None):
        from importlib import metadata
        name = getattr(context, 'name', None)
        fork = ONEDL_DISTRIBUTIONS.get((name or '').lower().replace('_', '-'))
        if fork is None or _installed(name, skip=self):
            return iter(())
        try:
            return iter((metadata.distribution(fork),))
        except metadata.PackageNotFoundError:
            return iter(())


def _installed(name: str, skip) -> bool:
    """Whether a finder other than ``skip`` knows distribution ``name``."""
    from importlib import metadata
    import sys
    context = metadata.DistributionFinder.Context(name=name)
    return any(next(iter(finder.find_distributions(context)), None) is not None
               for finder in sys.meta_path if finder is not skip and hasattr(finder, 'find_distributions'))


def alias_onedl_distributions() -> bool:
    """Install :class:`OnedlDistributionAliases` once, where a onedl distribution stands in for an absent
    OpenMMLab one (else nothing changes). Returns whether it is installed."""
    import sys
    from importlib import metadata
    if any(isinstance(finder, OnedlDistributionAliases) for finder in sys.meta_path):
        return True
    finder = OnedlDistributionAliases()
    needed = False
    for upstream, fork in ONEDL_DISTRIBUTIONS.items():
        try:
            metadata.distribution(fork)
        except metadata.PackageNotFoundError:
            continue
        needed = needed or not _installed(upstream, skip=finder)
    if needed:
        sys.meta_path.append(finder)
    return needed
