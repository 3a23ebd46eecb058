"""Write a small synthetic segmentation set in ADE20K's layout, for smoke tests and demos without downloads.

    python tools/make_demo_data.py ade20k data/synthetic_ade --train 64 --val 16 [--size 128 128] [--seed 0]

Layout (what mmseg's ADE20KDataset reads, ``data_root=ROOT``)::

    ROOT/images/training/ADE_train_00000001.jpg    ROOT/annotations/training/ADE_train_00000001.png
    ROOT/images/validation/ADE_val_00000001.jpg    ROOT/annotations/validation/ADE_val_00000001.png

Labels are uint8 PNGs: 0 is background, which ADE20K's ``reduce_zero_label`` turns into the ignore index, and
classes 1..3 are (rotated) rectangles, ellipses and triangles (0..2 after the reduction). The scenes are those
of the COCO-format set (coco.py: whole shapes of random size, position and orientation, each
at least 60% visible, on a noisy background), but every shape is painted with its class's pattern (stripes,
checks, dots) in two random colours at a random angle and scale: the class is decided by the shape and the
pattern, never by a colour. Why the pattern: a pixel inside a plain-coloured shape can only be labelled by
working out which region it lies in and that region's outline, a non-local "insideness" problem that small
convnets learn very slowly (UperNet ConvNeXt stayed at 40-55% pixel accuracy for 2000 iterations on plain
shapes); real semantic classes carry local evidence (texture) as the patterns do.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from . import coco

CLASSES = coco.CLASSES  # label values 1, 2, 3
PATTERN_CELL = (8.0, 14.0)  # pixels: the width of a stripe or a check, the pitch of the dots


def pattern_fill(kind: int, size, rng) -> np.ndarray:
    """A shape's surface: its class's pattern (0 stripes, 1 checks, 2 dots) in two random colours, at a random
    angle and cell size, with pixel noise. Only the pattern tells the classes apart, never a colour."""
    height, width = coco._hw(size)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, cell = rng.uniform(0, np.pi), rng.uniform(*PATTERN_CELL)
    u, v = x * np.cos(angle) + y * np.sin(angle), y * np.cos(angle) - x * np.sin(angle)
    if kind == 0:
        on = (u / cell) % 2 < 1
    elif kind == 1:
        on = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0
    else:
        on = ((u % cell) - cell / 2) ** 2 + ((v % cell) - cell / 2) ** 2 < (cell / 3) ** 2
    first = rng.integers(0, 256, 3)
    second = (first + rng.integers(70, 187, 3)) % 256  # contrast in every channel
    surface = np.where(on[..., None], first, second) + rng.normal(0, 10, (height, width, 3))
    return np.clip(surface, 0, 255).astype(np.uint8)


def make_sample(rng: np.random.Generator, size=(128, 128), max_objects: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 BGR image and its (H, W) uint8 label map: the scenes of the COCO-format set
    (coco.py: whole shapes, each at least 60% visible) painted with their class's pattern,
    labelled per pixel."""
    image, objects = coco.make_scene(tuple(size), rng, max_objects, fill=pattern_fill)
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
