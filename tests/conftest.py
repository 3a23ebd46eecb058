import logging
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # reference_convnext and helpers

from helpers import LONGEST_FIRST, SIZE, STACK  # noqa: E402

# mmpretrain 1.2 is a test extra (the reference for its ConvNeXt and ImageClassifier), installed by
# tools/install.sh into its own folder that only the tests put on sys.path. It imports its multimodal models
# (BLIP, ...) whenever transformers is installed, and they do not import with transformers 5 (also a test
# extra). The tests use only its vision models: tell it the multimodal extras are absent.
# Only the pinned stack has it (the stack suites below do not use it).
if STACK == 'pinned':
    sys.path.insert(0, os.path.join(sys.prefix, 'test-extras'))
    import mmpretrain.utils.dependency  # noqa: E402

    mmpretrain.utils.dependency.WITH_MULTIMODAL = False

# The stack suite: the user's path, run on every stack (`make test STACK=classic|onedl` runs only these; the pinned
# stack runs everything). File -> test functions (every parametrisation). Each name must match a test: a renamed
# test fails the run instead of silently leaving the suite.
STACK_SUITE = {
    'test_stack.py': '*',
    'test_convnext.py': ('test_every_arch_shapes_strides_channels', 'test_fast_path_equals_official_forward_and_gradients',
                         'test_fused_training_path_equals_plain_ops_with_active_drop_path',
                         'test_cpu_training_takes_the_fused_autograd_nodes', 'test_inference_fast_path_equals_official',
                         'test_with_cp_and_channels_last_match_eager_including_drop_path',
                         'test_frozen_stages_stay_frozen_after_train', 'test_bad_arguments_raise_clear_errors',
                         'test_registered_in_mmdet_and_mmseg', 'test_cpu_autocast_training_skips_the_float32_kernels'),
    'test_checkpoint.py': ('test_timm_weights_give_timm_features', 'test_official_classification_checkpoint',
                           'test_mmpretrain_classifier_checkpoint_skips_pooled_norm',
                           'test_mmdet_model_zoo_detector_checkpoint_via_prefix',
                           'test_official_finetuned_dense_checkpoint_and_safetensors', 'test_garbage_file_is_a_clear_error',
                           'test_pickled_objects_are_refused', 'test_runner_load_from_refuses_non_finite_backbone_weights'),
    'test_crash_safe.py': ('test_sigkill_at_random_moments_then_resume_equals_uninterrupted',
                           'test_sigterm_mid_epoch_checkpoints_that_iteration_and_resume_continues_the_data_order',
                           'test_auto_resume_falls_back_from_a_torn_latest_checkpoint',
                           'test_the_private_mmengine_method_the_checkpoint_hook_overrides_is_unchanged'),
    'test_layer_decay.py': '*',
    'test_output_stride.py': '*',
    'test_detection.py': ('test_config_builds_and_trains_one_step', 'test_resume_continues_exactly'),
    'test_segmentation.py': ('test_recipe_trains_one_step',),
    'test_dropin.py': ('test_imports_and_builds_without_the_other_codebases',),
    'test_load_from.py': '*',  # mmengine's load order, which the refusal of backbone-only files relies on
    'test_export.py': ('test_fused_kernels_run_in_eager_inference_and_never_while_tracing',
                       'test_onnx_torchscript_exporter_dynamic_shapes_in_onnxruntime', 'test_jit_trace',
                       'test_output_stride_8_jit_trace_and_onnxruntime', 'test_export_tool_segmentor_whole_image_to_logits',
                       'test_export_tool_two_stage_detector_equals_mmdet_predict',
                       'test_roi_align_and_nms_export_as_mmcv_computes_them'),
}


def _share_the_cores():
    """Under pytest-xdist (``make test`` runs one worker per core) each worker, and each process it starts, gets
    its share of the cores: two workers of two torch threads each on two cores stall at every OpenMP barrier."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = threads
        os.environ['TORCHINDUCTOR_COMPILE_THREADS'] = threads  # inductor's C++ compiles: no pool per worker
        import torch
        import torch._inductor.config
        torch.set_num_threads(int(threads))
        torch._inductor.config.compile_threads = int(threads)


_share_the_cores()

def pytest_configure(config):
    # by default xdist re-sorts the files by their number of tests, which put the compile files (few tests, the
    # longest) last: one worker ran the final 150 s alone (10:56 -> 10:18 on 2 cores with this off)
    if hasattr(config.option, 'loadscopereorder'):
        config.option.loadscopereorder = False


def pytest_ignore_collect(collection_path, config):
    """Off the pinned stack, only the stack suite's files are collected (the others may import what that stack
    lacks, e.g. transformers 5 or mmpretrain)."""
    if STACK != 'pinned' and collection_path.suffix == '.py' and collection_path.name.startswith('test_'):
        return collection_path.name not in STACK_SUITE
    return None


def _in_stack_suite(item) -> bool:
    names = STACK_SUITE.get(item.path.name)
    return names == '*' or (names is not None and item.originalname in names)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: every file keeps its own order
    collected = {(item.path.name, item.originalname) for item in items}
    files = {name for name, _ in collected}
    missing = [f'{file}::{name}' for file, names in STACK_SUITE.items() if names != '*' and file in files
               for name in names if (file, name) not in collected]
    missing += [file for file in STACK_SUITE if not os.path.exists(os.path.join(os.path.dirname(__file__), file))]
    if missing and not config.option.keyword and not config.option.markexpr and not any('::' in a for a in config.args):
        raise pytest.UsageError(f'conftest.STACK_SUITE names tests that do not exist: {missing}')
    if STACK != 'pinned':
        deselected = [item for item in items if not _in_stack_suite(item)]
        items[:] = [item for item in items if _in_stack_suite(item)]
        config.hook.pytest_deselected(items=deselected)


@pytest.fixture(autouse=True)
def _restore_default_scope():
    """Each test leaves mmengine's current default scope as it found it: ``init_default_scope('mmpretrain')`` in
    one test must not make later tests build ConvNeXt in mmpretrain's scope (where its defaults apply).

    The one use of a private mmengine name in the tests: mmengine has no public way back to "no default scope"
    (the state most tests start in). ``DefaultScope.overwrite_default_scope`` restores only when given a scope,
    and does it by assigning this same ``_instance_dict``; a new scope per test cannot be undone either (the
    latest instance is the current one). The check after restoring fails when mmengine stops keeping its scopes
    there."""
    from mmengine.registry import DefaultScope
    saved = DefaultScope._instance_dict.copy()
    current = DefaultScope.get_current_instance()
    yield
    DefaultScope._instance_dict = saved
    assert DefaultScope.get_current_instance() is current, \
        'mmengine no longer keeps its default scopes in DefaultScope._instance_dict: update this fixture'


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    """A synthetic COCO set (8 training, 4 validation images of SIZE px) for the detection runs of a module."""
    from convnext_backbone.demo import coco as synthetic_coco
    root = str(tmp_path_factory.mktemp('shapes_coco'))
    synthetic_coco.make_coco(root, num_train=8, num_val=4, size=SIZE)
    return root


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
