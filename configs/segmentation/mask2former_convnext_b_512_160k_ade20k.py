# Mask2Former + ConvNeXt-B (ImageNet-1k), ADE20K 512x512, 160k iterations. A recipe beyond the paper: no published
# number. Drop path 0.4 and stage-wise decay 0.9 as for T (the paper's ADE20K values for B); num_layers 12 as the
# paper's B recipe.
_base_ = './mask2former_convnext_t_512_160k_ade20k.py'
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224.pth'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
