# Mask R-CNN + FPN (mmdet's) with the ConvNeXt-T backbone (convnext_t.py); per-model configs override arch, checkpoint
# and channels.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', './convnext_t.py']
custom_imports = dict(imports=['convnext_backbone'], allow_failed_imports=False)
model = dict(backbone=dict(_base_.convnext_t, _delete_=True), neck=dict(in_channels=[96, 192, 384, 768]))
