# UperNet, ConvNeXt-T, ADE20K 512 with the backbone under torch.compile (docs/performance.md); why the backbone
# alone: mask_rcnn_convnext_t_3x_compile.py.
_base_ = '../segmentation/upernet_convnext_t_512_160k_ade20k.py'
custom_hooks = [dict(type='CompileBackboneHook')]
