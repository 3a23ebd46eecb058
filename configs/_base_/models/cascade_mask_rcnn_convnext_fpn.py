# Cascade Mask R-CNN + FPN with the ConvNeXt-T backbone (convnext_t.py) and the paper's heads: 4conv1fc, SyncBN,
# GIoU loss.
_base_ = ['mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py', './convnext_t.py']
custom_imports = dict(imports=['convnext_backbone'], allow_failed_imports=False)
_stage_stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
model = dict(
    backbone=dict(_base_.convnext_t, _delete_=True),
    neck=dict(in_channels=[96, 192, 384, 768]),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,  # GIoU is computed on decoded boxes
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0)) for stds in _stage_stds
    ]))
