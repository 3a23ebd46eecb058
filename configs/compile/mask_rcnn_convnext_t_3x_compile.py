# Mask R-CNN, ConvNeXt-T 3x with the backbone under torch.compile (docs/performance.md). The backbone alone:
# mmengine's `compile=True` compiles the whole train_step, heads and losses included, and not validation or
# testing (see convnext_backbone/compile_hook.py). Default torch.compile options: the second input size recompiles
# with dynamic shapes, which then serve every size.
_base_ = '../detection/mask_rcnn_convnext_t_3x.py'
custom_hooks = [dict(type='CompileBackboneHook')]
