"""A synthetic COCO-format instance segmentation set: shapes on noisy backgrounds.

Three classes decided by shape, not colour (rectangle, ellipse, triangle); random colours, sizes, rotations,
positions and overlaps (later shapes occlude earlier ones; the masks say what stays visible). Every shape lies
wholly inside the image and keeps at least MIN_VISIBLE of its area visible, so that each annotated object can
be told apart by its shape (a sliver of an ellipse could be anything). Writes ``root/{train,val}/*.jpg`` and
``root/annotations/instances_{train,val}.json`` with polygon masks.

    python tools/make_demo_data.py coco data/shapes_coco --train 200 --val 50 --size 256
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np

CLASSES = ('rectangle', 'ellipse', 'triangle')
MIN_VISIBLE = 0.6  # fraction of an object's area that later shapes may not hide


def _hw(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _shape_mask(kind: int, size, rng) -> np.ndarray:
    """The full mask of one random shape in an image of ``size`` (int or (H, W))."""
    height, width = _hw(size)
    mask = np.zeros((height, width), np.uint8)
    side = min(height, width)
    w, h = rng.integers(side // 8, side // 2.5, 2)
    # the radius of a circle around the whole shape, whatever its rotation: it stays inside the image
    reach = {0: np.hypot(w, h) / 2, 1: max(w, h) / 2, 2: max(w, h) / 2}[kind]
    cx, cy = rng.uniform(reach + 2, width - reach - 2), rng.uniform(reach + 2, height - reach - 2)
    angle = float(rng.uniform(0, 180))
    if kind == 0:
        box = cv2.boxPoints(((float(cx), float(cy)), (float(w), float(h)), angle))
        cv2.fillPoly(mask, [box.astype(np.int32)], 1)
    elif kind == 1:
        cv2.ellipse(mask, (round(cx), round(cy)), (int(w // 2), int(h // 2)), angle, 0, 360, 1, -1)
    else:
        radius = max(w, h) / 2
        start = rng.uniform(0, 2 * np.pi)
        pts = [(cx + radius * np.cos(start + k * 2 * np.pi / 3), cy + radius * np.sin(start + k * 2 * np.pi / 3))
               for k in range(3)]
        cv2.fillPoly(mask, [np.round(np.array(pts)).astype(np.int32)], 1)
    return mask


def _polygons(mask: np.ndarray):
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.flatten().astype(float).tolist() for c in contours if len(c) >= 3]


def plain_fill(kind: int, size, rng) -> np.ndarray:
    """A shape's surface: one random colour with pixel noise, the same for every class."""
    colour = rng.integers(0, 256, 3)
    return np.clip(colour + rng.normal(0, 15, (*_hw(size), 3)), 0, 255).astype(np.uint8)


def make_scene(size, rng, max_objects: int = 4, fill=plain_fill):
    """Return (image HxWx3 uint8, [(class index, visible mask, full mask)]), objects in drawing order;
    ``size`` is an int or (H, W); ``fill(kind, size, rng)`` paints each shape's surface."""
    height, width = _hw(size)
    background = rng.integers(0, 256, 3)
    image = np.clip(background + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        kind = int(rng.integers(0, len(CLASSES)))
        for _attempt in range(10):  # a place where the new shape leaves every earlier one recognisable
            mask = _shape_mask(kind, size, rng)
            if all((visible & (1 - mask)).sum() >= MIN_VISIBLE * full.sum() for _, visible, full in objects):
                break
        else:
            continue
        surface = fill(kind, size, rng)
        image[mask > 0] = surface[mask > 0]
        objects = [(k, visible & (1 - mask), full) for k, visible, full in objects]  # what stays visible
        objects.append((kind, mask, mask))
    return image, objects


def make_image(size: int, rng, max_objects: int = 4):
    """Return (image HxWx3 uint8, [(class index, visible mask)])."""
    image, objects = make_scene(size, rng, max_objects)
    return image, [(k, visible) for k, visible, _ in objects if visible.sum() >= 20]


def make_coco(root: str, num_train: int, num_val: int, size: int = 256, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    paths = {}
    for split, count in (('train', num_train), ('val', num_val)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, objects = make_image(size, rng)
            name = f'{i:05d}.jpg'
            cv2.imwrite(os.path.join(root, split, name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append(dict(id=i, file_name=name, width=size, height=size))
            for kind, mask in objects:
                polygons = _polygons(mask)
                if not polygons:
                    continue
                x, y, w, h = cv2.boundingRect(mask)
                annotations.append(dict(id=len(annotations) + 1, image_id=i, category_id=kind + 1,
                                        segmentation=polygons, area=float(mask.sum()),
                                        bbox=[float(x), float(y), float(w), float(h)], iscrowd=0))
        categories = [dict(id=k + 1, name=name) for k, name in enumerate(CLASSES)]
        path = os.path.join(root, 'annotations', f'instances_{split}.json')
        with open(path, 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
        paths[split] = path
    return paths


def dataset_cfg_options(root: str, size: int) -> dict:
    """--cfg-options that point a COCO instance config at this set (classes, paths, image size)."""
    metainfo = dict(classes=CLASSES)
    options = {'model.roi_head.mask_head.num_classes': len(CLASSES)}
    for split, loader in (('train', 'train_dataloader'), ('val', 'val_dataloader'), ('val', 'test_dataloader')):
        options.update({f'{loader}.dataset.data_root': root, f'{loader}.dataset.metainfo': metainfo,
                        f'{loader}.dataset.ann_file': f'annotations/instances_{split}.json',
                        f'{loader}.dataset.data_prefix': dict(img=f'{split}/')})
    for evaluator in ('val_evaluator', 'test_evaluator'):
        options[f'{evaluator}.ann_file'] = os.path.join(root, 'annotations', 'instances_val.json')
    return options
