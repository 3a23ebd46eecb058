# The ConvNeXt-T backbone every recipe here starts from: all four stages out, the paper's COCO 3x / ADE20K drop path
# 0.4, layer scale initialised at 1.0 as the official detection and segmentation code does (the checkpoint's values
# replace it), and the official ImageNet-1k checkpoint. A config puts it in place of its codebase's backbone and
# states only what differs:
#     _base_ = [..., '../_base_/models/convnext_t.py']
#     model = dict(backbone=dict(_base_.convnext_t, _delete_=True, drop_path_rate=0.2))
convnext_t = dict(
    type='ConvNeXt',
    arch='tiny',
    out_indices=(0, 1, 2, 3),
    drop_path_rate=0.4,
    layer_scale_init_value=1.0,
    init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth'))
