"""Crash-safe training (convnext_backbone/crash_safe.py): real SIGKILLs at named and random moments, SIGTERM /
SIGUSR1 preemption (one process and two under tools/dist_train.sh), torn checkpoints, a NaN loss, and
tools/slurm_train.sh's requeue. Every interrupted run is resumed with `tools/train.py --resume` and its final
weights are compared bit for bit with one uninterrupted run (the CPU kernels used here are deterministic with
one thread, so no tolerance is needed). A subprocess runs only what is killed or signalled (and torchrun); the
reference run and the resumes that finish a run train in this process, with one thread too."""
import glob
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from mmengine.hooks import CheckpointHook

from convnext_backbone import safe_load
from convnext_backbone.crash_safe import (PREEMPTED_EXIT_STATUS, TEST_KILL_ENV, CheckpointProblem,
                                          ResumeError, check_checkpoint, find_resume_checkpoint)
from convnext_backbone.tools import train as train_tool
from convnext_backbone.tools.common import adapt_to_machine, unique_visualizer
from helpers import ROOT, tiny_detection_config

TRAIN = os.path.join(ROOT, 'tools', 'train.py')
EPOCHS, ITERS_PER_EPOCH = 3, 4  # 8 images, batch 2
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable,
           PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
LOG_LINE = re.compile(r'Epoch\(train\)\s+\[\d+\]\[\s*\d+/\d+\]')
pytestmark = pytest.mark.usefixtures('one_thread')  # the in-process runs: see conftest.one_thread


@pytest.fixture(scope='module')
def config(tmp_path_factory, coco):
    """The detection tests' tiny Mask R-CNN (16-channel neck and heads, 64 px) on conftest's synthetic COCO set: 3
    epochs of 4 iterations, drop path on (the RNG state must carry over), one checkpoint kept (max_keep_ckpts=1)."""
    directory = tmp_path_factory.mktemp('crash_cfg')
    tiny_detection_config(directory, coco, epochs=EPOCHS, drop_path=0.1)
    path = directory / 'crash.py'
    path.write_text("""_base_ = './tiny.py'
default_hooks = dict(checkpoint=dict(max_keep_ckpts=1))
""")
    return str(path)


def _command(config, work_dir, *args):
    return [sys.executable, TRAIN, config, '--work-dir', str(work_dir), *args]


def _train(config, work_dir, *args, kill_at=None, timeout=600):
    env = dict(ENV, **({TEST_KILL_ENV: kill_at} if kill_at else {}))
    return subprocess.run(_command(config, work_dir, *args), env=env, capture_output=True, text=True,
                          timeout=timeout)


