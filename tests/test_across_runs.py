"""The promise across runs: what one run cannot see alone.  The journal
beside the lock proves a rename that a killed run left unproven, sees a
restart or a drop between two runs, orders a reload, and a reload ends
proven."""
import gzip
import json
import os
import signal
import socket
import subprocess
import time
import types

import gevent
import pytest

import gmemcload
import conftest
from conftest import (expected_state, lines_for, listing, metrics,
                      start_patched_loader, stored_values, value, wait_for,
                      write_gz)

FIRST, SECOND, THIRD = ('20170929000000.tsv.gz', '20170929000100.tsv.gz',
                        '20170929000200.tsv.gz')
JOURNAL = gmemcload.JOURNAL_FILE_NAME


def run(tmp_path, daemons, *extra):
    """conftest.run, with the log of this run only."""
    (tmp_path / 'run.log').unlink(missing_ok=True)
    return conftest.run(tmp_path, daemons, *extra)


def journal(tmp_path):
    """The journal of tmp_path, replayed: renames (a list), servers, lost;
    every line of it a JSON object."""
    with open(tmp_path / JOURNAL) as source:
        for line in source:
            assert isinstance(json.loads(line), dict)
    replayed = gmemcload.Journal(str(tmp_path), dry=True)
    assert replayed.read()
    return {'renames': [dict(entry, servers=sorted(entry['servers']))
                        for entry in replayed.renames.values()],
            'servers': replayed.servers, 'lost': replayed.lost}


def all_lines(dev_types, count, version=0, tag=''):
    return [line for dev_type in dev_types
            for line in lines_for(dev_type, count, tag=tag, version=version)]


def stored_state(tmp_path, daemons, names):
    """The values of every key of ``names`` as memcached holds them, and
    what loading those files in order would leave."""
    want = expected_state([tmp_path / ('.' + name) for name in names])
    return stored_values(daemons, list(want)), want


def assert_refilled_exactly(tmp_path, daemons, names):
    """A run with --refill-after-loss ends 0, and memcached then holds
    exactly what loading ``names`` in order leaves."""
    status, text = run(tmp_path, daemons, '--refill-after-loss')
    assert status == 0, text
    stored, want = stored_state(tmp_path, daemons, names)
    assert stored == want


@pytest.fixture
def small_idfa(memcached_set, memcached_factory):
    """The daemons, with idfa a memcached of 1 MB: it evicts."""
    return dict(memcached_set, idfa=memcached_factory(memory_mb=1,
                                                      max_item='512k'))


# -- the journal: what it holds --

def test_the_journal_holds_each_rename_in_order_and_each_servers_identity(
        tmp_path, memcached_set):
    write_gz(tmp_path / SECOND, all_lines(['idfa', 'gaid'], 10))
    write_gz(tmp_path / FIRST, all_lines(['idfa'], 10))
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    found = journal(tmp_path)
    assert [(entry['file'], entry['state'], entry['servers'])
            for entry in found['renames']] == [
        (FIRST, 'proven', [memcached_set['idfa'].address]),
        (SECOND, 'proven', sorted([memcached_set['idfa'].address,
                                   memcached_set['gaid'].address]))]
    stats = memcached_set['idfa'].client().get_stats()[0][1]
    record = found['servers'][memcached_set['idfa'].address]
    assert record['pid'] == int(stats['pid'])
    assert record['started'] == int(stats['time']) - int(stats['uptime'])
    assert (record['evictions'], record['flushes'], record['moved_out']) \
        == (0, 0, 0)
    assert found['lost'] == {}


def test_a_journal_that_is_no_journal_is_set_aside_and_started_again(
        tmp_path, memcached_set):
    (tmp_path / JOURNAL).write_text('not json\n')
    write_gz(tmp_path / FIRST, all_lines(['idfa'], 10))
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert 'the journal cannot be read' in text
    assert 'a loss it recorded is forgotten' in text
    assert (tmp_path / (JOURNAL + '.corrupt')).read_text() == 'not json\n'
    assert [entry['file'] for entry in journal(tmp_path)['renames']] \
        == [FIRST]
    assert listing(tmp_path) == ['.' + FIRST]


