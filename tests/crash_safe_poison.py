"""A test-only hook for tests/test_crash_safe.py: makes the loss NaN at one iteration, the way a diverging model
does, by filling the mask head's output bias with NaN before that iteration's forward pass."""
import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper


@HOOKS.register_module(force=True)
class PoisonMaskHeadHook(Hook):
    def __init__(self, iteration: int):
        self.iteration = iteration  # 1-based, as the logs count

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.iteration:
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            with torch.no_grad():
                model.roi_head.mask_head.conv_logits.bias.fill_(float('nan'))