def _signal_after(config, work_dir, *args, lines: int, sig=signal.SIGKILL, delay=0.0, cmd=None, target=None,
                  env=ENV):
    """Start a run, send ``sig`` ``delay`` s after its ``lines``-th training log line; returns (returncode,
    output). ``target(proc)`` picks the pid to signal (default the process itself)."""
    proc = subprocess.Popen(cmd or _command(config, work_dir, *args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output, seen = [], 0
    for line in proc.stdout:
        output.append(line)
        seen += bool(LOG_LINE.search(line))
        if seen == lines:
            time.sleep(delay)
            os.kill(target(proc) if target else proc.pid, sig)
            break
    output.append(proc.stdout.read())
    return proc.wait(timeout=600), ''.join(output)


def _finish(config, work_dir):
    """``tools/train.py --resume`` run to the end, in this process; returns the run's log."""
    train_tool.main([config, '--work-dir', str(work_dir), '--resume'])
    return open(sorted(glob.glob(os.path.join(work_dir, '*', '*.log')))[-1]).read()


def _final_weights(work_dir):
    return safe_load.load_mmengine_checkpoint(os.path.join(work_dir, f'epoch_{EPOCHS}.pth'), map_location='cpu')


def _assert_same_weights(work_dir, reference):
    final = _final_weights(work_dir)
    assert final['meta']['iter'] == EPOCHS * ITERS_PER_EPOCH
    state, expected = final['state_dict'], reference['state_dict']
    assert state.keys() == expected.keys()
    different = [k for k in state if not torch.equal(state[k], expected[k])]
    assert not different, different


def _ok(out):
    return out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.fixture(scope='module')
def reference(config, tmp_path_factory):
    """The uninterrupted run every interrupted one must equal."""
    work_dir = tmp_path_factory.mktemp('reference')
    train_tool.main([config, '--work-dir', str(work_dir)])
    return _final_weights(work_dir)


def test_sigkill_at_each_point_of_saving_then_resume_equals_uninterrupted(config, reference, tmp_path):
    work_dir = str(tmp_path)
    pointer = os.path.join(work_dir, 'last_checkpoint')
    # killed while epoch_2.pth was being written (max_keep_ckpts=1: mmengine had already removed epoch_1.pth)
    out = _train(config, work_dir, kill_at='mid_write:2')
    assert out.returncode == -signal.SIGKILL, _ok(out)
    assert open(pointer).read() == os.path.join(work_dir, 'epoch_1.pth')
    assert check_checkpoint(os.path.join(work_dir, 'epoch_1.pth'))['iter'] == ITERS_PER_EPOCH
    assert not os.path.exists(os.path.join(work_dir, 'epoch_2.pth'))
    partial = glob.glob(os.path.join(work_dir, '.epoch_2.pth.tmp-*'))
    assert len(partial) == 1 and 0 < os.path.getsize(partial[0])
    # resumed, then killed after epoch_2.pth and last_checkpoint were durable, before epoch_1.pth was removed
    out = _train(config, work_dir, '--resume', kill_at='before_remove')
    assert out.returncode == -signal.SIGKILL, _ok(out)
    assert open(pointer).read() == os.path.join(work_dir, 'epoch_2.pth')
    assert check_checkpoint(os.path.join(work_dir, 'epoch_2.pth'))['iter'] == 2 * ITERS_PER_EPOCH
    assert os.path.exists(os.path.join(work_dir, 'epoch_1.pth')) and not os.path.exists(partial[0])  # cleaned up
    # resumed, then killed with epoch_3.pth renamed into place but last_checkpoint not yet updated
    out = _train(config, work_dir, '--resume', kill_at='before_pointer')
    assert out.returncode == -signal.SIGKILL, _ok(out)
    assert open(pointer).read() == os.path.join(work_dir, 'epoch_2.pth')  # still intact: resumed from, epoch 3 redone
    assert check_checkpoint(os.path.join(work_dir, 'epoch_3.pth'))['iter'] == 3 * ITERS_PER_EPOCH
    assert not os.path.exists(os.path.join(work_dir, 'epoch_1.pth'))  # epoch_2.pth superseded it: removed on resume
    _finish(config, work_dir)
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(work_dir, '*.pth'))) == ['epoch_3.pth']
    _assert_same_weights(work_dir, reference)


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(config, reference, tmp_path):
    rng = random.Random(0)
    work_dir = str(tmp_path)
    total = EPOCHS * ITERS_PER_EPOCH
    # a random moment: any iteration but the last, anywhere in it (forward, backward, logging, saving); then the
    # resumed run killed at another random moment of what it has left to train
    done = 0  # the iteration the run resumes from
    for _ in range(2):
        if total - done < 2:
            break
        returncode, output = _signal_after(config, work_dir, *(['--resume'] if done else []),
                                           lines=rng.randint(1, total - done - 1), delay=rng.uniform(0, 0.3))
        assert returncode == -signal.SIGKILL, output[-3000:]
        pointer = os.path.join(work_dir, 'last_checkpoint')
        done = check_checkpoint(open(pointer).read())['iter'] if os.path.exists(pointer) else 0
    _finish(config, work_dir)
    _assert_same_weights(work_dir, reference)


