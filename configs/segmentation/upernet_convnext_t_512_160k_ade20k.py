# UperNet + ConvNeXt-T, ADE20K 512x512, 160k iterations (paper: 46.0 / 46.7 multi-scale mIoU).
# 16 images per iteration = 8 GPUs x 2; mixed precision; stage-wise lr decay 0.9.
_base_ = [
    '../_base_/models/upernet_convnext.py', '../_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k_adamw.py'
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),  # pads crops below 512 (RandomResize can go to short side 256)
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
optim_wrapper = dict(
    type='AmpOptimWrapper',  # loss_scale 'dynamic' by default
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))
train_dataloader = dict(batch_size=2)
