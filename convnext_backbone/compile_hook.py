"""``torch.compile`` the backbone alone, from a config: ``custom_hooks = [dict(type='CompileBackboneHook')]``.

mmengine's ``compile=True`` compiles the whole ``train_step`` (data preprocessor, detector / segmentor heads and
losses, the optimizer step) and only in training. UperNet's compiles (~2 minutes for a tiny model on 2 cores);
Mask R-CNN's graph-breaks at every mmcv C++ op and data-dependent shape and had not compiled its first step
after 8 minutes. The backbone is where the time goes and it compiles without graph breaks, its fused CPU kernels
kept as custom-op calls (:mod:`convnext_backbone.cpu_kernels`).

The hook compiles the backbone in place (``nn.Module.compile``): parameter names, checkpoints and the optimizer's
parameter groups are unchanged, and it applies to training, validation and testing alike.
"""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper


class CompileBackboneHook(Hook):
    """Args: keyword arguments of ``torch.compile`` (``dynamic``, ``mode``, ``options``, ``backend``, ...)."""

    priority = 'VERY_HIGH'

    def __init__(self, **compile_kwargs):
        self.compile_kwargs = compile_kwargs

    def before_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        backbone = getattr(model, 'backbone', None)
        if backbone is None:
            raise ValueError(f'CompileBackboneHook: {type(model).__name__} has no `backbone` to compile; use '
                             "mmengine's `compile=True` to compile the whole train_step instead.")
        backbone.compile(**self.compile_kwargs)
