"""The rename promise: a file renamed to .<name> has every record in
memcached, whatever happened between its read and its rename; no file is
ever destroyed."""
import contextlib
import gzip
import io
import os
import random
import re
import signal
import socket

import gevent
import pytest
from isal import igzip

import gmemcload
from conftest import (assert_all_in_fake, expected_state, expected_value,
                      files, lines_for, listing, metrics, run, same_server,
                      start_loader, stop_within, stored_values, summary_row,
                      value, wait_for, wait_for_log, write_gz)
from daemons import free_port

FIRST, SECOND, THIRD = ('20170929000000.tsv.gz', '20170929000100.tsv.gz',
                        '20170929000200.tsv.gz')


def all_stored(daemon, lines):
    keys = [expected_value(line)[0] for line in lines]
    return len(daemon.get_many(keys)) == len(keys)


@contextlib.contextmanager
def pausing(daemon):
    """``daemon`` paused (SIGSTOP) inside, resumed on leaving, whatever
    happened."""
    daemon.pause()
    try:
        yield
    finally:
        daemon.resume()


@contextlib.contextmanager
def loading_while_paused(tmp_path, daemons, paused, *extra):
    """Start the loader on tmp_path, with --timeout 0.5, while ``paused``
    (a daemon) is paused, so that the renames wait; yield the loader (a
    greenlet whose value is run's)."""
    with pausing(paused):
        yield gevent.spawn(run, tmp_path, daemons, '--timeout', '0.5',
                           *extra)


# -- the first file not loaded --

FAULTS = {
    # fault: (what the summary says of the second file, its metrics reason)
    'unreadable': ('kept: unreadable: ', 'unreadable'),
    'error rate': ('kept: error rate 0.3333 above 0.01', 'error_rate'),
    'unacknowledged': ('kept: 50 records not acknowledged by memcached',
                       'unacknowledged'),
    'restart': ('kept: memcached %(adid)s restarted after this file was'
                ' written', 'server_restarted'),
    'changed': ('kept: changed while loading', 'changed'),
}


@pytest.mark.parametrize('fault', sorted(FAULTS))
def test_the_first_file_not_loaded_for_any_reason_keeps_every_later_one(
        tmp_path, memcached_set, fake_memcached, fault):
    # FIRST loads; SECOND fails for ``fault``; THIRD loads (its values are
    # stored) but must stay, so that the next run retries both in order.
    gaid = memcached_set['gaid']
    nowhere = type('Nowhere', (), {'address': '127.0.0.1:%d' % free_port()})
    daemons = dict(memcached_set, adid=fake_memcached, dvid=nowhere)
    write_gz(tmp_path / FIRST, lines_for('idfa', 20))
    second = lines_for('gaid', 50) + lines_for('adid', 50)
    if fault == 'error rate':
        second += ['gaid\tbad%d\tx\t1\t1' % i for i in range(50)]
    elif fault == 'unacknowledged':
        second += lines_for('dvid', 50)
    path = write_gz(tmp_path / SECOND, second)
    if fault == 'unreadable':
        (tmp_path / SECOND).write_bytes(b'not gzip\n')
    third = lines_for('idfa', 20, version=3)
    write_gz(tmp_path / THIRD, third)
    metrics_file = str(tmp_path / 'metrics.prom')
    with loading_while_paused(tmp_path, daemons, gaid, '--retries', '4',
                              '--metrics-file', metrics_file) as loader:
        # THIRD is read, and its writes acknowledged, while SECOND waits
        # for gaid.
        wait_for(lambda: all_stored(memcached_set['idfa'], third))
        if fault == 'restart':
            wait_for(lambda: fake_memcached.sets >= 50)
            fake_memcached.restart()
        elif fault == 'changed':
            os.replace(write_gz(tmp_path / 'incoming', second), path)
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert listing(tmp_path) == ['.' + FIRST, SECOND, THIRD]
    summary = text.split('Summary:')[1]
    words, reason = FAULTS[fault]
    assert words % {'adid': fake_memcached.address} in summary
    assert 'I %s ' % THIRD in summary
    assert '%s: kept: an earlier file was not loaded' % THIRD in text
    found = metrics(metrics_file)
    assert files(found, 'kept') == 2
    assert files(found, 'kept', reason) == 1
    assert files(found, 'kept', 'after_a_file_not_loaded') == 1
    assert files(found, 'renamed') == 1
    want = dict(map(expected_value, third))
    assert stored_values(memcached_set, want) == want


def test_a_file_with_any_record_unacknowledged_is_kept_below_the_limit(
        tmp_path, memcached_set):
    # 3 records of 1003 never acknowledged: an error rate of 0.003, within
    # --max-error-rate, and still not every record is in memcached.
    nowhere = type('Nowhere', (), {'address': '127.0.0.1:%d' % free_port()})
    write_gz(tmp_path / FIRST, lines_for('idfa', 1000)
             + lines_for('dvid', 3))
    status, text = run(tmp_path, dict(memcached_set, dvid=nowhere),
                       '--retries', '0')
    assert status == 1, text
    assert listing(tmp_path) == [FIRST]
    assert summary_row(text, FIRST) == (1003, 1000, 3)
    assert '%s: Failed load: 3 records not acknowledged by memcached' \
        % FIRST in text


# -- the servers a file wrote to, at rename time --

@pytest.mark.parametrize('workers', ['1', '2'])
def test_a_restart_between_a_files_writes_and_its_rename_keeps_it(
        tmp_path, memcached_set, workers):
    gaid, idfa = memcached_set['gaid'], memcached_set['idfa']
    first = lines_for('gaid', 200) + lines_for('idfa', 200)
    second = lines_for('idfa', 200, 'b')
    paths = [write_gz(tmp_path / FIRST, first),
             write_gz(tmp_path / SECOND, second)]
    # The first file, and so both renames, wait for gaid.
    with loading_while_paused(tmp_path, memcached_set, gaid, '--retries',
                              '10', '--workers', workers) as loader:
        # Both files' idfa writes are acknowledged; then idfa restarts
        # empty, and nothing writes to it any more in this run.
        wait_for(lambda: all_stored(idfa, first[200:] + second))
        idfa.restart()
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert 'kept: memcached %s restarted after this file was written' \
        % idfa.address in text
    assert listing(tmp_path) == [FIRST, SECOND]
    expected = expected_state(paths)
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert stored_values(memcached_set, expected) == expected


def after_first_rename(monkeypatch, action):
    """Run ``action()`` once, just after the run's first rename."""
    real_rename = gmemcload.rename_noreplace
    done = []

    def rename(source, target):
        real_rename(source, target)
        if not done:
            done.append(source)
            action()

    monkeypatch.setattr(gmemcload, 'rename_noreplace', rename)
    return done


