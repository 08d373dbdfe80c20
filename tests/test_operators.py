"""For operators: the metrics file of every run, and young files left for
the next run."""
import errno
import logging
import os
import re
import signal
import subprocess
import sys
import time

import gevent
import pytest

import gmemcload
from conftest import (GMEMCLOAD, address_args, catches, expected_value, files,
                      hold_lock, lines_for, listing, metrics, run,
                      start_loader, start_patched_loader, stop_within,
                      summary_row, value, wait_for, wait_for_log, write_gz)
from daemons import free_port

FIRST, SECOND, THIRD = ('20170929000000.tsv.gz', '20170929000100.tsv.gz',
                        '20170929000200.tsv.gz')
# The reason labels of kept files, as the README's table gives them.
REASONS = ('not_read_to_its_end', 'unreadable', 'stopped', 'unacknowledged',
           'error_rate', 'server_restarted', 'evicted', 'read_back',
           'server_not_checkable', 'changed', 'not_renamed', 'future_mtime',
           'late', 'redelivered', 'after_a_file_not_loaded')


@pytest.fixture
def metrics_file(tmp_path):
    directory = tmp_path / 'textfile'
    directory.mkdir()
    return str(directory / 'gmemcload.prom')


def test_good_failed_and_locked_runs_each_leave_their_metrics(
        tmp_path, memcached_set, metrics_file):
    write_gz(tmp_path / FIRST, lines_for('idfa', 30) + ['idfa\tbad\tx\t1\t1'])
    write_gz(tmp_path / SECOND, lines_for('gaid', 20))
    before = time.time()
    status, text = run(tmp_path, memcached_set, '--metrics-file',
                       metrics_file, '--max-error-rate', '0.1')
    assert status == 0, text
    good = metrics(metrics_file)
    assert value(good, 'last_run_exit_status') == 0
    success = value(good, 'last_success_timestamp_seconds')
    assert before <= success <= time.time()
    assert value(good, 'last_run_end_timestamp_seconds') == success
    assert value(good, 'last_run_duration_seconds') > 0
    assert files(good, 'renamed') == 2
    assert files(good, 'kept') == 0
    assert files(good, 'parsed') == 0
    # Every reason the README lists is written, 0 included, so that no
    # series goes missing; no other label is.
    kept = {dict(labels)['reason']: count for (name, labels), count
            in good.items() if name == 'gmemcload_last_run_files'
            and dict(labels)['result'] == 'kept'}
    assert kept == dict.fromkeys(REASONS, 0)
    assert value(good, 'last_run_lines') == 51
    assert value(good, 'last_run_records_stored') == 50
    assert value(good, 'last_run_errors') == 1
    assert value(good, 'files_renamed_total') == 2
    assert value(good, 'runs_total', status='0') == 1
    idfa = memcached_set['idfa'].address
    assert value(good, 'last_run_server_down', server=idfa) == 0
    assert value(good, 'last_run_server_restarts', server=idfa) == 0

    # A failed run: dvid's server is not there.
    nowhere = type('Nowhere', (), {'address': '127.0.0.1:1'})
    write_gz(tmp_path / THIRD, lines_for('dvid', 10))
    status, text = run(tmp_path, dict(memcached_set, dvid=nowhere),
                       '--metrics-file', metrics_file, '--retries', '0')
    assert status == 1, text
    failed = metrics(metrics_file)
    assert value(failed, 'last_run_exit_status') == 1
    assert value(failed, 'last_success_timestamp_seconds') == success
    assert files(failed, 'kept') == 1
    assert files(failed, 'kept', 'unacknowledged') == 1
    assert value(failed, 'last_run_server_down', server='127.0.0.1:1') == 1
    assert value(failed, 'lines_total') == 51 + 10
    assert value(failed, 'files_renamed_total') == 2
    assert value(failed, 'runs_total', status='1') == 1

    # A run refused by the lock reads nothing, and says so.
    holder = hold_lock(str(tmp_path / '.gmemcload.lock'))
    try:
        status, text = run(tmp_path, memcached_set, '--metrics-file',
                           metrics_file)
    finally:
        holder.kill()
        holder.wait()
    assert status == 75, text
    locked = metrics(metrics_file)
    assert value(locked, 'last_run_exit_status') == 75
    assert value(locked, 'last_success_timestamp_seconds') == success
    assert value(locked, 'lines_total') == 61
    assert value(locked, 'runs_total', status='75') == 1
    assert value(locked, 'runs_total', status='0') == 1
    # Written whole, then renamed: no temporary file is left.
    assert sorted(os.listdir(os.path.dirname(metrics_file))) == [
        'gmemcload.prom', 'gmemcload.prom.lock']


