"""Faults: resets, stalls, dead hosts, refusals, the lock, signals, memory."""
import gzip
import os
import re
import signal
import time

import gevent
import pytest

import generate
import gmemcload
from conftest import (assert_all_in_fake, expected_state, expected_value,
                      hold_lock, lines_for, listing, run, same_server,
                      start_loader, stop_within, stored_values, summary_row,
                      wait_for, wait_for_log, wait_for_renamed,
                      wait_with_usage, write_gz)
from daemons import free_port

TYPES = gmemcload.DEVICE_TYPES


# -- retries with the fake server --

def test_resets_mid_batch_are_retried_and_nothing_is_lost(
        tmp_path, fake_memcached):
    fake_memcached.reset_after = 150  # mid-way through the second batch
    fake_memcached.resets = 4
    lines = lines_for('idfa', 1000) + lines_for('gaid', 1000)
    write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    status, text = run(tmp_path, same_server(fake_memcached),
                       '--batch-size', '100', '--uploaders', '1')
    assert status == 0, text
    assert 'retry 1/5' in text
    assert_all_in_fake(fake_memcached, lines)
    assert listing(tmp_path) == ['.20170929000000.tsv.gz']


def test_replies_delayed_past_the_timeout_are_retried(
        tmp_path, fake_memcached):
    fake_memcached.delay = 1.0
    fake_memcached.delay_replies = 2
    lines = lines_for('adid', 300)
    write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    status, text = run(tmp_path, same_server(fake_memcached),
                       '--timeout', '0.3')
    assert status == 0, text
    assert 'timed out' in text
    assert_all_in_fake(fake_memcached, lines)


def test_a_refused_record_is_an_error_and_is_not_retried(
        tmp_path, fake_memcached):
    fake_memcached.max_value = 40
    lines = lines_for('dvid', 299)
    lines.insert(150, 'dvid\tbig\t1\t1\t' + ','.join(['99999'] * 20))
    write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    status, text = run(tmp_path, same_server(fake_memcached),
                       '--batch-size', '64')
    assert status == 0, text  # 1 error in 300 records
    assert 'dvid:big not stored: SERVER_ERROR object too large' in text
    assert fake_memcached.sets == 300  # each record sent once
    assert b'dvid:big' not in fake_memcached.data
    assert len(fake_memcached.data) == 299


def test_refusals_are_logged_a_few_in_full_per_file_then_counted(
        tmp_path, fake_memcached):
    # A server that refuses every record: 5 lines in full for each file,
    # then one count, whatever the batches.
    fake_memcached.max_value = 1
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('gaid', 400))
    write_gz(tmp_path / '20170929000100.tsv.gz', lines_for('gaid', 3, 'b'))
    status, text = run(tmp_path, same_server(fake_memcached),
                       '--batch-size', '50', '--uploaders', '1')
    assert status == 1, text
    assert summary_row(text, '20170929000000.tsv.gz') == (400, 0, 400)
    assert summary_row(text, '20170929000100.tsv.gz') == (3, 0, 3)
    assert text.count(' not stored: SERVER_ERROR object too large') == 5 + 3
    for key in ('gaid:00000', 'gaid:00004', 'gaid:b00002'):
        assert '%s: %s not stored: SERVER_ERROR' % (fake_memcached.address,
                                                    key) in text
    assert '20170929000000.tsv.gz: 395 more records memcached did not' \
        ' store not shown' in text
    assert 'gaid:00005 not stored' not in text
    assert fake_memcached.sets == 403  # each sent once
    assert fake_memcached.data == {}


def test_refused_connections_fail_in_bounded_time_others_still_load(
        tmp_path, fake_memcached, memcached_set):
    fake_memcached.refuse = True
    daemons = dict(memcached_set, idfa=fake_memcached)
    for minute in range(2):
        write_gz(tmp_path / ('2017092900%02d00.tsv.gz' % minute),
                 lines_for('idfa', 500, start=500 * minute)
                 + lines_for('gaid', 500, start=500 * minute))
    started = time.monotonic()
    status, text = run(tmp_path, daemons, '--timeout', '0.5',
                       '--retries', '2')
    elapsed = time.monotonic() - started
    # timeout x (retries + 1) + backoff (0.25 + 0.5), with slack
    assert elapsed < 0.5 * 3 + 0.75 + 3
    assert status == 1
    assert listing(tmp_path) == ['20170929000000.tsv.gz',
                                 '20170929000100.tsv.gz']
    assert 'is down' in text and 'not acknowledged' in text
    gaid = [expected_value(line)[0] for line in lines_for('gaid', 1000)]
    assert len(memcached_set['gaid'].get_many(gaid)) == 1000