@pytest.mark.parametrize('damage', [
    '{"renaming": "x", "at"',  # not JSON
    '[1, 2]',  # not an object
    '{"lost": 5, "why": "x", "files": 1, "at": 1}',  # a loss of no server
    '{"proven": "%s", "at": 1, "servers": {}, "read_back": [1, 2]}' % FIRST,
    '{"server": "a:1", "at": 1, "identity": {"pid": "x"}}',
    '{"what": 1}',  # no known kind
])
def test_damaged_lines_are_skipped_and_the_rest_kept(
        tmp_path, memcached_set, damage):
    # A loss the journal holds survives a damaged line elsewhere in it.
    write_gz(tmp_path / FIRST, all_lines(['gaid'], 20))
    assert run(tmp_path, memcached_set)[0] == 0
    memcached_set['gaid'].client().flush_all()
    assert run(tmp_path, memcached_set)[0] == 1  # the loss stands
    with open(tmp_path / JOURNAL) as source:
        lines = source.read().splitlines()
    lines.insert(1, damage)
    (tmp_path / JOURNAL).write_text('\n'.join(lines) + '\n')
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    assert 'lines cannot be read (line 2: ' in text
    assert 'lost records of processed files' in text
    assert 'Traceback' not in text
    assert (tmp_path / (JOURNAL + '.corrupt')).read_text().splitlines()[1] \
        == damage
    found = journal(tmp_path)
    assert list(found['lost']) == [memcached_set['gaid'].address]
    assert [(entry['file'], entry['state'])
            for entry in found['renames']] == [(FIRST, 'proven')]


def test_a_torn_last_line_is_ignored_and_the_journal_rewritten(
        tmp_path, memcached_set):
    write_gz(tmp_path / FIRST, all_lines(['idfa'], 10))
    assert run(tmp_path, memcached_set)[0] == 0
    with open(tmp_path / JOURNAL, 'a') as target:
        target.write('{"renaming": "20170929000100.tsv.gz", "a')  # killed
    write_gz(tmp_path / SECOND, all_lines(['idfa'], 10, tag='s'))
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert 'its last line is incomplete' in text
    assert [(entry['file'], entry['state'])
            for entry in journal(tmp_path)['renames']] == [
        (FIRST, 'proven'), (SECOND, 'proven')]
    assert not (tmp_path / (JOURNAL + '.corrupt')).exists()


# -- between runs --

def test_a_restart_between_two_runs_is_seen_named_counted_and_refilled(
        tmp_path, memcached_set):
    idfa = memcached_set['idfa']
    metrics_file = str(tmp_path / 'metrics.prom')
    write_gz(tmp_path / FIRST, all_lines(['idfa', 'gaid'], 1000))
    status, text = run(tmp_path, memcached_set,
                       '--metrics-file', metrics_file)
    assert status == 0, text
    idfa.restart()  # between the runs: its 1,000 records are gone
    write_gz(tmp_path / SECOND, all_lines(['idfa'], 10, version=1, tag='b'))
    status, text = run(tmp_path, memcached_set,
                       '--metrics-file', metrics_file)
    assert status == 1, text
    assert 'memcached %s restarted since it was last proven' \
        % idfa.address in text
    assert 'the records there of 1 processed files (%s to %s) are gone' \
        % (FIRST, FIRST) in text
    found = metrics(metrics_file)
    assert value(found, 'server_restarts_total', server=idfa.address) == 1
    assert value(found, 'last_run_server_restarts',
                 server=idfa.address) == 1
    assert listing(tmp_path) == ['.' + FIRST, '.' + SECOND]
    # Not refilled: every run says so, and counts the restart once.
    status, text = run(tmp_path, memcached_set,
                       '--metrics-file', metrics_file)
    assert status == 1, text
    assert 'lost records of processed files since they were proven' in text
    assert value(metrics(metrics_file), 'server_restarts_total',
                 server=idfa.address) == 1
    stored, want = stored_state(tmp_path, memcached_set, [FIRST, SECOND])
    assert len(stored) == len(want) - 1000
    status, text = run(tmp_path, memcached_set, '--refill-after-loss',
                       '--metrics-file', metrics_file)
    assert status == 0, text
    assert '2 processed files are loaded again first' in text
    stored, want = stored_state(tmp_path, memcached_set, [FIRST, SECOND])
    assert stored == want
    assert journal(tmp_path)['lost'] == {}
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert 'lost records' not in text


