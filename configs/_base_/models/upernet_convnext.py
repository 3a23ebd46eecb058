# UperNet + ConvNeXt-T for ADE20K (150 classes): mmseg's UperNet/ConvNeXt model with our backbone in place of
# mmpretrain's, plus mmseg's default runtime (default_scope 'mmseg', hooks, visualizer, tta_model).
_base_ = ['mmseg::_base_/models/upernet_convnext.py', 'mmseg::_base_/default_runtime.py']

custom_imports = dict(imports=['convnext_backbone'], allow_failed_imports=False)
# mmseg's base points at mmpretrain's ImageNet model-zoo file; ours loads the official one directly.
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    # norm_cfg (SyncBN), channels 512 / 256, pool scales, losses (aux weight 0.4) as in mmseg's base
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, in_index=2, num_classes=150))
# Crop-dependent settings (data_preprocessor size, sliding-window test_cfg) are set with the crop size in
# configs/segmentation.