def test_sigterm_mid_epoch_checkpoints_that_iteration_and_resume_continues_the_data_order(config, reference,
                                                                                          tmp_path):
    work_dir = str(tmp_path)
    returncode, output = _signal_after(config, work_dir, lines=ITERS_PER_EPOCH + 1, sig=signal.SIGTERM)
    assert returncode == PREEMPTED_EXIT_STATUS, output[-3000:]
    stopped = int(re.search(r'SIGTERM: stopped after iteration (\d+)', output).group(1))
    assert ITERS_PER_EPOCH + 1 <= stopped < 2 * ITERS_PER_EPOCH, output[-3000:]  # within the second epoch
    path = os.path.join(work_dir, f'preempted_iter_{stopped}.pth')
    assert open(os.path.join(work_dir, 'last_checkpoint')).read() == path
    meta = check_checkpoint(path)
    assert (meta['iter'], meta['epoch'], meta['inner_iter']) == (stopped, 1, stopped - ITERS_PER_EPOCH)
    # a Runner built without our tools, from a config whose batch sampler cannot skip: one clear error
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(dict(work_dir=work_dir, resume=True, load_from=path, custom_hooks=[dict(type='CrashSafeHook')]))
    adapt_to_machine(cfg)  # the recipe's AMP: fp32 on CPU
    unique_visualizer(cfg)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ResumeError, match=f"Cannot resume mid-epoch .after {stopped - ITERS_PER_EPOCH} batches of "
                                          "epoch 2.: .*batch_sampler=dict.type='ResumableBatchSampler'"):
        Runner.from_cfg(cfg).train()
    assert signal.getsignal(signal.SIGTERM) is handler  # this process's SIGTERM handler given back
    log = _finish(config, work_dir)
    assert f'Resuming epoch 2 after its first {stopped - ITERS_PER_EPOCH} batches' in log, log[-3000:]
    assert not os.path.exists(path)  # a later regular checkpoint replaced it
    _assert_same_weights(work_dir, reference)  # the same batches, in the same order, with the same randomness