def test_a_young_file_waits_and_the_run_ends_0(tmp_path, memcached_set):
    write_gz(tmp_path / FIRST, lines_for('idfa', 10))
    young = write_gz(tmp_path / SECOND, lines_for('idfa', 10, 'y'))
    old = write_gz(tmp_path / THIRD, lines_for('idfa', 10, 'o'))
    now = time.time()
    os.utime(tmp_path / FIRST, (now - 600, now - 600))
    os.utime(old, (now - 600, now - 600))  # old, but behind a young one
    status, text = run(tmp_path, memcached_set, '--min-age', '60')
    assert status == 0, text
    assert '%s was modified less than 60s ago (--min-age): it and 1 later' \
        ' files wait for the next run' % SECOND in text
    assert listing(tmp_path) == ['.' + FIRST, SECOND, THIRD]
    os.utime(young, (now - 600, now - 600))
    status, text = run(tmp_path, memcached_set, '--min-age', '60')
    assert status == 0, text
    assert listing(tmp_path) == ['.' + FIRST, '.' + SECOND, '.' + THIRD]


@pytest.mark.parametrize('young', ['st_mtime', 'st_atime', 'all'])
def test_min_age_goes_by_modification_time_only(tmp_path, memcached_set,
                                                metrics_file, young):
    # atime and mtime set apart (the change time is always now): only a
    # recent mtime makes a file wait.
    now = time.time()
    old = now - 600
    for name in (FIRST, SECOND, THIRD):
        write_gz(tmp_path / name, lines_for('idfa', 10, name[:14]))
        os.utime(tmp_path / name, (now, now) if young == 'all'
                 else (old, old))
    if young != 'all':
        os.utime(tmp_path / SECOND, (now, old) if young == 'st_atime'
                 else (old, now))
    status, text = run(tmp_path, memcached_set, '--min-age', '60',
                       '--metrics-file', metrics_file)
    assert status == 0, text
    found = metrics(metrics_file)
    if young == 'all':
        assert listing(tmp_path) == [FIRST, SECOND, THIRD]
        assert files(found, 'waiting') == 3
        assert files(found, 'renamed') == 0
    elif young == 'st_mtime':
        assert listing(tmp_path) == ['.' + FIRST, SECOND, THIRD]
        assert files(found, 'waiting') == 2
        assert files(found, 'renamed') == 1
    else:
        assert listing(tmp_path) == ['.' + FIRST, '.' + SECOND, '.' + THIRD]
        assert files(found, 'waiting') == 0
        assert files(found, 'renamed') == 3


