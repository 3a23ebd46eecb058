"""Run ConvNeXt-T on a random 800x1216 image and print its multi-scale outputs (strides 4..32)."""
import time

import torch

import convnext_backbone  # noqa: F401  (registers ConvNeXt in mmdet's and mmseg's registries)
from mmdet.registry import MODELS


def main():
    torch.manual_seed(0)
    model = MODELS.build(dict(type='ConvNeXt', arch='tiny', out_indices=(0, 1, 2, 3))).eval()
    model.init_weights()
    image = torch.randn(1, 3, 800, 1216)
    with torch.no_grad():
        start = time.perf_counter()
        outs = model(image)
        elapsed = time.perf_counter() - start
    print(f'ConvNeXt-T, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, '
          f'input {tuple(image.shape)}, forward {elapsed:.2f} s on {torch.get_num_threads()} CPU threads')
    for i, out in enumerate(outs):
        print(f'  norm{i}: {tuple(out.shape)}  stride {image.shape[-1] // out.shape[-1]}')


if __name__ == '__main__':
    main()
