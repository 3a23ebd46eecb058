# 3x schedule (36 epochs, lr steps at 27 and 33, 1000-iteration linear warm-up), AdamW wd 0.05 with
# layer-wise lr decay, mixed precision. Per-model configs set lr, decay_rate and num_layers.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'
max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))
auto_scale_lr = dict(enable=False, base_batch_size=16)  # 8 GPUs x 2 images