@pytest.mark.parametrize('ahead, kept', [(3600, True), (30, False)])
def test_a_future_mtime_is_clock_skew_not_a_young_file(
        tmp_path, memcached_set, metrics_file, ahead, kept):
    # An hour ahead it would wait for ever, every run ending 0: it is kept
    # and said, and the files after it wait.  Half a minute ahead it is
    # young, and waits.
    now = time.time()
    for name in (FIRST, SECOND, THIRD):
        write_gz(tmp_path / name, lines_for('idfa', 10, name[:14]))
        os.utime(tmp_path / name, (now - 600, now - 600))
    os.utime(tmp_path / SECOND, (now, now + ahead))
    status, text = run(tmp_path, memcached_set, '--min-age', '60',
                       '--metrics-file', metrics_file)
    assert listing(tmp_path) == ['.' + FIRST, SECOND, THIRD]
    found = metrics(metrics_file)
    if kept:
        assert status == 1, text
        assert re.search(r'%s: kept: modified (3599|3600) s ahead of this'
                         r' clock' % SECOND, text)
        assert files(found, 'kept', 'future_mtime') == 1
        assert files(found, 'waiting') == 1
        assert 'the 1 later files wait behind it' in text
        assert 'modified less than 60s ago' not in text
    else:
        assert status == 0, text
        assert files(found, 'kept') == 0
        assert files(found, 'waiting') == 2


def test_restarts_seen_are_counted_per_server_and_carried_over(
        tmp_path, memcached_set, fake_memcached, metrics_file, monkeypatch):
    daemons = dict(memcached_set, idfa=fake_memcached)
    idfa, gaid = fake_memcached.address, memcached_set['gaid']

    def restarts(found, server=idfa):
        return (value(found, 'last_run_server_restarts', server=server),
                value(found, 'server_restarts_total', server=server))

    # 1. Seen by the rename-time check alone: SECOND's writes are done,
    # and nothing more is written, when idfa restarts after FIRST's rename.
    write_gz(tmp_path / FIRST, lines_for('gaid', 10))
    write_gz(tmp_path / SECOND, lines_for('idfa', 10))
    real_rename = gmemcload.rename_noreplace

    def rename_then_restart(source, target):
        real_rename(source, target)
        if source.endswith(FIRST):
            fake_memcached.restart()

    monkeypatch.setattr(gmemcload, 'rename_noreplace', rename_then_restart)
    gaid.pause()
    try:
        loader = gevent.spawn(run, tmp_path, daemons, '--metrics-file',
                              metrics_file, '--timeout', '0.5',
                              '--retries', '10')
        wait_for(lambda: fake_memcached.sets >= 10)
    finally:
        gaid.resume()
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert restarts(metrics(metrics_file)) == (1, 1)
    assert restarts(metrics(metrics_file), gaid.address) == (0, 0)
    monkeypatch.setattr(gmemcload, 'rename_noreplace', real_rename)

    # 2. Seen by the lanes: two restarts while THIRD's one batch is
    # written.  Each costs a retry, and the batch is acknowledged whole by
    # the third instance; SECOND, loaded again, is renamed before the
    # restarts or kept by them: renamed, its records go with them, and
    # the check at the run's end says so.  Either way the run exits 1.
    fake_memcached.delay = 0.005
    write_gz(tmp_path / THIRD, lines_for('idfa', 300, 'c'))
    sets = fake_memcached.sets
    loader = gevent.spawn(run, tmp_path, daemons, '--metrics-file',
                          metrics_file, '--uploaders', '1')
    for seen in (50, 150):
        wait_for(lambda: fake_memcached.sets >= sets + seen)
        fake_memcached.restart()
    status, text = loader.get(timeout=60)
    assert status == 1, text
    assert restarts(metrics(metrics_file)) == (2, 3)

    # 3. None: the gauge goes back to 0, the counter stays.
    fake_memcached.delay = 0
    write_gz(tmp_path / '20170929000300.tsv.gz', lines_for('idfa', 10, 'd'))
    status, text = run(tmp_path, daemons, '--metrics-file', metrics_file,
                       '--refill-after-loss')
    assert status == 0, text
    assert restarts(metrics(metrics_file)) == (0, 3)


