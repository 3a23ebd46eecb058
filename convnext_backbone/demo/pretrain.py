""""ImageNet" for the demos: pretrain a small ConvNeXt on synthetic shape classification.

ImageNet images are object-centric, and so is this task: each sample is a crop around one shape (rectangle,
ellipse or triangle, random colour, size and rotation) cut from a noisy synthetic scene, resized to 64x64. The
class is decided by the shape alone. (Classifying whole scenes, where a small shape covers a few percent of
the image, stays at chance for hundreds of steps; object-centric crops learn within a few hundred.)

The result is saved in the official classification checkpoint format (``{'model': ...}`` with the pooled
``norm`` and ``head``), so the demos load it through ``init_cfg=dict(type='Pretrained')`` like the released
ImageNet weights.

    python tools/make_demo_data.py pretrain work_dirs/demo/pretrained_convnext.pth --steps 800
"""
from __future__ import annotations

import os
import os.path as osp
import time

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..convnext import ConvNeXt
from . import coco

DEMO_ARCH = dict(depths=[2, 2, 4, 2], channels=[32, 64, 128, 256])  # the demos' backbone (about 4.7M params)
SCENE_SIZE = 160
DEFAULT_STEPS = 1000


def object_crop(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, int]:
    """One (size, size, 3) uint8 crop centred on a single shape (with a random margin) and its class."""
    while True:
        scene, objects = coco.make_image(SCENE_SIZE, rng, max_objects=1)
        if objects:
            break
    kind, mask = objects[0]
    x, y, w, h = cv2.boundingRect(mask)
    side = int(max(w, h) * rng.uniform(1.1, 1.6))
    x0, y0 = int(x + w / 2 - side / 2), int(y + h / 2 - side / 2)
    padded = np.pad(scene, ((side, side), (side, side), (0, 0)), mode='reflect')  # crops may leave the scene
    crop = padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA), kind


def classification_batch(rng: np.random.Generator, batch: int, size: int = 64):
    crops, labels = zip(*(object_crop(rng, size) for _ in range(batch)))
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 58.0, torch.tensor(labels)


def official_state_dict(backbone: ConvNeXt, head: nn.Linear) -> dict:
    """The official classifier layout: the last output norm is the pooled ``norm``, then ``head``."""
    last = f'norm{backbone.num_stages - 1}.'
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items() if not k.startswith(last)}
    state.update({'norm.weight': getattr(backbone, last[:-1]).weight.detach().clone(),
                  'norm.bias': getattr(backbone, last[:-1]).bias.detach().clone(),
                  'head.weight': head.weight.detach().clone(), 'head.bias': head.bias.detach().clone()})
    return state


def pretrain(out_path: str, arch=None, steps: int = DEFAULT_STEPS, batch: int = 32, size: int = 64, lr: float = 2e-3,
             seed: int = 0, log_interval: int = 100) -> dict:
    """Train and save; returns the accuracy on fresh crops, the time taken and the trained modules."""
    arch = dict(arch or DEMO_ARCH)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    backbone = ConvNeXt(arch, out_indices=(-1,), gap_before_final_norm=True, drop_path_rate=0.0,
                        layer_scale_init_value=1.0)  # a short schedule: blocks must contribute from step 1
    backbone.init_weights()
    head = nn.Linear(backbone.channels[-1], len(coco.CLASSES))
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    start, correct, seen = time.time(), 0, 0
    backbone.train()
    for step in range(1, steps + 1):
        x, y = classification_batch(rng, batch, size)
        logits = head(backbone(x)[0])
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if step % log_interval == 0 or step == steps:
            print(f'[pretrain] step {step}/{steps} loss {loss.item():.3f} train accuracy {correct / seen:.3f} '
                  f'({time.time() - start:.0f} s)', flush=True)
            correct = seen = 0
    backbone.eval()
    with torch.no_grad():
        x, y = classification_batch(np.random.default_rng(seed + 2), 256, size)
        accuracy = (head(backbone(x)[0]).argmax(1) == y).float().mean().item()
    print(f'[pretrain] accuracy on 256 new crops: {accuracy:.3f} (chance 0.333)', flush=True)
    os.makedirs(osp.dirname(osp.abspath(out_path)), exist_ok=True)
    torch.save({'model': official_state_dict(backbone, head)}, out_path)
    return dict(accuracy=accuracy, seconds=time.time() - start, path=out_path, backbone=backbone, head=head)