def _children(pid):
    out = subprocess.run(['ps', '-o', 'pid=', '--ppid', str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _rank_pid(agent, rank):
    """The pid of one worker of a torchrun agent (read from its environment)."""
    for _ in range(100):
        for pid in _children(agent.pid):
            try:
                env = open(f'/proc/{pid}/environ', 'rb').read().split(b'\0')
            except OSError:
                continue
            if f'RANK={rank}'.encode() in env:
                return pid
        time.sleep(0.1)
    raise AssertionError(f'no worker with RANK={rank} under {agent.pid}')


def test_sigusr1_to_one_rank_stops_every_rank_at_the_same_iteration(config, tmp_path):
    work_dir = str(tmp_path)
    dist = ['bash', os.path.join(ROOT, 'tools', 'dist_train.sh'), config, '2', '--work-dir', work_dir,
            '--cfg-options', 'train_cfg.max_epochs=2']  # 2 iterations per epoch with 2 processes
    returncode, output = _signal_after(config, work_dir, lines=1, sig=signal.SIGUSR1, cmd=dist,
                                       target=lambda proc: _rank_pid(proc, 1), env=dict(ENV, PORT='29537'))
    # rank 0 never got the signal: it stops because rank 1 asked, after the same iteration
    stopped = int(re.search(r'a stop signal on another rank: stopped after iteration (\d+)', output).group(1))
    assert stopped in (1, 2, 3), output[-3000:]
    # the workers exit with the preemption status (torchrun itself reports the failure with status 1). torchrun
    # ends the whole group when the first worker exits non-zero, so a rank still past the agreed save and on its
    # way out may be reported as ended by torchrun's SIGTERM (-15) instead: both after the checkpoint was written.
    statuses = dict(re.findall(r'rank\s+: (\d) \(local_rank: \d\)\s+exitcode\s+: (-?\d+)', output))
    assert returncode == 1 and '75' in statuses.values(), output[-3000:]
    assert set(statuses.values()) <= {'75', '-15'}, output[-3000:]
    assert check_checkpoint(os.path.join(work_dir, f'preempted_iter_{stopped}.pth'))['iter'] == stopped
    out = subprocess.run(dist + ['--resume'], env=dict(ENV, PORT='29538'), capture_output=True, text=True,
                         timeout=600)
    assert _ok(out)[0], _ok(out)
    assert check_checkpoint(os.path.join(work_dir, 'epoch_2.pth'))['iter'] == 4


# --- torn checkpoints ----------------------------------------------------------------------------------------

def _fake_checkpoint(path, iteration, **drop):
    state = dict(state_dict={'w': torch.full((4,), float(iteration))}, meta=dict(iter=iteration, epoch=iteration),
                 optimizer={'state': {}})
    for key in drop:
        state.pop(key)
    torch.save(state, path)
    return str(path)


def _tear(path, how):
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write({'truncated': data[:len(data) // 2], 'empty': b'', 'garbage': os.urandom(len(data))}[how])


@pytest.mark.parametrize('how', ['truncated', 'empty', 'garbage'])
def test_auto_resume_falls_back_from_a_torn_latest_checkpoint(tmp_path, how):
    older = _fake_checkpoint(tmp_path / 'epoch_1.pth', 4)
    newest = _fake_checkpoint(tmp_path / 'epoch_2.pth', 8)
    _fake_checkpoint(tmp_path / 'weights_only.pth', 99, optimizer=None)  # newer, but not resumable
    (tmp_path / 'last_checkpoint').write_text(newest)
    assert find_resume_checkpoint(str(tmp_path)) == (newest, None)
    _tear(newest, how)
    with pytest.raises(CheckpointProblem):
        check_checkpoint(newest)
    path, warning = find_resume_checkpoint(str(tmp_path))
    assert path == older and newest in warning and older in warning
    # nothing intact: an error listing what was found, not a silent start from scratch
    _tear(older, how)
    with pytest.raises(ResumeError, match='no intact checkpoint') as error:
        find_resume_checkpoint(str(tmp_path))
    assert older in str(error.value) and newest in str(error.value) and 'weights_only.pth' in str(error.value)
    # a missing file named by last_checkpoint, the newest intact one used instead
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_3.pth'))
    good = _fake_checkpoint(tmp_path / 'epoch_1.pth', 4)
    path, warning = find_resume_checkpoint(str(tmp_path))
    assert path == good and 'epoch_3.pth, which does not exist' in warning


class _RemovesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.remove, (self.path,)


def test_checking_a_checkpoint_reads_its_structure_and_runs_no_code_from_it(tmp_path):
    marker = tmp_path / 'marker'
    marker.write_text('unpickling with a real loader removes this file')
    path = tmp_path / 'checkpoint.pth'
    torch.save(dict(state_dict={'w': torch.ones(2)}, meta=dict(iter=3, epoch=1), optimizer=_RemovesAFile(str(marker))),
               path)
    assert check_checkpoint(str(path)) == dict(iter=3, epoch=1)
    assert marker.exists()


def test_train_resume_falls_back_and_explicit_resume_errors_clearly(config, reference, tmp_path):
    work_dir = str(tmp_path)
    torch.save(reference, os.path.join(work_dir, f'epoch_{EPOCHS}.pth'))  # the finished run's last checkpoint
    torn = os.path.join(work_dir, f'epoch_{EPOCHS + 1}.pth')
    torch.save(reference, torn)
    _tear(torn, 'truncated')
    (tmp_path / 'last_checkpoint').write_text(torn)
    runner = train_tool.main([config, '--work-dir', work_dir, '--resume'])  # nothing left to train
    assert runner.iter == EPOCHS * ITERS_PER_EPOCH
    log = open(glob.glob(os.path.join(work_dir, '*', '*.log'))[0]).read()
    assert f'last_checkpoint names {torn}, which is not a complete torch checkpoint' in log, log[-3000:]
    assert f'resuming from {work_dir}/epoch_{EPOCHS}.pth instead' in log
    # an explicit path: the command line ends with one line naming the file (sys.exit(message): status 1)
    with pytest.raises(SystemExit) as exit_:
        train_tool.cli([config, '--work-dir', work_dir, '--resume', torn])
    assert exit_.value.code.startswith(f'ResumeError: Cannot resume from {torn}: it is not a complete torch '
                                       'checkpoint'), exit_.value.code


# --- NaN loss ------------------------------------------------------------------------------------------------

def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(config, tmp_path):
    import crash_safe_poison  # noqa: F401  (registers PoisonMaskHeadHook)
    from convnext_backbone.crash_safe import NonFiniteLossError
    poisoned = tmp_path / 'poisoned.py'
    poisoned.write_text(f'_base_ = {config!r}\ncustom_hooks = [dict(type="PoisonMaskHeadHook", iteration=6)]\n')
    work_dir = str(tmp_path / 'work')
    with pytest.raises(NonFiniteLossError, match='Non-finite loss at iteration 6 .epoch 2.: loss=nan'):
        train_tool.main([str(poisoned), '--work-dir', work_dir])
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(work_dir, '*.pth'))) == ['epoch_1.pth']
    assert open(os.path.join(work_dir, 'last_checkpoint')).read().endswith('epoch_1.pth')
    checkpoint = safe_load.load_mmengine_checkpoint(os.path.join(work_dir, 'epoch_1.pth'))
    assert checkpoint['meta']['iter'] == ITERS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in checkpoint['state_dict'].values() if v.is_floating_point())


# --- SLURM ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('status,job_id,restarts', [(75, '42', None), (75, None, None), (0, '42', '1'),
                                                     (1, '42', None)])
