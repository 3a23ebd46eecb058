"""The official facebookresearch ConvNeXt (V1 + V2 GRN) block and backbone, written out plainly.

Used by the tests as the numerical reference for our fast implementation and as the source of
official-layout checkpoints (its parameter names are the official ones).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class OfficialLayerNorm(nn.Module):
    def __init__(self, normalized_shape, eps=1e-6, data_format='channels_last'):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape,)

    def forward(self, x):
        if self.data_format == 'channels_last':
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class OfficialGRN(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class OfficialBlock(nn.Module):
    def __init__(self, dim, layer_scale_init_value=1e-6, use_grn=False):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = OfficialLayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        if use_grn:
            self.grn = OfficialGRN(4 * dim)
        self.use_grn = use_grn
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (nn.Parameter(layer_scale_init_value * torch.ones(dim))
                      if layer_scale_init_value > 0 else None)

    def forward(self, x):
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.act(self.pwconv1(self.norm(x)))
        if self.use_grn:
            x = self.grn(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        return shortcut + x.permute(0, 3, 1, 2)


class OfficialConvNeXt(nn.Module):
    """The official detection/segmentation backbone (mmdet-2 era), without drop path."""

    def __init__(self, in_chans=3, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768),
                 layer_scale_init_value=1e-6, use_grn=False, out_indices=(0, 1, 2, 3)):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
            OfficialLayerNorm(dims[0], eps=1e-6, data_format='channels_first'))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                OfficialLayerNorm(dims[i], eps=1e-6, data_format='channels_first'),
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList([
            nn.Sequential(*[OfficialBlock(dims[i], layer_scale_init_value, use_grn) for _ in range(depths[i])])
            for i in range(4)])
        self.out_indices = out_indices
        for i in out_indices:
            self.add_module(f'norm{i}', OfficialLayerNorm(dims[i], eps=1e-6, data_format='channels_first'))

    def forward(self, x):
        outs = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
        return tuple(outs)


def official_stage_outputs(model, x):
    """The un-normalised output of every stage of an :class:`OfficialConvNeXt` (or DINOv3 ConvNeXt)."""
    outs = []
    for down, stage in zip(model.downsample_layers, model.stages):
        x = stage(down(x))
        outs.append(x)
    return outs


class DINOv3ConvNeXt(OfficialConvNeXt):
    """The DINOv3 ConvNeXt (facebookresearch/dinov3 ``dinov3/models/convnext.py``) as far as its weights and
    dense features go: the official backbone without output norms, a final ``norm`` (LayerNorm over channels)
    that is also ``norms[3]``, identities as ``norms[0..2]``."""

    def __init__(self, depths, dims, layer_scale_init_value=1e-6):
        super().__init__(depths=depths, dims=dims, layer_scale_init_value=layer_scale_init_value, out_indices=())
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.norms = nn.ModuleList([nn.Identity() for _ in range(3)])
        self.norms.append(self.norm)

    def get_intermediate_layers(self, x):
        """``get_intermediate_layers(x, n=4, reshape=True, norm=True)``: each stage through ``norms[i]``."""
        outs = []
        for norm, feat in zip(self.norms, official_stage_outputs(self, x)):
            n, c, h, w = feat.shape
            outs.append(norm(feat.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, c, h, w))
        return outs


# ConvNeXt-V2's FCMAE checkpoint conversions (facebookresearch/ConvNeXt-V2 utils.py), written out for any depth:
# remap_checkpoint_keys (sparse MinkowskiEngine encoder -> dense model) and its inverse dedense_checkpoint_keys.

def fcmae_remap_checkpoint_keys(ckpt):
    new_ckpt = {}
    for k, v in ckpt.items():
        if k.startswith('encoder'):
            k = '.'.join(k.split('.')[1:])
        if k.endswith('kernel'):
            new_k = '.'.join(k.split('.')[:-1]) + '.weight'
            if v.ndim == 3:  # standard conv: (K*K, Cin, Cout)
                kv, in_dim, out_dim = v.shape
                ks = int(kv ** 0.5)
                new_ckpt[new_k] = v.permute(2, 1, 0).reshape(out_dim, in_dim, ks, ks).transpose(3, 2)
            elif v.ndim == 2:  # depthwise conv: (K*K, C)
                kv, dim = v.shape
                ks = int(kv ** 0.5)
                new_ckpt[new_k] = v.permute(1, 0).reshape(dim, 1, ks, ks).transpose(3, 2)
            continue
        if 'ln' in k or 'linear' in k:
            parts = k.split('.')
            parts.pop(-2)
            new_k = '.'.join(parts)
        else:
            new_k = k
        new_ckpt[new_k] = v
    for k, v in new_ckpt.items():
        if k.endswith('bias') and v.ndim != 1:
            new_ckpt[k] = v.reshape(-1)
        elif 'grn' in k:
            new_ckpt[k] = v.unsqueeze(0).unsqueeze(1)
    return new_ckpt


def fcmae_dedense_checkpoint_keys(ckpt):
    """Dense official V2 backbone keys -> the sparse FCMAE encoder's (``encoder.`` prefix)."""
    import re
    new_ckpt = {}
    for k, v in ckpt.items():
        if re.match(r'norm\d+\.', k):
            continue  # not in the FCMAE encoder
        if re.match(r'downsample_layers\.[1-9]\d*\.1\.weight$', k):  # standard conv
            out_dim, in_dim, ks, _ = v.shape
            new_ckpt['encoder.' + k[:-len('weight')] + 'kernel'] = \
                v.transpose(3, 2).reshape(out_dim, in_dim, ks * ks).permute(2, 1, 0)
        elif re.match(r'stages\.\d+\.\d+\.dwconv\.weight$', k):
            dim, _, ks, _ = v.shape
            new_ckpt['encoder.' + k[:-len('weight')] + 'kernel'] = v.transpose(3, 2).reshape(dim, ks * ks).permute(1, 0)
        else:
            parts = k.split('.')
            if re.match(r'downsample_layers\.[1-9]\d*\.0\.', k) or re.match(r'stages\.\d+\.\d+\.norm\.', k):
                parts.insert(-1, 'ln')
            elif re.match(r'stages\.\d+\.\d+\.pwconv[12]\.', k):
                parts.insert(-1, 'linear')
            if re.match(r'(downsample_layers\.[1-9]\d*\.1|stages\.\d+\.\d+\.dwconv)\.bias$', k) or '.grn.' in k:
                v = v.squeeze().unsqueeze(0)
            new_ckpt['encoder.' + '.'.join(parts)] = v
    return new_ckpt
