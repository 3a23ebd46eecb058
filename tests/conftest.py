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
