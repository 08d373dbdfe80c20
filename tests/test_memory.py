"""Memory: lines up to the line limit, batches cut by bytes, a memcached
slower than the reader, memory running out for one file, and how many
encoder threads ``auto`` takes."""
import gzip
import os
import re
import subprocess
import sys

import pytest

from conftest import (GMEMCLOAD, _vm_hwm_kb, address_args, blocking_sleep,
                      expected_value, lines_for, listing, same_server,
                      start_loader, start_patched_loader, stored_values,
                      summary_row, wait_with_usage, write_gz)
import gmemcload
from proto import appsinstalled_pb2

FIRST = '20170929000000.tsv.gz'
SECOND = '20170929000100.tsv.gz'
MB = 1 << 20
# Peak RSS (VmHWM) of a run, at most, as the README states it: for lines
# up to the line limit that the compiled encoder takes itself, whatever
# --workers, and whatever the lanes and their queues hold.
PEAK_MB = 110


def app_body(size, app='1000000'):
    """Comma-separated app ids, ``app`` and the next 999 in turn, about
    ``size`` bytes: the long app list of a valid line."""
    cycle = ','.join(str(int(app) + i) for i in range(1000)) + ','
    body = (cycle * (size // len(cycle) + 1))[:size]
    return body[:body.rfind(',')]


class LongLines:
    """Valid lines of one device type sharing one long app list, each
    with a key and lat of its own, and their values, encoded here once
    with protobuf (not by the loader)."""

    def __init__(self, dev_type, body):
        self.dev_type = dev_type
        self.body = body.encode()
        self.message = appsinstalled_pb2.UserApps()
        self.message.apps.extend(int(app) for app in body.split(','))
        self.message.lon = 2.5

    def line(self, name):
        return b'%s\t%s\t%d.25\t2.5\t%s' % (
            self.dev_type.encode(), name.encode(), len(name), self.body)

    def expected(self, name):
        self.message.lat = float('%d.25' % len(name))
        return ('%s:%s' % (self.dev_type, name)).encode(), \
            self.message.SerializeToString()


def write_long(path, parts):
    """Write ``parts``, (lines or LongLines, names) in turn, as one gzip
    file, quickly; return {key: value} of its long lines."""
    expected = {}
    with gzip.open(str(path), 'wb', compresslevel=1) as out:
        for long_lines, names in parts:
            for name in names:
                if isinstance(long_lines, LongLines):
                    out.write(long_lines.line(name) + b'\n')
                    key, value = long_lines.expected(name)
                    expected[key] = value
                else:
                    out.write(name.encode() + b'\n')
    return expected


def check_stored(daemon, expected):
    """Every key holds its value, byte for byte (fetched a few at a time:
    the values are megabytes)."""
    keys = sorted(expected)
    for start in range(0, len(keys), 8):
        some = keys[start:start + 8]
        assert daemon.get_many(some) == {key: expected[key]
                                         for key in some}


# -- lines up to the line limit --

@pytest.mark.parametrize('workers', ['auto', '8'])
def test_lines_of_7_mb_load_byte_for_byte_within_the_bound(
        tmp_path, memcached_factory, workers):
    # A batch of --batch-size such records would be gigabytes; each of
    # these is about 2.6 MB, so batches are cut by bytes, and the peak
    # stays the same with 2 or 8 encoder threads.
    daemon = memcached_factory(memory_mb=512, max_item='8m')
    long_lines = LongLines('idfa', app_body(7 * MB))
    names = ['dev%03d' % i for i in range(60)]
    expected = write_long(tmp_path / FIRST, [(long_lines, names)])
    loader = start_loader(tmp_path, same_server(daemon), '--workers',
                          workers)
    status, _, peak_mb = wait_with_usage(loader, 300)
    text = (tmp_path / 'run.log').read_text()
    assert status == 0, text[-3000:]
    assert summary_row(text, FIRST) == (60, 60, 0)
    assert peak_mb < PEAK_MB, peak_mb
    check_stored(daemon, expected)


RECORD_BATCHES = '''
exchange = gmemcload.Connection.exchange
def recorded(self, payload, count):
    with open(%r, 'a') as out:
        out.write('%%d %%d\\n' %% (len(payload), count))
    return exchange(self, payload, count)
gmemcload.Connection.exchange = recorded
'''


def test_batches_are_cut_by_bytes_and_a_bigger_record_goes_alone(
        tmp_path, memcached_factory):
    # Every batch on the wire is at most BATCH_BYTES, or one record: lines
    # of about 1.5 MB (records of about 0.6 MB: three to a batch), lines
    # near the line limit (records over BATCH_BYTES) with small lines
    # in the same chunk, and small lines between them.
    limit = gmemcload.BATCH_BYTES
    daemon = memcached_factory(memory_mb=256, max_item='8m')
    medium = LongLines('idfa', app_body(1500000))
    huge = LongLines('idfa', app_body(gmemcload.MAX_LINE_BYTES - 1000,
                                      app='1'))
    small = lines_for('idfa', 3000, tag='s')
    parts = []
    for round_ in range(3):
        parts += [(None, small[1000 * round_:1000 * round_ + 500]),
                  (medium, ['m%d-%02d' % (round_, i) for i in range(8)]),
                  (huge, ['h%d' % round_]),
                  (None, small[1000 * round_ + 500:1000 * round_ + 1000])]
    expected = write_long(tmp_path / FIRST, parts)
    batches = tmp_path / 'batches'
    loader = start_patched_loader(tmp_path, same_server(daemon),
                                  RECORD_BATCHES % str(batches),
                                  '--uploaders', '1')
    assert loader.wait(timeout=120) == 0
    text = (tmp_path / 'run.log').read_text()
    assert summary_row(text, FIRST) == (3027, 3027, 0)
    sizes = [tuple(map(int, row.split()))
             for row in batches.read_text().splitlines()]
    assert sum(count for _, count in sizes) == 3027
    assert [(size, count) for size, count in sizes
            if size > limit and count > 1] == []
    # The three huge records went alone; some batches held several.
    assert len([size for size, _ in sizes if size > limit]) == 3
    assert max(count for size, count in sizes if size > limit // 2) > 1
    check_stored(daemon, expected)
    wanted = dict(expected_value(line) for line in small)
    assert stored_values(same_server(daemon), wanted) == wanted


def test_pending_batches_of_many_lanes_are_bounded_in_bytes(
        tmp_path, memcached_factory):
    # 300 records of 0.5 MB over 64 lanes: no lane's batch reaches
    # --batch-size or BATCH_BYTES before the file's end, so only the bound
    # of all pending batches together keeps them from holding the file.
    daemon = memcached_factory(memory_mb=512, max_item='2m')
    long_lines = LongLines('idfa', app_body(MB))
    expected = write_long(tmp_path / FIRST, [(long_lines, [
        'p%03d' % i for i in range(300)])])
    loader = start_loader(tmp_path, same_server(daemon), '--uploaders',
                          '64')
    status, _, peak_mb = wait_with_usage(loader, 180)
    text = (tmp_path / 'run.log').read_text()
    assert status == 0, text[-3000:]
    assert summary_row(text, FIRST) == (300, 300, 0)
    assert peak_mb < PEAK_MB, peak_mb
    check_stored(daemon, expected)


# -- a memcached slower than the reader --

def test_memory_stays_bounded_while_memcached_is_paused(
        tmp_path, memcached_factory):
    # 64 lanes of one server, each with its queue, and files whose records
    # (0.5 MB each) outgrow what the lanes may hold: while memcached is
    # stopped, the writer waits on the lanes' bytes, the reader on the
    # writer, and the files wait; the peak stays under the bound while
    # paused and to the end, and every record is stored once it resumes.
    daemon = memcached_factory(memory_mb=1024, max_item='2m')
    long_lines = LongLines('idfa', app_body(MB))
    expected = {}
    names = []
    for minute in range(5):
        name = '2017092900%02d00.tsv.gz' % minute
        names.append(name)
        expected.update(write_long(tmp_path / name, [(long_lines, [
            'f%d-%03d' % (minute, i) for i in range(100)])]))
    daemon.pause()
    try:
        loader = start_loader(tmp_path, same_server(daemon), '--uploaders',
                              '64', '--timeout', '120', '--workers', '2')
        blocking_sleep(6)  # what it reads meanwhile, it holds
        assert loader.poll() is None
        paused_mb = _vm_hwm_kb(loader.pid) / 1024
        text = (tmp_path / 'run.log').read_text()
    finally:
        daemon.resume()
    assert 'Processing %s' % (tmp_path / names[0]) in text
    assert 'Processing %s' % (tmp_path / names[-1]) not in text  # waits
    status, _, peak_mb = wait_with_usage(loader, 180)
    text = (tmp_path / 'run.log').read_text()
    assert status == 0, text[-3000:]
    assert paused_mb < PEAK_MB, paused_mb
    assert peak_mb < PEAK_MB, peak_mb
    for name in names:
        assert summary_row(text, name) == (100, 100, 0)
    check_stored(daemon, expected)


# -- memory running out for one file --

# Each patch raises MemoryError once, in one place, for the first file
# only (its lines have ids starting with 'a'), with the options of its
# run: what it says, and the first file's verdict.
ON_THE_THIRD_BATCH = '''
batches = []
class Batch(gmemcload.Batch):
    __slots__ = ()
    def __init__(self, load, payload, count):
        if load.name == %r:
            batches.append(1)
            if len(batches) == 3:
                raise MemoryError()
        super().__init__(load, payload, count)
gmemcload.Batch = Batch
''' % FIRST
OUT_OF_MEMORY = {
    'writing': (ON_THE_THIRD_BATCH, 'out of memory while writing'),
    # Every batch is cut at the file's end: the third fails, with five
    # lanes' batches still pending.
    'writing-its-end': (ON_THE_THIRD_BATCH, 'out of memory while writing',
                        '--batch-size', '100000'),
    'reading': ('''
read_chunks = gmemcload.read_chunks
calls = []
def short_of_memory(read):
    calls.append(1)
    for number, chunk in enumerate(read_chunks(read)):
        if len(calls) == 1 and number == 1:
            raise MemoryError()
        yield chunk
gmemcload.read_chunks = short_of_memory
''', 'out of memory while reading'),
    'encoding': ('''
chosen = gmemcload.choose_encoder()
def new(routes):
    encode = chosen.new(routes)
    seen = []
    def short_of_memory(data):
        if b'\\ta' in data:
            seen.append(1)
            if len(seen) == 2:
                raise MemoryError()
        return encode(data)
    return short_of_memory
gmemcload.choose_encoder = lambda: chosen._replace(new=new)
''', 'could not be encoded: out of memory'),
    'sending': ('''
exchange = gmemcload.Connection.exchange
sent = []
def short_of_memory(self, payload, count):
    if b'\\r\\n\\x0a' in payload and b':a' in payload:
        sent.append(1)
        if len(sent) == 2:
            raise MemoryError()
    return exchange(self, payload, count)
gmemcload.Connection.exchange = short_of_memory
''', 'records not acknowledged by memcached (out of memory)'),
}


@pytest.mark.parametrize('where', sorted(OUT_OF_MEMORY))
def test_memory_running_out_fails_only_its_file(
        tmp_path, memcached_set, capfd, where):
    # The first file (two chunks, many batches in each lane) runs out of
    # memory once: it is kept with a verdict that says so, logged without
    # a traceback; nothing of it is left pending, so the second file,
    # with the same keys and values of its own, loads with exact counts;
    # no line is left unaccounted for (no "not sent" without a stop).
    patch, words, *extra = OUT_OF_MEMORY[where]
    first = [line for dev_type in gmemcload.DEVICE_TYPES
             for line in lines_for(dev_type, 15000, tag='a')]
    second = [line for dev_type in gmemcload.DEVICE_TYPES
              for line in lines_for(dev_type, 15000, tag='a', version=7)]
    write_gz(tmp_path / FIRST, first)
    write_gz(tmp_path / SECOND, second)
    loader = start_patched_loader(tmp_path, memcached_set, patch,
                                  *(extra or ['--batch-size', '500']))
    assert loader.wait(timeout=120) == 1
    text = (tmp_path / 'run.log').read_text()
    assert '%s: Failed load: ' % FIRST in text and words in text, text
    assert 'Traceback' not in text and 'internal error' not in text
    assert 'Traceback' not in capfd.readouterr().err
    lines, stored, errors = summary_row(text, FIRST)
    assert lines == stored + errors and stored < 60000
    assert summary_row(text, SECOND) == (60000, 60000, 0)
    assert 'not sent' not in text
    total = re.search(r'total: 2 files, (\d+) lines, (\d+) stored, (\d+)'
                      r' errors; 0 renamed', text)
    assert total and tuple(map(int, total.groups())) == (
        lines + 60000, stored + 60000, errors), text[-2000:]
    assert listing(tmp_path) == [FIRST, SECOND]
    wanted = dict(expected_value(line) for line in second)
    assert stored_values(memcached_set, wanted) == wanted


# -- encoder threads --

def test_workers_auto_takes_the_cpus_the_process_may_use(
        tmp_path, memcached_set):
    # Pinned to one CPU (of however many the host has), auto is one
    # thread: the encoder runs in the event loop's thread.
    write_gz(tmp_path / FIRST, lines_for('idfa', 100))
    cpu = min(os.sched_getaffinity(0))
    loader = subprocess.Popen(
        [sys.executable, GMEMCLOAD, '--pattern', str(tmp_path / '*.tsv.gz'),
         '--log', str(tmp_path / 'run.log'), '--workers', 'auto']
        + address_args(memcached_set),
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert loader.wait(timeout=60) == 0
    text = (tmp_path / 'run.log').read_text()
    assert "'workers': 1," in text
    assert "encoding in the event loop's thread: --workers 1" in text
    assert summary_row(text, FIRST) == (100, 100, 0)


def test_workers_auto_falls_back_to_the_cpu_count(monkeypatch):
    monkeypatch.delattr(os, 'sched_getaffinity')
    args = gmemcload.build_parser().parse_args(['--workers', 'auto'])
    assert args.workers == min(gmemcload.MAX_WORKERS, os.cpu_count())


def test_blank_lines_take_no_memory_per_line_with_64_threads(
        tmp_path, memcached_set):
    # 200 MB of blank lines: neither the encoder's scratch nor the chunks
    # in flight grow with the number of lines or of threads.
    with gzip.open(str(tmp_path / FIRST), 'wb') as out:
        for _ in range(200):
            out.write(b'\n' * MB)
        out.write(lines_for('gaid', 1)[0].encode() + b'\n')
    loader = start_loader(tmp_path, memcached_set, '--workers', '64')
    status, _, peak_mb = wait_with_usage(loader, 120)
    text = (tmp_path / 'run.log').read_text()
    assert status == 0, text[-2000:]
    assert summary_row(text, FIRST) == (1, 1, 0)
    assert peak_mb < 80, peak_mb