@pytest.mark.parametrize('position', [0, -1])
def test_a_restart_between_two_renames_keeps_the_second_file(
        tmp_path, memcached_set, monkeypatch, position):
    # The second file wrote to two servers; the one restarted is the first
    # or the last one asked (by address), so the order of the checks cannot
    # decide the outcome.
    gaid = memcached_set['gaid']
    second = lines_for('idfa', 100, 'b') + lines_for('adid', 100, 'b')
    write_gz(tmp_path / FIRST, lines_for('gaid', 100))
    write_gz(tmp_path / SECOND, second)
    asked = sorted([memcached_set['idfa'], memcached_set['adid']],
                   key=lambda daemon: daemon.address)
    restarted = asked[position]
    after_first_rename(monkeypatch, restarted.restart)
    with loading_while_paused(tmp_path, memcached_set, gaid,
                              '--retries', '10') as loader:
        # Every write of the second file is acknowledged before the first
        # file, waiting for gaid, is renamed.
        wait_for(lambda: all_stored(memcached_set['idfa'], second[:100])
                 and all_stored(memcached_set['adid'], second[100:]))
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert listing(tmp_path) == ['.' + FIRST, SECOND]
    assert '%s: Failed load: memcached %s restarted after this file was' \
        ' written' % (SECOND, restarted.address) in text


def test_a_restart_that_keeps_the_pid_but_not_the_start_time_is_noticed(
        tmp_path, fake_memcached, memcached_set, monkeypatch):
    # A container's pid 1, restarted a second or more later: the same pid,
    # a connection count that goes on growing; only the start time tells.
    gaid = memcached_set['gaid']
    daemons = dict(memcached_set, idfa=fake_memcached)
    write_gz(tmp_path / FIRST, lines_for('gaid', 100))
    write_gz(tmp_path / SECOND, lines_for('idfa', 100))
    after_first_rename(monkeypatch,
                       lambda: fake_memcached.restart(same_pid=True))
    with loading_while_paused(tmp_path, daemons, gaid, '--retries',
                              '10') as loader:
        wait_for(lambda: fake_memcached.sets >= 100)
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert '%s: Failed load: memcached %s restarted after this file was' \
        ' written' % (SECOND, fake_memcached.address) in text
    assert listing(tmp_path) == ['.' + FIRST, SECOND]


@pytest.mark.parametrize('position', [0, -1])
def test_a_restart_after_the_check_but_before_the_rename_keeps_the_file(
        tmp_path, memcached_set, monkeypatch, position):
    # The check's answers are a moment old when the file is renamed; a
    # restart in that moment is seen by the check after the rename, which
    # puts the file back.
    idfa, adid = memcached_set['idfa'], memcached_set['adid']
    restarted = sorted([idfa, adid], key=lambda d: d.address)[position]
    lines = lines_for('idfa', 50) + lines_for('adid', 50)
    path = write_gz(tmp_path / FIRST, lines)
    real_rename = gmemcload.rename_noreplace

    def restart_then_rename(source, target):
        if source == path:
            restarted.restart()
        real_rename(source, target)

    monkeypatch.setattr(gmemcload, 'rename_noreplace', restart_then_rename)
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    assert listing(tmp_path) == [FIRST]
    assert '%s: Failed load: memcached %s restarted after this file was' \
        ' written' % (FIRST, restarted.address) in text
    monkeypatch.setattr(gmemcload, 'rename_noreplace', real_rename)
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    want = dict(map(expected_value, lines))
    assert stored_values(memcached_set, want) == want


def idfa_on_the_fake(tmp_path, memcached_set, fake_memcached):
    """The daemons with idfa on the fake, and FIRST written: 100 gaid
    lines, then 100 idfa lines."""
    write_gz(tmp_path / FIRST, lines_for('gaid', 100)
             + lines_for('idfa', 100))
    return dict(memcached_set, idfa=fake_memcached)


def test_a_restart_that_keeps_pid_and_start_time_is_noticed(
        tmp_path, fake_memcached, memcached_set):
    # A memcached in a container is always pid 1; restarted within the
    # second it started in, only its connection count tells.
    gaid = memcached_set['gaid']
    daemons = idfa_on_the_fake(tmp_path, memcached_set, fake_memcached)
    fake_memcached.connections = 50  # what the first instance has seen
    with loading_while_paused(tmp_path, daemons, gaid, '--retries',
                              '10') as loader:
        wait_for(lambda: fake_memcached.sets >= 100)
        fake_memcached.restart(same_identity=True)
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert 'kept: memcached %s restarted after this file was written' \
        % fake_memcached.address in text
    assert listing(tmp_path) == [FIRST]


def test_the_count_compared_is_the_highest_the_files_connections_saw(
        tmp_path, fake_memcached, memcached_set, monkeypatch):
    # idfa's writes are acknowledged on a connection made at 150 and, after
    # a reset, on one made at 250.  It restarts keeping pid and start
    # time, and is busy: the check's connection counts 160, above the
    # first connection's count and below the second's.  Only the highest
    # count tells the restart.
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 512)
    gaid = memcached_set['gaid']
    daemons = dict(memcached_set, idfa=fake_memcached)
    fake_memcached.connections = 50
    fake_memcached.connection_step = 100
    fake_memcached.reset_after = 25  # stats, a batch, part of the next
    fake_memcached.resets = 1
    lines = lines_for('idfa', 100) + lines_for('gaid', 100)
    write_gz(tmp_path / FIRST, lines)
    with loading_while_paused(tmp_path, daemons, gaid, '--uploaders', '1',
                              '--batch-size', '1',
                              '--retries', '10') as loader:
        wait_for(lambda: len(fake_memcached.data) == 100)
        fake_memcached.restart(same_identity=True)
        fake_memcached.connections = 60
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert 'retry 1/10' in text  # the reset, and a second connection
    assert 'wrote to pid %d started' % fake_memcached.pid in text
    assert '%s: Failed load: memcached %s restarted after this file was' \
        ' written' % (FIRST, fake_memcached.address) in text
    assert '160 connections, wrote to' in text
    assert '250 connections)' in text
    assert listing(tmp_path) == [FIRST]


# -- items memcached dropped --

