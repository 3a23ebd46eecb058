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

from convnext_backbone.crash_safe import ResumeError, agree_on_resume, enable_crash_safety, resume_config
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
    # CrashSafeCheckpointHook, CrashSafeHook, RNGStateHook: durable checkpoints, preemption (SIGTERM / SIGUSR1),
    # NaN stops, exact resume (docs/crash_safety.md)
    enable_crash_safety(cfg)
    # the checkpoint to resume from is chosen and checked now, and given to the Runner as load_from / resume
    # (also when the config itself says resume=True)
    resume = args.resume or ((cfg.get('load_from') or 'auto') if cfg.get('resume') else None)
    messages = resume_config(cfg, resume) if resume is not None else []
    runner = build_runner(cfg)
    agree_on_resume(cfg.load_from if cfg.get('resume') else None)
    for level, message in messages:
        runner.logger.log(level, message)
    return runner


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
