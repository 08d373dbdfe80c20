"""--workers N: one reader, N encoder processes, one writer."""
import os
import signal

import gevent
import pytest

import generate
import gmemcload
from conftest import (alive, children_of, encoders_of, expected_state,
                      expected_value, lines_for, listing, run, start_loader,
                      stop_within, stored_values, summary_row, wait_for,
                      write_gz)


@pytest.mark.parametrize('workers', ['2', '3'])
def test_newest_wins_and_renames_keep_order_with_encoders(
        tmp_path, memcached_set, monkeypatch, workers):
    # Small chunks: many in flight, every encoder busy, results in order.
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 4096)
    paths = generate.generate(str(tmp_path), files=4, lines=4000,
                              repeat=0.6, seed=11)
    expected = expected_state(paths)
    status, text = run(tmp_path, memcached_set, '--workers', workers,
                       '--batch-size', '64')
    assert status == 0, text
    assert stored_values(memcached_set, expected) == expected
    assert listing(tmp_path) == ['.' + os.path.basename(p) for p in paths]
    assert text.count('Successful load') == 4
    assert 'in %s encoder processes' % workers in text
    for name in map(os.path.basename, paths):
        assert '%s %10d %10d %8d' % (name.ljust(28), 4000, 4000, 0) in text


def test_lines_split_across_chunks_load_as_with_one_process(
        tmp_path, memcached_set, monkeypatch):
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 1000)
    lines = lines_for('idfa', 400) + [
        # longer than a chunk, and one crossing several
        'gaid\tlong%d\t1\t2\t%s' % (i, ','.join(str(n) for n in
                                                range(i * 300)))
        for i in range(1, 5)] + lines_for('idfa', 400, 'later')
    path = write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    expected = expected_state([path])
    for workers, encoding in (('1', 'no encoder process'),
                              ('2', 'in 2 encoder processes')):
        for daemon in memcached_set.values():
            daemon.client().flush_all()
        status, text = run(tmp_path, memcached_set, '--workers', workers)
        assert status == 0, text
        assert encoding in text
        assert stored_values(memcached_set, expected) == expected
        os.rename(tmp_path / '.20170929000000.tsv.gz', path)  # once more


def test_errors_are_counted_over_chunks(tmp_path, memcached_set,
                                        monkeypatch):
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 512)
    lines = lines_for('idfa', 300) + ['idfa\tbad%d\tx\t1\t1' % i
                                      for i in range(6)]
    write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    status, text = run(tmp_path, memcached_set, '--workers', '3')
    assert status == 1  # 6 / 306 > 0.01
    assert 'High error rate (0.01961 > 0.01). Failed load' in text
    assert '%s %10d %10d %8d' % ('20170929000000.tsv.gz'.ljust(28),
                                 306, 300, 6) in text
    assert text.count('malformed line: lat or lon is not a number') == 5
    assert '1 more bad lines not shown' in text
    assert listing(tmp_path) == ['20170929000000.tsv.gz']


def test_a_killed_encoders_chunks_are_encoded_again_and_nothing_is_lost(
        tmp_path, memcached_set, monkeypatch):
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 2048)
    monkeypatch.setenv('GMEMCLOAD_TEST_CRASH_ON', 'idfa\tcrash')
    monkeypatch.setenv('GMEMCLOAD_TEST_CRASH_ONCE', str(tmp_path / 'once'))
    # The second file's keys overlap the first's, with other values: a
    # chunk re-sent out of order would leave older values.
    paths = [write_gz(tmp_path / '20170929000000.tsv.gz',
                      lines_for('idfa', 500) + ['idfa\tcrash\t1\t1\t1']
                      + lines_for('gaid', 500)),
             write_gz(tmp_path / '20170929000100.tsv.gz',
                      lines_for('idfa', 500, start=250, version=7))]
    expected = expected_state(paths)
    status, text = run(tmp_path, memcached_set, '--workers', '2')
    assert status == 0, text
    assert len(list(tmp_path.glob('once.*'))) == 1  # one crash
    assert 'exited with status -9; its' in text
    assert 'go to a fresh encoder' in text
    assert stored_values(memcached_set, expected) == expected
    assert listing(tmp_path) == ['.' + os.path.basename(p) for p in paths]
    assert summary_row(text, '20170929000000.tsv.gz') == (1001, 1001, 0)
    assert summary_row(text, '20170929000100.tsv.gz') == (500, 500, 0)


