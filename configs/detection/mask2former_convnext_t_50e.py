# Mask2Former (instance segmentation), ConvNeXt-T (ImageNet-1k), COCO 50 epochs LSJ. A recipe beyond the paper:
# no published number. mmdet's stock Mask2Former R-50 instance recipe (1024 LSJ crops, AdamW lr 1e-4, wd 0.05,
# grad clip 0.01, 100 queries) with our backbone's four levels (strides 4-32) in the pixel decoder.
_base_ = ['mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py', '../_base_/models/convnext_t.py']
custom_imports = dict(imports=['convnext_backbone'], allow_failed_imports=False)
model = dict(
    # drop path 0.4 (convnext_t.py): the paper's T value for COCO 3x; 50 LSJ epochs are longer and no weaker in
    # augmentation, so no reason to go lower (mmdet's Swin-T Mask2Former uses 0.3).
    backbone=dict(_base_.convnext_t, _delete_=True),
    panoptic_head=dict(in_channels=[96, 192, 384, 768]))
# Layer-wise lr decay, the paper's COCO value for T (0.7 over 6 layers), replaces the stock flat 0.1x backbone
# multiplier: the stem trains at 0.7 ** 7 = 0.08x, the last stage at 0.7x. Our constructor already exempts norms,
# biases and layer scales from weight decay (the stock norm_decay_mult=0); the queries and level embeddings keep
# the stock no-decay keys.
optim_wrapper = dict(
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(
        _delete_=True, decay_rate=0.7, decay_type='layer_wise', num_layers=6,
        custom_keys={key: dict(lr_mult=1.0, decay_mult=0.0) for key in ('query_embed', 'query_feat', 'level_embed')}))
