"""tools/install.sh and .ci/run mind the disk: a new venv without room is refused before it is created, and
CI removes each stack's venv once its suite has passed (three CUDA torches side by side ran a CI machine out of disk).

Both scripts run for real, with `df` and `make` replaced on PATH by stand-ins that report a chosen free space and
record what they were asked to do.
"""
import os
import shutil
import stat
import subprocess

import pytest

from helpers import ROOT

GIB_KB = 1024 * 1024


def _stand_in(folder, name, body):
    path = folder / name
    path.write_text('#!/usr/bin/env bash\n' + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _df_reporting(folder, free_gb):
    """A `df -Pk` that reports `free_gb` available on every filesystem."""
    _stand_in(folder, 'df', 'echo "Filesystem 1024-blocks Used Available Capacity Mounted on"\n'
                            f'echo "/dev/vda 264241152 44040192 {int(free_gb * GIB_KB)} 17% /"\n')


def _install(tmp_path, free_gb, **env):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    _df_reporting(bin_dir, free_gb)
    # the interpreter that would create the venv: stops the script right after the disk check has let it through
    _stand_in(bin_dir, 'no-python', 'echo "python called: $*"; exit 7\n')
    env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'PYTHON': str(bin_dir / 'no-python'),
           'VENV': str(tmp_path / 'venvs' / 'v'), **env}
    return subprocess.run(['bash', os.path.join(ROOT, 'tools', 'install.sh')], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize('stack', ['pinned', 'classic', 'onedl'])
def test_install_refuses_a_new_venv_without_room_before_creating_it(tmp_path, stack):
    out = _install(tmp_path, free_gb=2.5, STACK=stack)
    assert out.returncode == 1, out.stdout + out.stderr
    assert 'needs ~' in out.stderr and 'has 2 GB' in out.stderr and 'VENV=' in out.stderr, out.stderr
    assert 'python called' not in out.stdout
    assert not (tmp_path / 'venvs' / 'v').exists()

    # with room (or the check skipped), the same call goes on to create the venv
    for free_gb, env in ((500, {}), (2.5, {'MIN_FREE_GB': '0'})):
        out = _install(tmp_path, free_gb=free_gb, STACK=stack, **env)
        assert out.returncode == 7 and 'python called: -m venv' in out.stdout, out.stdout + out.stderr


def test_install_needs_at_least_the_venv_a_stack_leaves(tmp_path):
    """The thresholds sit above what each stack's finished venv takes (docs/stack.md: 6.4 / 5.5 / 7.6 GB)."""
    needs = {}
    for stack in ('pinned', 'classic', 'onedl'):
        for gb in range(1, 40):
            if _install(tmp_path, free_gb=gb, STACK=stack).returncode == 7:
                needs[stack] = gb
                break
    assert needs['pinned'] > 6.4 and needs['classic'] > 5.5 and needs['onedl'] > 7.6, needs


def _ci_checkout(tmp_path, onedl_wheel_cached=True):
    repo = tmp_path / 'repo'
    (repo / '.ci').mkdir(parents=True)
    (repo / 'requirements').mkdir()
    shutil.copy(os.path.join(ROOT, '.ci', 'run'), repo / '.ci' / 'run')
    shutil.copy(os.path.join(ROOT, 'requirements', 'onedl.txt'), repo / 'requirements' / 'onedl.txt')
    cache = tmp_path / 'cache'
    if onedl_wheel_cached:
        pins = dict(line.split('==', 1) for line in open(os.path.join(ROOT, 'requirements', 'onedl.txt'))
                    if '==' in line and not line.startswith('#'))
        wheel_dir = cache / 'wheels' / f'onedl-mmcv-{pins["onedl-mmcv"].strip()}_torch-{pins["torch"].strip()}_cp311_cpu'
        wheel_dir.mkdir(parents=True)
        (wheel_dir / 'mmcv-2.3.6-cp311-cp311-linux_x86_64.whl').write_text('')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _df_reporting(bin_dir, 40)
    # `make test [STACK=...]`: records the stack and which venvs exist at that moment, then makes its own venv
    _stand_in(bin_dir, 'make', 'stack=pinned; for a in "$@"; do case "$a" in STACK=*) stack=${a#STACK=};; esac; done\n'
                               'venv=.venv; [[ $stack == pinned ]] || venv=.venv-$stack\n'
                               'echo "$stack: $(ls -d .venv* 2>/dev/null | tr "\\n" " ")" >> ../make.log\n'
                               'mkdir -p $venv/bin && touch $venv.lock\n')
    env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'CONVNEXT_CACHE': str(cache)}
    return repo, env


def test_ci_removes_each_stack_venv_once_its_suite_passed(tmp_path):
    repo, env = _ci_checkout(tmp_path)
    out = subprocess.run(['bash', '.ci/run'], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # each stack found no other stack's venv beside it, and none is left
    assert (tmp_path / 'make.log').read_text().splitlines() == ['pinned: ', 'classic: ', 'onedl: ']
    assert not list(repo.glob('.venv*'))
    assert 'GB free' in out.stdout and 'removed .venv-onedl' in out.stdout

    (tmp_path / 'make.log').unlink()
    out = subprocess.run(['bash', '.ci/run'], cwd=repo, env={**env, 'CI_KEEP_VENVS': '1'}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / 'make.log').read_text().splitlines() == [
        'pinned: ', 'classic: .venv .venv.lock ', 'onedl: .venv .venv-classic .venv-classic.lock .venv.lock ']
    assert sorted(p.name for p in repo.glob('.venv*')) == [
        '.venv', '.venv-classic', '.venv-classic.lock', '.venv-onedl', '.venv-onedl.lock', '.venv.lock']


def test_ci_keeps_the_venv_of_a_stack_whose_suite_failed(tmp_path):
    repo, env = _ci_checkout(tmp_path)
    make = tmp_path / 'bin' / 'make'
    make.write_text(make.read_text() + '[[ $stack == classic ]] && exit 2\nexit 0\n')
    out = subprocess.run(['bash', '.ci/run'], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert (tmp_path / 'make.log').read_text().splitlines() == ['pinned: ', 'classic: ']
    assert sorted(p.name for p in repo.glob('.venv*')) == ['.venv-classic', '.venv-classic.lock']