def test_slurm_train_requeues_a_preempted_job_and_resumes_a_requeued_one(tmp_path, status, job_id, restarts):
    # srun and scontrol stand-ins that record their arguments (no Slurm on this machine)
    for name in ('srun', 'scontrol'):
        stub = tmp_path / name
        stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/{name}.calls\nexit ${{STUB_{name.upper()}_STATUS:-0}}\n')
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', STUB_SRUN_STATUS=str(status))
    env.pop('SLURM_JOB_ID', None), env.pop('SLURM_RESTART_COUNT', None)
    env.update({k: v for k, v in (('SLURM_JOB_ID', job_id), ('SLURM_RESTART_COUNT', restarts)) if v})
    out = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'slurm_train.sh'), 'part', 'job', 'cfg.py', 'wd',
                          '--amp'], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == status, out.stderr
    srun_args = (tmp_path / 'srun.calls').read_text().strip()
    expected = 'train.py cfg.py --work-dir=wd --launcher slurm --amp' + (' --resume' if restarts else '')
    assert srun_args.endswith(expected), srun_args
    requeued = (tmp_path / 'scontrol.calls').read_text().split() if (tmp_path / 'scontrol.calls').exists() else []
    assert requeued == (['requeue', job_id] if status == PREEMPTED_EXIT_STATUS and job_id else [])
    if status == PREEMPTED_EXIT_STATUS and not job_id:
        assert 'run again with --resume' in out.stderr


def test_local_checkpoint_hooks_are_durable_object_stores_keep_mmengine_behaviour(tmp_path):
    from convnext_backbone.crash_safe import ATOMIC_BACKEND, CrashSafeCheckpointHook
    local = CrashSafeCheckpointHook(interval=1, max_keep_ckpts=2)
    s3 = CrashSafeCheckpointHook(interval=1, out_dir='s3://bucket/checkpoints')
    petrel = CrashSafeCheckpointHook(interval=1, backend_args=dict(backend='petrel'))
    assert local.durable and local.backend_args == dict(backend=ATOMIC_BACKEND) and local.max_keep_ckpts == 2
    assert not s3.durable and s3.backend_args is None
    assert not petrel.durable and petrel.backend_args == dict(backend='petrel')


def test_the_private_mmengine_method_the_checkpoint_hook_overrides_is_unchanged():
    """CrashSafeCheckpointHook overrides CheckpointHook._save_checkpoint_with_step (the one private name of mmengine
    in crash_safe.py, see its comment): mmengine must still have it, with this signature, and save through it
    (the SIGKILL tests' before_pointer / before_remove points are in the override)."""
    import inspect
    from mmengine.hooks import CheckpointHook
    from convnext_backbone.crash_safe import CrashSafeCheckpointHook
    parameters = ['self', 'runner', 'step', 'meta']
    assert list(inspect.signature(CheckpointHook._save_checkpoint_with_step).parameters) == parameters
    assert list(inspect.signature(CrashSafeCheckpointHook._save_checkpoint_with_step).parameters) == parameters
    assert 'self._save_checkpoint_with_step(' in inspect.getsource(CheckpointHook._save_checkpoint)


def _docs_config_lines():
    """The config lines docs/crash_safety.md gives for a Runner built without our tools."""
    text = open(os.path.join(ROOT, 'docs', 'crash_safety.md')).read()
    return re.search(r'```python\n(.*?)```', text, re.S).group(1)


def test_the_documented_config_lines_give_a_runner_built_without_our_tools_crash_safety(config, tmp_path):
    from mmengine.config import Config
    from mmengine.runner import Runner
    from convnext_backbone.crash_safe import CrashSafeCheckpointHook, CrashSafeHook
    from convnext_backbone.rng_state import RNGStateHook
    path = tmp_path / 'user.py'
    path.write_text(f'_base_ = {config!r}\n' + _docs_config_lines())
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(tmp_path / 'work')
    unique_visualizer(cfg)
    runner = Runner.from_cfg(cfg)
    checkpoint = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
    assert len(checkpoint) == 1 and isinstance(checkpoint[0], CrashSafeCheckpointHook) and checkpoint[0].durable
    assert checkpoint[0].max_keep_ckpts == 1 and checkpoint[0].interval == 1  # the base config's arguments kept
    assert {CrashSafeHook, RNGStateHook} <= {type(h) for h in runner.hooks}
    batch_sampler = cfg.train_dataloader.batch_sampler  # the config's own, wrapped
    assert batch_sampler.type == 'ResumableBatchSampler'
    assert batch_sampler.batch_sampler.type == 'AspectRatioBatchSampler'


