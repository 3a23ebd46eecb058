"""Train a detector or segmentor from a config (ours or any mmdet / mmseg config).

    python tools/train.py configs/detection/cascade_convnext_t_3x.py
    python tools/train.py CONFIG --resume                 # from the latest checkpoint in the work dir
    python tools/train.py CONFIG --resume work_dirs/x/epoch_3.pth
    kill -TERM <pid>   # or SIGUSR1: checkpoint of the current iteration, exit status 75 (see docs/crash_safety.md)
    bash tools/dist_train.sh CONFIG 8                       # torchrun, one process per GPU (or CPU process)

On a machine without CUDA the recipe runs on CPU: SyncBN -> BN, AMP off, gloo for distributed runs.
"""
import argparse
import sys

from convnext_backbone.crash_safe import ResumeError
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
    # RNGStateHook: resumed runs continue exactly; CrashSafeHook: durable checkpoints, validated resume,
    # preemption (SIGTERM / SIGUSR1) and NaN stops (see convnext_backbone/crash_safe.py)
    for name in ('RNGStateHook', 'CrashSafeHook'):
        if not any(h.get('type') == name for h in hooks):
            hooks.append(dict(type=name))
    cfg.custom_hooks = hooks
    return build_runner(cfg)


def main(argv=None):
    runner = make_runner(parse_args(argv))
    try:
        runner.train()
    finally:
        end_run()
    return runner


def cli(argv=None):
    """The command line: ``main``, with a checkpoint that cannot be resumed from reported in one line (the
    message names the file and what is wrong with it; a traceback would only bury it)."""
    try:
        return main(argv)
    except ResumeError as e:
        sys.exit(f'{type(e).__name__}: {e}')


if __name__ == '__main__':
    cli()
