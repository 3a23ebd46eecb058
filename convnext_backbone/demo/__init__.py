"""The demos' data, in one place: synthetic shapes (rectangle, ellipse, triangle; the class is never decided by a
colour) on noisy backgrounds, with random colours, sizes, rotations and overlaps, and a small ConvNeXt
"ImageNet-pretrained" on them.

- :mod:`.coco`: COCO-format instance segmentation (polygon masks), for ``make demo``;
- :mod:`.ade20k`: ADE20K-format semantic segmentation (images + PNG labels, 0 = background, ignored with
  ``reduce_zero_label`` as ADE20K does), for ``make demo-seg``; each shape also wears its class's pattern;
- :mod:`.pretrain`: object-centric shape classification, saved in the official checkpoint format.

One command line writes any of them: ``python tools/make_demo_data.py {all,coco,ade20k,pretrain} ...``.
"""
from __future__ import annotations

import os.path as osp

COCO_SIZE = 160
COCO_SPLITS = (500, 100)  # train, val images
ADE20K_SIZE = (128, 128)
ADE20K_SPLITS = (800, 100)  # training, validation images


def make_coco(root: str, train: int = COCO_SPLITS[0], val: int = COCO_SPLITS[1], seed: int = 0,
              size: int = COCO_SIZE) -> str:
    """The detection demo's set under ``root/shapes_coco``; returns its path."""
    from . import coco
    path = osp.join(root, 'shapes_coco')
    coco.make_coco(path, train, val, size=size, seed=seed)
    return path


def make_ade20k(root: str, train: int = ADE20K_SPLITS[0], val: int = ADE20K_SPLITS[1], seed: int = 0,
                size=ADE20K_SIZE) -> str:
    """The segmentation demo's set under ``root/shapes_ade20k``; returns its path."""
    from . import ade20k
    path = osp.join(root, 'shapes_ade20k')
    ade20k.make_ade20k(path, train, val, size=tuple(size), seed=seed)
    return path
