# UperNet + ConvNeXt-L (ImageNet-22k), ADE20K 640x640, 160k iterations (paper: 53.2 / 53.7 multi-scale mIoU). fp32.
_base_ = ['./upernet_convnext_b_640_160k_ade20k_in22k.py']
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_large_22k_224.pth'
model = dict(
    backbone=dict(arch='large', init_cfg=dict(checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
optim_wrapper = dict(type='OptimWrapper')
