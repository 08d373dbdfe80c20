"""--workers N: sharded processes keep newest-wins, ordered renames, exits."""
import os
import signal
import subprocess
import sys

import pytest

import generate
import gmemcload
from conftest import (expected_state, expected_value, lines_for, listing, run,
                      start_loader, stop_within, stored_values, wait_for,
                      write_gz)


def children_of(pid):
    """Pids whose parent is ``pid``, read from /proc."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/stat' % entry) as stat:
                    fields = stat.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


@pytest.mark.parametrize('workers', [2, 3])
def test_newest_wins_and_renames_keep_order_with_workers(
        tmp_path, memcached_set, workers):
    paths = generate.generate(str(tmp_path), files=4, lines=4000,
                              repeat=0.6, seed=11)
    expected = expected_state(paths)
    status, text = run(tmp_path, memcached_set, '--workers', str(workers),
                       '--batch-size', '64')
    assert status == 0, text
    assert stored_values(memcached_set, expected) == expected
    assert listing(tmp_path) == ['.' + os.path.basename(p) for p in paths]
    assert text.count('Successful load') == 4
    assert '[worker %d/%d]' % (workers, workers) in text
    for name in map(os.path.basename, paths):
        assert '%s %10d %10d %8d' % (name.ljust(28), 4000, 4000, 0) in text


def test_error_counts_and_rates_are_summed_over_shards(
        tmp_path, memcached_set):
    lines = lines_for('idfa', 300) + ['idfa\tbad%d\tx\t1\t1' % i
                                      for i in range(6)]
    write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    status, text = run(tmp_path, memcached_set, '--workers', '3')
    assert status == 1  # 6 / 306 > 0.01
    assert 'High error rate (0.01961 > 0.01). Failed load' in text
    assert '%s %10d %10d %8d' % ('20170929000000.tsv.gz'.ljust(28),
                                 306, 300, 6) in text
    assert listing(tmp_path) == ['20170929000000.tsv.gz']


def test_shards_are_stable_across_processes_and_spread_keys():
    lines = [line.encode() for line in lines_for('gaid', 2000)]
    here = [gmemcload.shard_of(line, 4) for line in lines]
    script = ('import sys; sys.path.insert(0, %r); import gmemcload; '
              'print([gmemcload.shard_of(l, 4) for l in %r])'
              % (os.path.dirname(gmemcload.__file__), lines))
    for seed in ('1', '2'):
        out = subprocess.run([sys.executable, '-c', script], check=True,
                             capture_output=True, text=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed))
        assert eval(out.stdout) == here
    assert all(350 < here.count(shard) < 650 for shard in range(4))
    variants = lines + [b' \t' + line + b'\r' for line in lines[:50]] + \
        [b'', b'gaid', b'gaid\tx', b'\tgaid\tx\t']
    for shard in range(4):
        assert gmemcload.lines_in_shard(variants, shard, 4) == \
            [line for line in variants
             if gmemcload.shard_of(line, 4) == shard]
    # A key's shard does not depend on anything after its id.
    assert gmemcload.shard_of(b' gaid\tx\t1\t2\t3\r\n', 4) == \
        gmemcload.shard_of(b'gaid\tx\tjunk', 4)


def test_a_killed_worker_fails_the_run_and_leaves_no_orphans(
        tmp_path, memcached_set):
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 300))
    write_gz(tmp_path / '20170929000100.tsv.gz',
             lines_for('gaid', 3000) + lines_for('idfa', 300, start=300))
    memcached_set['gaid'].pause()
    loader = start_loader(tmp_path, memcached_set, '--workers', '2',
                          '--timeout', '1', '--retries', '1')
    try:
        wait_for(lambda: (tmp_path / '.20170929000000.tsv.gz').exists())
        workers = children_of(loader.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert loader.wait(timeout=20) == 1
    finally:
        loader.kill()
    assert not [pid for pid in workers if alive(pid)]
    assert listing(tmp_path) == ['.20170929000000.tsv.gz',
                                 '20170929000100.tsv.gz']
    assert 'exited with status -9 before finishing it' in \
        (tmp_path / 'run.log').read_text()


@pytest.mark.parametrize('signum, code', [(signal.SIGTERM, 143),
                                          (signal.SIGINT, 130)])
def test_a_signal_stops_every_worker(tmp_path, memcached_set, signum, code):
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 300))
    write_gz(tmp_path / '20170929000100.tsv.gz', lines_for('gaid', 3000))
    memcached_set['gaid'].pause()
    loader = start_loader(tmp_path, memcached_set, '--workers', '3')
    try:
        wait_for(lambda: (tmp_path / '.20170929000000.tsv.gz').exists())
        workers = children_of(loader.pid)
        assert len(workers) == 3
        assert stop_within(loader, signum, 5) == code
    finally:
        loader.kill()
    assert not [pid for pid in workers if alive(pid)]
    assert listing(tmp_path) == ['.20170929000000.tsv.gz',
                                 '20170929000100.tsv.gz']


def test_workers_exit_when_the_parent_is_killed(tmp_path, memcached_set):
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('gaid', 3000))
    memcached_set['gaid'].pause()
    loader = start_loader(tmp_path, memcached_set, '--workers', '2')
    try:
        wait_for(lambda: len(children_of(loader.pid)) == 2)
        workers = children_of(loader.pid)
        loader.kill()
        loader.wait()
        wait_for(lambda: not [pid for pid in workers if alive(pid)], 5)
    finally:
        loader.kill()
    assert listing(tmp_path) == ['20170929000000.tsv.gz']


def test_dry_run_with_workers_logs_each_record_once(tmp_path):
    lines = lines_for('adid', 50)
    write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    nowhere = {t: type('A', (), {'address': '127.0.0.1:1'})
               for t in gmemcload.DEVICE_TYPES}
    status, text = run(tmp_path, nowhere, '--dry', '--workers', '2')
    assert status == 0, text
    for line in lines:
        key = expected_value(line)[0].decode()
        assert text.count(' - %s -> ' % key) == 1
    assert listing(tmp_path) == ['20170929000000.tsv.gz']


def test_a_stop_before_the_workers_start_starts_none(tmp_path):
    path = write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 5))
    settings = gmemcload.Settings(
        {t: ['127.0.0.1:1'] for t in gmemcload.DEVICE_TYPES})
    workers = gmemcload.WorkerSet(2, settings, str(tmp_path / 'log'))
    workers.stop(signal.SIGTERM)
    done = []
    loads = [gmemcload.FileLoad(path)]
    workers.run(loads, done.append)
    assert workers.processes == []
    assert done == loads and loads[0].failure == 'stopped by a signal'
