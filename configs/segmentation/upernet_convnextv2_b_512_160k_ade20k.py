# UperNet + ConvNeXt-V2-B (FCMAE pre-trained, ImageNet-1k fine-tuned, EMA), ADE20K 512x512, 160k iterations.
# V2 blocks: global response norm and no layer scale.
_base_ = ['./upernet_convnext_b_512_160k_ade20k.py']
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_base_1k_224_ema.pt'
model = dict(backbone=dict(use_grn=True, layer_scale_init_value=0.0, init_cfg=dict(checkpoint=checkpoint_file)))
