# Cascade Mask R-CNN, ConvNeXt-T (ImageNet-1k), 3x: paper 50.4 box AP / 43.7 mask AP.
# All from the bases: ConvNeXt-T (ImageNet-1k checkpoint) with drop path 0.4 (models), AdamW lr 2e-4 with
# layer-wise decay 0.7 over 6 layers (schedules).
_base_ = ['../_base_/models/cascade_mask_rcnn_convnext_fpn.py', '../_base_/datasets/coco_instance_detr_aug.py',
          '../_base_/schedules/schedule_3x_adamw_layer_decay.py', 'mmdet::_base_/default_runtime.py']
