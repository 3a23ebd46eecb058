# DINO-4scale, ConvNeXt-T (ImageNet-1k), COCO 12 epochs. A recipe beyond the paper: no published number.
# mmdet's stock DINO-4scale R-50 recipe (12 epochs, AdamW lr 1e-4, wd 1e-4, grad clip 0.1, 900 queries) with our
# backbone: strides 8, 16, 32 from stages 1-3, ChannelMapper adds the fourth level (stride 64) as for R-50.
_base_ = ['mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', '../_base_/models/convnext_t.py']
custom_imports = dict(imports=['convnext_backbone'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _base_.convnext_t,
        _delete_=True,
        out_indices=(1, 2, 3),
        # The paper uses 0.4 (T) / 0.7 (B) for COCO 3x (36 epochs). 12 epochs need less regularisation: about
        # half (mmdet's DINO Swin-L 12e recipe uses 0.2 as well).
        drop_path_rate=0.2),
    neck=dict(in_channels=[192, 384, 768]))
# Layer-wise lr decay replaces DETR's flat 0.1x backbone multiplier (custom_keys 'backbone'): the paper's COCO
# values, 0.7 for T over 6 layers (0.8 over 12 for S/B). The stem then trains at 0.7 ** 7 = 0.08x, the DETR
# value, while the last stage (0.7x) can adapt to the transformer's 4-scale inputs; the paper's own COCO runs
# give the last stage 0.7 x 2e-4, above the 0.7 x 1e-4 it gets here.
optim_wrapper = dict(
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(_delete_=True, decay_rate=0.7, decay_type='layer_wise', num_layers=6))
