"""Crash-safe training: durable checkpoints, validated resume, preemption and NaN stops.

Switched on by config keys (``tools/train.py`` applies them to every run, :func:`enable_crash_safety`)::

    default_hooks = dict(checkpoint=dict(type='CrashSafeCheckpointHook'))  # CheckpointHook's arguments
    custom_hooks = [dict(type='CrashSafeHook'), dict(type='RNGStateHook')]

so that a run survives a SIGKILL, a full disk, a power cut or a preemption at any instant, losing at most the work
since the last checkpoint, and ``--resume`` needs no hand:

* Durable checkpoints (``CrashSafeCheckpointHook``, mmengine's ``CheckpointHook`` with the same arguments).
  mmengine writes checkpoints in place (``open(path, 'wb')``, no fsync) and removes the oldest one
  (``max_keep_ckpts``) *before* writing the new one; a kill in between leaves no checkpoint while
  ``last_checkpoint`` names the removed file. When its directory is local, every checkpoint goes into a temporary
  file in the same directory, is flushed and fsynced, then ``os.replace``d onto its name and the directory fsynced
  (``AtomicLocalBackend``); ``last_checkpoint`` is replaced the same way once the checkpoint is durable, and only
  then are old checkpoints removed. Object-store backends (``s3://``, petrel...) keep mmengine's behaviour.
* Validated resume (:func:`resume_config`, before the Runner is built). The checkpoint is checked (a complete torch
  zip archive, CRCs intact, holding ``state_dict``, ``meta`` and ``optimizer``). Auto-resume falls back to the
  newest intact checkpoint when ``last_checkpoint`` names a missing or torn file (one warning naming it) and
  refuses to start from scratch when checkpoints exist but none is intact; an explicit path that fails raises
  ``ResumeError``. The choice becomes the config's ``resume`` / ``load_from``.
* Preemption (``CrashSafeHook``). On SIGTERM or SIGUSR1 (SLURM's ``--signal=USR1@90``) the current iteration
  finishes, every rank agrees to stop after the same iteration (one all-reduce of a flag per iteration), a
  checkpoint of exactly that iteration is written (``preempted_iter_<N>.pth``, also mid-epoch) and the process
  exits with ``PREEMPTED_EXIT_STATUS`` (75, ``EX_TEMPFAIL``), which ``tools/slurm_train.sh`` turns into
  ``scontrol requeue``. Resuming from a mid-epoch checkpoint skips the batches already trained in that epoch at the
  batch-sampler level (``ResumableBatchSampler``, which :func:`resume_config` puts around the config's batch
  sampler; no data is loaded for them), so the data order continues exactly.
* NaN / Inf loss (``CrashSafeHook``). A non-finite loss on any rank stops every rank with ``NonFiniteLossError``
  naming the iteration, before any checkpoint of the diverged model can be written.

Test hook (for the test suite only): ``CONVNEXT_BACKBONE_TEST_KILL_AT=point[:n]`` makes the process SIGKILL itself
the n-th time (default 1) it reaches a named point of the checkpoint writing: ``mid_write`` (half of the
temporary file written), ``before_rename`` (temporary file complete and fsynced), ``before_pointer`` (checkpoint
renamed into place, ``last_checkpoint`` not yet updated), ``before_remove`` (``last_checkpoint`` updated, old
checkpoints not yet removed).
"""
from __future__ import annotations

import glob
import io
import logging
import os
import os.path as osp
import pickle
import re
import shutil
import signal
import threading
import zipfile
import torch
from mmengine.dist import all_reduce, barrier, broadcast_object_list, get_world_size, is_main_process
from mmengine.fileio import LocalBackend, get_file_backend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import DATA_SAMPLERS
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import BatchSampler

PREEMPTED_EXIT_STATUS = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, retrying is expected to work
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
TEST_KILL_ENV = 'CONVNEXT_BACKBONE_TEST_KILL_AT'
ATOMIC_BACKEND = 'crash_safe_local'
POINTER = 'last_checkpoint'
PREEMPTED_TMPL = 'preempted_iter_{}.pth'
EXPIRED_INFO = 'crash_safe_expired_ckpts'  # message-hub key: checkpoints the latest one supersedes
_TMP_RE = re.compile(r'^\..+\.tmp-\d+$')


