"""A synthetic COCO-format instance segmentation set: shapes on noisy backgrounds.

Three classes decided by shape, not colour (rectangle, ellipse, triangle); random colours, sizes, positions
and overlaps (later shapes occlude earlier ones; the masks say what stays visible). Writes
``root/{train,val}/*.jpg`` and ``root/annotations/instances_{train,val}.json`` with polygon masks.

    python tools/synthetic_coco.py data/shapes_coco --train 200 --val 50 --size 256
"""
import argparse
import json
import os

import cv2
import numpy as np

CLASSES = ('rectangle', 'ellipse', 'triangle')


def _shape_mask(kind: int, size: int, rng) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    w, h = rng.integers(size // 8, size // 2.5, 2)
    cx, cy = rng.integers(w // 2 + 1, size - w // 2 - 1), rng.integers(h // 2 + 1, size - h // 2 - 1)
    angle = float(rng.uniform(0, 180))
    if kind == 0:
        box = cv2.boxPoints(((float(cx), float(cy)), (float(w), float(h)), angle))
        cv2.fillPoly(mask, [box.astype(np.int32)], 1)
    elif kind == 1:
        cv2.ellipse(mask, (int(cx), int(cy)), (int(w // 2), int(h // 2)), angle, 0, 360, 1, -1)
    else:
        radius = max(w, h) / 2
        start = rng.uniform(0, 2 * np.pi)
        pts = [(cx + radius * np.cos(start + k * 2 * np.pi / 3), cy + radius * np.sin(start + k * 2 * np.pi / 3))
               for k in range(3)]
        cv2.fillPoly(mask, [np.clip(np.array(pts), 0, size - 1).astype(np.int32)], 1)
    return mask


def _polygons(mask: np.ndarray):
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.flatten().astype(float).tolist() for c in contours if len(c) >= 3]


def make_image(size: int, rng, max_objects: int = 4):
    """Return (image HxWx3 uint8, [(class index, visible mask)])."""
    background = rng.integers(0, 256, 3)
    image = np.clip(background + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        kind = int(rng.integers(0, len(CLASSES)))
        mask = _shape_mask(kind, size, rng)
        colour = rng.integers(0, 256, 3)
        texture = np.clip(colour + rng.normal(0, 15, (size, size, 3)), 0, 255).astype(np.uint8)
        image[mask > 0] = texture[mask > 0]
        objects = [(k, m & (1 - mask)) for k, m in objects]  # occluded parts are no longer visible
        objects.append((kind, mask))
    return image, [(k, m) for k, m in objects if m.sum() >= 20]


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root')
    parser.add_argument('--train', type=int, default=200)
    parser.add_argument('--val', type=int, default=50)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    for split, path in make_coco(args.root, args.train, args.val, args.size, args.seed).items():
        print(f'{split}: {path}')


if __name__ == '__main__':
    main()
