"""Evaluate a trained detector (COCO box / mask AP) or segmentor (mIoU, mAcc, aAcc).

    python tools/test.py CONFIG CHECKPOINT                      # metrics as the config's test_evaluator says
    python tools/test.py CONFIG CHECKPOINT --out results.pkl    # detection: raw predictions (pickle)
    python tools/test.py CONFIG CHECKPOINT --out preds/         # segmentation: prediction PNGs in a folder
    python tools/test.py CONFIG CHECKPOINT --show-dir vis/      # images with predictions drawn
    python tools/test.py CONFIG CHECKPOINT --tta                # multi-scale + flip (the config's tta_pipeline)
    bash tools/dist_test.sh CONFIG CHECKPOINT 8

Prints the metrics and writes them to <work_dir>/metrics.json.
"""
import argparse
import json
import os.path as osp

from convnext_backbone.tools.common import add_runner_args, build_runner, end_run, run_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--work-dir')
    parser.add_argument('--out', help='detection: pickle file of predictions; segmentation: folder of PNGs')
    parser.add_argument('--show-dir', help='write images with predictions drawn to this folder')
    parser.add_argument('--tta', action='store_true', help="test-time augmentation from the config's "
                                                           'tta_model / tta_pipeline (multi-scale + flip)')
    add_runner_args(parser)
    return parser.parse_args(argv)


def make_runner(args):
    cfg = run_config(args)
    cfg.load_from = args.checkpoint
    segmentation = cfg.get('default_scope') == 'mmseg'
    if args.show_dir:
        hook = cfg.default_hooks.visualization
        hook.draw = True
        if segmentation:
            hook.interval = 1
            cfg.visualizer.save_dir = args.show_dir
        else:
            hook.test_out_dir = osp.abspath(args.show_dir)
    if args.out:
        if segmentation:
            cfg.test_evaluator.update(output_dir=args.out)
        else:
            evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
            cfg.test_evaluator = list(evaluators) + [dict(type='DumpDetResults', out_file_path=args.out)]
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise SystemExit(f'{args.config} defines no tta_model / tta_pipeline, so --tta cannot be used.')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    return build_runner(cfg)


def main(argv=None):
    args = parse_args(argv)
    runner = make_runner(args)
    try:
        metrics = runner.test()
    finally:
        end_run()
    if runner.rank == 0:
        print(json.dumps(metrics, indent=1, default=float))
        with open(osp.join(runner.work_dir, 'metrics.json'), 'w') as f:
            json.dump(metrics, f, indent=1, default=float)
    return metrics


if __name__ == '__main__':
    main()