@pytest.mark.parametrize('accept', [False, True])
def test_evictions_while_a_file_loads_keep_it_unless_accepted(
        tmp_path, memcached_set, memcached_factory, accept):
    # 20,000 records of about 150 bytes into a memcached of 1 MB: it
    # evicts, and some of the file's records are gone.
    small = memcached_factory(memory_mb=1, max_item='512k')
    daemons = dict(memcached_set, idfa=small)
    lines = ['idfa\t%06d\t1\t2\t%s' % (i, ','.join(
        str(app) for app in range(i % 7, 40))) for i in range(20000)]
    write_gz(tmp_path / FIRST, lines)
    metrics_file = str(tmp_path / 'metrics.prom')
    extra = ['--accept-evictions'] if accept else []
    status, text = run(tmp_path, daemons, '--metrics-file', metrics_file,
                       *extra)
    evicted = int(small.client().get_stats()[0][1]['evictions'])
    assert evicted > 1000
    words = 'memcached %s dropped items while %s (%d items evicted, 0' \
        ' flushes, 0 items lost in slab moves)'
    found = metrics(metrics_file)
    assert value(found, 'last_run_server_evictions',
                 server=small.address) == evicted
    assert value(found, 'server_evictions_total',
                 server=small.address) == evicted
    if accept:
        assert status == 0, text
        assert listing(tmp_path) == ['.' + FIRST]
        assert '%s: %s; renamed on --accept-evictions' % (
            FIRST, words % (small.address, 'it was written and checked',
                            evicted)) in text
    else:
        assert status == 1, text
        assert listing(tmp_path) == [FIRST]
        assert '%s: Failed load: %s: some of its records may be gone' % (
            FIRST, words % (small.address, 'this file was written and'
                            ' checked', evicted)) in text
        assert files(found, 'kept', 'evicted') == 1


def test_a_flush_between_a_files_writes_and_its_rename_keeps_it(
        tmp_path, fake_memcached, memcached_set):
    gaid = memcached_set['gaid']
    daemons = idfa_on_the_fake(tmp_path, memcached_set, fake_memcached)
    with loading_while_paused(tmp_path, daemons, gaid, '--retries',
                              '10') as loader:
        wait_for(lambda: len(fake_memcached.data) == 100)
        fake_memcached.data.clear()  # flush_all, from another client
        fake_memcached.flushes += 1
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert '%s: Failed load: memcached %s dropped items while this file was' \
        ' written and checked (0 items evicted, 1 flushes, 0 items lost in' \
        ' slab moves)' % (FIRST, fake_memcached.address) in text
    assert listing(tmp_path) == [FIRST]


def slab_mover(daemon):
    """A greenlet that asks ``daemon`` to move a page of every slab class
    to the global pool every 20 ms, as memcached's automover or an
    operator's rebalancing does, until killed."""
    def move():
        while True:
            with socket.create_connection(('127.0.0.1', daemon.port)) as sock:
                sock.sendall(b''.join(b'slabs reassign %d 0\r\n' % number
                                      for number in range(1, 40)))
                gevent.sleep(0.02)
    return gevent.spawn(move)


def drops_in_slab_moves(daemon):
    stats = daemon.client().get_stats()[0][1]
    return int(stats['slab_reassign_evictions_nomem']) \
        + int(stats['slab_reassign_busy_deletes'])


def test_items_the_slab_mover_drops_keep_the_file(
        tmp_path, memcached_set):
    # memcached with room to spare, whose pages move while the file loads:
    # items with no free chunk to go to are lost, and counted only in
    # slab_reassign_evictions_nomem, not in evictions.
    idfa = memcached_set['idfa']
    lines = ['idfa\t%06d\t1\t2\t%s' % (i, ','.join(
        str(app) for app in range(i % 7, 30))) for i in range(200000)]
    write_gz(tmp_path / FIRST, lines)
    mover = slab_mover(idfa)
    try:
        status, text = run(tmp_path, memcached_set, '--batch-size', '500')
    finally:
        mover.kill()
    # A page move already asked for goes on in memcached's own thread.
    wait_for(lambda: idfa.client().get_stats()[0][1][
        'slab_reassign_running'] == '0')
    lost = drops_in_slab_moves(idfa)
    assert lost > 0, 'no item was lost in a slab move: the test proves' \
        ' nothing'
    stats = idfa.client().get_stats()[0][1]
    assert int(stats['evictions']) == 0
    keys = [expected_value(line)[0] for line in lines]
    assert len(idfa.get_many(keys)) == len(lines) - lost
    assert status == 1, text
    assert listing(tmp_path) == [FIRST]
    # Pages may still move after the check that kept the file.
    seen = re.search(r'%s: Failed load: memcached %s dropped items while'
                     r' this file was written and checked \(0 items'
                     r' evicted, 0 flushes, (\d+) items lost in slab'
                     r' moves\)' % (re.escape(FIRST), re.escape(idfa.address)),
                     text)
    assert seen and 0 < int(seen.group(1)) <= lost, text
    # Without the mover, the next run loads it whole.
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert listing(tmp_path) == ['.' + FIRST]
    assert len(idfa.get_many(keys)) == len(lines)


@pytest.mark.parametrize('accept', [False, True])
def test_evictions_are_counted_from_just_before_a_files_first_write(
        tmp_path, fake_memcached, memcached_set, monkeypatch, accept):
    # Ten batches of ten idfa records on one lane.  The server evicts 7
    # items just before the file's third write, and resets the lane's
    # connection in the second batch: the new connection, the later
    # batches and the check all find the 7 counted already.  They came
    # after the file's first write, so they may be its records: a count
    # taken from any later moment (its last write, the check) misses them.
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 220)  # ten lines a chunk
    lines = ['idfa\tk%03d\t1.5\t2.5\t1,2' % i for i in range(100)]
    assert {len(line) + 1 for line in lines} == {22}
    write_gz(tmp_path / FIRST, lines)
    fake = fake_memcached
    fake.before_set[3] = lambda: setattr(fake, 'evictions', 7)
    fake.reset_after = 16  # stats, ten sets, five of the next ten
    fake.resets = 1
    extra = ['--accept-evictions'] if accept else []
    status, text = run(tmp_path, dict(memcached_set, idfa=fake),
                       '--uploaders', '1', '--batch-size', '1', *extra)
    assert 'retry 1/5 of a batch of 10' in text  # the reset happened
    assert summary_row(text, FIRST) == (100, 100, 0)
    assert_all_in_fake(fake, lines)
    words = 'memcached %s dropped items while %s (7 items evicted, 0' \
        ' flushes, 0 items lost in slab moves)'
    if accept:
        assert status == 0, text
        assert listing(tmp_path) == ['.' + FIRST]
        assert '%s: %s; renamed on --accept-evictions' % (
            FIRST, words % (fake.address, 'it was written and checked')) \
            in text
    else:
        assert status == 1, text
        assert listing(tmp_path) == [FIRST]
        assert '%s: Failed load: %s' % (FIRST, words % (
            fake.address, 'this file was written and checked')) in text


RESTARTS = {
    # when idfa restarts: the words that keep the file
    'after its writes': 'restarted after this file was written',
    'between its writes': 'restarted while this file loaded',
    'between the check and the rename':
        'restarted after this file was written',
    'keeping pid and start time': 'restarted after this file was written',
}


