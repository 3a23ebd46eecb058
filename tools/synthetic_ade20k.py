"""Write a small synthetic segmentation set in ADE20K's layout, for smoke tests and demos without downloads.

    python tools/synthetic_ade20k.py data/synthetic_ade --train 64 --val 16 [--size 128 128] [--seed 0]

Layout (what mmseg's ADE20KDataset reads, ``data_root=ROOT``)::

    ROOT/images/training/ADE_train_00000001.jpg    ROOT/annotations/training/ADE_train_00000001.png
    ROOT/images/validation/ADE_val_00000001.jpg    ROOT/annotations/validation/ADE_val_00000001.png

Labels are uint8 PNGs: 0 is background, which ADE20K's ``reduce_zero_label`` turns into the ignore index, and
classes 1..3 are filled (rotated) rectangles, ellipses and triangles (0..2 after the reduction). Every shape has a
random colour, size, position and orientation and may hide parts of earlier ones, on a noisy gradient background,
so the class is decided by the shape alone, never by the colour.
"""
from __future__ import annotations

import argparse
import os

import cv2
import numpy as np

CLASSES = ('rectangle', 'ellipse', 'triangle')  # label values 1, 2, 3


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random linear colour gradient plus Gaussian noise."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs / w + np.sin(angle) * ys / h + 1) / 2  # 0..1
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = start + ramp[..., None] * (end - start)
    image += rng.normal(0, rng.uniform(5, 25), image.shape)
    return image


def _draw_shape(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, cls: int) -> None:
    h, w = label.shape
    side = min(h, w)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(0.08, 0.3, 2) * side  # half extents
    mask = np.zeros((h, w), np.uint8)
    if cls == 1:
        corners = cv2.boxPoints(((cx, cy), (2 * rx, 2 * ry), rng.uniform(0, 90)))
        cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    elif cls == 2:
        cv2.ellipse(mask, (int(cx), int(cy)), (int(rx), int(ry)), rng.uniform(0, 180), 0, 360, 1, thickness=-1)
    else:
        # vertices at three roughly even angles around the centre, so the triangle is never degenerate
        angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.4, 0.4, 3)
        points = np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    inside = mask.astype(bool)
    colour = rng.uniform(0, 255, 3)
    # flat colour with its own noise: texture is not a cue either
    image[inside] = colour + rng.normal(0, rng.uniform(2, 12), (int(inside.sum()), 3))
    label[inside] = cls


def make_sample(rng: np.random.Generator, size=(128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 BGR image and its (H, W) uint8 label map with 2..6 overlapping shapes."""
    h, w = size
    image = _background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    for cls in rng.integers(1, len(CLASSES) + 1, size=rng.integers(2, 7)):
        _draw_shape(rng, image, label, int(cls))
    return np.clip(image, 0, 255).astype(np.uint8), label


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
