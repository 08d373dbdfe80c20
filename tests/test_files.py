"""What the loader reads and in what order: only regular files, never a
wait that a stop cannot end; lateness in load order."""
import signal
import time

import pytest

from conftest import (expected_value, files, lines_for, listing, metrics,
                      run, start_patched_loader, stop_within, stored_values,
                      summary_row, value, wait_for, wait_for_log,
                      wait_for_renamed, write_gz)
from daemons import free_port

FIRST, SECOND, THIRD = ('20170929000000.tsv.gz', '20170929000100.tsv.gz',
                        '20170929000200.tsv.gz')


def write_three(tmp_path):
    """Three files of 20 idfa lines each, distinct keys: their lines."""
    written = []
    for number, name in enumerate((FIRST, SECOND, THIRD)):
        lines = lines_for('idfa', 20, tag='f%d-' % number)
        write_gz(tmp_path / name, lines)
        written.append(lines)
    return written


def keys_of(lines):
    return [expected_value(line)[0] for line in lines]


SWAP_FOR_A_FIFO = '''
import os
listed = gmemcload.find_files
def find_then_swap(pattern):
    paths = listed(pattern)
    os.unlink(paths[1])
    os.mkfifo(paths[1])
    return paths
gmemcload.find_files = find_then_swap
'''


def test_a_file_swapped_for_a_fifo_after_listing_is_kept(
        tmp_path, memcached_set):
    # Opening a FIFO waits for a writer: it must be refused at once, not
    # waited on, and the files around it still load.  (In a process of
    # its own, so that a wait fails the test instead of hanging it.)
    first, second, third = write_three(tmp_path)
    loader = start_patched_loader(tmp_path, memcached_set, SWAP_FOR_A_FIFO)
    try:
        assert loader.wait(timeout=20) == 1
    finally:
        loader.kill()
    text = (tmp_path / 'run.log').read_text()
    assert listing(tmp_path) == ['.' + FIRST, SECOND, THIRD]
    assert '%s: Failed load: unreadable: not a regular file' % SECOND in text
    assert summary_row(text, FIRST) == (20, 20, 0)
    assert stored_values(memcached_set, keys_of(first)) == dict(
        map(expected_value, first))
    assert memcached_set['idfa'].get_many(keys_of(second)) == {}
    # The third is loaded, and kept: a file before it was not loaded.
    assert summary_row(text, THIRD) == (20, 20, 0)


HANG_OPEN = '''
opened = gmemcload.open_regular
def open_regular(path):
    if path.endswith(%r):
        print('hanging', flush=True)
        blocking_sleep(3600)
    return opened(path)
gmemcload.open_regular = open_regular
''' % SECOND

HANG_READ = '''
import os
read = gmemcload.igzip.IGzipFile.read
def hanging_read(self, *args):
    if os.path.basename(os.readlink('/proc/self/fd/%%d'
                                    %% self.fileobj.fileno())) == %r:
        blocking_sleep(3600)
    return read(self, *args)
gmemcload.igzip.IGzipFile.read = hanging_read
''' % SECOND


@pytest.mark.parametrize('where', ['open', 'read'])
def test_a_stop_ends_a_run_whose_open_or_read_never_returns(
        tmp_path, memcached_set, where):
    # A hung filesystem: the open or a read of the second file never
    # returns.  The first file is renamed, a stop ends the run at once
    # with its metrics, and the process exits though a thread still waits.
    first, second, third = write_three(tmp_path)
    metrics_file = str(tmp_path / 'gmemcload.prom')
    loader = start_patched_loader(
        tmp_path, memcached_set, HANG_OPEN if where == 'open' else HANG_READ,
        '--metrics-file', metrics_file)
    try:
        wait_for_log(tmp_path, 'Processing %s' % (tmp_path / SECOND))
        wait_for_renamed(tmp_path, FIRST)
        assert stop_within(loader, signal.SIGTERM, 3) == 143
    finally:
        loader.kill()
    assert listing(tmp_path) == ['.' + FIRST, SECOND, THIRD]
    assert stored_values(memcached_set, keys_of(first)) == dict(
        map(expected_value, first))
    assert memcached_set['idfa'].get_many(keys_of(second + third)) == {}
    found = metrics(metrics_file)
    assert value(found, 'last_run_exit_status') == 143
    assert files(found, 'renamed') == 1
    assert files(found, 'kept', 'stopped') == 2


