"""Exact resumption: keep the random number generators' states in checkpoints.

mmengine only re-seeds on resume, so a resumed run draws different drop-path masks and RoI samples than the
uninterrupted run would have. This hook saves the torch (CPU and CUDA), numpy and Python RNG states of the
process into each checkpoint and restores them after the checkpoint is loaded, so a run that resumes
continues exactly as if it had never stopped. ``tools/train.py`` adds it to every run.
"""
import random

import numpy as np
import torch
from mmengine.hooks import Hook


class RNGStateHook(Hook):
    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['rng_state'] = dict(
            torch=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            numpy=np.random.get_state(),
            python=random.getstate())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('rng_state')
        if state is None or not runner._resume:  # fine-tuning from a checkpoint: fresh randomness
            return
        torch.set_rng_state(state['torch'])
        if torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state['cuda'])
        np.random.set_state(state['numpy'])
        random.setstate(state['python'])