# -- real memcached misbehaving --

def test_a_server_that_is_not_running_fails_in_bounded_time(
        tmp_path, memcached_set):
    nothing = type('Nothing', (), {'address': '127.0.0.1:%d' % free_port()})
    daemons = dict(memcached_set, dvid=nothing)
    write_gz(tmp_path / '20170929000000.tsv.gz',
             lines_for('dvid', 3000) + lines_for('adid', 3000))
    started = time.monotonic()
    status, text = run(tmp_path, daemons, '--retries', '3',
                       '--batch-size', '100')
    # Refused at once: only the backoff (0.25 + 0.5 + 1) counts, once.
    assert 1.75 <= time.monotonic() - started < 1.75 + 3
    for retry, delay in ((1, '0.25'), (2, '0.50'), (3, '1.00')):
        assert re.search(r'retry %d/3 of a batch of \d+ in %ss' % (
            retry, delay), text)
    assert status == 1
    assert listing(tmp_path) == ['20170929000000.tsv.gz']
    assert 'connect: [Errno 111] Connection refused' in text
    assert 'kept: 3000 records not acknowledged by memcached' in text
    adid = [expected_value(line)[0] for line in lines_for('adid', 3000)]
    assert len(memcached_set['adid'].get_many(adid)) == 3000


def test_a_stalled_server_fails_in_bounded_time_and_never_hangs(
        tmp_path, memcached_set):
    memcached_set['gaid'].pause()
    write_gz(tmp_path / '20170929000000.tsv.gz',
             lines_for('gaid', 2000) + lines_for('idfa', 2000))
    started = time.monotonic()
    status, text = run(tmp_path, memcached_set, '--timeout', '0.5',
                       '--retries', '2', '--batch-size', '100')
    assert time.monotonic() - started < 0.5 * 3 + 0.75 + 3
    assert status == 1
    assert 'timed out' in text
    assert listing(tmp_path) == ['20170929000000.tsv.gz']
    idfa = [expected_value(line)[0] for line in lines_for('idfa', 2000)]
    assert len(memcached_set['idfa'].get_many(idfa)) == 2000


def run_through_stall(tmp_path, daemons, stalled, retries, *extra):
    """Run the loader while ``stalled`` is paused, until the loader has
    retried a batch ``retries`` times; return (exit status, log text)."""
    stalled.pause()
    loader = gevent.spawn(run, tmp_path, daemons, *extra)
    try:
        wait_for_log(tmp_path, 'retry %d/' % retries)
    finally:
        stalled.resume()
    return loader.get(timeout=60)


def test_a_four_second_stall_costs_retries_not_data(tmp_path, memcached_set):
    paths = generate.generate(str(tmp_path), files=2, lines=20000,
                              repeat=0.3, seed=3)
    expected = expected_state(paths)
    # Two retries at the default timeout: a stall of about 5 s.
    status, text = run_through_stall(tmp_path, memcached_set,
                                     memcached_set['idfa'], 2)
    assert status == 0, text
    assert 'retry' in text
    assert stored_values(memcached_set, expected) == expected
    assert listing(tmp_path) == ['.' + os.path.basename(p) for p in paths]


def test_newest_wins_across_a_retry(tmp_path, memcached_set):
    paths = []
    for minute in range(3):
        lines = ['idfa\tk%03d\t%d\t0\t%d' % (i, minute, i) for i in range(300)]
        paths.append(write_gz(tmp_path / ('2017092900%02d00.tsv.gz'
                                          % minute), lines))
    expected = expected_state(paths)
    status, text = run_through_stall(
        tmp_path, memcached_set, memcached_set['idfa'], 3,
        '--timeout', '0.3', '--batch-size', '7', '--uploaders', '3')
    assert status == 0, text
    assert 'retry' in text
    assert stored_values(memcached_set, expected) == expected


