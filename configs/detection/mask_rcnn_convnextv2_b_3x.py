# Mask R-CNN, ConvNeXt-V2-B (FCMAE pre-trained, ImageNet-1k fine-tuned), 3x. V2 blocks: GRN, no layer
# scale. Our recipe (no official V2 detection config): the ConvNeXt-B 3x hyperparameters.
_base_ = './mask_rcnn_convnext_t_3x.py'
model = dict(
    backbone=dict(arch='base', use_grn=True, layer_scale_init_value=0.0,  # drop path 0.4 as T
                  init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_base_1k_224_ema.pt')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8, num_layers=12))  # lr 1e-4 as T
