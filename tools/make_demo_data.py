"""Write the demos' data: synthetic shapes and a shape-pretrained backbone (convnext_backbone.demo).

    python tools/make_demo_data.py all data            # both sets at the demos' sizes: data/shapes_{coco,ade20k}
    python tools/make_demo_data.py coco data/shapes_coco --train 200 --val 50 --size 256
    python tools/make_demo_data.py ade20k data/shapes_ade20k --train 64 --val 16 --size 128 128
    python tools/make_demo_data.py pretrain work_dirs/demo/pretrained_convnext.pth --steps 1000

- coco: COCO-format instance segmentation (polygon masks), ``{train,val}/*.jpg`` and
  ``annotations/instances_{train,val}.json``, for `make demo`;
- ade20k: ADE20K-format semantic segmentation (images + PNG labels, 0 = background, ignored with
  ``reduce_zero_label`` as ADE20K does), for `make demo-seg`. Each shape also wears its class's pattern
  (stripes, checks, dots): per-pixel labels need local evidence, which a plain-coloured interior does not give;
- pretrain: "ImageNet" for the demos, a small ConvNeXt trained on object-centric shape crops and saved in the
  official classification checkpoint format.
"""
from __future__ import annotations

import argparse

from convnext_backbone import demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    both = commands.add_parser('all', help='both sets at the demos\' sizes, under ROOT/shapes_{coco,ade20k}')
    both.add_argument('root', nargs='?', default='data')
    both.add_argument('--coco-train', type=int, default=demo.COCO_SPLITS[0])
    both.add_argument('--coco-val', type=int, default=demo.COCO_SPLITS[1])
    both.add_argument('--ade20k-train', type=int, default=demo.ADE20K_SPLITS[0])
    both.add_argument('--ade20k-val', type=int, default=demo.ADE20K_SPLITS[1])
    coco = commands.add_parser('coco', help='a COCO-format instance segmentation set in ROOT')
    coco.add_argument('root')
    coco.add_argument('--train', type=int, default=200)
    coco.add_argument('--val', type=int, default=50)
    coco.add_argument('--size', type=int, default=256)
    ade20k = commands.add_parser('ade20k', help='an ADE20K-format semantic segmentation set in ROOT')
    ade20k.add_argument('root', help='output folder (the data_root of an ADE20K config)')
    ade20k.add_argument('--train', type=int, default=64, help='number of training images')
    ade20k.add_argument('--val', type=int, default=16, help='number of validation images')
    ade20k.add_argument('--size', type=int, nargs=2, default=(128, 128), metavar=('H', 'W'))
    pretrain = commands.add_parser('pretrain', help='the shape-pretrained backbone, official checkpoint format')
    pretrain.add_argument('out', help='where to write the checkpoint (.pth)')
    pretrain.add_argument('--steps', type=int, default=None, help='default: convnext_backbone.demo.pretrain')
    pretrain.add_argument('--batch', type=int, default=32)
    pretrain.add_argument('--lr', type=float, default=2e-3)
    for command in (both, coco, ade20k, pretrain):
        command.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == 'pretrain':
        from convnext_backbone.demo import pretrain as shapes
        return shapes.pretrain(args.out, steps=args.steps or shapes.DEFAULT_STEPS, batch=args.batch, lr=args.lr,
                               seed=args.seed)
    if args.command == 'coco':
        from convnext_backbone.demo import coco as shapes
        paths = shapes.make_coco(args.root, args.train, args.val, args.size, args.seed)
        print(f'{args.root}: {args.train} train / {args.val} val images ({args.size}x{args.size}), COCO instance '
              f'annotations in annotations/instances_{{train,val}}.json')
        return paths
    if args.command == 'ade20k':
        from convnext_backbone.demo import ade20k as shapes
        counts = shapes.make_ade20k(args.root, args.train, args.val, tuple(args.size), args.seed)
        print(f'{args.root}: {counts["training"]} training and {counts["validation"]} validation images, '
              f'classes {", ".join(f"{i + 1}={name}" for i, name in enumerate(shapes.CLASSES))} (0 = background)')
        return counts
    written = dict(coco=demo.make_coco(args.root, args.coco_train, args.coco_val, args.seed),
                   ade20k=demo.make_ade20k(args.root, args.ade20k_train, args.ade20k_val, args.seed))
    print(f'{written["coco"]}: {args.coco_train} train / {args.coco_val} val images '
          f'({demo.COCO_SIZE}x{demo.COCO_SIZE}), COCO instance annotations in annotations/instances_{{train,val}}.json')
    print(f'{written["ade20k"]}: {args.ade20k_train} training / {args.ade20k_val} validation images '
          f'({demo.ADE20K_SIZE[0]}x{demo.ADE20K_SIZE[1]}) with PNG labels, ADE20K layout')
    return written


if __name__ == '__main__':
    main()