@pytest.mark.parametrize('when', sorted(RESTARTS))
def test_accept_evictions_never_renames_a_file_whose_server_restarted(
        tmp_path, memcached_set, fake_memcached, monkeypatch, when):
    # --accept-evictions waives items evicted and flushes, never a
    # restart: a restarted memcached lost the file's records.  Kept, it
    # is loaded whole by the next run.
    daemons = dict(memcached_set)
    if when == 'keeping pid and start time':
        daemons['idfa'] = fake_memcached
        fake_memcached.connections = 50  # what the first instance counted
    gaid, idfa = daemons['gaid'], daemons['idfa']
    lines = lines_for('gaid', 100) + lines_for('idfa', 100)
    path = write_gz(tmp_path / FIRST, lines)
    keys = [expected_value(line)[0] for line in lines[100:]]
    extra = ['--accept-evictions', '--retries', '10']
    batches = []  # the size of each idfa batch sent
    if when == 'between its writes':
        monkeypatch.setattr(gmemcload, 'READ_CHUNK', 512)
        real_exchange = gmemcload.Connection.exchange

        def exchange(connection, payload, count):
            if connection.address == idfa.address:
                batches.append(count)
                if len(batches) == 2:  # the first batch is acknowledged
                    idfa.restart()
            return real_exchange(connection, payload, count)

        monkeypatch.setattr(gmemcload.Connection, 'exchange', exchange)
        status, text = run(tmp_path, daemons, '--uploaders', '1',
                           '--batch-size', '1', *extra)
    elif when == 'between the check and the rename':
        real_rename = gmemcload.rename_noreplace

        def restart_then_rename(source, target):
            if source == path:
                idfa.restart()
            real_rename(source, target)

        monkeypatch.setattr(gmemcload, 'rename_noreplace',
                            restart_then_rename)
        status, text = run(tmp_path, daemons, *extra)
    else:
        # The rename waits for gaid while idfa restarts.
        with loading_while_paused(tmp_path, daemons, gaid,
                                  *extra) as loader:
            if when == 'after its writes':
                wait_for(lambda: all_stored(idfa, lines[100:]))
                idfa.restart()
            else:
                wait_for(lambda: fake_memcached.sets >= 100)
                fake_memcached.restart(same_identity=True)
        status, text = loader.get(timeout=60)
    assert status == 1, text
    assert listing(tmp_path) == [FIRST]
    assert '%s: Failed load: memcached %s %s' % (
        FIRST, idfa.address, RESTARTS[when]) in text
    assert summary_row(text, FIRST) == (200, 200, 0)
    # What the restart cost: the first batch, or every idfa record.
    lost = batches[0] if batches else 100
    still = fake_memcached.data if idfa is fake_memcached else \
        idfa.get_many(keys)
    assert len([key for key in keys if key in still]) == 100 - lost
    monkeypatch.undo()
    status, text = run(tmp_path, daemons, '--accept-evictions')
    assert status == 0, text
    assert listing(tmp_path) == ['.' + FIRST]
    want = dict(map(expected_value, lines))
    if idfa is fake_memcached:
        assert_all_in_fake(fake_memcached, lines[100:])
        want = dict(map(expected_value, lines[:100]))
    assert stored_values(daemons, want) == want


def test_a_delayed_flush_whose_deadline_falls_before_the_rename_keeps_it(
        tmp_path, memcached_set):
    # flush_all 2, issued before the run: cmd_flush moves then, never
    # during the file's window, and at the deadline every record written
    # before it is gone.  The rename waits for gaid (paused) past it: the
    # records read back are missing, and the file is kept.
    idfa, gaid = memcached_set['idfa'], memcached_set['gaid']
    lines = lines_for('idfa', 2000) + lines_for('gaid', 10)
    write_gz(tmp_path / FIRST, lines)
    with socket.create_connection(('127.0.0.1', idfa.port)) as sock:
        sock.sendall(b'flush_all 2\r\n')
        assert sock.recv(100) == b'OK\r\n'
    with loading_while_paused(tmp_path, memcached_set, gaid,
                              '--retries', '10') as loader:
        wait_for(lambda: all_stored(idfa, lines[:2000]))
        gevent.sleep(3)  # past the deadline
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert '%s: Failed load: memcached %s does not hold this file\'s' \
        ' records as written: ' % (FIRST, idfa.address) in text
    assert 'records read back are missing' in text
    assert listing(tmp_path) == [FIRST]
    keys = [expected_value(line)[0] for line in lines[:2000]]
    assert idfa.get_many(keys) == {}
    status, text = run(tmp_path, memcached_set)  # the flush is past
    assert status == 0, text
    assert stored_values(memcached_set, [
        expected_value(line)[0] for line in lines]) == dict(
            map(expected_value, lines))


def test_a_record_changed_behind_the_loaders_back_keeps_the_file(
        tmp_path, memcached_set, monkeypatch):
    # A server that holds another value than the one acknowledged (a
    # client writing the same keys, a server that lies): no counter shows
    # it; the values read back do.
    idfa = memcached_set['idfa']
    lines = lines_for('idfa', 50)
    write_gz(tmp_path / FIRST, lines)
    problem = gmemcload.InstanceCheck._problem

    def overwritten_first(check, load, accept):
        for key, _ in map(expected_value, lines):
            idfa.client().set(key.decode(), b'other')
        return problem(check, load, accept)
    monkeypatch.setattr(gmemcload.InstanceCheck, '_problem',
                        overwritten_first)
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    assert 'records read back hold another value' in text
    assert listing(tmp_path) == [FIRST]


@pytest.mark.parametrize('uploaders', ['1', '2'])
def test_a_record_memcached_refused_is_never_read_back(
        tmp_path, memcached_set, uploaders):
    # The last record of each lane's only batch, and the first, are too
    # large for memcached (SERVER_ERROR): errors within --max-error-rate,
    # and never among the records read back.
    huge = 'idfa\thuge%d\t1\t2\t' + ','.join(['4000000000'] * 250000)
    lines = [huge % 0] + lines_for('idfa', 60) + [huge % 1, huge % 2]
    write_gz(tmp_path / FIRST, lines)
    status, text = run(tmp_path, memcached_set, '--max-error-rate', '0.1',
                       '--uploaders', uploaders)
    assert status == 0, text
    assert summary_row(text, FIRST) == (63, 60, 3)
    assert listing(tmp_path) == ['.' + FIRST]


def test_a_record_a_later_one_of_its_batch_rewrote_is_not_read_back(
        tmp_path, memcached_set, monkeypatch):
    # The file's last lines set one key again and again: only its last
    # value is in memcached, and only that one may be read back.  The
    # choice among the candidates is made to fall on the earliest.
    lines = lines_for('idfa', 20) + [
        'idfa\tsame\t1\t2\t%d' % version for version in range(8)]
    write_gz(tmp_path / FIRST, lines)
    monkeypatch.setattr(gmemcload.random, 'choice',
                        lambda choices: choices[-1])
    status, text = run(tmp_path, memcached_set, '--uploaders', '1')
    assert status == 0, text
    assert listing(tmp_path) == ['.' + FIRST]
    assert memcached_set['idfa'].get_many([b'idfa:same']) == {
        b'idfa:same': expected_value(lines[-1])[1]}


