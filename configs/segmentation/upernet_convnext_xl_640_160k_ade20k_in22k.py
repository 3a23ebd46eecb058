# UperNet + ConvNeXt-XL (ImageNet-22k), ADE20K 640x640, 160k iterations (paper: 53.6 / 54.0 multi-scale mIoU). fp32.
_base_ = ['./upernet_convnext_b_640_160k_ade20k_in22k.py']
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_xlarge_22k_224.pth'
model = dict(
    backbone=dict(arch='xlarge', init_cfg=dict(checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))
optimizer = dict(lr=8e-5)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer)
