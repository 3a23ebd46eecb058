"""Write the demos' synthetic data: shapes (rectangle, ellipse, triangle; the class is never decided by a
colour) on noisy backgrounds, with random colours, sizes, rotations and overlaps.

- ``ROOT/shapes_coco``: COCO-format instance segmentation (polygon masks), train and val splits
  (tools/synthetic_coco.py), for `make demo`;
- ``ROOT/shapes_ade20k``: ADE20K-format semantic segmentation (images + PNG labels, 0 = background, ignored
  with ``reduce_zero_label`` as ADE20K does), training and validation splits (tools/synthetic_ade20k.py), for
  `make demo-seg`. Here each shape also wears its class's pattern (stripes, checks, dots): per-pixel labels
  need local evidence, which a plain-coloured interior does not give (see tools/synthetic_ade20k.py).

    python tools/make_demo_data.py data [--only coco|ade20k] [--coco-train 500 --coco-val 100 ...]
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import synthetic_ade20k  # noqa: E402
import synthetic_coco  # noqa: E402

COCO_SIZE = 160
COCO_SPLITS = (500, 100)  # train, val images
ADE20K_SIZE = (128, 128)
ADE20K_SPLITS = (800, 100)  # training, validation images


def make_coco(root: str, train: int = COCO_SPLITS[0], val: int = COCO_SPLITS[1], seed: int = 0,
              size: int = COCO_SIZE) -> str:
    path = osp.join(root, 'shapes_coco')
    synthetic_coco.make_coco(path, train, val, size=size, seed=seed)
    return path


def make_ade20k(root: str, train: int = ADE20K_SPLITS[0], val: int = ADE20K_SPLITS[1], seed: int = 0,
                size=ADE20K_SIZE) -> str:
    path = osp.join(root, 'shapes_ade20k')
    synthetic_ade20k.make_ade20k(path, train, val, size=tuple(size), seed=seed)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', nargs='?', default='data')
    parser.add_argument('--only', choices=('coco', 'ade20k'))
    parser.add_argument('--coco-train', type=int, default=COCO_SPLITS[0])
    parser.add_argument('--coco-val', type=int, default=COCO_SPLITS[1])
    parser.add_argument('--ade20k-train', type=int, default=ADE20K_SPLITS[0])
    parser.add_argument('--ade20k-val', type=int, default=ADE20K_SPLITS[1])
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    written = {}
    if args.only in (None, 'coco'):
        written['coco'] = make_coco(args.root, args.coco_train, args.coco_val, args.seed)
        print(f'{written["coco"]}: {args.coco_train} train / {args.coco_val} val images ({COCO_SIZE}x{COCO_SIZE}), '
              f'COCO instance annotations in annotations/instances_{{train,val}}.json')
    if args.only in (None, 'ade20k'):
        written['ade20k'] = make_ade20k(args.root, args.ade20k_train, args.ade20k_val, args.seed)
        print(f'{written["ade20k"]}: {args.ade20k_train} training / {args.ade20k_val} validation images '
              f'({ADE20K_SIZE[0]}x{ADE20K_SIZE[1]}) with PNG labels, ADE20K layout')
    return written


if __name__ == '__main__':
    main()
