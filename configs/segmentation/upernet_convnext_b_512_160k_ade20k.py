# UperNet + ConvNeXt-B (ImageNet-1k), ADE20K 512x512, 160k iterations (paper: 49.1 / 49.9 multi-scale mIoU).
_base_ = ['./upernet_convnext_t_512_160k_ade20k.py']
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224.pth'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