@pytest.mark.parametrize('where, words', [
    ('nosuchdir/*.tsv.gz', 'does not exist'),
    ('afile/*.tsv.gz', 'is not a directory'),
])
def test_a_pattern_whose_directory_is_wrong_is_never_a_success(
        tmp_path, memcached_set, metrics_file, where, words):
    # First a good run: the last success time is set; the mistyped
    # pattern then fails, says why, and leaves that time as it was.
    write_gz(tmp_path / FIRST, lines_for('idfa', 10))
    assert run(tmp_path, memcached_set, '--metrics-file', metrics_file)[0] \
        == 0
    succeeded = value(metrics(metrics_file),
                      'last_success_timestamp_seconds')
    assert succeeded > 0
    (tmp_path / 'afile').write_text('')
    pattern = str(tmp_path / where)
    log_path = tmp_path / 'wrong.log'
    status = gmemcload.main(['--pattern', pattern, '--log', str(log_path),
                             '--metrics-file', metrics_file]
                            + address_args(memcached_set))
    text = log_path.read_text()
    assert status == 1, text
    assert 'cannot list the files of %s: %s %s (a typo in --pattern?)' % (
        pattern, os.path.dirname(pattern), words) in text
    found = metrics(metrics_file)
    assert value(found, 'last_run_exit_status') == 1
    assert value(found, 'last_success_timestamp_seconds') == succeeded


def test_no_files_in_a_directory_that_exists_is_a_success(
        tmp_path, memcached_set):
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert 'No files match %s' % (tmp_path / '*.tsv.gz') in text


