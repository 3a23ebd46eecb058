# ADE20K at 512: mmseg's pipelines unchanged (short side 512, 512 crops, cat_max_ratio 0.75), dataset in
# data/ade/ADEChallengeData2016 with reduce_zero_label (label 0 = "other" is ignored, classes 1..150 -> 0..149).
# Also brings `tta_pipeline`: ratios 0.5 .. 1.75 x {no flip, horizontal flip} for tools/test.py --tta
# (the matching `tta_model` comes with the default runtime, see ../models/upernet_convnext.py).
# The 640 recipes use mmseg::_base_/datasets/ade20k_640x640.py (short side 640, 640 crops) the same way.
_base_ = ['mmseg::_base_/datasets/ade20k.py']