# -- one run at a time --

def test_a_second_run_exits_75_and_a_killed_holder_leaves_no_lock(
        tmp_path, memcached_set):
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 10))
    lock_path = str(tmp_path / '.gmemcload.lock')
    holder = hold_lock(lock_path)
    try:
        status, text = run(tmp_path, memcached_set)
        assert status == 75
        assert lock_path in text and 'pid %d' % holder.pid in text
        assert 'Processing' not in text
        assert listing(tmp_path) == ['20170929000000.tsv.gz']
    finally:
        holder.kill()
        holder.wait()
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert listing(tmp_path) == ['.20170929000000.tsv.gz']


def test_runs_whose_patterns_overlap_share_a_lock(tmp_path, memcached_set):
    (tmp_path / 'east').mkdir()
    write_gz(tmp_path / 'east' / '20170929000000.tsv.gz',
             lines_for('idfa', 10))
    holder = hold_lock(str(tmp_path / 'east' / '.gmemcload.lock'))
    try:
        # a run of east/*.tsv.gz holds east's lock: */*.tsv.gz must wait
        status, text = run(tmp_path, memcached_set, '--pattern',
                           str(tmp_path / '*' / '*.tsv.gz'))
        assert status == 75, text
        assert 'pid %d) holds the lock %s' % (
            holder.pid, tmp_path / 'east' / '.gmemcload.lock') in text
        assert 'Processing' not in text
    finally:
        holder.kill()
        holder.wait()
    assert listing(tmp_path / 'east') == ['20170929000000.tsv.gz']


def test_lock_option_moves_the_lock_file(tmp_path, memcached_set):
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 10))
    lock_path = tmp_path / 'elsewhere.lock'
    status, _ = run(tmp_path, memcached_set, '--lock', str(lock_path))
    assert status == 0
    assert lock_path.read_text() != ''
    assert not (tmp_path / '.gmemcload.lock').exists()


# -- signals --

@pytest.mark.parametrize('signum, code', [(signal.SIGTERM, 143),
                                          (signal.SIGINT, 130)])
def test_a_signal_mid_file_keeps_it_and_earlier_renames(
        tmp_path, memcached_set, signum, code):
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 500))
    write_gz(tmp_path / '20170929000100.tsv.gz',
             lines_for('gaid', 20000) + lines_for('idfa', 500, start=500))
    write_gz(tmp_path / '20170929000200.tsv.gz', lines_for('idfa', 500))
    memcached_set['gaid'].pause()  # the second file cannot finish
    loader = start_loader(tmp_path, memcached_set)
    try:
        wait_for_renamed(tmp_path, '20170929000000.tsv.gz')
        assert stop_within(loader, signum, 5) == code
    finally:
        loader.kill()
    assert listing(tmp_path) == ['.20170929000000.tsv.gz',
                                 '20170929000100.tsv.gz',
                                 '20170929000200.tsv.gz']
    text = (tmp_path / 'run.log').read_text()
    assert 'stopped by a signal' in text


@pytest.mark.parametrize('extra', [[], ['--dry']])
def test_a_signal_is_heard_while_a_file_yields_no_records(
        tmp_path, memcached_set, extra):
    with gzip.open(str(tmp_path / '20170929000000.tsv.gz'), 'wb') as out:
        out.write(b'zzzz\tx\t1\t1\t1\n' * 3000000)
    loader = start_loader(tmp_path, memcached_set, *extra)
    try:
        wait_for_log(tmp_path, 'Processing')
        assert stop_within(loader, signal.SIGTERM, 3) == 143
    finally:
        loader.kill()
    assert listing(tmp_path) == ['20170929000000.tsv.gz']


@pytest.mark.parametrize('signum, code', [(signal.SIGTERM, 143),
                                          (signal.SIGINT, 130)])