def test_with_a_log_file_warnings_and_errors_reach_stderr_too(
        tmp_path, memcached_set):
    # Under cron, stderr is what gets mailed: a kept file and a usage
    # error must reach it; the log file keeps everything.
    (tmp_path / FIRST).write_bytes(b'not gzip')
    log_path = tmp_path / 'run.log'
    done = subprocess.run(
        [sys.executable, GMEMCLOAD, '--pattern', str(tmp_path / '*.tsv.gz'),
         '--log', str(log_path)] + address_args(memcached_set),
        stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 1
    assert '%s: Failed load: unreadable' % FIRST in done.stderr
    assert 'Processing' not in done.stderr  # info stays in the log
    assert 'Processing' in log_path.read_text()
    assert '%s: Failed load: unreadable' % FIRST in log_path.read_text()
    done = subprocess.run(
        [sys.executable, GMEMCLOAD, '--pattern', str(tmp_path / '*.tsv.gz'),
         '--log', str(log_path), '--idfa', 'nohost'],
        stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 2
    assert 'nohost' in done.stderr


@pytest.mark.parametrize('lock', ['missing', 'directory'])
def test_a_lock_that_cannot_be_opened_exits_2_and_loads_nothing(
        tmp_path, memcached_set, metrics_file, lock):
    lines = lines_for('idfa', 10)
    write_gz(tmp_path / FIRST, lines)
    if lock == 'missing':  # --lock in a directory that does not exist
        extra = ['--lock', str(tmp_path / 'no-such-directory' / 'lock')]
    else:  # the default lock is not a file that can be opened
        (tmp_path / '.gmemcload.lock').mkdir()
        extra = []
    status, text = run(tmp_path, memcached_set, '--metrics-file',
                       metrics_file, *extra)
    assert status == 2, text
    assert 'cannot open lock file' in text and 'Processing' not in text
    assert listing(tmp_path) == [FIRST]
    keys = [expected_value(line)[0] for line in lines]
    assert memcached_set['idfa'].get_many(keys) == {}
    assert value(metrics(metrics_file), 'last_run_exit_status') == 2


@pytest.mark.parametrize('signum, code', [(signal.SIGTERM, 143),
                                          (signal.SIGINT, 130)])
def test_a_stop_noted_while_starting_is_acted_on_once_the_run_can_stop(
        tmp_path, memcached_set, metrics_file, monkeypatch, signum, code):
    # What the handlers installed first note (see the top of gmemcload.py)
    # is acted on as the run starts: no file is loaded.
    monkeypatch.setattr(gmemcload, 'EARLY_SIGNALS', [signum])
    lines = lines_for('idfa', 10)
    write_gz(tmp_path / FIRST, lines)
    status, text = run(tmp_path, memcached_set, '--metrics-file',
                       metrics_file)
    assert status == code, text
    assert listing(tmp_path) == [FIRST]
    keys = [expected_value(line)[0] for line in lines]
    assert memcached_set['idfa'].get_many(keys) == {}
    assert value(metrics(metrics_file), 'last_run_exit_status') == code


def test_a_stopped_run_leaves_its_metrics(tmp_path, memcached_set,
                                          metrics_file):
    write_gz(tmp_path / FIRST, lines_for('gaid', 100))
    memcached_set['gaid'].pause()
    loader = start_loader(tmp_path, memcached_set, '--metrics-file',
                          metrics_file)
    try:
        wait_for_log(tmp_path, 'Processing')
        assert stop_within(loader, signal.SIGTERM, 2.5) == 143
    finally:
        loader.kill()
        memcached_set['gaid'].resume()
    stopped = metrics(metrics_file)
    assert value(stopped, 'last_run_exit_status') == 143
    assert value(stopped, 'last_success_timestamp_seconds') == 0
    assert files(stopped, 'kept') == 1


@pytest.mark.parametrize('signum, code', [(signal.SIGTERM, 143),
                                          (signal.SIGINT, 130)])
def test_a_stop_while_the_program_starts_is_a_stop_too(
        tmp_path, memcached_set, metrics_file, signum, code):
    write_gz(tmp_path / FIRST, lines_for('idfa', 10))
    loader = start_loader(tmp_path, memcached_set, '--metrics-file',
                          metrics_file)
    try:
        # As soon as the program notes stops: it is still importing.
        wait_for(lambda: catches(loader.pid, signal.SIGTERM), 5)
        assert stop_within(loader, signum, 5) == code
    finally:
        loader.kill()
    assert listing(tmp_path) == [FIRST]
    assert value(metrics(metrics_file), 'last_run_exit_status') == code
    assert 'Traceback' not in (tmp_path / 'run.log').read_text()


def test_a_dry_run_stores_nothing_and_is_no_success(tmp_path, metrics_file):
    write_gz(tmp_path / FIRST, lines_for('idfa', 5))
    nowhere = {t: type('A', (), {'address': '127.0.0.1:1'})
               for t in gmemcload.DEVICE_TYPES}
    status, text = run(tmp_path, nowhere, '--dry', '--metrics-file',
                       metrics_file)
    assert status == 0, text
    found = metrics(metrics_file)
    assert value(found, 'last_run_lines') == 5
    assert value(found, 'last_run_records_stored') == 0
    assert value(found, 'records_stored_total') == 0
    assert value(found, 'last_success_timestamp_seconds') == 0
    assert files(found, 'parsed') == 1


def test_a_full_disk_under_the_log_does_not_change_the_outcome(
        tmp_path, memcached_set, metrics_file, capfd):
    write_gz(tmp_path / FIRST, lines_for('idfa', 10))
    status = gmemcload.main(['--pattern', str(tmp_path / '*.tsv.gz'),
                             '--log', '/dev/full', '--workers', '1',
                             '--metrics-file', metrics_file]
                            + address_args(memcached_set))
    assert status == 0
    assert listing(tmp_path) == ['.' + FIRST]
    assert value(metrics(metrics_file), 'last_run_exit_status') == 0
    err = capfd.readouterr().err
    assert 'No space left on device' in err
    assert 'Traceback' not in err  # said once, not per record
    assert err.count('cannot write the log file') <= 2


@pytest.mark.parametrize('log, code', [('no-such-directory/run.log', 2),
                                       ('full', 1)])
def test_a_log_that_cannot_be_opened_still_leaves_metrics(
        tmp_path, memcached_set, metrics_file, monkeypatch, log, code):
    # A log file on a full disk (its open fails with ENOSPC) is exit 1, not
    # bad usage; either way the run leaves its metrics.
    if log == 'full':
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(gmemcload, 'LogFile', full)
    write_gz(tmp_path / FIRST, lines_for('idfa', 10))
    status = gmemcload.main(['--pattern', str(tmp_path / '*.tsv.gz'),
                             '--log', str(tmp_path / log),
                             '--metrics-file', metrics_file]
                            + address_args(memcached_set))
    assert status == code
    assert listing(tmp_path) == [FIRST]
    assert value(metrics(metrics_file), 'last_run_exit_status') == code


@pytest.mark.parametrize('workers, ok', [('64', True), ('65', False)])
def test_workers_are_bounded(workers, ok):
    parser = gmemcload.build_parser()
    if ok:
        assert parser.parse_args(['--workers', workers]).workers == 64
    else:
        with pytest.raises(SystemExit) as caught:
            parser.parse_args(['--workers', workers])
        assert caught.value.code == 2


class Nowhere:
    """A server address no run connects to (the runs here are --dry)."""

    def __init__(self, port):
        self.address = '127.0.0.1:%d' % port


@pytest.mark.parametrize('uploaders, status', [(16384, 0), (16385, 2)])
def test_lanes_are_bounded_by_what_the_encoder_can_number(
        tmp_path, uploaders, status):
    # Four servers: 4 * 16384 lanes is the most; one more is bad usage,
    # said at start, not a failure of every file.
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 3))
    servers = {dev_type: Nowhere(port) for port, dev_type in
               enumerate(gmemcload.DEVICE_TYPES, 1)}
    seen, text = run(tmp_path, servers, '--dry', '--uploaders',
                     str(uploaders))
    assert seen == status, text
    assert ('--uploaders: 4 servers with 16385 lanes each make more than'
            ' 65536 lanes' in text) == bool(status)


