"""Convert a ConvNeXt checkpoint of any supported layout to ours (the official layout), or back to another one.

    python tools/convert_checkpoint.py SRC DST                      # any layout -> ours
    python tools/convert_checkpoint.py SRC DST --to timm [--conv-mlp]   # -> timm (--conv-mlp: atto/femto/pico/nano)
    python tools/convert_checkpoint.py SRC model.safetensors --to hf    # -> transformers ConvNext(V2)Backbone keys
    python tools/convert_checkpoint.py SRC DST --to torchvision         # -> torchvision convnext_* (no classifier)

SRC: .pth/.pt/.bin or .safetensors in any layout the backbone loads (docs/checkpoints.md), a classifier, a backbone
or a whole detector/segmentor (its ``backbone.`` keys are used, or those under --prefix). The architecture is read from
the shapes; the detected layout, the architecture (depths, channels, V1/V2) and the skipped keys are printed, and
progress is shown for large files. DST: .safetensors when it ends so, else torch.save (ours as
``{'state_dict': ...}``, other layouts as a plain state dict). Nothing is unpickled beyond tensors.
"""
import argparse
import sys

from convnext_backbone.checkpoint import WRITE_TARGETS, CheckpointError, convert_file


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument('--to', choices=WRITE_TARGETS, default='ours', help='target layout (default: ours)')
    parser.add_argument('--prefix', default=None, help="backbone key prefix in SRC (default: 'backbone.' "
                                                       'when present, else none)')
    parser.add_argument('--conv-mlp', action='store_true',
                        help='timm output with 1x1-conv MLP weights (timm atto/femto/pico/nano)')
    parser.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                        help='show progress (default: for files of 100 MiB or more)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        convert_file(args.src, args.dst, args.to, args.prefix, args.conv_mlp, args.progress)
    except CheckpointError as exc:
        sys.exit(f'error: {exc}')


if __name__ == '__main__':
    main()