def test_a_flush_between_two_runs_is_seen_as_a_loss(tmp_path,
                                                    memcached_set):
    gaid = memcached_set['gaid']
    write_gz(tmp_path / FIRST, all_lines(['gaid'], 100))
    assert run(tmp_path, memcached_set)[0] == 0
    gaid.client().flush_all()
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    assert 'memcached %s dropped items since it was last proven (0' \
        ' items evicted, 1 flushes, 0 items lost in slab moves)' \
        % gaid.address in text
    assert_refilled_exactly(tmp_path, memcached_set, [FIRST])


def test_a_delayed_flush_that_empties_the_cache_after_a_run_is_seen_next(
        tmp_path, memcached_set):
    # flush_all 3 before the run: cmd_flush moves before the file's first
    # write, the run renames the file within the 3 s, and the deadline
    # then empties idfa with no counter moving.  The next run reads back
    # what the last proven file wrote there.
    idfa = memcached_set['idfa']
    lines = all_lines(['idfa'], 500)
    write_gz(tmp_path / FIRST, lines)
    with socket.create_connection(('127.0.0.1', idfa.port)) as sock:
        sock.sendall(b'flush_all 3\r\n')
        assert sock.recv(100) == b'OK\r\n'
        flushed_at = time.monotonic()
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert time.monotonic() - flushed_at < 3, 'too slow to test this'
    stored, want = stored_state(tmp_path, memcached_set, [FIRST])
    assert stored == want
    time.sleep(max(0, flushed_at + 4 - time.monotonic()))
    assert stored_state(tmp_path, memcached_set, [FIRST])[0] == {}
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    assert 'memcached %s does not hold what %s wrote there, though it' \
        ' counts no drop since (a delayed flush_all?)' % (idfa.address,
                                                          FIRST) in text
    assert_refilled_exactly(tmp_path, memcached_set, [FIRST])


def test_under_accept_evictions_evictions_between_runs_are_no_loss(
        tmp_path, small_idfa):
    daemons, small = small_idfa, small_idfa['idfa']
    write_gz(tmp_path / FIRST, all_lines(['idfa'], 100))
    status, text = run(tmp_path, daemons, '--accept-evictions')
    assert status == 0, text
    client = small.client()
    for number in range(20000):  # another client fills the cache
        client.set('other%d' % number, 'x' * 100)
    assert int(client.get_stats()[0][1]['evictions']) > 1000
    write_gz(tmp_path / SECOND, all_lines(['gaid'], 10))
    status, text = run(tmp_path, daemons, '--accept-evictions')
    assert status == 0, text
    assert 'memcached %s dropped items since it was last proven (' \
        % small.address in text
    assert 'accepted on --accept-evictions' in text
    assert 'lost records' not in text
    for number in range(20000):
        client.set('more%d' % number, 'x' * 100)
    status, text = run(tmp_path, daemons)  # without it, a loss
    assert status == 1, text
    assert 'memcached %s dropped items since it was last proven' \
        % small.address in text


def flush_later(daemon, seconds):
    """``flush_all seconds`` to ``daemon``: its cmd_flush moves now, its
    items go at the deadline.  Returns when it was sent (monotonic)."""
    with socket.create_connection(('127.0.0.1', daemon.port)) as sock:
        sock.sendall(b'flush_all %d\r\n' % seconds)
        assert sock.recv(100) == b'OK\r\n'
    return time.monotonic()