def test_a_stop_ends_the_retries_of_a_batch(tmp_path, memcached_set):
    # A server that refuses at once, 10 retries with their backoff: the
    # stop comes during the backoff, and no retry follows it.
    nowhere = type('Nowhere', (), {'address': '127.0.0.1:1'})
    write_gz(tmp_path / FIRST, lines_for('dvid', 10))
    metrics_file = str(tmp_path / 'gmemcload.prom')
    loader = start_loader(tmp_path, dict(memcached_set, dvid=nowhere),
                          '--retries', '10', '--uploaders', '1',
                          '--metrics-file', metrics_file)
    try:
        wait_for_log(tmp_path, 'retry 3/10')
        assert stop_within(loader, signal.SIGTERM, 2) == 143
    finally:
        loader.kill()
    text = (tmp_path / 'run.log').read_text()
    after_the_stop = text.split('SIGTERM received')[1]
    assert 'retry' not in after_the_stop
    assert 'giving up' not in text  # a stop is not a server down
    assert listing(tmp_path) == [FIRST]
    found = metrics(metrics_file)
    assert value(found, 'last_run_server_down', server='127.0.0.1:1') == 0


def test_a_down_servers_remaining_batches_fail_at_once(
        tmp_path, memcached_set, fake_memcached):
    # Five files, a batch each, for a server that resets every
    # connection: the first batch is tried 1 + --retries times, then the
    # server is down and the four others fail with no try of their own.
    fake_memcached.refuse = True
    names = ['2017092900%02d00.tsv.gz' % minute for minute in range(5)]
    for number, name in enumerate(names):
        write_gz(tmp_path / name, lines_for('dvid', 10, tag=str(number))
                 + lines_for('idfa', 2, tag=str(number)))
    status, text = run(tmp_path, dict(memcached_set, dvid=fake_memcached),
                       '--retries', '2', '--uploaders', '1')
    assert status == 1, text
    assert fake_memcached.connections == 1 + 2
    assert text.count('retry 1/2') == 1 and text.count('retry 2/2') == 1
    assert text.count('giving up after 2 retries') == 1
    for name in names:
        assert summary_row(text, name) == (12, 2, 10)


