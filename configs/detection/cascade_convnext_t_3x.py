# Cascade Mask R-CNN, ConvNeXt-T (ImageNet-1k), 3x: paper 50.4 box AP / 43.7 mask AP.
_base_ = ['../_base_/models/cascade_mask_rcnn_convnext_fpn.py', '../_base_/datasets/coco_instance_detr_aug.py',
          '../_base_/schedules/schedule_3x_adamw_layer_decay.py', 'mmdet::_base_/default_runtime.py']
model = dict(backbone=dict(
    arch='tiny', drop_path_rate=0.4,
    init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth')))
optim_wrapper = dict(optimizer=dict(lr=2e-4), paramwise_cfg=dict(decay_rate=0.7, num_layers=6))