def test_a_files_first_record_rewritten_later_in_its_batch_is_no_fault(
        tmp_path, memcached_set):
    # The first record a lane carries is read back as the oldest; a later
    # record of the same batch (not among its last) gives its key a newer
    # value, the one memcached holds.
    lines = ['idfa\tsame\t1\t2\t1'] + lines_for('idfa', 10) + [
        'idfa\tsame\t1\t2\t2'] + lines_for('idfa', 20, 'later')
    write_gz(tmp_path / FIRST, lines)
    status, text = run(tmp_path, memcached_set, '--uploaders', '1')
    assert status == 0, text
    assert listing(tmp_path) == ['.' + FIRST]
    assert memcached_set['idfa'].get_many([b'idfa:same']) == {
        b'idfa:same': expected_value(lines[11])[1]}


def test_a_key_refused_later_is_not_read_back(tmp_path, memcached_set):
    # memcached unlinks the item a refused set would replace: the file's
    # first record is then gone, rightly, and must not be read back.  The
    # small lines make a batch of their own (--batch-size 100), chosen
    # from before the refusal comes.
    huge = 'idfa\tkey1\t1\t2\t' + ','.join(['4000000000'] * 300000)
    lines = ['idfa\tkey1\t1\t2\t1,2,3'] + lines_for('idfa', 300) + [huge]
    write_gz(tmp_path / FIRST, lines)
    for _ in range(2):
        (tmp_path / 'run.log').unlink(missing_ok=True)
        status, text = run(tmp_path, memcached_set, '--uploaders', '1',
                           '--batch-size', '100')
        assert status == 0, text
        assert listing(tmp_path) == ['.' + FIRST]
        os.rename(tmp_path / ('.' + FIRST), tmp_path / FIRST)
        os.unlink(tmp_path / gmemcload.JOURNAL_FILE_NAME)
    assert summary_row(text, FIRST) == (302, 301, 1)
    assert memcached_set['idfa'].get_many([b'idfa:key1']) == {}


@contextlib.contextmanager
def silent_at_rename(tmp_path, memcached_set, *extra):
    """Load a file whose idfa writes are acknowledged and whose rename then
    finds idfa paused; yield the loader.  idfa resumes on leaving."""
    gaid, idfa = memcached_set['gaid'], memcached_set['idfa']
    lines = lines_for('gaid', 100) + lines_for('idfa', 100)
    write_gz(tmp_path / FIRST, lines)
    with loading_while_paused(tmp_path, memcached_set, gaid,
                              *extra) as loader:
        wait_for(lambda: all_stored(idfa, lines[100:]))
        with pausing(idfa):
            gaid.resume()  # the writes are done: the rename can come
            yield loader


def test_a_short_stall_at_rename_time_costs_retries_not_the_run(
        tmp_path, memcached_set):
    with silent_at_rename(tmp_path, memcached_set) as loader:
        wait_for(lambda: 'cannot check it before a rename' in
                 (tmp_path / 'run.log').read_text())
    status, text = loader.get(timeout=60)
    assert status == 0, text
    assert listing(tmp_path) == ['.' + FIRST]


def test_a_server_that_cannot_be_asked_at_rename_time_keeps_the_file(
        tmp_path, memcached_set):
    with silent_at_rename(tmp_path, memcached_set, '--retries',
                          '2') as loader:
        status, text = loader.get(timeout=60)
    assert status == 1, text
    assert 'kept: cannot check memcached %s before the rename: timed out' \
        % memcached_set['idfa'].address in text
    assert listing(tmp_path) == [FIRST]


@pytest.mark.parametrize('signum, code', [(signal.SIGTERM, 143),
                                          (signal.SIGINT, 130)])
def test_a_stop_during_the_rename_time_check_ends_the_run_at_once(
        tmp_path, memcached_set, signum, code):
    # The check of FIRST waits on a paused idfa, 3 s a try; the stop must
    # end it at once, and rename nothing more.
    gaid, idfa = memcached_set['gaid'], memcached_set['idfa']
    lines = lines_for('gaid', 100) + lines_for('idfa', 100)
    write_gz(tmp_path / FIRST, lines)
    write_gz(tmp_path / SECOND, lines_for('adid', 10))
    with pausing(gaid):
        loader = start_loader(tmp_path, memcached_set, '--timeout', '3',
                              '--retries', '5')
        try:
            wait_for(lambda: all_stored(idfa, lines[100:]))
            with pausing(idfa):
                gaid.resume()  # the writes are done: the check can come
                wait_for_log(tmp_path, 'cannot check it before a rename')
                assert stop_within(loader, signum, 2) == code
        finally:
            loader.kill()
    assert listing(tmp_path) == [FIRST, SECOND]
    text = (tmp_path / 'run.log').read_text()
    assert '%s: Failed load: stopped by a signal' % FIRST in text


def test_a_server_that_tells_no_identity_is_named_once_and_not_held_against(
        tmp_path, fake_memcached):
    fake_memcached.tells_identity = False
    for name in (FIRST, SECOND):
        write_gz(tmp_path / name, lines_for('adid', 50, name[:14]))
    status, text = run(tmp_path, same_server(fake_memcached))
    assert status == 0, text
    assert text.count('tells no pid and start time') == 1
    assert listing(tmp_path) == ['.' + FIRST, '.' + SECOND]


# -- the path still names what was read --

def append_member(path, lines):
    with gzip.open(path, 'ab') as out:
        out.write(b''.join(line.encode() + b'\n' for line in lines))


@pytest.mark.parametrize('change', ['replaced', 'appended'])
def test_a_file_that_changes_while_its_writes_wait_is_kept(
        tmp_path, memcached_set, change):
    gaid = memcached_set['gaid']
    first = lines_for('gaid', 100)
    later = lines_for('gaid', 100, 'new')
    path = write_gz(tmp_path / FIRST, first)
    with loading_while_paused(tmp_path, memcached_set, gaid, '--retries',
                              '10') as loader:
        # The file is read to its end before its only batch is sent.
        wait_for(lambda: gaid.connections() > 0)
        if change == 'replaced':  # a new delivery moved over the path
            os.replace(write_gz(tmp_path / 'incoming', later), path)
        else:  # a second gzip member
            append_member(path, later)
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert 'kept: changed while loading' in text
    assert listing(tmp_path) == [FIRST]
    expected = expected_state([path])
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert stored_values(memcached_set, expected) == expected
    assert len(expected) == (200 if change == 'appended' else 100)


@pytest.mark.parametrize('when', ['just after it was opened',
                                  'after its first chunk was read'])
