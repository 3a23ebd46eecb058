"""Helpers shared by the tools: config loading, adapting a config to the machine, dummy inputs."""
from __future__ import annotations

import importlib
import os
import time

import torch
from mmengine.config import Config
from mmengine.logging import print_log

import convnext_backbone  # noqa: F401  (registers our modules; allow-lists mmengine checkpoints for resume)


# The optional OpenMMLab codebases and the extra of ours that installs each.
EXTRAS = {'mmdet': 'det', 'mmseg': 'seg', 'timm': 'timm', 'onnx': 'deploy', 'onnxruntime': 'deploy'}


def require(module: str, purpose: str):
    """Import an optional dependency, or fail naming it and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module)
        fix = f"pip install 'convnext_backbone[{extra}]'" if extra else f'pip install {module}'
        raise ModuleNotFoundError(f'{purpose} needs {module}, which is not installed here: {fix}.') from exc


def load_config(path: str, cfg_options: dict | None = None, import_custom_modules: bool = True) -> Config:
    """Read a config; ``mmdet::path`` / ``mmseg::path`` name configs shipped inside those packages.
    ``import_custom_modules=False`` reads one whose ``custom_imports`` are not installed (e.g. mmpretrain)."""
    if '::' in path:
        package, rel = path.split('::', 1)
        package = {'mmsegmentation': 'mmseg'}.get(package, package)
        path = os.path.join(os.path.dirname(require(package, f'config {path}').__file__), '.mim', 'configs', rel)
    cfg = Config.fromfile(path, import_custom_modules=import_custom_modules)
    scope = cfg.get('default_scope')
    if scope:  # the codebase whose registries the config's types live in
        require(scope, f'config {path} (default_scope={scope!r})')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _replace_types(cfg, old: str, new: str) -> int:
    count = 0
    if isinstance(cfg, dict):
        if cfg.get('type') == old:
            cfg['type'] = new
            count += 1
        for value in cfg.values():
            count += _replace_types(value, old, new)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            count += _replace_types(value, old, new)
    return count


def revert_sync_bn(cfg) -> int:
    """SyncBN needs CUDA (and a process group): use plain BN. Returns how many were replaced."""
    return _replace_types(cfg, 'SyncBN', 'BN')


def adapt_to_machine(cfg: Config, distributed: bool = False, cuda: bool | None = None) -> list[str]:
    """Make a GPU recipe run on a machine without CUDA, changing only what cannot run there.

    SyncBN -> BN, AmpOptimWrapper -> OptimWrapper (mmengine's AMP wrapper needs a GPU), gloo instead of
    nccl, and DDP without device_ids. ``cuda`` (default: whether torch sees a GPU) False adapts the recipe to
    CPU work on a GPU machine too. Returns the list of changes (also logged)."""
    if torch.cuda.is_available() if cuda is None else cuda:
        return []
    changes = []
    if revert_sync_bn(cfg.model):
        changes.append('SyncBN -> BN')
    optim_wrapper = cfg.get('optim_wrapper')
    if optim_wrapper is not None and optim_wrapper.get('type') == 'AmpOptimWrapper':
        optim_wrapper['type'] = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            optim_wrapper.pop(key, None)
        changes.append('AmpOptimWrapper -> OptimWrapper (fp32)')
    if distributed:
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        wrapper = dict(cfg.get('model_wrapper_cfg') or {})
        wrapper.setdefault('type', 'MMDistributedDataParallel')
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        wrapper['device_ids'] = None  # DDP of a CPU module (mmengine would pass [LOCAL_RANK])
        cfg.model_wrapper_cfg = wrapper
        changes.append('distributed backend gloo, DDP on CPU')
    if changes:
        print_log(f'No CUDA on this machine: {"; ".join(changes)}', logger='current')
    return changes


def unique_visualizer(cfg: Config) -> None:
    """mmdet / mmseg name their visualizer 'visualizer', a process-wide instance: a second run in the same
    process (a notebook, a sweep, the tests) would log into the first run's directory. Name it per run."""
    if cfg.get('visualizer') is not None:
        cfg.visualizer.name = f'visualizer_{os.getpid()}_{time.time_ns()}'


def add_runner_args(parser) -> None:
    """The arguments train.py and test.py share."""
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys: a.b=1')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0)


def run_config(args) -> Config:
    """The config for a train / test run: overrides, launcher, work dir (default work_dirs/<config name>)."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or os.path.join(
        'work_dirs', os.path.splitext(os.path.basename(args.config))[0])
    return cfg


def build_runner(cfg: Config):
    """Adapt the config to this machine, start a CPU process group if needed, build the Runner."""
    from mmengine.runner import Runner
    distributed = cfg.launcher != 'none'
    adapt_to_machine(cfg, distributed=distributed)
    unique_visualizer(cfg)
    if distributed:
        init_cpu_process_group()
    return Runner.from_cfg(cfg)


def end_run() -> None:
    """Tear the process group down before the interpreter exits: a gloo group left alive can abort the
    process at exit ('terminate called without an active exception'), failing an otherwise good run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def init_cpu_process_group():
    """For launchers on a machine without CUDA: start the gloo process group before mmengine would try
    torch.cuda.set_device (mmengine skips its own init when one exists)."""
    if not torch.cuda.is_available() and not torch.distributed.is_initialized() and 'RANK' in os.environ:
        torch.distributed.init_process_group(backend='gloo')


def build_model_from_config(cfg):
    """A detector or segmentor from a config: random weights, no pretrained download, eval mode."""
    from mmengine.registry import init_default_scope
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmdet.registry import MODELS
    model_cfg = cfg.model.copy()
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg['backbone'].pop('init_cfg', None)
    model_cfg.pop('init_cfg', None)
    revert_sync_bn(model_cfg)
    return MODELS.build(model_cfg).eval(), scope


def dummy_batch(scope: str, size, device='cpu'):
    """One random uint8 image of ``size`` (H, W) with its data sample, as models' data preprocessors take."""
    h, w = size
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, device=device)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0),
                batch_input_shape=(h, w))
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=meta)
    else:
        from mmdet.structures import DetDataSample
        sample = DetDataSample(metainfo=meta)
    return dict(inputs=[image], data_samples=[sample])


def dummy_train_batch(scope: str, size, batch: int = 1, device='cpu', num_classes: int = 80):
    """``batch`` random uint8 images of ``size`` (H, W) with training targets: for mmseg a random label map
    (some pixels ignored), for mmdet two boxes with their masks and labels per image."""
    import numpy as np
    from mmengine.structures import InstanceData, PixelData
    h, w = size
    data = dummy_batch(scope, size, device)
    inputs, samples = [], []
    for i in range(batch):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, device=device))
        sample = data['data_samples'][0].clone()
        if scope == 'mmseg':
            label = torch.randint(0, num_classes, (1, h, w), device=device)
            label[:, : h // 8] = 255
            sample.gt_sem_seg = PixelData(data=label)
        else:
            from mmdet.structures.mask import BitmapMasks
            boxes = torch.tensor([[0.1 * w, 0.1 * h, 0.6 * w, 0.5 * h], [0.4 * w, 0.45 * h, 0.95 * w, 0.9 * h]])
            boxes += i
            masks = np.zeros((2, h, w), dtype=np.uint8)
            for j, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                masks[j, y1:y2, x1:x2] = 1
            sample.gt_instances = InstanceData(bboxes=boxes.to(device), labels=torch.tensor([1, num_classes - 1],
                                               device=device), masks=BitmapMasks(masks, h, w))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)