def test_a_stop_abandons_io_at_once_whatever_the_timeout(
        tmp_path, memcached_set, signum, code):
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('gaid', 5000))
    memcached_set['gaid'].pause()
    loader = start_loader(tmp_path, memcached_set, '--timeout', '600')
    try:
        wait_for_log(tmp_path, 'Processing')
        wait_for(lambda: memcached_set['gaid'].connections() > 0)
        assert stop_within(loader, signum, 2.5) == code
    finally:
        loader.kill()
        memcached_set['gaid'].resume()
    assert listing(tmp_path) == ['20170929000000.tsv.gz']
    text = (tmp_path / 'run.log').read_text()
    assert 'not acknowledged by memcached (stopped by a signal)' in text
    # Only the stalled server's connection was abandoned in flight.
    unanswered = [line for line in text.splitlines()
                  if 'still unanswered' in line]
    assert unanswered and all(memcached_set['gaid'].address in line
                              for line in unanswered)


# -- memory --

def test_peak_memory_stays_bounded_on_a_large_file(tmp_path, memcached_set):
    generate.generate(str(tmp_path), files=1, lines=300000, seed=5)
    loader = start_loader(tmp_path, memcached_set)
    status, _, peak_mb = wait_with_usage(loader, 60)
    assert status == 0, (tmp_path / 'run.log').read_text()
    # The file is ~110 MB of text; holding it would be several times this.
    assert peak_mb < 100, peak_mb


def test_peak_memory_does_not_grow_with_the_number_of_files(
        tmp_path, memcached_set):
    for minute in range(5000):
        write_gz(tmp_path / ('2017%010d.tsv.gz' % minute),
                 ['idfa\tdev%d\t1\t2\t3' % minute])
    loader = start_loader(tmp_path, memcached_set)
    status, _, peak_mb = wait_with_usage(loader, 120)
    text = (tmp_path / 'run.log').read_text()
    assert status == 0, text[-2000:]
    assert peak_mb < 70, peak_mb
    assert '(5000 more files not listed)' in text
    assert 'total: 5000 files, 5000 lines, 5000 stored, 0 errors;' \
        ' 5000 renamed' in text


# -- memcached restarts --

def test_a_restart_after_a_files_last_write_there_keeps_the_file(
        tmp_path, fake_memcached, memcached_set):
    daemons = dict(memcached_set, idfa=fake_memcached)
    write_gz(tmp_path / '20170929000000.tsv.gz',
             lines_for('idfa', 300) + lines_for('gaid', 30000))
    write_gz(tmp_path / '20170929000100.tsv.gz', lines_for('idfa', 10, 'n'))
    gaid = memcached_set['gaid']
    gaid.pause()  # the first file's rename waits for gaid
    try:
        loader = gevent.spawn(run, tmp_path, daemons, '--uploaders', '1',
                              '--batch-size', '100', '--timeout', '0.5',
                              '--retries', '10')
        wait_for(lambda: fake_memcached.sets >= 300)
        fake_memcached.restart()  # idfa's 300 records are gone
    finally:
        gaid.resume()
    status, text = loader.get(timeout=60)
    assert status == 1
    assert 'kept: memcached %s restarted after this file was written' \
        % fake_memcached.address in text
    assert listing(tmp_path) == ['20170929000000.tsv.gz',
                                 '20170929000100.tsv.gz']
    status, text = run(tmp_path, daemons)
    assert status == 0, text
    assert_all_in_fake(fake_memcached, lines_for('idfa', 300))


def test_a_real_restart_mid_load_keeps_the_file_and_a_rerun_loads_it(
        tmp_path, memcached_set):
    paths = generate.generate(str(tmp_path), files=2, lines=30000, seed=9)
    expected = expected_state(paths)
    gaid = memcached_set['gaid']
    gaid.pause()  # no file is renamed before the restart
    try:
        loader = gevent.spawn(run, tmp_path, memcached_set, '--batch-size',
                              '50', '--timeout', '0.5', '--retries', '10')
        wait_for(lambda: int(memcached_set['adid'].client().get_stats()[0][1]
                             ['cmd_set']) > 2000)
        memcached_set['adid'].restart()
    finally:
        gaid.resume()
    status, text = loader.get(timeout=60)
    assert status == 1, text
    # noticed by a lane's new connection, or by the check before a rename
    assert 'kept: memcached %s restarted' % memcached_set['adid'].address \
        in text
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert stored_values(memcached_set, expected) == expected