BLOCK_INSIDE_A_READ = """
import io
import os


class Silent(io.FileIO):
    # A pipe whose writer never writes: a read blocks in the kernel,
    # holding the locks of the streams above it, as a read of a FIFO or
    # of a hung filesystem does.
    def readinto(self, buffer):
        open(%(marker)r, 'w').close()
        return super().readinto(buffer)


writers = []
opened = gmemcload.open_regular


def open_regular(path):
    found = opened(path)
    if not path.endswith(%(name)r):
        return found
    found.file.close()
    reader, writer = os.pipe()
    writers.append(writer)
    return gmemcload.OpenedFile(io.BufferedReader(Silent(reader)),
                                found.status)


gmemcload.open_regular = open_regular
"""


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_stop_ends_a_run_whose_read_blocks_holding_its_stream(
        tmp_path, memcached_set, signum):
    # The second file's read blocks for good, inside its stream: closing
    # the stream would wait for that read.  A stop still ends the run at
    # once, with 128 + the signal and its metrics; the stream is left to
    # close when its read returns, if ever.
    first, second, third = write_three(tmp_path)
    marker = tmp_path / 'reading'
    metrics_file = str(tmp_path / 'gmemcload.prom')
    loader = start_patched_loader(
        tmp_path, memcached_set, BLOCK_INSIDE_A_READ % {
            'marker': str(marker), 'name': SECOND},
        '--metrics-file', metrics_file)
    try:
        wait_for_renamed(tmp_path, FIRST)
        wait_for(marker.exists)  # the read is blocked
        assert stop_within(loader, signum, 5) == 128 + signum
    finally:
        loader.kill()
    assert listing(tmp_path) == ['.' + FIRST, SECOND, THIRD]
    assert stored_values(memcached_set, keys_of(first)) == dict(
        map(expected_value, first))
    assert memcached_set['idfa'].get_many(keys_of(second + third)) == {}
    found = metrics(metrics_file)
    assert value(found, 'last_run_exit_status') == 128 + signum
    assert files(found, 'renamed') == 1
    assert files(found, 'kept', 'stopped') == 2


def test_reload_processed_refills_a_restarted_memcached_newest_wins(
        tmp_path, memcached_set):
    # Two files processed, then memcached restarts empty and a third file
    # arrives.  --reload-processed loads the processed ones again, in
    # order, renaming none, then the new one: every key holds the value of
    # the newest file that has it.
    versions = [lines_for('idfa', 30, version=number)[number * 10:]
                for number in range(3)]  # keys 0-29, 10-29, 20-29
    for name, lines in zip((FIRST, SECOND), versions):
        write_gz(tmp_path / name, lines)
    assert run(tmp_path, memcached_set)[0] == 0
    memcached_set['idfa'].restart()
    write_gz(tmp_path / THIRD, versions[2])
    metrics_file = str(tmp_path / 'gmemcload.prom')
    status, text = run(tmp_path, memcached_set, '--reload-processed',
                       '--metrics-file', metrics_file)
    assert status == 0, text
    assert listing(tmp_path) == ['.' + FIRST, '.' + SECOND, '.' + THIRD]
    assert summary_row(text, '.' + FIRST) == (30, 30, 0)
    assert summary_row(text, '.' + SECOND) == (20, 20, 0)
    assert summary_row(text, THIRD) == (10, 10, 0)
    assert 'kept: late' not in text
    want = {}
    for lines in versions:
        want.update(map(expected_value, lines))
    assert stored_values(memcached_set, list(want)) == want
    found = metrics(metrics_file)
    assert files(found, 'reloaded') == 2
    assert files(found, 'renamed') == 1
    assert files(found, 'kept') == 0


