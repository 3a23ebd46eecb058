"""Train a detector or segmentor from a config (ours or any mmdet / mmseg config).

    python tools/train.py configs/detection/cascade_convnext_t_3x.py
    python tools/train.py CONFIG --resume                 # from the latest checkpoint in the work dir
    python tools/train.py CONFIG --resume work_dirs/x/epoch_3.pth
    bash tools/dist_train.sh CONFIG 8                       # torchrun, one process per GPU (or CPU process)

On a machine without CUDA the recipe runs on CPU: SyncBN -> BN, AMP off, gloo for distributed runs.
"""
import argparse

from convnext_backbone.tools.common import add_runner_args, build_runner, end_run, run_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from a checkpoint; without a path, from the latest in the work dir')
    parser.add_argument('--amp', action='store_true', help='mixed precision (GPU)')
    add_runner_args(parser)
    return parser.parse_args(argv)


def make_runner(args):
    cfg = run_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') == 'RNGStateHook' for h in hooks):
        cfg.custom_hooks = hooks + [dict(type='RNGStateHook')]  # resumed runs continue exactly
    return build_runner(cfg)


def main(argv=None):
    runner = make_runner(parse_args(argv))
    try:
        runner.train()
    finally:
        end_run()
    return runner


if __name__ == '__main__':
    main()
