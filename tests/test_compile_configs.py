"""torch.compile through the configs in configs/compile/: their CompileBackboneHook, or mmengine's own
``compile=True``, trains and infers like the same model uncompiled. Apart from test_compile.py (the backbone
alone) so that the two files, about equally long, run side by side under ``make test``'s pytest-xdist."""
import copy
import os
import types

import pytest
import torch

from convnext_backbone.cpu_kernels import ONEDNN
from helpers import (ROOT, SIZE, TINY, assert_close, detection_batch, segmentation_batch, shrink_detector,
                     shrink_segmentor)

pytestmark = pytest.mark.skipif(not ONEDNN, reason='this torch build has no oneDNN fused linear (no kernels)')


_eager_runs = {}  # the uncompiled model's run, by model config: the two UperNet configs share one


def _train_and_infer(model, batch, optim_cfg):
    """One training step (drop path drawn from torch's generator, seeded), then features and predictions."""
    from mmengine.optim import build_optim_wrapper
    # inductor draws drop-path masks with its own generator unless it falls back to torch's
    with torch._inductor.config.patch(fallback_random=True):
        model.train()
        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(optim_cfg))
        torch.manual_seed(1)
        log_vars = model.train_step(copy.deepcopy(batch), optim_wrapper)
        model.eval()
        with torch.no_grad():
            data = model.data_preprocessor(copy.deepcopy(batch), False)
            feats = model.extract_feat(data['inputs'])
            preds = model.test_step(copy.deepcopy(batch))
    return log_vars, feats, preds


def _two_detection_images():
    """Two SIZE px images, the segmentation batch's shape: the compiled backbone's graphs (train and eval) are then
    the UperNet hook config's too (the same shrunk backbone), and inductor's cache compiles them once."""
    batches = [detection_batch(SIZE) for _ in range(2)]
    return {key: batches[0][key] + batches[1][key] for key in ('inputs', 'data_samples')}


@pytest.mark.parametrize('name', ['mask_rcnn_convnext_t_3x_compile', 'upernet_convnext_t_512_160k_ade20k_compile',
                                  'upernet_convnext_t_512_160k_ade20k_compile_train_step'])
def test_compile_configs_train_and_infer_like_eager(name):
    """The configs' CompileBackboneHook compiles the backbone in place, or mmengine's ``compile=True`` (the
    Runner's own code) the whole ``train_step``; a training step (losses, updated weights) and inference equal
    the same model uncompiled."""
    from mmengine.runner import Runner
    from convnext_backbone.tools.common import adapt_to_machine, load_config, revert_sync_bn
    from mmengine.logging import MMLogger
    from mmengine.registry import HOOKS, MODELS, init_default_scope
    cfg = load_config(os.path.join(ROOT, 'configs', 'compile', name + '.py'))
    if cfg.default_scope == 'mmdet':
        # the segmentors' backbone (shrink_segmentor's TINY): inductor's cache compiles its graphs once for both
        shrink_detector(cfg, TINY)
        make_batch = _two_detection_images
    else:
        shrink_segmentor(cfg)
        make_batch = segmentation_batch
    adapt_to_machine(cfg)
    revert_sync_bn(cfg.model)
    init_default_scope(cfg.default_scope)
    key = repr(cfg.model.to_dict())
    if key not in _eager_runs:
        torch.manual_seed(0)
        batch = make_batch()
        eager = MODELS.build(cfg.model)
        eager.init_weights()
        initial = copy.deepcopy(eager)
        with torch.no_grad():
            data = eager.data_preprocessor(copy.deepcopy(batch), False)
            feats_before = eager.eval().extract_feat(data['inputs'])
        _eager_runs[key] = (batch, initial, feats_before, _train_and_infer(eager, batch, cfg.optim_wrapper))
    batch, initial, feats_before, (logs_e, feats_e, preds_e) = _eager_runs[key]
    compiled = copy.deepcopy(initial)
    torch._dynamo.reset()  # see test_compile._compile
    if cfg.get('compile'):
        Runner._maybe_compile(types.SimpleNamespace(cfg=cfg, model=compiled, logger=MMLogger.get_current_instance()),
                              'train_step')
        assert hasattr(compiled.train_step, '_torchdynamo_orig_callable')
    else:
        for hook in cfg.custom_hooks:
            HOOKS.build(hook).before_run(types.SimpleNamespace(model=compiled))
        assert compiled.backbone._compiled_call_impl is not None and initial.backbone._compiled_call_impl is None
    with torch.no_grad():
        data = compiled.data_preprocessor(copy.deepcopy(batch), False)
        for a, b in zip(compiled.eval().extract_feat(data['inputs']), feats_before):
            assert_close(a, b, 'features before the step')
    logs_c, feats_c, preds_c = _train_and_infer(compiled, batch, cfg.optim_wrapper)
    assert logs_e.keys() == logs_c.keys()
    for key, value in logs_e.items():
        assert torch.isfinite(torch.as_tensor(value)).all(), key
        assert_close(torch.as_tensor(logs_c[key]), torch.as_tensor(value), key)
    for a, b in zip(feats_c, feats_e):
        # AdamW's first step moves every weight by about +-lr whatever its gradient's size: float rounding that
        # flips a near-zero gradient's sign moves the weight 2 lr the other way (lr 1e-4 here)
        assert torch.isfinite(a).all()
        assert (a - b).abs().max() <= 2e-3 * max(1.0, b.abs().max().item()), 'features after the step'
    if cfg.default_scope == 'mmseg':
        for a, b in zip(preds_c, preds_e):
            assert_close(a.seg_logits.data, b.seg_logits.data, 'seg logits')
    else:
        for a in preds_c:
            assert torch.isfinite(a.pred_instances.bboxes).all() and torch.isfinite(a.pred_instances.scores).all()
