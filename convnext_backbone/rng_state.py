"""Exact resumption: keep the random number generators' states in checkpoints.

mmengine only re-seeds on resume, so a resumed run draws different drop-path masks and RoI samples than the
uninterrupted run would have. This hook saves the torch (CPU and CUDA), numpy and Python RNG states of the
process into each checkpoint and restores them when training resumes from it, so a run that resumes
continues exactly as if it had never stopped. ``tools/train.py`` adds it to every run
(``custom_hooks = [dict(type='RNGStateHook')]``).
"""
import random

import numpy as np
import torch
from mmengine.hooks import Hook


class RNGStateHook(Hook):
    priority = 'VERY_LOW'

    def __init__(self):
        self._loaded = None  # (iter, rng_state) of the last checkpoint loaded

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['rng_state'] = dict(
            torch=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            numpy=np.random.get_state(),
            python=random.getstate())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = (checkpoint.get('meta', {}).get('iter'), checkpoint.get('rng_state'))

    def before_train(self, runner) -> None:
        # Restored here, the last thing before the first iteration (this hook's before_train runs after the other
        # hooks'), only when training resumes from the checkpoint loaded: the loop then continues its iteration.
        # A checkpoint loaded to fine-tune from (load_from without resume) starts at iteration 0 with fresh
        # randomness. Later than loading, so mmengine's re-seeding on resume does not undo it.
        loaded, self._loaded = self._loaded, None
        if loaded is None or loaded[1] is None or not runner.iter or runner.iter != loaded[0]:
            return
        state = loaded[1]
        torch.set_rng_state(state['torch'])
        if torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state['cuda'])
        np.random.set_state(state['numpy'])
        random.setstate(state['python'])