def test_a_file_replaced_while_it_is_being_read_is_kept(
        tmp_path, memcached_set, monkeypatch, when):
    # The identity is the opened file's, taken when it was opened: a new
    # delivery moved over the path while the file is read is not the file
    # that was read, and the next run loads it.
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 1024)
    path = write_gz(tmp_path / FIRST, lines_for('gaid', 300))
    incoming = write_gz(tmp_path / 'incoming',
                        lines_for('gaid', 300, version=5))
    real_read_chunks = gmemcload.read_chunks

    def replaced_after_the_first_chunk(read):
        for number, chunk in enumerate(real_read_chunks(read)):
            yield chunk
            if number == 0:
                os.replace(incoming, path)

    real_os_open = os.open

    def replaced_once_open(name, *args, **kwargs):
        opened = real_os_open(name, *args, **kwargs)
        if name == path:  # between the open and anything after it
            os.replace(incoming, path)
        return opened

    if when == 'just after it was opened':
        monkeypatch.setattr(os, 'open', replaced_once_open)
    else:
        monkeypatch.setattr(gmemcload, 'read_chunks',
                            replaced_after_the_first_chunk)
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    assert '%s: Failed load: changed while loading' % FIRST in text
    assert listing(tmp_path) == [FIRST]
    monkeypatch.undo()
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    want = dict(map(expected_value, lines_for('gaid', 300, version=5)))
    assert stored_values(memcached_set, want) == want


def test_a_file_rewritten_in_place_with_its_size_and_mtime_is_kept(
        tmp_path, memcached_set):
    gaid = memcached_set['gaid']
    path = write_gz(tmp_path / FIRST, lines_for('gaid', 100))
    before = os.stat(path)
    with loading_while_paused(tmp_path, memcached_set, gaid, '--retries',
                              '10') as loader:
        wait_for(lambda: gaid.connections() > 0)
        with open(path, 'r+b') as out:  # same size, other bytes
            out.write(gzip.compress(b'gaid\tx\t1\t1\t1\n')[:16])
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert 'kept: changed while loading' in text
    assert listing(tmp_path) == [FIRST]


def test_a_path_replaced_during_the_rename_is_put_back(tmp_path,
                                                       monkeypatch):
    path = write_gz(tmp_path / FIRST, ['idfa\ta\t1\t1\t1'])
    identity = gmemcload.file_identity(os.stat(path))
    real_rename = gmemcload.rename_noreplace

    def replaced_just_before(source, target):
        os.replace(write_gz(tmp_path / 'incoming', ['idfa\tb\t1\t1\t1']),
                   source)
        monkeypatch.setattr(gmemcload, 'rename_noreplace', real_rename)
        real_rename(source, target)

    monkeypatch.setattr(gmemcload, 'rename_noreplace', replaced_just_before)
    verdict = gmemcload.rename_loaded(path, identity)
    assert verdict.reason is gmemcload.Reason.CHANGED
    assert str(verdict).startswith('changed while loading')
    assert listing(tmp_path) == [FIRST]
    with gzip.open(path) as unread:
        assert unread.read() == b'idfa\tb\t1\t1\t1\n'


# -- late and re-delivered files --

def test_a_late_older_file_is_kept_until_the_operator_says_load_it(
        tmp_path, memcached_set):
    write_gz(tmp_path / SECOND, ['idfa\tk\t2\t2\t2'])
    assert run(tmp_path, memcached_set)[0] == 0
    write_gz(tmp_path / FIRST, ['idfa\tk\t1\t1\t1', 'idfa\tonly\t1\t1\t1'])
    write_gz(tmp_path / THIRD, ['idfa\tnew\t3\t3\t3'])
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    assert '%s: kept: late: %s, a newer file, was already processed' \
        % (FIRST, tmp_path / ('.' + SECOND)) in text
    # The late file is left alone; the newer one still loads.
    assert listing(tmp_path) == ['.' + SECOND, '.' + THIRD, FIRST]
    newer = dict([expected_value('idfa\tk\t2\t2\t2')])
    assert stored_values(memcached_set, [b'idfa:k', b'idfa:only']) == newer
    status, text = run(tmp_path, memcached_set, '--load-late')
    assert status == 0, text
    assert 'loaded on --load-late' in text
    assert listing(tmp_path) == ['.' + FIRST, '.' + SECOND, '.' + THIRD]
    older = dict([expected_value('idfa\tk\t1\t1\t1')])
    assert stored_values(memcached_set, [b'idfa:k']) == older


@pytest.mark.parametrize('order', ['sorted', 'reversed', 'shuffled'])
def test_lateness_is_judged_against_the_newest_processed_file(
        tmp_path, memcached_set, monkeypatch, order):
    # Several processed files, listed in any order: a file is late when it
    # sorts at or before the newest of them, not merely the first listed.
    processed = ['20170929000100', '20170929000300', '20170929000500']
    for stamp in processed:
        write_gz(tmp_path / ('.%s.tsv.gz' % stamp), ['idfa\tp\t1\t1\t1'])
    for stamp in ('20170929000000', '20170929000200', '20170929000400',
                  '20170929000600'):
        write_gz(tmp_path / ('%s.tsv.gz' % stamp),
                 lines_for('idfa', 5, stamp))
    real_listdir = os.listdir

    def listdir(path='.'):
        entries = sorted(real_listdir(path))
        if order == 'reversed':
            entries.reverse()
        elif order == 'shuffled':
            random.Random(len(entries)).shuffle(entries)
        return entries

    monkeypatch.setattr(os, 'listdir', listdir)
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    newest = tmp_path / '.20170929000500.tsv.gz'
    for stamp in ('20170929000000', '20170929000200', '20170929000400'):
        assert '%s.tsv.gz: kept: late: %s, a newer file' % (
            stamp, newest) in text
    assert listing(tmp_path) == [
        '.20170929000100.tsv.gz', '.20170929000300.tsv.gz',
        '.20170929000500.tsv.gz', '.20170929000600.tsv.gz',
        '20170929000000.tsv.gz', '20170929000200.tsv.gz',
        '20170929000400.tsv.gz']
    late = [expected_value(line)[0] for stamp in ('20170929000000',
            '20170929000200', '20170929000400')
            for line in lines_for('idfa', 5, stamp)]
    assert memcached_set['idfa'].get_many(late) == {}


