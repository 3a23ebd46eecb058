"""Convert a ConvNeXt checkpoint of any supported layout to ours (the official layout), or ours to timm.

    python tools/convert_checkpoint.py SRC DST                 # any layout -> ours
    python tools/convert_checkpoint.py SRC DST --to timm       # ours (or any) -> timm convnext_* keys
    python tools/convert_checkpoint.py SRC DST --to timm --conv-mlp   # timm atto/femto/pico/nano

SRC: .pth/.pt or .safetensors, a classifier, a backbone or a whole detector/segmentor (its ``backbone.``
keys are used, or those under --prefix). DST: written as .safetensors when it ends so, else torch.save of
``{'state_dict': ...}`` (ours) or a plain state dict (timm). Nothing is unpickled beyond tensors.
"""
import argparse
import sys

import torch

from convnext_backbone.checkpoint import (CheckpointError, convert_ours_to_timm, convert_state_dict,
                                          read_checkpoint, split_backbone, unwrap_state_dict)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument('--to', choices=['ours', 'timm'], default='ours')
    parser.add_argument('--prefix', default=None, help="backbone key prefix in SRC (default: 'backbone.' "
                                                       'when present, else none)')
    parser.add_argument('--conv-mlp', action='store_true',
                        help='timm output with 1x1-conv MLP weights (timm atto/femto/pico/nano)')
    return parser.parse_args(argv)


def convert(src, dst, to='ours', prefix=None, conv_mlp=False):
    state_dict = unwrap_state_dict(read_checkpoint(src))
    backbone, outside, has_head = split_backbone(state_dict, prefix)
    result = convert_state_dict(backbone, is_classifier=has_head or None)
    skipped = outside + result.skipped
    out = result.state_dict
    if to == 'timm':
        timm_result = convert_ours_to_timm(out, conv_mlp=conv_mlp)
        out, skipped = timm_result.state_dict, skipped + timm_result.skipped
    if dst.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in out.items()}, dst)
    else:
        torch.save(out if to == 'timm' else {'state_dict': out}, dst)
    print(f'{src}: {result.format} layout, {len(backbone)} backbone tensors -> {dst} ({to}, {len(out)} tensors)')
    if skipped:
        print(f'skipped {len(skipped)}: {", ".join(skipped[:10])}{" ..." if len(skipped) > 10 else ""}')
    return out, skipped


def main(argv=None):
    args = parse_args(argv)
    try:
        convert(args.src, args.dst, args.to, args.prefix, args.conv_mlp)
    except CheckpointError as exc:
        sys.exit(f'error: {exc}')


if __name__ == '__main__':
    main()
