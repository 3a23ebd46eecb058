"""AdamW with layer-wise / stage-wise learning-rate decay for ConvNeXt (the paper's fine-tuning recipe).

``lr_scale = decay_rate ** (num_layers + 1 - layer_id)``, where the layer id is a pure function of the
parameter name (relative to the backbone) and the backbone depths: :func:`get_layer_id`. Everything outside
the backbone, including the per-stage output norms, gets ``num_layers + 1`` (scale 1.0).

- ``layer_wise`` (COCO): stem 0; stage 0 -> 1; downsample 1 and stage 1 -> 2; downsample 2 -> 3;
  stage 2 block b -> 3 + b * (num_layers - 3) // depth_of_stage_2; downsample 3 and stage 3 -> num_layers.
  For T (9 blocks, num_layers 6) and S/B/L/XL (27 blocks, num_layers 12) this is exactly the official
  grouping; for any other depth it stays monotonic.
- ``stage_wise`` (ADE20K): every downsample layer 0; stage s -> s + 1. Exactly the official rule, including
  its quirk that with num_layers 12 the last stage is scaled by decay_rate ** 9.
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn
from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor

from .arch import is_int, is_real
from .convnext import GRN, Block

DECAY_TYPES = ('layer_wise', 'stage_wise')
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
               nn.LayerNorm, nn.LocalResponseNorm)
_PARAMWISE_KEYS = {'decay_rate', 'decay_type', 'num_layers', 'custom_keys', 'backbone_prefix'}


def _check_decay_type(decay_type: str) -> None:
    if decay_type not in DECAY_TYPES:
        raise ValueError(f'Unknown decay_type {decay_type!r}; valid: {", ".join(DECAY_TYPES)}.')


def default_num_layers(depths) -> int:
    """The official choice: 6 for T (stage 2 has 9 blocks), 12 for S/B/L/XL (27 blocks)."""
    return 3 + depths[2] // 3


def validate_num_layers(num_layers: int, depths, decay_type: str) -> None:
    """Raise unless every scale is <= 1.0 and the schedule is monotonic (deeper never decays more)."""
    _check_decay_type(decay_type)
    if len(depths) != 4:
        raise ValueError(f'Layer decay is defined for the 4-stage ConvNeXt; this backbone has depths {depths}.')
    # layer_wise: downsample 2 has id 3 and stage 3 has num_layers; stage_wise: stage 3 has id 4 and the
    # rest num_layers + 1. Both need num_layers >= 3.
    if not is_int(num_layers) or num_layers < 3:
        raise ValueError(f'num_layers={num_layers!r} is invalid for {decay_type} decay with depths {depths}: '
                         f'valid values are integers >= 3 (default {default_num_layers(depths)}); smaller ones '
                         'give parameters an lr scale above 1.0 or a non-monotonic schedule.')


def get_layer_id(name: str, depths, num_layers: int, decay_type: str = 'layer_wise') -> int:
    """Layer id of a backbone parameter, ``name`` relative to the backbone (e.g. ``stages.2.4.dwconv.weight``).

    Names that are neither downsample layers nor stage blocks (the output norms ``norm{i}``) get
    ``num_layers + 1``, like every parameter outside the backbone.
    """
    _check_decay_type(decay_type)
    parts = name.split('.')
    if parts[0] == 'downsample_layers':
        stage = int(parts[1])
        if decay_type == 'stage_wise':
            return 0
        return (0, 2, 3, num_layers)[stage]
    if parts[0] == 'stages':
        stage = int(parts[1])
        if decay_type == 'stage_wise':
            return stage + 1
        if stage == 2:
            return 3 + int(parts[2]) * (num_layers - 3) // depths[2]
        return (1, 2, None, num_layers)[stage]
    return num_layers + 1


def lr_scale(layer_id: int, num_layers: int, decay_rate: float) -> float:
    return decay_rate ** (num_layers + 1 - layer_id)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Biases, parameters of normalisation layers, layer-scale ``gamma`` and GRN parameters, by module
    type and name rather than tensor shape (GRN tensors are (1, 1, 1, C))."""
    names = set()
    for module_name, module in model.named_modules():
        prefix = f'{module_name}.' if module_name else ''
        for param_name, _ in module.named_parameters(recurse=False):
            if (param_name == 'bias' or isinstance(module, _NORM_TYPES + (GRN,))
                    or (isinstance(module, Block) and param_name == 'gamma')):
                names.add(prefix + param_name)
    return names


def check_paramwise_cfg(cfg: dict) -> None:
    """One clear ``ValueError`` for any bad key or value of the constructor's ``paramwise_cfg`` (``num_layers``
    is checked against the backbone's depths when the optimizer is built: :func:`validate_num_layers`)."""
    name = 'ConvNeXtLayerDecayOptimizerConstructor'
    unknown = set(cfg) - _PARAMWISE_KEYS
    if unknown:
        raise ValueError(f'{name}: unsupported paramwise_cfg keys {sorted(unknown)}; supported: '
                         f'{sorted(_PARAMWISE_KEYS)} (use custom_keys with lr_mult / decay_mult for per-parameter '
                         'tweaks).')
    if 'decay_rate' not in cfg:
        raise ValueError(f'{name} needs paramwise_cfg.decay_rate (e.g. 0.7 for layer_wise, 0.9 for stage_wise).')
    if not is_real(cfg['decay_rate']) or not 0.0 < cfg['decay_rate'] <= 1.0:
        raise ValueError(f'decay_rate must be in (0, 1] (a number), got {cfg["decay_rate"]!r}.')
    _check_decay_type(cfg['decay_type'])
    custom_keys = cfg.get('custom_keys', {})
    if not isinstance(custom_keys, dict) or not all(
            isinstance(key, str) and isinstance(value, dict) and not set(value) - {'lr_mult', 'decay_mult'}
            and all(is_real(m) and m >= 0 for m in value.values()) for key, value in custom_keys.items()):
        raise ValueError(f"{name}: custom_keys must map parameter-name substrings to dicts of 'lr_mult' / "
                         "'decay_mult' numbers >= 0, e.g. dict(query_embed=dict(decay_mult=0.0)), "
                         f'got {custom_keys!r}.')
    if not isinstance(cfg.get('backbone_prefix', ''), str):
        raise ValueError(f"{name}: backbone_prefix must be the backbone's attribute path, a str ('' for the model "
                         f'itself), got {cfg["backbone_prefix"]!r}.')


class ConvNeXtLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Optimizer-wrapper constructor giving each parameter ``lr * scale * lr_mult`` and its weight decay.

    ``paramwise_cfg`` keys: ``decay_rate`` (required, in (0, 1]), ``decay_type`` ('layer_wise' | 'stage_wise'),
    ``num_layers`` (an int >= 3; default derived from the depths), ``custom_keys`` (mmengine semantics: the longest
    key contained in a parameter name applies; its ``lr_mult`` / ``decay_mult``, numbers >= 0, multiply onto the
    decay scale), ``backbone_prefix`` (attribute path of the ConvNeXt, default 'backbone'; '' when the model is the
    backbone itself). Every key is checked at construction (:func:`check_paramwise_cfg`), ``num_layers`` against
    the backbone's depths when the optimizer is built.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        paramwise_cfg.setdefault('decay_type', 'layer_wise')
        check_paramwise_cfg(paramwise_cfg)
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def __call__(self, model: nn.Module):
        optim_wrapper = super().__call__(model)
        # OPTIMIZERS.build turns the parameter-group dicts into ConfigDicts, which torch.compile cannot iterate
        # (torch 2.14: "'UserDefinedDictVariable' object has no attribute 'items'" in the optimizer step, which
        # mmengine's compile=True compiles with train_step): plain dicts, as torch.optim makes them.
        groups = optim_wrapper.optimizer.param_groups
        groups[:] = [dict(group) for group in groups]
        return optim_wrapper

    def _find_backbone(self, model: nn.Module):
        prefix = self.paramwise_cfg.get('backbone_prefix', 'backbone')
        try:
            backbone = model.get_submodule(prefix) if prefix else model
        except AttributeError:
            backbone = None
        if backbone is None or not hasattr(backbone, 'depths'):
            raise ValueError(f'ConvNeXtLayerDecayOptimizerConstructor: no ConvNeXt backbone at '
                             f'model.{prefix or "<root>"} (found {type(backbone).__name__}); set '
                             'paramwise_cfg.backbone_prefix to its attribute path.')
        return prefix, backbone

    def add_params(self, params: list, module: nn.Module, **kwargs) -> None:
        model = module.module if is_model_wrapper(module) else module
        prefix, backbone = self._find_backbone(model)
        cfg = self.paramwise_cfg
        decay_rate, decay_type = cfg['decay_rate'], cfg['decay_type']
        num_layers = cfg.get('num_layers')
        if num_layers is None:
            num_layers = default_num_layers(backbone.depths)
        validate_num_layers(num_layers, backbone.depths, decay_type)
        custom_keys = cfg.get('custom_keys', {})
        sorted_keys = sorted(custom_keys, key=lambda k: (-len(k), k))
        no_decay = no_weight_decay_names(model)
        backbone_dot = f'{prefix}.' if prefix else ''

        groups: dict[tuple, dict] = OrderedDict()
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith(backbone_dot):
                layer_id = get_layer_id(name[len(backbone_dot):], backbone.depths, num_layers, decay_type)
            else:
                layer_id = num_layers + 1
            scale = lr_scale(layer_id, num_layers, decay_rate)
            decays = name not in no_decay
            weight_decay = self.base_wd if (decays and self.base_wd is not None) else 0.0
            key = next((k for k in sorted_keys if k in name), None)
            if key is not None:
                scale *= custom_keys[key].get('lr_mult', 1.0)
                weight_decay *= custom_keys[key].get('decay_mult', 1.0)
            group_key = (layer_id, decays, key)
            if group_key not in groups:
                groups[group_key] = dict(
                    params=[], param_names=[], lr=self.base_lr * scale, lr_scale=scale,
                    weight_decay=weight_decay,
                    group_name=f'layer_{layer_id}_{"decay" if decays else "no_decay"}'
                               + (f'_{key}' if key else ''))
            groups[group_key]['params'].append(param)
            groups[group_key]['param_names'].append(name)

        # mmengine logs the first group's lr: put a full-lr group first so logs show the base lr.
        ordered = sorted(groups.values(), key=lambda g: (g['lr_scale'] != 1.0, -g['lr_scale']))
        if get_rank() == 0:
            print_log(self._table(ordered, decay_type, decay_rate, num_layers), logger='current')
        for group in ordered:
            group.pop('param_names')
            params.append(group)

    @staticmethod
    def _table(groups, decay_type, decay_rate, num_layers) -> str:
        rows = [f'ConvNeXt {decay_type} lr decay: decay_rate={decay_rate}, num_layers={num_layers}, '
                f'{len(groups)} param groups',
                f'{"group":<28} {"#params":>10} {"lr scale":>10} {"wd":>8}  first .. last parameter']
        for g in groups:
            count = sum(p.numel() for p in g['params'])
            rows.append(f'{g["group_name"]:<28} {count:>10} {g["lr_scale"]:>10.4g} {g["weight_decay"]:>8.3g}  '
                        f'{g["param_names"][0]} .. {g["param_names"][-1]}')
        return '\n'.join(rows)
