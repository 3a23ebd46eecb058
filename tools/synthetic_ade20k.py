"""Write a small synthetic segmentation set in ADE20K's layout, for smoke tests and demos without downloads.

    python tools/synthetic_ade20k.py data/synthetic_ade --train 64 --val 16 [--size 128 128] [--seed 0]

Layout (what mmseg's ADE20KDataset reads, ``data_root=ROOT``)::

    ROOT/images/training/ADE_train_00000001.jpg    ROOT/annotations/training/ADE_train_00000001.png
    ROOT/images/validation/ADE_val_00000001.jpg    ROOT/annotations/validation/ADE_val_00000001.png

Labels are uint8 PNGs: 0 is background, which ADE20K's ``reduce_zero_label`` turns into the ignore index, and
classes 1..3 are filled (rotated) rectangles, ellipses and triangles (0..2 after the reduction). Every shape has a
random colour, size, position and orientation and may hide parts of earlier ones (never more than 40%), on a
noisy background, so the class is decided by the shape alone, never by the colour. The scenes are those of the
COCO-format set (tools/synthetic_coco.py), labelled per pixel.
"""
from __future__ import annotations

import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synthetic_coco  # noqa: E402

CLASSES = synthetic_coco.CLASSES  # label values 1, 2, 3


def make_sample(rng: np.random.Generator, size=(128, 128), max_objects: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 BGR image and its (H, W) uint8 label map: the scenes of the COCO-format set
    (tools/synthetic_coco.py: whole shapes, each at least 60% visible), labelled per pixel."""
    image, objects = synthetic_coco.make_scene(tuple(size), rng, max_objects)
    label = np.zeros(image.shape[:2], np.uint8)
    for kind, visible, _ in objects:
        label[visible > 0] = kind + 1
    return image, label


def make_ade20k(root, num_train: int, num_val: int, size=(128, 128), seed: int = 0) -> dict[str, int]:
    """Write ``num_train`` training and ``num_val`` validation pairs under ``root``; returns the counts."""
    rng = np.random.default_rng(seed)
    for split, prefix, count in (('training', 'ADE_train', num_train), ('validation', 'ADE_val', num_val)):
        image_dir = os.path.join(root, 'images', split)
        label_dir = os.path.join(root, 'annotations', split)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for i in range(1, count + 1):
            image, label = make_sample(rng, size)
            name = f'{prefix}_{i:08d}'
            if not (cv2.imwrite(os.path.join(image_dir, name + '.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    and cv2.imwrite(os.path.join(label_dir, name + '.png'), label)):
                raise OSError(f'could not write {name} under {root}')
    return dict(training=num_train, validation=num_val)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', help='output folder (the data_root of an ADE20K config)')
    parser.add_argument('--train', type=int, default=64, help='number of training images')
    parser.add_argument('--val', type=int, default=16, help='number of validation images')
    parser.add_argument('--size', type=int, nargs=2, default=(128, 128), metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    counts = make_ade20k(args.root, args.train, args.val, tuple(args.size), args.seed)
    print(f'{args.root}: {counts["training"]} training and {counts["validation"]} validation images, '
          f'classes {", ".join(f"{i + 1}={name}" for i, name in enumerate(CLASSES))} (0 = background)')


if __name__ == '__main__':
    main()
