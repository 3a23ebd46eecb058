# UperNet, ConvNeXt-T, ADE20K 512 with mmengine's own `compile=True`: the whole train_step (preprocessor, heads,
# losses, optimizer step) under torch.compile; validation and testing stay eager (mmengine compiles train_step
# only); see docs/performance.md. For Mask R-CNN compile the backbone alone (mask_rcnn_convnext_t_3x_compile.py).
_base_ = '../segmentation/upernet_convnext_t_512_160k_ade20k.py'
compile = True
