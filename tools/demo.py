"""The paper's pipeline in miniature, on a 2-core CPU, with generated data (`make demo`).

1. a synthetic COCO-format set of shapes (tools/synthetic_coco.py),
2. "ImageNet" pretraining of a small ConvNeXt on synthetic shape classification, saved in the official
   classification checkpoint format (``{'model': ...}`` with ``norm`` and ``head``),
3. fine-tuning a Mask R-CNN from it through ``init_cfg=dict(type='Pretrained')`` (the checkpoint interop path)
   with AdamW + layer-wise lr decay (configs/demo/mask_rcnn_convnext_shapes.py),
4. evaluation with tools/test.py: COCO box and mask AP on the validation split.
"""
import argparse
import os
import os.path as osp
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import synthetic_coco  # noqa: E402
import test as test_tool  # noqa: E402
import train as train_tool  # noqa: E402
from common import load_config  # noqa: E402

from convnext_backbone import ConvNeXt  # noqa: E402

CONFIG = osp.join(osp.dirname(osp.abspath(__file__)), '..', 'configs', 'demo', 'mask_rcnn_convnext_shapes.py')


def _classification_batch(rng, batch, size):
    images, labels = [], []
    for _ in range(batch):
        image, objects = synthetic_coco.make_image(size, rng, max_objects=1)
        if not objects:
            image, objects = synthetic_coco.make_image(size, rng, max_objects=1)
        labels.append(objects[0][0] if objects else 0)
        images.append(image)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    x = (x - 127.5) / 58.0
    return x, torch.tensor(labels)


def pretrain(arch, out_path, steps, batch=64, size=64, seed=0):
    """Classification pretraining; saves an official-format checkpoint (backbone + pooled norm + head)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    backbone = ConvNeXt(arch, out_indices=(-1,), gap_before_final_norm=True, drop_path_rate=0.05,
                        layer_scale_init_value=1.0)  # short schedule: blocks must contribute from step 1
    backbone.init_weights()
    head = nn.Linear(backbone.channels[-1], len(synthetic_coco.CLASSES))
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    correct = seen = 0
    start = time.time()
    for step in range(1, steps + 1):
        x, y = _classification_batch(rng, batch, size)
        logits = head(backbone(x)[0])
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if step % 50 == 0 or step == steps:
            print(f'[pretrain] step {step}/{steps} loss {loss.item():.3f} accuracy {correct / seen:.3f} '
                  f'({time.time() - start:.0f} s)', flush=True)
            correct = seen = 0
    # The official layout: the last output norm is the classifier's pooled `norm`, then `head`.
    last = backbone.num_stages - 1
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith(f'norm{last}.')}
    state.update({'norm.weight': backbone.state_dict()[f'norm{last}.weight'],
                  'norm.bias': backbone.state_dict()[f'norm{last}.bias'],
                  'head.weight': head.weight.detach(), 'head.bias': head.bias.detach()})
    os.makedirs(osp.dirname(out_path), exist_ok=True)
    torch.save({'model': state}, out_path)
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/shapes_coco')
    parser.add_argument('--train-images', type=int, default=400)
    parser.add_argument('--val-images', type=int, default=100)
    parser.add_argument('--pretrain-steps', type=int, default=300)
    parser.add_argument('--epochs', type=int, default=None, help='fine-tuning epochs (default: the config)')
    args = parser.parse_args(argv)
    start = time.time()
    cfg = load_config(CONFIG)
    size = cfg.image_size

    print(f'[demo] 1/4 synthetic COCO-format data: {args.train_images} train, {args.val_images} val '
          f'images of {size}x{size} -> {args.data_root}', flush=True)
    synthetic_coco.make_coco(args.data_root, args.train_images, args.val_images, size=size)

    checkpoint = osp.join(args.work_dir, 'pretrained_convnext.pth')
    print(f'[demo] 2/4 pretraining ConvNeXt {cfg.model.backbone.arch} on shape classification '
          f'({args.pretrain_steps} steps) -> {checkpoint}', flush=True)
    pretrain(dict(cfg.model.backbone.arch), checkpoint, args.pretrain_steps)

    print('[demo] 3/4 fine-tuning Mask R-CNN from it (init_cfg Pretrained, layer-wise lr decay)', flush=True)
    data_root = args.data_root.rstrip('/') + '/'
    options = [f'model.backbone.init_cfg.checkpoint={checkpoint}', f'work_dir={args.work_dir}',
               f'train_dataloader.dataset.data_root={data_root}', f'val_dataloader.dataset.data_root={data_root}',
               f'test_dataloader.dataset.data_root={data_root}',
               f'val_evaluator.ann_file={data_root}annotations/instances_val.json',
               f'test_evaluator.ann_file={data_root}annotations/instances_val.json']
    epochs = args.epochs or cfg.max_epochs
    if args.epochs:
        options += [f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs}',
                    f'default_hooks.checkpoint.interval={epochs}']
    train_tool.main([CONFIG, '--cfg-options', *options])

    print('[demo] 4/4 evaluating on the validation split with tools/test.py', flush=True)
    metrics = test_tool.main([CONFIG, osp.join(args.work_dir, f'epoch_{epochs}.pth'), '--cfg-options', *options])
    print(f'[demo] box mAP {metrics["coco/bbox_mAP"]:.3f} (AP50 {metrics["coco/bbox_mAP_50"]:.3f}), '
          f'mask mAP {metrics["coco/segm_mAP"]:.3f} (AP50 {metrics["coco/segm_mAP_50"]:.3f}); '
          f'{(time.time() - start) / 60:.1f} min in all')
    return metrics


if __name__ == '__main__':
    main()
