# The segmentation demo: the UperNet recipe in miniature for a 2-core CPU. The same small ConvNeXt as the
# detection demo (pretrained by convnext_backbone/demo/pretrain.py on synthetic shape classification, loaded through
# init_cfg in the official checkpoint format), fine-tuned with stage-wise lr decay on a synthetic
# ADE20K-format set of patterned shapes (tools/make_demo_data.py: label 0 = background, ignored via
# reduce_zero_label).
_base_ = '../segmentation/upernet_convnext_t_512_160k_ade20k.py'
_channels = [32, 64, 128, 256]
data_root = 'data/shapes_ade20k/'
crop_size = (128, 128)
max_iters = 3000
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch=dict(_delete_=True, depths=[2, 2, 4, 2], channels=_channels), drop_path_rate=0.1,
                  init_cfg=dict(checkpoint='work_dirs/demo/pretrained_convnext.pth')),
    decode_head=dict(in_channels=_channels, channels=64, num_classes=3),  # 512 channels in the paper's models
    auxiliary_head=dict(in_channels=_channels[2], channels=32, num_classes=3),
    test_cfg=dict(mode='whole'))  # the images are the crop size: one window
# A dataset in ADE20K's layout with its own classes: BaseSegDataset (ADE20KDataset only knows ADE's 150).
_dataset = dict(type='BaseSegDataset', data_root=data_root, img_suffix='.jpg', seg_map_suffix='.png',
                reduce_zero_label=True,
                metainfo=dict(classes=('rectangle', 'ellipse', 'triangle'),
                              palette=[[220, 20, 60], [0, 128, 255], [255, 200, 0]]))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, **_dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, **_dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
# stage-wise decay 0.9 over 6 layers as the T recipe; a higher lr than its 1e-4 for a 3000-iteration run
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=100, end=max_iters),
]
default_hooks = dict(checkpoint=dict(interval=max_iters))
work_dir = 'work_dirs/demo_seg'