SIGNAL_AS_THE_RUN_ENDS = '''
import os, signal
import gevent
write_metrics = gmemcload.write_metrics
def signalled_then_write(*args):
    os.kill(os.getpid(), signal.SIGTERM)
    gevent.sleep(0.2)  # the handler runs, if there is one
    write_metrics(*args)
gmemcload.write_metrics = signalled_then_write
'''


def test_a_signal_as_the_run_ends_leaves_its_outcome_and_metrics(
        tmp_path, memcached_set, metrics_file):
    # The files are renamed; a SIGTERM comes while the metrics are being
    # written.  It must not kill the process by its default action: the
    # run exits 0, and the metrics say so.
    write_gz(tmp_path / FIRST, lines_for('idfa', 10))
    loader = start_patched_loader(tmp_path, memcached_set,
                                  SIGNAL_AS_THE_RUN_ENDS, '--metrics-file',
                                  metrics_file)
    try:
        assert loader.wait(timeout=20) == 0
    finally:
        loader.kill()
    assert 'SIGTERM received as the run ends: its outcome stands' in (
        tmp_path / 'run.log').read_text()
    assert listing(tmp_path) == ['.' + FIRST]
    assert value(metrics(metrics_file), 'last_run_exit_status') == 0


SIGNAL_AT_EXIT = '''
import atexit, os, signal
def as_the_interpreter_ends():
    # What shutting down does to gevent's handlers, then a SIGTERM.
    for handler in gmemcload.STOP_SIGNALS.handlers or ():
        handler.cancel()
    os.kill(os.getpid(), signal.SIGTERM)
    blocking_sleep(0.2)
atexit.register(as_the_interpreter_ends)
'''


def test_a_signal_while_the_interpreter_ends_leaves_the_outcome(
        tmp_path, memcached_set, metrics_file):
    # After the metrics are written, nothing may turn exit 0 into a death
    # by SIGTERM: gevent's handlers are gone by then, so the signals are
    # ignored.
    write_gz(tmp_path / FIRST, lines_for('idfa', 10))
    loader = start_patched_loader(tmp_path, memcached_set, SIGNAL_AT_EXIT,
                                  '--metrics-file', metrics_file)
    try:
        assert loader.wait(timeout=20) == 0
    finally:
        loader.kill()
    assert listing(tmp_path) == ['.' + FIRST]
    assert value(metrics(metrics_file), 'last_run_exit_status') == 0


@pytest.mark.parametrize('separator', ['\n', '\x85', '\u2028', '\x9b'])
def test_a_file_name_cannot_forge_a_log_line(tmp_path, memcached_set,
                                             separator):
    # A newline, a C1 control (NEL, CSI) or a Unicode line separator: each
    # is logged escaped, so that no reader of the log sees a line begin.
    forged = '20170929000000%s[2017.09.29 00:00:00] I forged.tsv.gz' \
        % separator
    write_gz(tmp_path / forged, lines_for('idfa', 3))
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert not [line for line in text.splitlines()
                if line.startswith('[2017.09.29')]
    assert separator == '\n' or separator not in text
    escaped = repr(separator)[1:-1]
    assert '20170929000000%s[2017.09.29 00:00:00] I forged.tsv.gz:' \
        ' Acceptable error rate' % escaped in text
    assert os.listdir(tmp_path).count('.' + forged) == 1


BIDI_CONTROLS = ('\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e'
                 '\u2066\u2067\u2068\u2069')


