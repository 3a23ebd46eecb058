# Mask R-CNN, ConvNeXt-T 3x with the backbone under torch.compile (README: torch.compile). The backbone alone:
# mmengine's `compile=True` would compile the whole train_step, heads and losses included (see
# convnext_backbone/compile_hook.py). dynamic=False: each new input size recompiles; torch 2.14's automatic
# dynamic shapes fail in inductor on the channels-last views ("cannot determine truth value of Relational").
_base_ = '../detection/mask_rcnn_convnext_t_3x.py'
custom_hooks = [dict(type='CompileBackboneHook', dynamic=False)]
