# DINO-4scale, ConvNeXt-B (ImageNet-1k), COCO 12 epochs. A recipe beyond the paper: no published number.
_base_ = './dino_4scale_convnext_t_12e.py'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.4,  # about half the paper's B value for 3x (0.7), as for T (0.4 -> 0.2)
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224.pth')),
    neck=dict(in_channels=[256, 512, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8, num_layers=12))  # the paper's B value (27 blocks in stage 2)