def test_a_file_name_cannot_reorder_a_log_line(tmp_path, memcached_set):
    # A right-to-left override shows what follows it backwards: a name
    # could show a log line other than the one written.  Every
    # bidirectional control is logged escaped.
    name = '20170929000000%s.tsv.gz' % BIDI_CONTROLS
    write_gz(tmp_path / name, lines_for('idfa', 3))
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert [control for control in BIDI_CONTROLS if control in text] == []
    escaped = ''.join('\\u%04x' % ord(control) for control in BIDI_CONTROLS)
    assert '20170929000000%s.tsv.gz: Acceptable error rate' % escaped \
        in text
    assert os.listdir(tmp_path).count('.' + name) == 1
    record = logging.LogRecord('gmemcload', logging.INFO, __file__, 0,
                               'Processing %s', (name,), None)
    assert gmemcload.escape_controls(record)
    assert record.getMessage() == 'Processing 20170929000000%s.tsv.gz' \
        % escaped


def test_refused_and_unacknowledged_records_are_errors_never_unsent(
        tmp_path, memcached_set, memcached_factory):
    # Of 106 lines: 100 stored, 2 too large for memcached (refused), 3
    # never acknowledged (their server is down), 1 bad.  Every record was
    # sent, or is a bad line: 6 errors, and none "not sent".
    small = memcached_factory(max_item='512k')
    nowhere = type('Nowhere', (), {'address': '127.0.0.1:%d' % free_port()})
    huge = ','.join(map(str, range(1000000, 1200000)))  # 600 kB packed
    lines = lines_for('idfa', 100) + [
        'idfa\thuge%d\t1\t1\t%s' % (number, huge) for number in range(2)] \
        + lines_for('dvid', 3) + ['idfa\tbad\tx\t1\t1']
    write_gz(tmp_path / FIRST, lines)
    status, text = run(tmp_path, dict(memcached_set, idfa=small,
                                      dvid=nowhere), '--retries', '0')
    assert status == 1, text
    assert 'idfa:huge1 not stored: SERVER_ERROR object too large' in text
    assert '%s: Failed load: 3 records not acknowledged by memcached' \
        % FIRST in text
    assert summary_row(text, FIRST) == (106, 100, 6)
    assert 'total: 1 files, 106 lines, 100 stored, 6 errors; 0 renamed' \
        in text
    assert 'not sent' not in text
    want = dict(map(expected_value, lines[:100]))
    assert small.get_many(list(want) + [b'idfa:huge0', b'idfa:huge1']) \
        == want


SLOW_READS = '''
read = gmemcload.igzip.IGzipFile.read
def slow_read(self, *args):
    blocking_sleep(0.2)  # in the thread pool: the run goes on meanwhile
    return read(self, *args)
gmemcload.igzip.IGzipFile.read = slow_read
'''


def test_after_a_stop_the_summary_adds_up(tmp_path, memcached_set):
    # One batch per file (--batch-size above its lines, and no cut by
    # bytes), read slowly: a stop while it is read leaves every line read
    # unsent, and the total says how many.
    write_gz(tmp_path / FIRST, lines_for('idfa', 300000))
    loader = start_patched_loader(
        tmp_path, memcached_set, SLOW_READS + 'gmemcload.BATCH_BYTES ='
        ' gmemcload.PENDING_BYTES = 1 << 30\n', '--batch-size', '1000000')
    try:
        wait_for_log(tmp_path, 'Processing')
        time.sleep(0.7)
        assert stop_within(loader, signal.SIGTERM, 3) == 143
    finally:
        loader.kill()
    text = (tmp_path / 'run.log').read_text()
    total = re.search(r'total: 1 files, (\d+) lines, (\d+) stored, (\d+)'
                      r' errors, (\d+) not sent \(stopped\); 0 renamed',
                      text)
    assert total, text
    lines, stored, errors, unsent = map(int, total.groups())
    assert 0 < lines < 300000 and stored == errors == 0 and unsent == lines


def test_a_full_disk_for_the_lock_is_a_failure_not_bad_usage(
        tmp_path, memcached_set, monkeypatch):
    def full(self, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(gmemcload.RunLocks, 'acquire', full)
    write_gz(tmp_path / FIRST, lines_for('idfa', 3))
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    assert 'cannot create lock file' in text and 'No space left' in text
    assert 'Processing' not in text
    assert listing(tmp_path) == [FIRST]
