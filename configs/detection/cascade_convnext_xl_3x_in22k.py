# Cascade Mask R-CNN, ConvNeXt-XL (ImageNet-22k), 3x: paper 55.2 box AP / 47.7 mask AP. fp32, as the
# official config.
_base_ = './cascade_convnext_t_3x.py'
model = dict(
    backbone=dict(arch='xlarge', drop_path_rate=0.8,
                  init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_xlarge_22k_224.pth')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=1e-4),
                     paramwise_cfg=dict(num_layers=12))  # decay 0.7 as T