def test_a_delayed_flush_that_strikes_later_in_the_run_is_seen_at_its_end(
        tmp_path, memcached_set):
    # SECOND (idfa) is renamed before the deadline, THIRD waits for gaid
    # (stopped) past it: the check at the run's end reads back what SECOND
    # wrote, and finds it gone.
    idfa, gaid = memcached_set['idfa'], memcached_set['gaid']
    write_gz(tmp_path / SECOND, all_lines(['idfa'], 100))
    write_gz(tmp_path / THIRD, all_lines(['gaid'], 100))
    flushed_at = flush_later(idfa, 3)
    gaid.pause()
    try:
        loader = gevent.spawn(run, tmp_path, memcached_set, '--timeout', '0.5',
                              '--retries', '10')
        wait_for(lambda: os.path.exists(tmp_path / ('.' + SECOND)))
        assert time.monotonic() - flushed_at < 3, 'too slow to test this'
        gevent.sleep(max(0, flushed_at + 4 - time.monotonic()))
    finally:
        gaid.resume()
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert listing(tmp_path) == ['.' + SECOND, '.' + THIRD]
    assert 'memcached %s does not hold what %s wrote there, though it' \
        ' counts no drop since (a delayed flush_all?)' % (idfa.address,
                                                          SECOND) in text
    assert stored_state(tmp_path, memcached_set, [SECOND])[0] == {}
    assert_refilled_exactly(tmp_path, memcached_set, [SECOND, THIRD])


def test_under_accept_evictions_records_gone_at_the_check_are_not_asked(
        tmp_path, small_idfa):
    # The cache is too small: the file's oldest records are evicted while
    # it loads, and renamed on --accept-evictions.  Those missing at the
    # check are not in the journal, so the next run asks nothing gone.
    daemons = small_idfa
    write_gz(tmp_path / FIRST, all_lines(['idfa'], 20000))
    status, text = run(tmp_path, daemons, '--accept-evictions')
    assert status == 0, text
    assert 'renamed on --accept-evictions' in text
    for _ in range(2):
        status, text = run(tmp_path, daemons, '--accept-evictions')
        assert status == 0, text
        assert 'lost records' not in text


def test_a_device_id_of_any_bytes_is_read_back_as_it_was_written(
        tmp_path, memcached_set):
    with gzip.open(tmp_path / FIRST, 'wb') as target:
        target.write(b'idfa\tcaf\xc3\xa9\t1.0\t2.0\t1,2,3\n'
                     b'idfa\t\xff\xfe\t1.0\t2.0\t4\n')
    assert run(tmp_path, memcached_set)[0] == 0
    write_gz(tmp_path / SECOND, all_lines(['gaid'], 10))
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert 'lost records' not in text


# -- the last window: killed between a rename and the check after it --

KILLED_AFTER_THE_RENAME = '''
import os, signal
rename = gmemcload.rename_loaded
def rename_then_die(path, identity):
    verdict = rename(path, identity)
    if verdict is None and os.environ.get('RESTART_FIRST'):
        os.kill(int(os.environ['RESTART_FIRST']), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
gmemcload.rename_loaded = rename_then_die
'''


