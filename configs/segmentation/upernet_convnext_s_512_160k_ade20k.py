# UperNet + ConvNeXt-S, ADE20K 512x512, 160k iterations (paper: 48.7 / 49.6 multi-scale mIoU).
_base_ = ['./upernet_convnext_t_512_160k_ade20k.py']
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_small_1k_224.pth'
model = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint=checkpoint_file)))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