def test_a_processed_file_that_cannot_be_reloaded_fails_the_run(
        tmp_path, memcached_set):
    # A processed file is corrupt: it stays as it is, the run exits 1 and
    # says to restore or remove it, and the new file after it is loaded
    # but kept.
    write_gz(tmp_path / ('.' + FIRST), lines_for('idfa', 10))
    (tmp_path / ('.' + SECOND)).write_bytes(b'not gzip')
    third = lines_for('gaid', 10)
    write_gz(tmp_path / THIRD, third)
    metrics_file = str(tmp_path / 'gmemcload.prom')
    status, text = run(tmp_path, memcached_set, '--reload-processed',
                       '--metrics-file', metrics_file)
    assert status == 1, text
    assert listing(tmp_path) == ['.' + FIRST, '.' + SECOND, THIRD]
    assert '.%s: Failed load: unreadable' % SECOND in text
    # Corrupt: no memcached coming up helps, only the file restored or
    # removed.
    assert '.%s: this processed file is corrupt or cannot be read: loading' \
        ' it again cannot help; restore it from a copy, or remove it' \
        % SECOND in text
    assert 'once memcached is up' not in text
    found = metrics(metrics_file)
    assert files(found, 'kept', 'unreadable') == 1
    assert files(found, 'reloaded') == 1
    assert summary_row(text, THIRD) == (10, 10, 0)
    assert stored_values(memcached_set, keys_of(third)) == dict(
        map(expected_value, third))
    assert (tmp_path / ('.' + SECOND)).read_bytes() == b'not gzip'


def test_a_processed_file_not_reloaded_for_memcached_says_to_try_again(
        tmp_path, memcached_set):
    # The file is sound and its server is down: a later run, once
    # memcached is up, loads it; nothing calls it corrupt.
    nowhere = type('Nowhere', (), {'address': '127.0.0.1:%d' % free_port()})
    write_gz(tmp_path / ('.' + FIRST), lines_for('dvid', 10))
    status, text = run(tmp_path, dict(memcached_set, dvid=nowhere),
                       '--reload-processed', '--retries', '0')
    assert status == 1, text
    assert '.%s: Failed load: 10 records not acknowledged' % FIRST in text
    assert 'run with --reload-processed again once memcached is up' in text
    assert 'corrupt' not in text
    assert listing(tmp_path) == ['.' + FIRST]


def test_without_reload_processed_processed_files_are_not_loaded(
        tmp_path, memcached_set):
    lines = lines_for('idfa', 10)
    write_gz(tmp_path / ('.' + FIRST), lines)
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert memcached_set['idfa'].get_many(keys_of(lines)) == {}


def test_reload_processed_follows_the_order_files_were_processed(
        tmp_path, memcached_set):
    # backfill.tsv.gz is processed first, a minute file with newer values
    # for the same keys in a later run.  By name the backfill sorts last;
    # reloaded so, its older values would win.
    older = lines_for('idfa', 20)
    newer = lines_for('idfa', 20, version=3)
    write_gz(tmp_path / 'backfill.tsv.gz', older)
    assert run(tmp_path, memcached_set)[0] == 0
    time.sleep(0.05)  # a later rename
    write_gz(tmp_path / FIRST, newer)
    assert run(tmp_path, memcached_set)[0] == 0
    memcached_set['idfa'].restart()
    status, text = run(tmp_path, memcached_set, '--reload-processed')
    assert status == 0, text
    assert stored_values(memcached_set, keys_of(newer)) == dict(
        map(expected_value, newer))
    assert text.index('Processing %s' % (tmp_path / '.backfill.tsv.gz')) < \
        text.rindex('Processing %s' % (tmp_path / ('.' + FIRST)))
