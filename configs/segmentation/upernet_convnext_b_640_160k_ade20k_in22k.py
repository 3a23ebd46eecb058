# UperNet + ConvNeXt-B (ImageNet-22k), ADE20K 640x640, 160k iterations (paper: 52.6 / 53.1 multi-scale mIoU).
# Same recipe as the 512 configs on mmseg's ADE20K 640 pipelines (short side 640, 640 crops).
_base_ = [
    '../_base_/models/upernet_convnext.py', 'mmseg::_base_/datasets/ade20k_640x640.py',
    '../_base_/schedules/schedule_160k_adamw.py'
]
crop_size = (640, 640)
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_224.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='base', init_cfg=dict(checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12))
train_dataloader = dict(batch_size=2)
