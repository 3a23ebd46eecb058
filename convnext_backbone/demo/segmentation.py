"""The paper's segmentation pipeline in miniature, on a 2-core CPU, with generated data (`make demo-seg`).

1. a synthetic ADE20K-format set of patterned shapes (tools/make_demo_data.py),
2. the small shape-pretrained ConvNeXt of the detection demo (convnext_backbone/demo/pretrain.py; reused from
   `make demo` when it is there, else pretrained the same way),
3. fine-tuning an UperNet from it through ``init_cfg=dict(type='Pretrained')`` with AdamW + stage-wise lr decay
   (configs/demo/upernet_convnext_shapes.py),
4. evaluation with tools/test.py: mIoU, mAcc, aAcc on the validation split (``--tta`` adds multi-scale + flip).
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
                               'upernet_convnext_shapes.py'))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=CONFIG, help='the fine-tuning config (default: %(default)s)')
    parser.add_argument('--work-dir', default='work_dirs/demo_seg')
    parser.add_argument('--data', default='data', help='where the demo data are written: shapes_ade20k/')
    parser.add_argument('--train-images', type=int, default=demo_data.ADE20K_SPLITS[0])
    parser.add_argument('--val-images', type=int, default=demo_data.ADE20K_SPLITS[1])
    parser.add_argument('--pretrained', default='work_dirs/demo/pretrained_convnext.pth',
                        help='the shape-pretrained backbone; pretrained here first if the file is missing')
    parser.add_argument('--pretrain-steps', type=int, default=pretrain_shapes.DEFAULT_STEPS)
    parser.add_argument('--iters', type=int, default=None,
                        help='fine-tuning iterations, at least 2 (default: the config)')
    parser.add_argument('--tta', action='store_true', help='also evaluate multi-scale + flip')
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 2:
        parser.error(f'--iters must be at least 2 (warm-up, then decay), got {args.iters}')
    start = time.time()
    cfg = load_config(args.config)

    print(f'[demo-seg] 1/4 synthetic ADE20K-format data: {args.train_images} training, {args.val_images} '
          f'validation images -> {args.data}/shapes_ade20k', flush=True)
    data_root = demo_data.make_ade20k(args.data, args.train_images, args.val_images) + '/'

    if osp.isfile(args.pretrained):
        print(f'[demo-seg] 2/4 using the pretrained backbone {args.pretrained}', flush=True)
    else:
        print(f'[demo-seg] 2/4 {args.pretrained} is missing: pretraining ConvNeXt on shape classification '
              f'({args.pretrain_steps} steps)', flush=True)
        pretrain_shapes.pretrain(args.pretrained, dict(cfg.model.backbone.arch), args.pretrain_steps)

    print('[demo-seg] 3/4 fine-tuning UperNet from it (init_cfg Pretrained, stage-wise lr decay)', flush=True)
    iters = args.iters or cfg.max_iters
    options = [f'model.backbone.init_cfg.checkpoint={args.pretrained}', f'work_dir={args.work_dir}',
               *(f'{loader}.dataset.data_root={data_root}'
                 for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'))]
    if args.iters:
        warmup = max(1, min(100, iters // 10))  # the config's 100 warm-up iterations, shortened for short runs
        options += [f'train_cfg.max_iters={iters}', f'default_hooks.checkpoint.interval={iters}',
                    f'param_scheduler.0.end={warmup}', f'param_scheduler.1.begin={warmup}',
                    f'param_scheduler.1.end={iters}']
    # step 4 evaluates with tools/test.py: no validation pass inside training as well
    train_tool.main([args.config, '--cfg-options', *options, f'train_cfg.val_begin={iters + 1}'])

    print('[demo-seg] 4/4 evaluating on the validation split with tools/test.py', flush=True)
    checkpoint = osp.join(args.work_dir, f'iter_{iters}.pth')
    metrics = test_tool.main([args.config, checkpoint, '--cfg-options', *options])
    summary = f'[demo-seg] mIoU {metrics["mIoU"] / 100:.3f}, mAcc {metrics["mAcc"] / 100:.3f}, ' \
              f'aAcc {metrics["aAcc"] / 100:.3f}'
    if args.tta:
        tta = test_tool.main([args.config, checkpoint, '--tta', '--work-dir', osp.join(args.work_dir, 'tta'),
                              '--cfg-options', *options])
        summary += f'; multi-scale + flip mIoU {tta["mIoU"] / 100:.3f}'
        metrics = dict(metrics, tta=tta)
    print(f'{summary}; {(time.time() - start) / 60:.1f} min in all', flush=True)
    return metrics


if __name__ == '__main__':
    main()
