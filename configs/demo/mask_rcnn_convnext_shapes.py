# The demo: the Mask R-CNN recipe in miniature for a 2-core CPU. A small ConvNeXt (pretrained by
# convnext_backbone/demo/pretrain.py on synthetic shape classification, loaded through init_cfg in the official
# checkpoint format) fine-tuned with layer-wise lr decay on a synthetic COCO-format set of shapes
# (tools/make_demo_data.py). `make demo` runs it all: tools/demo.py.
_base_ = '../detection/mask_rcnn_convnext_t_3x.py'
_channels = [32, 64, 128, 256]
_width = 64  # FPN / head width, 256 in the paper's models
data_root = 'data/shapes_coco/'
image_size = 160
model = dict(
    backbone=dict(arch=dict(_delete_=True, depths=[2, 2, 4, 2], channels=_channels), drop_path_rate=0.1,
                  init_cfg=dict(checkpoint='work_dirs/demo/pretrained_convnext.pth')),
    neck=dict(in_channels=_channels, out_channels=_width),
    rpn_head=dict(in_channels=_width, feat_channels=_width,
                  anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=_width),
        bbox_head=dict(in_channels=_width, fc_out_channels=256, num_classes=3),
        mask_roi_extractor=dict(out_channels=_width),
        mask_head=dict(in_channels=_width, conv_out_channels=_width, num_classes=3)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=500), rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))
_metainfo = dict(classes=('rectangle', 'ellipse', 'triangle'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),  # the images' own size
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),  # records scale_factor for masks
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=_metainfo, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=_metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
max_epochs = 10
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=4e-4), paramwise_cfg=dict(decay_rate=0.8, num_layers=None))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[9], gamma=0.1),
]
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=max_epochs))
work_dir = 'work_dirs/demo'
