import logging
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # reference_convnext and helpers

# mmpretrain 1.2 is a test extra (the reference for its ConvNeXt and ImageClassifier), installed by
# tools/install.sh into its own folder that only the tests put on sys.path. It imports its multimodal models
# (BLIP, ...) whenever transformers is installed, and they do not import with transformers 5 (also a test
# extra). The tests use only its vision models: tell it the multimodal extras are absent.
sys.path.insert(0, os.path.join(sys.prefix, 'test-extras'))
import mmpretrain.utils.dependency  # noqa: E402

mmpretrain.utils.dependency.WITH_MULTIMODAL = False


@pytest.fixture(autouse=True)
def _restore_default_scope():
    """Each test leaves mmengine's current default scope as it found it: ``init_default_scope('mmpretrain')`` in
    one test must not make later tests build ConvNeXt in mmpretrain's scope (where its defaults apply)."""
    from mmengine.registry import DefaultScope
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict = saved


@pytest.fixture(scope='module')
def one_thread():
    """One torch thread for a test module of miniature models (``pytestmark = pytest.mark.usefixtures(...)``): a
    second intra-op thread gains nothing at their sizes and stalls at every OpenMP barrier on a busy 2-core machine
    (a 50 s test took 6 min under load). Restored after the module."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def mm_log():
    """Messages that the library logs through mmengine's current logger during the test."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    handler = _ListHandler()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