def test_a_crash_resends_every_chunk_in_flight_in_order_blaming_one(
        tmp_path, monkeypatch):
    # One encoder, two chunks in flight, each crashing it once.  The first
    # crash comes on the first chunk: both go again, in order, and only
    # the first is blamed; the second crash comes on the second chunk,
    # blamed for the first time.  Each gets its own result.
    monkeypatch.setenv('GMEMCLOAD_TEST_CRASH_ON', 'idfa\tcrash')
    monkeypatch.setenv('GMEMCLOAD_TEST_CRASH_ONCE', str(tmp_path / 'once'))
    routes, _ = gmemcload.build_routes(
        {t: ['127.0.0.1:1'] for t in gmemcload.DEVICE_TYPES}, 2)
    chunks = [('\n'.join(['idfa\tcrash\t%d\t1\t1' % n]
                         + lines_for('idfa', 50, version=n)
                         + ['gaid\tbad%d\tx\t1\t1' % i
                            for i in range(n)]) + '\n').encode()
              for n in (1, 2)]
    encoders = gmemcload.EncoderProcesses(1, routes)
    encoders.start()
    try:
        results = [encoders.submit([chunk]) for chunk in chunks]
        got = [result.get(timeout=30) for result in results]
    finally:
        encoders.close()
    assert got == [gmemcload.encode_chunk(chunk, routes) for chunk in chunks]
    assert [result[:2] for result in got] == [(52, 1), (53, 2)]
    assert len(list(tmp_path.glob('once.*'))) == 2  # each crashed once


def count_spawns(monkeypatch):
    """The encoder processes started from now on, as a growing list."""
    real_popen = gmemcload.subprocess.Popen
    spawned = []

    def popen(*args, **kwargs):
        spawned.append(args)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(gmemcload.subprocess, 'Popen', popen)
    return spawned


def test_a_chunk_that_kills_two_encoders_fails_its_file(
        tmp_path, memcached_set, monkeypatch):
    monkeypatch.setenv('GMEMCLOAD_TEST_CRASH_ON', 'idfa\tcrash')
    spawned = count_spawns(monkeypatch)
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 10))
    write_gz(tmp_path / '20170929000100.tsv.gz',
             ['idfa\tcrash\t1\t1\t1'] + lines_for('gaid', 10))
    write_gz(tmp_path / '20170929000200.tsv.gz', lines_for('adid', 10))
    status, text = run(tmp_path, memcached_set, '--workers', '2')
    assert status == 1, text
    assert 'kept: could not be encoded: a chunk of it killed two encoders' \
        in text
    assert listing(tmp_path) == ['.20170929000000.tsv.gz',
                                 '20170929000100.tsv.gz',
                                 '20170929000200.tsv.gz']
    # Two encoders, and one replacement for each of the two deaths.
    assert len(spawned) == 2 + 2
    assert text.count('exited with status -9') == 2


def test_encoders_that_die_now_and_then_are_replaced_without_end(
        tmp_path, monkeypatch):
    # Every chunk crashes the encoder once, then encodes: six deaths, each
    # followed by a result, are not "dying in a row", and nothing fails.
    monkeypatch.setenv('GMEMCLOAD_TEST_CRASH_ON', 'idfa\t')
    monkeypatch.setenv('GMEMCLOAD_TEST_CRASH_ONCE', str(tmp_path / 'once'))
    spawned = count_spawns(monkeypatch)
    routes, _ = gmemcload.build_routes(
        {t: ['127.0.0.1:1'] for t in gmemcload.DEVICE_TYPES}, 1)
    chunks = [('\n'.join(lines_for('idfa', 20, version=n)) + '\n').encode()
              for n in range(6)]
    encoders = gmemcload.EncoderProcesses(1, routes)
    encoders.start()
    try:
        got = [encoders.submit([chunk]).get(timeout=30) for chunk in chunks]
    finally:
        encoders.close()
    assert got == [gmemcload.encode_chunk(chunk, routes) for chunk in chunks]
    assert len(list(tmp_path.glob('once.*'))) == 6
    assert len(spawned) == 1 + 6


def test_a_stop_while_the_encoders_start_starts_no_more(monkeypatch):
    # --workers 64 takes seconds to start: a stop (close) after the third
    # encoder is the last one started, and every one started is reaped.
    spawned = count_spawns(monkeypatch)
    counting_popen = gmemcload.subprocess.Popen
    routes, _ = gmemcload.build_routes(
        {t: ['127.0.0.1:1'] for t in gmemcload.DEVICE_TYPES}, 1)
    encoders = gmemcload.EncoderProcesses(64, routes)
    started = []

    def popen(*args, **kwargs):
        process = counting_popen(*args, **kwargs)
        started.append(process)
        if len(spawned) == 3:
            encoders.close()
        return process

    monkeypatch.setattr(gmemcload.subprocess, 'Popen', popen)
    encoders.start()
    encoders.close()
    assert len(spawned) == 3
    assert all(process.poll() is not None for process in started)


