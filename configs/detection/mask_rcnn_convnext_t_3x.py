# Mask R-CNN, ConvNeXt-T (ImageNet-1k), 3x: paper 46.2 box AP / 41.7 mask AP.
_base_ = ['../_base_/models/mask_rcnn_convnext_fpn.py', '../_base_/datasets/coco_instance_detr_aug.py',
          '../_base_/schedules/schedule_3x_adamw_layer_decay.py', 'mmdet::_base_/default_runtime.py']
# ConvNeXt-T (ImageNet-1k checkpoint) with drop path 0.4 from the model base.
optim_wrapper = dict(optimizer=dict(lr=1e-4), paramwise_cfg=dict(decay_rate=0.95))  # over 6 layers