@pytest.mark.parametrize('order', ['sorted', 'reversed', 'shuffled'])
def test_lateness_is_judged_against_the_newest_copy_in_load_order(
        tmp_path, memcached_set, monkeypatch, order):
    # SECOND was processed in a/ and in c/, FIRST in d/: the newest in
    # load order (name, then path) is c/SECOND, whatever order the
    # directories and their entries are listed in.  b/SECOND comes before
    # it: late.  Loaded, its values would overwrite c/SECOND's.
    for each in 'abcd':
        (tmp_path / each).mkdir()
    write_gz(tmp_path / 'a' / SECOND, ['idfa\tk\t1\t1\t1', 'idfa\ta\t1\t1\t1'])
    write_gz(tmp_path / 'c' / SECOND, ['idfa\tk\t3\t3\t3'])
    write_gz(tmp_path / 'd' / FIRST, ['idfa\tk\t0\t0\t0', 'idfa\td\t0\t0\t0'])
    pattern = str(tmp_path / '*' / '*.tsv.gz')
    status, text = run(tmp_path, memcached_set, '--pattern', pattern)
    assert status == 0, text
    write_gz(tmp_path / 'b' / SECOND, ['idfa\tk\t2\t2\t2', 'idfa\tb\t2\t2\t2'])

    def reorder(entries):
        entries = sorted(entries)
        if order == 'reversed':
            entries.reverse()
        elif order == 'shuffled':
            random.Random(3).shuffle(entries)
        return entries

    real_listdir, real_glob = os.listdir, gmemcload.glob.glob
    monkeypatch.setattr(os, 'listdir',
                        lambda path='.': reorder(real_listdir(path)))
    monkeypatch.setattr(gmemcload.glob, 'glob',
                        lambda *args, **kwargs: reorder(
                            real_glob(*args, **kwargs)))
    status, text = run(tmp_path, memcached_set, '--pattern', pattern)
    assert status == 1, text
    assert '%s: kept: late: %s, a newer file' % (
        SECOND, tmp_path / 'c' / ('.' + SECOND)) in text
    assert listing(tmp_path / 'b') == [SECOND]
    want = dict(expected_value(line) for line in (
        'idfa\tk\t3\t3\t3', 'idfa\ta\t1\t1\t1', 'idfa\td\t0\t0\t0'))
    assert stored_values(memcached_set, list(want) + [b'idfa:b']) == want


@pytest.mark.parametrize('directory, name', [('west', FIRST),
                                             ('aaa', SECOND)])
def test_a_late_file_in_another_directory_is_late_too(
        tmp_path, memcached_set, directory, name):
    # Files are loaded in load order (name, then path) over every
    # directory the pattern matches; so is lateness judged: a file that
    # comes before the processed one in that order is late.
    for each in ('aaa', 'east', 'west'):
        (tmp_path / each).mkdir()
    write_gz(tmp_path / 'east' / SECOND, ['idfa\tk\t2\t2\t2'])
    pattern = str(tmp_path / '*' / '*.tsv.gz')
    assert run(tmp_path, memcached_set, '--pattern', pattern)[0] == 0
    write_gz(tmp_path / directory / name, ['idfa\tk\t1\t1\t1'])
    status, text = run(tmp_path, memcached_set, '--pattern', pattern)
    assert status == 1, text
    assert 'kept: late: %s' % (tmp_path / 'east' / ('.' + SECOND)) in text
    assert listing(tmp_path / directory) == [name]
    newer = dict([expected_value('idfa\tk\t2\t2\t2')])
    assert stored_values(memcached_set, newer) == newer


def test_the_same_name_in_a_later_directory_is_not_late(
        tmp_path, memcached_set):
    # a/F is renamed, b/F (the same minute, after it in load order) fails
    # once: the next run loads b/F, never calling it late.
    for each in ('a', 'b'):
        (tmp_path / each).mkdir()
    write_gz(tmp_path / 'a' / FIRST, ['idfa\tk\t1\t1\t1'])
    (tmp_path / 'b' / FIRST).write_bytes(b'')  # still being created
    pattern = str(tmp_path / '*' / '*.tsv.gz')
    status, text = run(tmp_path, memcached_set, '--pattern', pattern)
    assert status == 1, text
    assert listing(tmp_path / 'a') == ['.' + FIRST]
    write_gz(tmp_path / 'b' / FIRST, ['idfa\tk\t2\t2\t2'])
    write_gz(tmp_path / 'a' / SECOND, ['idfa\tother\t3\t3\t3'])
    status, text = run(tmp_path, memcached_set, '--pattern', pattern)
    assert status == 0, text
    assert 'kept: late' not in text
    assert listing(tmp_path / 'b') == ['.' + FIRST]
    assert listing(tmp_path / 'a') == ['.' + FIRST, '.' + SECOND]
    want = dict([expected_value('idfa\tk\t2\t2\t2'),
                 expected_value('idfa\tother\t3\t3\t3')])
    assert stored_values(memcached_set, want) == want


def test_names_that_are_not_minutes_are_never_judged_late(tmp_path,
                                                          memcached_set):
    # A processed backfill.tsv.gz sorts after every minute: it must not
    # make every later minute file late.  A pending file named otherwise
    # loads in name order with a warning, even one that sorts before a
    # processed minute.
    extra = '2017-09-29-extra.tsv.gz'  # '-' sorts before every digit
    write_gz(tmp_path / '.backfill.tsv.gz', ['idfa\tk\t1\t1\t1'])
    write_gz(tmp_path / FIRST, ['idfa\tk\t2\t2\t2'])
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    write_gz(tmp_path / extra, ['idfa\tx\t3\t3\t3'])
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert 'kept: late' not in text
    assert '%s: not a minute name' % extra in text
    assert listing(tmp_path) == ['.' + extra, '.' + FIRST,
                                 '.backfill.tsv.gz']
    want = dict([expected_value('idfa\tk\t2\t2\t2'),
                 expected_value('idfa\tx\t3\t3\t3')])
    assert stored_values(memcached_set, want) == want
    # A minute file before the processed minute is still late.
    write_gz(tmp_path / '20170928235900.tsv.gz', ['idfa\tk\t0\t0\t0'])
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    assert '20170928235900.tsv.gz: kept: late: %s' % (
        tmp_path / ('.' + FIRST)) in text


@pytest.mark.parametrize('name, minute', [
    ('20170929000000.tsv.gz', True),
    ('20170929000000', True),
    ('20170929000000-b.tsv.gz', True),
    ('x20170929000000.tsv.gz', False),
    ('a-20170929000000', False),
    (' 20170929000000.tsv.gz', False),
    ('201709290000001.tsv.gz', False),  # 15 digits
    ('2017092900000.tsv.gz', False),  # 13
    ('\uff12\uff10\uff11\uff17\uff10\uff19\uff12\uff19\uff10\uff10\uff10'
     '\uff10\uff10\uff10.tsv.gz', False),  # digits, not ASCII ones
    ('\u0662' * 14, False),
])
def test_a_minute_name_begins_with_exactly_fourteen_ascii_digits(name,
                                                                 minute):
    assert gmemcload.is_minute_name(name) is minute