@pytest.mark.parametrize('restarted', [False, True])
def test_a_rename_a_killed_run_left_unproven_is_proven_or_put_back(
        tmp_path, memcached_set, monkeypatch, restarted):
    idfa = memcached_set['idfa']
    lines = all_lines(['idfa'], 1000)
    write_gz(tmp_path / FIRST, lines)
    if restarted:  # memcached dies between the writes and the rename
        monkeypatch.setenv('RESTART_FIRST', str(idfa.process.pid))
    loader = start_patched_loader(tmp_path, memcached_set,
                                  KILLED_AFTER_THE_RENAME)
    assert loader.wait(timeout=60) == -signal.SIGKILL
    assert listing(tmp_path) == ['.' + FIRST]
    assert [(entry['file'], entry['state'])
            for entry in journal(tmp_path)['renames']] \
        == [(FIRST, 'renaming')]
    if restarted:
        idfa.process.wait()
        idfa.restart()
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert listing(tmp_path) == ['.' + FIRST]
    assert [(entry['file'], entry['state'])
            for entry in journal(tmp_path)['renames']] \
        == [(FIRST, 'proven')]
    stored, want = stored_state(tmp_path, memcached_set, [FIRST])
    assert stored == want
    if restarted:
        assert '%s: renamed by a run that ended before the check after' \
            ' the rename, and not provable now: memcached %s restarted' \
            % (FIRST, idfa.address) in text
        assert '%s: Acceptable error rate' % FIRST in text
    else:
        assert '%s: its rename was not proven when the last run ended;' \
            ' proven now' % FIRST in text
        assert 'Acceptable error rate' not in text  # not loaded again


# -- the order of a reload --

def test_a_reload_follows_the_journal_not_change_times(tmp_path,
                                                       memcached_set):
    # Names that are not minutes load in name order within a run, so
    # across runs the journal alone knows that b came before a.
    spool = tmp_path / 'spool'
    spool.mkdir()
    for name, version in (('b.tsv.gz', 0), ('a.tsv.gz', 1)):
        write_gz(spool / name, all_lines(['idfa'], 50, version=version))
        status, text = run(spool, memcached_set)
        assert status == 0, text
    # The spool restored elsewhere: tar rewrites every change time, in the
    # order of its archive.
    restored = tmp_path / 'restored'
    restored.mkdir()
    archive = subprocess.run(['tar', 'c', '-C', str(spool), '.'], check=True,
                             stdout=subprocess.PIPE).stdout
    subprocess.run(['tar', 'x', '-C', str(restored)], input=archive,
                   check=True)
    os.chmod(restored / '.b.tsv.gz', 0o600)  # b changed last
    memcached_set['idfa'].restart()
    status, text = run(restored, memcached_set, '--reload-processed')
    assert status == 0, text
    stored, want = stored_state(restored, memcached_set,
                                ['b.tsv.gz', 'a.tsv.gz'])
    assert stored == want  # a's values, the newest
    assert 'not in the journal' not in text
    assert text.index('Processing %s' % (restored / '.b.tsv.gz')) \
        < text.index('Processing %s' % (restored / '.a.tsv.gz'))


def test_processed_files_the_journal_does_not_know_come_first_in_name_order(
        tmp_path, memcached_set):
    write_gz(tmp_path / '.b.tsv.gz', all_lines(['idfa'], 20, version=0))
    write_gz(tmp_path / 'c.tsv.gz', all_lines(['idfa'], 20, version=2))
    assert run(tmp_path, memcached_set)[0] == 0  # c: in the journal
    write_gz(tmp_path / '.a.tsv.gz', all_lines(['idfa'], 20, version=1))
    status, text = run(tmp_path, memcached_set, '--reload-processed')
    assert status == 0, text
    assert '2 processed files are not in the journal (processed before' \
        ' it, or it was lost): they come first, in name order' in text
    stored, want = stored_state(tmp_path, memcached_set,
                                ['a.tsv.gz', 'b.tsv.gz', 'c.tsv.gz'])
    assert stored == want


