# Mask R-CNN + FPN (mmdet's) with a ConvNeXt-T backbone; per-model configs override arch and channels.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['convnext_backbone'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        layer_scale_init_value=1.0),
    neck=dict(in_channels=[96, 192, 384, 768]))