def test_train_tool_config_switches_mmengine_checkpoint_hook_to_the_durable_one():
    from mmengine.config import Config
    from convnext_backbone.crash_safe import enable_crash_safety
    given = Config(dict(default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, max_keep_ckpts=3)),
                        custom_hooks=[dict(type='EMAHook')]))
    enable_crash_safety(given)
    assert given.default_hooks.checkpoint == dict(type='CrashSafeCheckpointHook', interval=2, max_keep_ckpts=3)
    assert [h['type'] for h in given.custom_hooks] == ['EMAHook', 'CrashSafeHook', 'RNGStateHook']
    enable_crash_safety(given)  # once only
    assert [h['type'] for h in given.custom_hooks] == ['EMAHook', 'CrashSafeHook', 'RNGStateHook']
    scoped = Config(dict(custom_hooks=[dict(type='convnext_backbone.CrashSafeHook', stop_signals=['SIGUSR1'])]))
    enable_crash_safety(scoped)
    assert [h['type'] for h in scoped.custom_hooks] == ['convnext_backbone.CrashSafeHook', 'RNGStateHook']
    default = Config(dict(default_hooks=dict(logger=dict(type='LoggerHook'))))  # mmengine's CheckpointHook
    enable_crash_safety(default)
    assert default.default_hooks.checkpoint == dict(type='CrashSafeCheckpointHook', interval=1)
    off = Config(dict(default_hooks=dict(checkpoint=None)))  # checkpoints switched off: left off
    enable_crash_safety(off)
    assert off.default_hooks.checkpoint is None


def test_resumable_batch_sampler_skips_batches_and_restores_the_rng_at_the_first_batch():
    from mmengine.registry import DATA_SAMPLERS
    from torch.utils.data import BatchSampler
    from convnext_backbone.crash_safe import resumable_batches
    dataloader = dict(batch_size=3, drop_last=True, sampler=dict(type='DefaultSampler', shuffle=False))
    resumable_batches(dataloader)  # no batch sampler given: torch's BatchSampler, drop_last moved into the wrapper
    assert dataloader == dict(batch_size=3, sampler=dict(type='DefaultSampler', shuffle=False), batch_sampler=dict(
        type='ResumableBatchSampler', batch_sampler=None, drop_last=True))
    sampler = range(10)
    batches = DATA_SAMPLERS.build(dataloader['batch_sampler'], default_args=dict(sampler=sampler, batch_size=3))
    assert list(batches) == list(BatchSampler(sampler, 3, drop_last=True)) and len(batches) == 3
    start = torch.get_rng_state()
    batches.skip_batches(2, start)
    torch.rand(5)  # the DataLoader's draw of its base seed as the epoch starts
    assert len(batches) == 1 and list(batches) == [[6, 7, 8]]
    assert torch.equal(torch.get_rng_state(), start)  # the draw undone when the first batch was requested
    assert list(batches) == [[6, 7, 8]]  # skips until told otherwise (CrashSafeHook: the epoch's end)
    batches.skip_batches(0)
    assert len(batches) == 3 and list(batches) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_rng_state_restored_on_resume_not_when_a_checkpoint_is_loaded_to_fine_tune():
    from types import SimpleNamespace
    from convnext_backbone.rng_state import RNGStateHook
    hook, checkpoint = RNGStateHook(), dict(meta=dict(iter=8))
    hook.before_save_checkpoint(None, checkpoint)
    saved = torch.rand(3)  # what the interrupted run drew next
    for iteration, same in ((0, False), (8, True)):  # load_from (iteration 0), resume (the checkpoint's)
        torch.manual_seed(1)
        hook.after_load_checkpoint(None, checkpoint)
        hook.before_train(SimpleNamespace(iter=iteration))
        assert torch.equal(torch.rand(3), saved) == same