def test_a_reload_is_proven_again_at_its_end(tmp_path, memcached_set,
                                             monkeypatch):
    # A restart after a reloaded file's own check, before the run ends:
    # it is no longer reloaded, and the run exits 1.
    write_gz(tmp_path / FIRST, all_lines(['idfa'], 30))
    assert run(tmp_path, memcached_set)[0] == 0
    write_gz(tmp_path / SECOND, all_lines(['gaid'], 30))
    rename = gmemcload.RenameInOrder.__call__

    def restart_after_the_reload(renamer, load):
        rename(renamer, load)
        if load.reloaded:
            memcached_set['idfa'].restart()
    monkeypatch.setattr(gmemcload.RenameInOrder, '__call__',
                        restart_after_the_reload)
    status, text = run(tmp_path, memcached_set, '--reload-processed')
    assert status == 1, text
    assert '.%s: reloaded, but not proven at the end of the reload:' \
        ' memcached %s restarted' % (FIRST, memcached_set['idfa'].address) \
        in text
    assert listing(tmp_path) == ['.' + FIRST, '.' + SECOND]


def test_an_unfinished_rename_is_read_back_before_it_is_proven(
        tmp_path, memcached_set):
    # A delayed flush struck between the killed run and this one, with no
    # counter moving since the file's writes: only its records read back
    # show that they are gone.
    idfa = memcached_set['idfa']
    write_gz(tmp_path / FIRST, all_lines(['idfa'], 200))
    flushed_at = flush_later(idfa, 3)
    loader = start_patched_loader(tmp_path, memcached_set,
                                  KILLED_AFTER_THE_RENAME)
    assert loader.wait(timeout=60) == -signal.SIGKILL
    assert time.monotonic() - flushed_at < 3, 'too slow to test this'
    assert listing(tmp_path) == ['.' + FIRST]
    time.sleep(max(0, flushed_at + 4 - time.monotonic()))
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert '%s: renamed by a run that ended before the check after the' \
        ' rename, and not provable now: memcached %s does not hold this' \
        ' file\'s records as written' % (FIRST, idfa.address) in text
    stored, want = stored_state(tmp_path, memcached_set, [FIRST])
    assert stored == want


def test_a_restart_after_a_files_rename_in_the_same_run_is_said_at_its_end(
        tmp_path, memcached_set, monkeypatch):
    # idfa restarts just after FIRST is proven, while SECOND (gaid) is
    # still to come: the lanes see no restart (nothing more goes to
    # idfa), the check at the run's end does.
    idfa = memcached_set['idfa']
    write_gz(tmp_path / FIRST, all_lines(['idfa'], 50))
    write_gz(tmp_path / SECOND, all_lines(['gaid'], 50))
    proven = gmemcload.Journal.proven

    def restart_once_proven(journal, path, *args):
        proven(journal, path, *args)
        if path.endswith(FIRST):
            idfa.restart()
    monkeypatch.setattr(gmemcload.Journal, 'proven', restart_once_proven)
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    assert listing(tmp_path) == ['.' + FIRST, '.' + SECOND]
    assert 'memcached %s restarted since it was last proven' % idfa.address \
        in text
    assert_refilled_exactly(tmp_path, memcached_set, [FIRST, SECOND])


def test_a_run_reads_back_the_first_and_the_last_proven_file_of_a_server(
        tmp_path):
    # A delayed flush takes everything written before its deadline: the
    # first file still in the journal is the one it cannot spare, the last
    # the one a drop took most recently.
    book = gmemcload.Journal(str(tmp_path))
    identity = gmemcload.ServerIdentity(gmemcload.Instance(1, 2), 3,
                                        gmemcload.Dropped(0, 0, 0))
    for number, name in enumerate((FIRST, SECOND, THIRD)):
        load = types.SimpleNamespace(path=str(tmp_path / name),
                                     instances={'a:1': identity})
        key = b'idfa:%d' % number
        samples = {'a:1': [gmemcload.Sample(
            key, gmemcload.value_digest(key), None, 0)]}
        book.renaming(load, samples)
        book.proven(load.path, {'a:1': identity}, samples)
    book = gmemcload.Journal(str(tmp_path))  # as the next run reads it
    assert book.read()
    files, samples = book.to_read_back('a:1')
    assert files == [FIRST, THIRD]
    assert [sample.key for sample in samples] == [b'idfa:0', b'idfa:2']
    assert book.to_read_back('b:2') == ([], [])