@pytest.mark.parametrize('signum, code', [(signal.SIGTERM, 143),
                                          (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_and_every_encoder(
        tmp_path, memcached_set, signum, code):
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 300))
    write_gz(tmp_path / '20170929000100.tsv.gz', lines_for('gaid', 3000))
    memcached_set['gaid'].pause()
    loader = start_loader(tmp_path, memcached_set, '--workers', '3')
    try:
        wait_for(lambda: (tmp_path / '.20170929000000.tsv.gz').exists())
        encoders = children_of(loader.pid)
        assert len(encoders) == 3
        assert stop_within(loader, signum, 2.5) == code
    finally:
        loader.kill()
        memcached_set['gaid'].resume()
    assert not [pid for pid in encoders if alive(pid)]
    assert listing(tmp_path) == ['.20170929000000.tsv.gz',
                                 '20170929000100.tsv.gz']


def test_dry_run_with_encoders_logs_each_record_once(tmp_path):
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


def test_workers_auto_is_the_cpus_this_process_may_use():
    args = gmemcload.build_parser().parse_args(['--workers', 'auto'])
    assert args.workers == len(os.sched_getaffinity(0))
    assert gmemcload.build_parser().parse_args([]).workers == args.workers
    with pytest.raises(SystemExit):
        gmemcload.build_parser().parse_args(['--workers', '0'])


def test_encoders_that_keep_dying_fail_their_files_and_the_run_ends(
        tmp_path, memcached_set, monkeypatch):
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 2048)
    monkeypatch.setenv('GMEMCLOAD_TEST_CRASH_ON', '\t')  # every chunk
    spawned = count_spawns(monkeypatch)
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 2000))
    status, text = run(tmp_path, memcached_set, '--workers', '2')
    assert status == 1, text
    assert 'kept: could not be encoded: ' in text
    # Each of the 2 places starts an encoder and 3 replacements; the 4th
    # death in a row without a result ends it: no endless restarts.
    assert len(spawned) == 2 * 4
    assert text.count('encoders keep dying') == 2
    assert listing(tmp_path) == ['20170929000000.tsv.gz']


def test_an_encoder_that_cannot_be_started_again_fails_its_chunks(
        tmp_path, memcached_set, monkeypatch):
    monkeypatch.setenv('GMEMCLOAD_TEST_CRASH_ON', 'idfa\tcrash')
    real_popen = gmemcload.subprocess.Popen
    started = []

    def popen(*args, **kwargs):
        if len(started) == 2:  # the first two start; no replacement does
            raise OSError(11, 'Resource temporarily unavailable')
        started.append(args)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(gmemcload.subprocess, 'Popen', popen)
    write_gz(tmp_path / '20170929000000.tsv.gz',
             ['idfa\tcrash\t1\t1\t1'] + lines_for('gaid', 10))
    status, text = run(tmp_path, memcached_set, '--workers', '2')
    assert status == 1, text
    assert 'kept: could not be encoded: no encoder could be started:' \
        ' [Errno 11] Resource temporarily unavailable' in text


def test_an_encoder_that_stops_answering_is_replaced(
        tmp_path, memcached_set, monkeypatch):
    monkeypatch.setattr(gmemcload, 'ENCODER_TIMEOUT', 1.0)
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 8192)
    paths = generate.generate(str(tmp_path), files=2, lines=20000,
                              repeat=0.5, seed=13)
    expected = expected_state(paths)
    loader = gevent.spawn(run, tmp_path, memcached_set, '--workers', '2')
    wait_for(lambda: len(encoders_of(os.getpid())) == 2)
    stopped = encoders_of(os.getpid())[0]
    os.kill(stopped, signal.SIGSTOP)  # alive, but never answers
    status, text = loader.get(timeout=60)
    assert status == 0, text
    assert 'gave no result for 1s: it is killed and replaced' in text
    assert stored_values(memcached_set, expected) == expected
    assert not alive(stopped)


def waiting_for_input(pid):
    """Whether ``pid`` sleeps reading a pipe: an encoder that has started
    and has no chunk."""
    with open('/proc/%d/wchan' % pid) as wchan:
        return 'pipe_read' in wchan.read()


@pytest.mark.parametrize('stopped', [False, True])
def test_encoders_die_with_a_killed_parent(tmp_path, memcached_set,
                                           stopped):
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('gaid', 3000))
    memcached_set['gaid'].pause()
    loader = start_loader(tmp_path, memcached_set, '--workers', '2')
    try:
        wait_for(lambda: len(encoders_of(loader.pid)) == 2)
        encoders = encoders_of(loader.pid)
        wait_for(lambda: all(waiting_for_input(pid) for pid in encoders))
        if stopped:  # it will never read the end of its input
            os.kill(encoders[0], signal.SIGSTOP)
        loader.kill()
        loader.wait(timeout=5)
        wait_for(lambda: not [pid for pid in encoders if alive(pid)], 5)
    finally:
        loader.kill()
        memcached_set['gaid'].resume()
    assert listing(tmp_path) == ['20170929000000.tsv.gz']
