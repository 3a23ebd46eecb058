# UperNet + ConvNeXt-T for ADE20K (150 classes): mmseg's UperNet/ConvNeXt model with our backbone (convnext_t.py) in
# place of mmpretrain's, plus mmseg's default runtime (default_scope 'mmseg', hooks, visualizer, tta_model).
_base_ = ['mmseg::_base_/models/upernet_convnext.py', 'mmseg::_base_/default_runtime.py', './convnext_t.py']

custom_imports = dict(imports=['convnext_backbone'], allow_failed_imports=False)
# mmseg's base points at mmpretrain's ImageNet model-zoo file; ours (convnext_t.py) loads the official one directly.
checkpoint_file = _base_.convnext_t.init_cfg.checkpoint
model = dict(
    backbone=dict(_base_.convnext_t, _delete_=True),
    # norm_cfg (SyncBN), channels 512 / 256, pool scales, losses (aux weight 0.4) as in mmseg's base
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, in_index=2, num_classes=150))
# Crop-dependent settings (data_preprocessor size, sliding-window test_cfg) are set with the crop size in
# configs/segmentation.
