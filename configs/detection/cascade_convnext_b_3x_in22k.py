# Cascade Mask R-CNN, ConvNeXt-B (ImageNet-22k), 3x: paper 54.0 box AP / 46.9 mask AP.
_base_ = './cascade_convnext_b_3x.py'
model = dict(backbone=dict(
    drop_path_rate=0.6, init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_224.pth')))
optim_wrapper = dict(optimizer=dict(lr=1e-4))  # decay 0.8 over 12 layers as B 1k
