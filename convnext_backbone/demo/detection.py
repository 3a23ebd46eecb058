"""The paper's pipeline in miniature, on a 2-core CPU, with generated data (`make demo`).

1. a synthetic COCO-format set of shapes (tools/make_demo_data.py),
2. "ImageNet" pretraining of a small ConvNeXt on object-centric synthetic shape classification
   (convnext_backbone/demo/pretrain.py), saved in the official classification checkpoint format,
3. fine-tuning a Mask R-CNN from it through ``init_cfg=dict(type='Pretrained')`` (the checkpoint interop path)
   with AdamW + layer-wise lr decay (configs/demo/mask_rcnn_convnext_shapes.py),
4. evaluation with tools/test.py: COCO box and mask AP on the validation split.
"""
import argparse
import os.path as osp
import time

from .. import demo as demo_data
from ..tools import test as test_tool
from ..tools import train as train_tool
from ..tools.common import load_config
from . import pretrain as pretrain_shapes

CONFIG = osp.normpath(osp.join(osp.dirname(osp.abspath(__file__)), '..', '..', 'configs', 'demo',
                               'mask_rcnn_convnext_shapes.py'))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data', default='data', help='where the demo data are written: shapes_coco/')
    parser.add_argument('--train-images', type=int, default=demo_data.COCO_SPLITS[0])
    parser.add_argument('--val-images', type=int, default=demo_data.COCO_SPLITS[1])
    parser.add_argument('--pretrain-steps', type=int, default=pretrain_shapes.DEFAULT_STEPS)
    parser.add_argument('--pretrained', help='use this shape-pretrained checkpoint instead of pretraining one')
    parser.add_argument('--epochs', type=int, default=None, help='fine-tuning epochs (default: the config)')
    args = parser.parse_args(argv)
    start = time.time()
    cfg = load_config(CONFIG)
    size = cfg.image_size

    print(f'[demo] 1/4 synthetic COCO-format data: {args.train_images} train, {args.val_images} val '
          f'images of {size}x{size} -> {args.data}/shapes_coco', flush=True)
    data_root = demo_data.make_coco(args.data, args.train_images, args.val_images, size=size) + '/'

    checkpoint = args.pretrained or osp.join(args.work_dir, 'pretrained_convnext.pth')
    if args.pretrained:
        print(f'[demo] 2/4 using the pretrained backbone {checkpoint}', flush=True)
    else:
        print(f'[demo] 2/4 pretraining ConvNeXt {cfg.model.backbone.arch} on shape classification '
              f'({args.pretrain_steps} steps) -> {checkpoint}', flush=True)
        pretrain_shapes.pretrain(checkpoint, dict(cfg.model.backbone.arch), args.pretrain_steps)

    print('[demo] 3/4 fine-tuning Mask R-CNN from it (init_cfg Pretrained, layer-wise lr decay)', flush=True)
    options = [f'model.backbone.init_cfg.checkpoint={checkpoint}', f'work_dir={args.work_dir}',
               f'train_dataloader.dataset.data_root={data_root}', f'val_dataloader.dataset.data_root={data_root}',
               f'test_dataloader.dataset.data_root={data_root}',
               f'val_evaluator.ann_file={data_root}annotations/instances_val.json',
               f'test_evaluator.ann_file={data_root}annotations/instances_val.json']
    epochs = args.epochs or cfg.max_epochs
    if args.epochs:
        options += [f'train_cfg.max_epochs={epochs}', f'default_hooks.checkpoint.interval={epochs}']
    # step 4 evaluates with tools/test.py: no validation pass inside training as well
    train_tool.main([CONFIG, '--cfg-options', *options, f'train_cfg.val_begin={epochs + 1}'])

    print('[demo] 4/4 evaluating on the validation split with tools/test.py', flush=True)
    metrics = test_tool.main([CONFIG, osp.join(args.work_dir, f'epoch_{epochs}.pth'), '--cfg-options', *options])
    print(f'[demo] box mAP {metrics["coco/bbox_mAP"]:.3f} (AP50 {metrics["coco/bbox_mAP_50"]:.3f}), '
          f'mask mAP {metrics["coco/segm_mAP"]:.3f} (AP50 {metrics["coco/segm_mAP_50"]:.3f}); '
          f'{(time.time() - start) / 60:.1f} min in all')
    return metrics


if __name__ == '__main__':
    main()