def test_names_that_only_hold_a_minute_are_not_minutes(tmp_path,
                                                       memcached_set):
    # Processed files whose names hold 14 digits not at their start, or
    # 15, or digits that are not ASCII, all sort after SECOND: taken for
    # minutes, they would make it late.  A pending +2017... sorts before
    # the processed FIRST: taken for a minute, it would be late itself.
    write_gz(tmp_path / FIRST, ['idfa\tk\t1\t1\t1'])
    assert run(tmp_path, memcached_set)[0] == 0
    processed = ['.x20170929000500.tsv.gz', '.a-20170929000500.tsv.gz',
                 '.201709290005000.tsv.gz',
                 '.\uff12\uff10\uff11\uff17\uff10\uff19\uff12\uff19\uff10'
                 '\uff10\uff10\uff15\uff10\uff10.tsv.gz']
    for name in processed:
        write_gz(tmp_path / name, ['idfa\tk\t9\t9\t9'])
    plus = '+20170929000000.tsv.gz'
    write_gz(tmp_path / plus, ['idfa\tplus\t3\t3\t3'])
    write_gz(tmp_path / SECOND, ['idfa\tk\t2\t2\t2'])
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert 'kept: late' not in text
    assert '%s: not a minute name' % plus in text
    assert listing(tmp_path) == sorted(processed + [
        '.' + FIRST, '.' + SECOND, '.' + plus])
    want = dict([expected_value('idfa\tk\t2\t2\t2'),
                 expected_value('idfa\tplus\t3\t3\t3')])
    assert stored_values(memcached_set, want) == want


def test_the_lock_file_is_not_a_processed_file(tmp_path, memcached_set):
    data = tmp_path / 'data'
    data.mkdir()
    write_gz(data / FIRST, lines_for('idfa', 5))
    pattern = str(data / '*')  # matches gmemcload.lock, undotted
    assert run(tmp_path, memcached_set, '--pattern', pattern)[0] == 0
    write_gz(data / SECOND, lines_for('idfa', 5, 'b'))
    status, text = run(tmp_path, memcached_set, '--pattern', pattern)
    assert status == 0, text
    assert listing(data) == ['.' + FIRST, '.' + SECOND]


@pytest.mark.parametrize('extra', [[], ['--load-late']])
def test_a_redelivered_file_never_replaces_the_processed_copy(
        tmp_path, memcached_set, extra):
    write_gz(tmp_path / FIRST, ['idfa\tk\t1\t1\t1'])
    assert run(tmp_path, memcached_set)[0] == 0
    processed = (tmp_path / ('.' + FIRST)).read_bytes()
    write_gz(tmp_path / FIRST, ['idfa\tk\t9\t9\t9'])
    status, text = run(tmp_path, memcached_set, *extra)
    assert status == 1, text
    assert 'kept: late: a processed copy %s already exists' \
        % (tmp_path / ('.' + FIRST)) in text
    assert listing(tmp_path) == ['.' + FIRST, FIRST]
    assert (tmp_path / ('.' + FIRST)).read_bytes() == processed
    want = dict([expected_value('idfa\tk\t1\t1\t1')])
    assert stored_values(memcached_set, want) == want


@pytest.mark.parametrize('renameat2', [True, False])
def test_a_rename_never_replaces_an_existing_file(tmp_path, monkeypatch,
                                                  renameat2):
    if not renameat2:  # a filesystem or libc without RENAME_NOREPLACE
        monkeypatch.setattr(gmemcload, '_libc', object)
    (tmp_path / 'a').write_text('new')
    (tmp_path / 'b').write_text('old')
    with pytest.raises(FileExistsError):
        gmemcload.rename_noreplace(str(tmp_path / 'a'), str(tmp_path / 'b'))
    assert (tmp_path / 'b').read_text() == 'old'
    gmemcload.rename_noreplace(str(tmp_path / 'a'), str(tmp_path / 'c'))
    assert (tmp_path / 'c').read_text() == 'new'


# -- corrupt input, the lock, names --

def corrupt_deflate(lines):
    """A gzip file whose deflate stream isal rejects mid-way (not merely a
    CRC that fails at the end)."""
    data = b''.join(line.encode() + b'\n' for line in lines)
    good = gzip.compress(data)
    for offset in range(len(good) // 2, len(good) - 8):
        bad = bytearray(good)
        bad[offset] ^= 0xff
        try:
            with igzip.IGzipFile(fileobj=io.BytesIO(bytes(bad))) as stream:
                stream.read()
        except gzip.BadGzipFile:
            continue
        except Exception:
            return bytes(bad)
    raise AssertionError('no corruption found that isal rejects')


def test_a_corrupt_deflate_stream_is_the_inputs_fault(tmp_path,
                                                      memcached_set, capfd):
    (tmp_path / FIRST).write_bytes(corrupt_deflate(lines_for('idfa', 5000)))
    status, text = run(tmp_path, memcached_set)
    assert status == 1
    assert '%s: Failed load: unreadable: ' % FIRST in text
    assert 'IsalError' in text
    assert 'Traceback' not in text and 'internal error' not in text
    assert 'Traceback' not in capfd.readouterr().err
    assert listing(tmp_path) == [FIRST]


@pytest.mark.parametrize('content', [b'do not lose me\n',
                                     b'\x1f\x8b\x08\x00 not text at all'])
def test_lock_keeps_what_its_file_holds(tmp_path, memcached_set, content):
    write_gz(tmp_path / FIRST, lines_for('idfa', 10))
    settings = tmp_path / 'settings.conf'
    settings.write_bytes(content)
    status, text = run(tmp_path, memcached_set, '--lock', str(settings))
    assert status == 0, text
    assert settings.read_bytes() == content
    pid_file = tmp_path / 'pid.lock'
    pid_file.write_text('1\n')  # a pid from an earlier run: replaced
    status, text = run(tmp_path, memcached_set, '--lock', str(pid_file))
    assert status == 0, text
    assert pid_file.read_text() == '%d\n' % os.getpid()


def test_files_that_share_a_base_name_are_shown_by_path(tmp_path,
                                                        memcached_set):
    paths = []
    for directory in ('east', 'west'):
        (tmp_path / directory).mkdir()
        paths.append(write_gz(tmp_path / directory / FIRST,
                              lines_for('idfa', 5, directory)))
    status, text = run(tmp_path, memcached_set,
                       '--pattern', str(tmp_path / '*' / '*.tsv.gz'))
    assert status == 0, text
    for path in paths:
        assert 'I %s: Acceptable error rate' % path in text
        assert 'I %s ' % path in text.split('Summary:')[1]


def test_the_dry_summary_counts_records_and_stores_nothing(tmp_path):
    write_gz(tmp_path / FIRST, lines_for('idfa', 5))
    metrics_file = str(tmp_path / 'metrics.prom')
    status, text = run(tmp_path, same_server(type('Nowhere', (), {
        'address': '127.0.0.1:1'})), '--dry', '--metrics-file', metrics_file)
    assert status == 0, text
    found = metrics(metrics_file)
    assert (files(found, 'parsed'), files(found, 'kept'),
            files(found, 'renamed')) == (1, 0, 0)
    summary = text.split('Summary:')[1]
    assert 'stored' not in summary
    assert 'total: 1 files, 5 lines, 5 records, 0 errors; 0 renamed' \
        in summary
    assert 'parsed (dry run: nothing sent or renamed)' in summary
