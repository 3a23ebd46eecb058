# Mask2Former + ConvNeXt-T (ImageNet-1k), ADE20K 512x512, 160k iterations. A recipe beyond the paper: no published
# number. mmseg's stock Mask2Former R-50 recipe (16 images per iteration, AdamW lr 1e-4, wd 0.05, grad clip 0.01)
# with our backbone's four levels (strides 4-32) in the pixel decoder.
_base_ = ['mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py', '../_base_/models/convnext_t.py']
custom_imports = dict(imports=['mmdet.models', 'convnext_backbone'])  # the stock config imports mmdet.models
checkpoint_file = _base_.convnext_t.init_cfg.checkpoint
model = dict(
    # drop path 0.4 (convnext_t.py): the paper's ADE20K value for T and B (UperNet, the same 160k x 16-image
    # schedule and optimizer)
    backbone=dict(_base_.convnext_t, _delete_=True),
    decode_head=dict(in_channels=[96, 192, 384, 768]))
# The paper's ADE20K lr decay, stage-wise 0.9 (num_layers 6 for T, 12 for S/B as in configs/segmentation/upernet_*),
# replaces the stock flat 0.1x backbone multiplier. Our constructor already exempts norms, biases and layer scales
# from weight decay (the stock norm_decay_mult=0); the queries and level embeddings keep the stock no-decay keys.
optim_wrapper = dict(
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(
        _delete_=True, decay_rate=0.9, decay_type='stage_wise', num_layers=6,
        custom_keys={key: dict(lr_mult=1.0, decay_mult=0.0) for key in ('query_embed', 'query_feat', 'level_embed')}))
