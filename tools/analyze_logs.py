"""Plot training curves from mmengine's json logs and print the average iteration time.

    python tools/analyze_logs.py work_dirs/x/20261123_120000/vis_data/scalars.json --keys loss lr --out curves.png
    python tools/analyze_logs.py A/scalars.json B/scalars.json --keys coco/bbox_mAP --out ap.png   # compare runs

Keys are any logged scalar: loss, loss_cls, lr, coco/bbox_mAP, coco/segm_mAP, mIoU, ... Training scalars are
plotted against the iteration, evaluation ones (logged with 'step' only) against their step.
"""
import argparse
import json
import statistics

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(rows, key):
    points = [(row.get('iter', row.get('step')), row[key]) for row in rows if key in row]
    return [p[0] for p in points], [p[1] for p in points]


def iteration_time(rows, skip=5):
    """Mean seconds per training iteration, skipping the first logged ones (warm-up, dataloader start)."""
    times = [row['time'] for row in rows if 'time' in row and 'loss' in row][skip:]
    return (statistics.mean(times), statistics.pstdev(times)) if times else (None, None)


def plot(logs, keys, out, title=None):
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 3 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        for path, rows in logs.items():
            xs, ys = series(rows, key)
            if not xs:
                raise SystemExit(f'{path} has no scalar {key!r}; it has: '
                                 f'{sorted({k for r in rows for k in r})}')
            ax.plot(xs, ys, marker='o' if len(xs) < 30 else None, label=path if len(logs) > 1 else None)
        ax.set_xlabel('iteration')
        ax.set_ylabel(key)
        ax.set_yscale('log' if key == 'lr' else 'linear')
        ax.grid(alpha=0.3)
        if len(logs) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('logs', nargs='+', help="mmengine json logs (vis_data/scalars.json)")
    parser.add_argument('--keys', nargs='+', default=['loss', 'lr'])
    parser.add_argument('--out', default='curves.png')
    parser.add_argument('--title')
    args = parser.parse_args(argv)
    logs = {path: read_log(path) for path in args.logs}
    for path, rows in logs.items():
        mean, std = iteration_time(rows)
        if mean is None:
            print(f'{path}: no training iterations logged')
        else:
            print(f'{path}: average iteration time {mean:.3f} s (std {std:.3f})')
    plot(logs, args.keys, args.out, args.title)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