class ResumeError(RuntimeError):
    """No usable checkpoint to resume from."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf."""


def _is_local(path) -> bool:
    return '://' not in str(path)


# --- durable writes ------------------------------------------------------------------------------------------

_kill_counts: dict = {}


def _test_kill_point(name: str) -> None:
    """The test hook described in the module docstring: SIGKILL this process at a named point."""
    spec = os.environ.get(TEST_KILL_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(':')
    if point != name:
        return
    _kill_counts[name] = _kill_counts.get(name, 0) + 1
    if _kill_counts[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: str) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, _checkpoint: bool = False) -> None:
    """Write ``data`` to ``path`` so that, whatever the instant of a crash, ``path`` holds either its old
    content or all of ``data``: a temporary file in the same directory, flushed and fsynced, ``os.replace``d
    onto ``path``, then the directory fsynced. Needs a filesystem with atomic rename (local disks; see
    docs/crash_safety.md)."""
    path = osp.abspath(path)
    directory = osp.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = osp.join(directory, f'.{osp.basename(path)}.tmp-{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            half = len(data) // 2 if _checkpoint else len(data)
            f.write(memoryview(data)[:half])
            if _checkpoint:
                f.flush()
                _test_kill_point('mid_write')
            f.write(memoryview(data)[half:])
            f.flush()
            os.fsync(f.fileno())
        if _checkpoint:
            _test_kill_point('before_rename')
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(directory)


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with ``put`` / ``put_text`` made atomic and durable (``atomic_write``).
    ``CrashSafeCheckpointHook`` writes through it when its directory is local (``backend_args``)."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(str(filepath), obj, _checkpoint=True)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(str(filepath), obj.encode(encoding))


register_backend(ATOMIC_BACKEND, AtomicLocalBackend)


def remove_stale_temporaries(directory: str) -> list[str]:
    """Remove the temporary files that killed runs left (``.<name>.tmp-<pid>``); returns their paths."""
    removed = []
    for path in glob.glob(osp.join(glob.escape(directory), '.*.tmp-*')):
        if _TMP_RE.match(osp.basename(path)) and not path.endswith(f'.tmp-{os.getpid()}') and osp.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def _remove(path: str) -> None:
    if osp.isdir(path):
        shutil.rmtree(path)  # checkpoints saved by deepspeed are directories
    elif osp.exists(path):
        os.remove(path)


def _writes_locally(out_dir, backend_args, file_client_args=None) -> bool:
    """Whether checkpoints of a CheckpointHook with these arguments go to a local directory through mmengine's
    local backend (the ones ``AtomicLocalBackend`` can write instead). ``out_dir`` None: the work dir (local)."""
    backend = (backend_args or {}).get('backend', 'local')
    return file_client_args is None and backend in ('local', ATOMIC_BACKEND) and _is_local(out_dir or '')


def _preempted_checkpoints(directory: str, up_to_iter: int) -> list[str]:
    found = []
    for path in glob.glob(osp.join(glob.escape(directory), PREEMPTED_TMPL.format('*'))):
        match = re.fullmatch(PREEMPTED_TMPL.format(r'(\d+)').replace('.', r'\.'), osp.basename(path))
        if match and int(match.group(1)) <= up_to_iter:
            found.append(path)
    return found


class CrashSafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments, same files) writing durably when its directory is local: its
    backend is ``AtomicLocalBackend``, ``last_checkpoint`` is replaced atomically after the checkpoint is durable,
    and the checkpoints that ``max_keep_ckpts`` drops (and preemption checkpoints a later one supersedes) are
    removed last. A run resumed from a checkpoint removes what a crash kept from being removed, and the temporary
    files killed runs left. Select it with ``default_hooks = dict(checkpoint=dict(type='CrashSafeCheckpointHook'))``.
    ``durable`` says whether it writes durably (object stores and the deprecated ``file_client_args`` keep
    mmengine's behaviour)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.durable = _writes_locally(self.out_dir, self.backend_args, self.file_client_args)
        if self.durable:
            self.backend_args = dict(backend=ATOMIC_BACKEND)

    def before_train(self, runner) -> None:
        super().before_train(runner)  # out_dir final, keep_ckpt_ids restored from a resumed checkpoint
        if not self.durable:
            runner.logger.info(f'CrashSafeCheckpointHook: {self.out_dir} is not a local directory; its checkpoints '
                               'are written the way mmengine writes them (not atomically).')
            return
        if not is_main_process():
            return
        for directory in {self.out_dir, runner.work_dir}:
            for path in remove_stale_temporaries(directory):
                runner.logger.info(f'Removed {path}, a partial checkpoint that a killed run left.')
        for path in [osp.join(self.out_dir, name) for name in runner.message_hub.get_info(EXPIRED_INFO, [])]:
            if osp.exists(path):  # superseded before a crash, left on disk
                _remove(path)
                runner.logger.info(f'Removed {path}, superseded by the checkpoint this run resumed from.')

    # The one private name of mmengine this module uses. CheckpointHook's public hook methods (after_train_epoch,
    # after_train_iter, after_val_epoch) all save through this method, which both removes the checkpoint that
    # max_keep_ckpts drops and writes the new one; no public method separates the two, and the removal must come
    # last. The override keeps mmengine's bookkeeping (keep_ckpt_ids, last_ckpt, the message-hub keys its
    # before_train reads on resume). Identical in mmengine 0.10.7 and onedl-mmengine 0.10.12;
    # tests/test_crash_safe.py checks its signature and that saving goes through it.
    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        if not self.durable:
            return super()._save_checkpoint_with_step(runner, step, meta)
        expired = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                expired.append(osp.join(self.out_dir, self.filename_tmpl.format(self.keep_ckpt_ids.popleft())))
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        # the new checkpoint records what it supersedes: a run resumed from it removes what a crash left behind
        expired += _preempted_checkpoints(self.out_dir, up_to_iter=meta['iter'])
        runner.message_hub.update_info(EXPIRED_INFO, [osp.basename(p) for p in expired])
        runner.save_checkpoint(self.out_dir, filename, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        _test_kill_point('before_pointer')
        atomic_write(osp.join(runner.work_dir, POINTER), self.last_ckpt.encode())
        _test_kill_point('before_remove')
        for path in expired:
            _remove(path)
        runner.message_hub.update_info(EXPIRED_INFO, [])


# --- checking checkpoints ------------------------------------------------------------------------------------

class CheckpointProblem(Exception):
    """Why a file cannot be resumed from (the message completes 'it ...')."""


class _Opaque:
    """What :class:`_StructureOnly` makes of every object a pickle names by module and class: nothing is imported
    and no foreign code runs; containers of plain values (dicts, lists, numbers, strings) stay what they are."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Opaque()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _StructureOnly(pickle.Unpickler):
    """Reads the structure of a torch checkpoint's pickle (its top-level keys, ``meta``) without torch's loader:
    every class or function it names is ``_Opaque``, every tensor storage None. The same on every torch version
    (torch.load(weights_only=True) refuses mmengine's checkpoints where torch has no add_safe_globals)."""

    def find_class(self, module, name):
        return _Opaque

    def persistent_load(self, pid):
        return None


def check_checkpoint(path: str, verify_data: bool = True) -> dict:
    """Check that ``path`` is a checkpoint training can resume from: a complete torch zip archive (with
    ``verify_data``, every record's CRC is checked: the whole file is read) whose pickle holds ``state_dict``,
    ``meta`` and ``optimizer``. Returns its ``meta``; raises ``CheckpointProblem`` saying what is wrong."""
    if not osp.exists(path):
        raise CheckpointProblem('does not exist')
    if osp.isdir(path):
        raise CheckpointProblem('is a directory')
    size = osp.getsize(path)
    if size == 0:
        raise CheckpointProblem('is empty (0 bytes)')
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip() if verify_data else None
            pickles = [n for n in archive.namelist() if re.fullmatch(r'[^/]+/data\.pkl', n)]
            if bad is None and len(pickles) == 1:
                data = archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointProblem(f'is not a complete torch checkpoint ({size} bytes, {e}): cut short by a crash '
                                'or a full disk, or not a checkpoint at all') from None
    if bad is not None:
        raise CheckpointProblem(f'is corrupt (CRC mismatch in record {bad!r})')
    if len(pickles) != 1:
        raise CheckpointProblem(f'is a zip archive but not a torch checkpoint ({len(pickles)} data.pkl records)')
    try:
        checkpoint = _StructureOnly(io.BytesIO(data)).load()
    except Exception as e:  # noqa: BLE001  (any failure to read the pickle makes the file unusable; say which)
        raise CheckpointProblem(f'holds a pickle that cannot be read: {type(e).__name__}: {str(e)[:300]}') from None
    missing = [k for k in ('state_dict', 'meta', 'optimizer')
               if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointProblem(f'holds no {", ".join(missing)}: not a training checkpoint (weights only, a best '
                                'checkpoint or a pretrained model)')
    return checkpoint['meta']


def find_resume_checkpoint(work_dir: str) -> tuple[str | None, str | None]:
    """The checkpoint auto-resume should use: the one ``work_dir/last_checkpoint`` names if it is intact, else
    the newest intact checkpoint (most iterations) in its directory and the work dir. Returns (path or None when
    there is no checkpoint at all, warning or None). Raises ``ResumeError`` when checkpoints exist but none is
    intact."""
    pointer = osp.join(work_dir, POINTER)
    named = None
    if osp.exists(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    problems = {}
    if named is not None:
        if not _is_local(named):
            return named, None  # an object store: mmengine's behaviour
        try:
            check_checkpoint(named)
            return named, None
        except CheckpointProblem as e:
            problems[named] = str(e)
    directories = {osp.abspath(work_dir)} | ({osp.dirname(osp.abspath(named))} if named else set())
    candidates = sorted({osp.abspath(p) for d in directories for p in glob.glob(osp.join(glob.escape(d), '*.pth'))}
                        - {osp.abspath(named or '')})
    ranked = []
    for path in candidates:
        try:
            meta = check_checkpoint(path, verify_data=False)
            ranked.append((int(meta.get('iter', 0)), osp.getmtime(path), path))
        except CheckpointProblem as e:
            problems[path] = str(e)
    for _, _, path in sorted(ranked, reverse=True):
        try:
            check_checkpoint(path)
        except CheckpointProblem as e:
            problems[path] = str(e)
            continue
        if named is None:
            warning = f'{pointer} does not exist; resuming from {path}, the newest intact checkpoint in {work_dir}'
        else:
            warning = (f'{pointer} names {named}, which {problems[named]}; resuming from {path} instead, the '
                       'newest intact checkpoint')
        return path, warning
    if not problems:
        return None, None  # nothing was ever saved: start from scratch
    found = '\n'.join(f'  {p}: {why}' for p, why in problems.items())
    raise ResumeError(f'Cannot resume in {work_dir}: no intact checkpoint. Found:\n{found}\nRemove or repair these '
                      'files to start from scratch, or pass --resume PATH.')


def resume_config(cfg, resume: str = 'auto') -> list[tuple[int, str]]:
    """Make ``cfg`` resume, deciding from which checkpoint now, before a Runner is built (``tools/train.py
    --resume [PATH]``). ``resume``: ``'auto'`` for the checkpoint ``cfg.work_dir/last_checkpoint`` names if it is
    intact, else the newest intact one (:func:`find_resume_checkpoint`); or a path, which must be an intact
    training checkpoint (object-store paths are not checked). Sets ``cfg.resume`` / ``cfg.load_from`` and wraps the
    train dataloader's batch sampler in ``ResumableBatchSampler`` (a mid-epoch checkpoint continues its epoch).
    When auto-resume finds no checkpoint at all, the config's own ``load_from`` (if any) initializes a fresh run.
    Returns ``(logging level, message)`` pairs for the run's log; raises ``ResumeError``."""
    messages = []
    if resume == 'auto':
        path, warning = find_resume_checkpoint(cfg.work_dir)
        if warning is not None:
            messages.append((logging.WARNING, warning))
        if path is None:
            messages.append((logging.INFO, f'No checkpoint in {cfg.work_dir}: training starts from scratch.'))
            cfg.resume = False
            return messages
        messages.append((logging.INFO, f'Auto-resuming from {path}.'))
    else:
        path = resume
        if _is_local(path):
            try:
                check_checkpoint(path)
            except CheckpointProblem as e:
                raise ResumeError(f'Cannot resume from {path}: it {e}.') from None
    cfg.resume, cfg.load_from = True, path
    resumable_batches(cfg.train_dataloader)
    return messages


def agree_on_resume(path) -> None:
    """With several ranks: stop unless every rank chose to resume from ``path`` as rank 0 did. Each rank chose
    before the Runner (and its process group) existed, reading the same files: only a filesystem that shows ranks
    different contents makes them differ."""
    if get_world_size() > 1:
        chosen = [path]
        broadcast_object_list(chosen)
        if chosen[0] != path:
            raise ResumeError(f'Rank 0 resumes from {chosen[0]} but this rank chose {path}: the ranks see different '
                              'files in the work dir. Pass --resume PATH to name the checkpoint for all of them.')


# --- skipping the trained part of an epoch --------------------------------------------------------------------

class ResumableBatchSampler:
    """A train dataloader's batch sampler (``batch_sampler``: a config built with the dataloader's sampler and
    batch size, a built one, or None for torch's ``BatchSampler`` with ``drop_last``) that can skip the first
    batches of a pass: ``CrashSafeHook`` makes the resumed epoch of a mid-epoch checkpoint start after the batches
    the interrupted run trained (indices only, no data is loaded for them). Config::

        train_dataloader = dict(batch_sampler=dict(type='ResumableBatchSampler', batch_sampler=<yours or None>))

    (``resume_config`` does it.) Without a skip it yields exactly its batch sampler's batches."""

    def __init__(self, sampler, batch_size: int, batch_sampler=None, drop_last: bool = False):
        if batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        elif isinstance(batch_sampler, dict):
            batch_sampler = DATA_SAMPLERS.build(batch_sampler, default_args=dict(sampler=sampler,
                                                                                 batch_size=batch_size))
        self.batch_sampler = batch_sampler
        self.sampler = getattr(batch_sampler, 'sampler', sampler)  # DistSamplerSeedHook sets its epoch
        self.batch_size = batch_size
        self.skip = 0
        self._rng_state = None

    def skip_batches(self, count: int, rng_state: torch.Tensor | None = None) -> None:
        """Passes start after their first ``count`` batches (``len`` says how many are left) until this is called
        with 0. ``rng_state``: torch's RNG state to set when the next pass draws its first batch. The DataLoader
        draws its base seed from torch's global RNG as an epoch's iteration starts; the interrupted run made that
        draw before its checkpoint, so the caller passes the state of the start of the epoch and the draw is
        undone."""
        self.skip, self._rng_state = count, rng_state

    def __iter__(self):
        if self._rng_state is not None:
            torch.set_rng_state(self._rng_state)
            self._rng_state = None
        batches = iter(self.batch_sampler)
        for _ in range(self.skip):
            next(batches, None)
        yield from batches

    def __len__(self):
        return max(len(self.batch_sampler) - self.skip, 0)


def resumable_batches(dataloader_cfg) -> None:
    """Put ``ResumableBatchSampler`` around a train dataloader config's batch sampler (once; not when the loader
    makes no batches, ``batch_size=None``)."""
    inner = dataloader_cfg.get('batch_sampler')
    if dataloader_cfg.get('batch_size', 1) is None or (isinstance(inner, dict) and inner.get('type') in (
            'ResumableBatchSampler', ResumableBatchSampler)) or isinstance(inner, ResumableBatchSampler):
        return
    wrapper = dict(type='ResumableBatchSampler', batch_sampler=inner)
    if inner is None:  # torch's BatchSampler; the DataLoader takes no drop_last next to a batch sampler
        wrapper['drop_last'] = dataloader_cfg.pop('drop_last', False)
    dataloader_cfg['batch_sampler'] = wrapper


# --- the config keys ------------------------------------------------------------------------------------------

def enable_crash_safety(cfg) -> None:
    """Apply the config keys of the module docstring to ``cfg`` (``tools/train.py`` does, for every run): mmengine's
    ``CheckpointHook`` (the default when ``default_hooks`` names none) becomes ``CrashSafeCheckpointHook`` with the
    same arguments, and ``CrashSafeHook`` and ``RNGStateHook`` join ``custom_hooks``. ``checkpoint=None`` (no
    checkpoints) and other checkpoint hook types are left as they are."""
    default_hooks = cfg.get('default_hooks')
    if default_hooks is None:
        cfg.default_hooks = default_hooks = {}
    if 'checkpoint' not in default_hooks:
        default_hooks['checkpoint'] = dict(type='CrashSafeCheckpointHook', interval=1)  # mmengine's default
    elif isinstance(default_hooks['checkpoint'], dict) and default_hooks['checkpoint'].get('type') in (
            'CheckpointHook', 'mmengine.CheckpointHook', CheckpointHook):
        default_hooks['checkpoint']['type'] = 'CrashSafeCheckpointHook'
    hooks = list(cfg.get('custom_hooks') or [])
    # CrashSafeHook: preemption (SIGTERM / SIGUSR1), NaN stops, mid-epoch resume; RNGStateHook: resumed runs
    # continue exactly (convnext_backbone/rng_state.py)
    for name in ('CrashSafeHook', 'RNGStateHook'):
        if not any(isinstance(h, dict) and str(h.get('type')).split('.')[-1] == name for h in hooks):
            hooks.append(dict(type=name))
    cfg.custom_hooks = hooks


# --- the hook ------------------------------------------------------------------------------------------------

class CrashSafeHook(Hook):
    """Preemption, NaN stops and the mid-epoch part of resuming (see the module docstring). ``stop_signals``: the
    signals that request a checkpoint-and-exit."""

    # after the hooks that change training state after a step (EMA 50, logging 60, by-iter schedulers 70), before
    # CheckpointHook (90): a preemption checkpoint holds the complete iteration, a NaN stops before any save
    priority = 80

    def __init__(self, stop_signals=('SIGTERM', 'SIGUSR1')):
        self.stop_signals = [getattr(signal, s) if isinstance(s, str) else signal.Signals(s) for s in stop_signals]
        self._signal = None
        self._previous_handlers = {}
        self._loaded = (0, 0)  # (iter, inner_iter) of the last checkpoint loaded
        self._resume_inner_iter = 0
        self._epoch_start_iter = 0
        self._skipping = None

    def before_run(self, runner) -> None:
        for hook in runner.hooks:
            if isinstance(hook, CheckpointHook) and not isinstance(hook, CrashSafeCheckpointHook):
                runner.logger.warning(
                    f'CrashSafeHook: the run saves with {type(hook).__name__}, which writes checkpoints in place and '
                    'removes the old one first (a crash can leave none). For durable checkpoints set default_hooks '
                    "= dict(checkpoint=dict(type='CrashSafeCheckpointHook')) (tools/train.py does).")

    def before_train(self, runner) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in self.stop_signals:
                self._previous_handlers[sig] = signal.signal(sig, self._request_stop)
        else:
            runner.logger.warning('CrashSafeHook: training does not run in the main thread, so stop signals '
                                  f'({", ".join(s.name for s in self.stop_signals)}) keep their default action.')
        # resumed (not loaded for fine-tuning, which starts at iteration 0): the loop continues the checkpoint's
        # iteration; a mid-epoch checkpoint's epoch continues after the batches it trained
        loaded_iter, inner_iter = self._loaded
        self._loaded = (0, 0)
        self._resume_inner_iter = inner_iter if runner.iter > 0 and runner.iter == loaded_iter else 0

    def _request_stop(self, signum, frame) -> None:
        self._signal = signal.Signals(signum)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    # iteration-exact resume -----------------------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.get('meta', {})
        self._loaded = (int(meta.get('iter', 0)), int(meta.get('inner_iter', 0)))

    def before_train_epoch(self, runner) -> None:
        skip, self._resume_inner_iter = self._resume_inner_iter, 0
        self._epoch_start_iter = runner.iter - skip
        if skip and isinstance(runner.train_loop, EpochBasedTrainLoop):
            batches = runner.train_loop.dataloader.batch_sampler
            if not isinstance(batches, ResumableBatchSampler):
                self._restore_signal_handlers()
                raise ResumeError(
                    f'Cannot resume mid-epoch (after {skip} batches of epoch {runner.epoch + 1}): the train '
                    f'dataloader\'s batch sampler is {type(batches).__name__}, which cannot skip batches. Set '
                    "train_dataloader.batch_sampler=dict(type='ResumableBatchSampler', batch_sampler=<yours>) "
                    '(tools/train.py --resume does), or resume from an end-of-epoch checkpoint.')
            batches.skip_batches(skip, torch.get_rng_state())
            self._skipping = batches
            runner.logger.info(f'Resuming epoch {runner.epoch + 1} after its first {skip} batches.')

    def after_train_epoch(self, runner) -> None:
        self._stop_skipping()

    def _stop_skipping(self) -> None:
        if self._skipping is not None:
            self._skipping.skip_batches(0)
            self._skipping = None

    def after_run(self, runner) -> None:
        self._stop_skipping()
        self._restore_signal_handlers()

    # stop requests: NaN loss, preemption ----------------------------------------------------------------------
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        bad = _non_finite_losses(outputs)
        flags = torch.tensor([float(self._signal is not None), float(bool(bad))])
        all_reduce(flags, op='max')  # every rank stops after the same iteration (nothing when not distributed)
        if flags[1]:
            self._restore_signal_handlers()
            where = ', '.join(f'{k}={v}' for k, v in bad.items()) if bad else 'on another rank'
            last = runner.message_hub.get_info('last_ckpt')
            raise NonFiniteLossError(
                f'Non-finite loss at iteration {runner.iter + 1} (epoch {runner.epoch + 1}): {where}. Training '
                f'stopped before any checkpoint of the diverged model was written; the last good checkpoint is '
                f'{last or "none (none was saved yet)"}. Lower the learning rate or clip gradients, then resume.')
        if flags[0]:
            self._checkpoint_and_exit(runner)

    def _checkpoint_and_exit(self, runner) -> None:
        iteration = runner.iter + 1
        meta = dict(epoch=runner.epoch, iter=iteration)
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            meta['inner_iter'] = iteration - self._epoch_start_iter
        hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)
        out_dir = hook.out_dir if hook is not None and hook.out_dir else runner.work_dir
        backend_args = hook.backend_args if hook is not None else None
        if _writes_locally(out_dir, backend_args, hook.file_client_args if hook is not None else None):
            backend_args = dict(backend=ATOMIC_BACKEND)
        filename = PREEMPTED_TMPL.format(iteration)
        path = get_file_backend(out_dir, backend_args=backend_args).join_path(out_dir, filename)
        runner.save_checkpoint(out_dir, filename, meta=meta, backend_args=backend_args)
        if is_main_process():
            if _is_local(path):
                atomic_write(osp.join(runner.work_dir, POINTER), path.encode())
            else:
                with open(osp.join(runner.work_dir, POINTER), 'w') as f:
                    f.write(path)
        barrier()  # no rank exits (and makes srun kill the others) before the checkpoint is durable
        reason = self._signal.name if self._signal is not None else 'a stop signal on another rank'
        runner.logger.warning(f'{reason}: stopped after iteration {iteration}, saved {path}; exiting with status '
                              f'{PREEMPTED_EXIT_STATUS} (resume with --resume).')
        self._restore_signal_handlers()
        raise SystemExit(PREEMPTED_EXIT_STATUS)


def _non_finite_losses(outputs) -> dict:
    """The loss entries of a train step's outputs that are NaN or Inf."""
    bad = {}
    if not isinstance(outputs, dict):
        return bad
    for key, value in outputs.items():
        if 'loss' not in key:
            continue
        value = torch.as_tensor(value.detach() if torch.is_tensor(value) else value)
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad[key] = value.float().mean().item() if value.numel() > 1 else value.item()
    return bad
