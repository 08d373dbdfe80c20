"""--workers N: one reader, N encoder threads, one writer."""
import os
import signal

import pytest

import generate
import gmemcload
from conftest import (children_of, expected_state, expected_value,
                      lines_for, listing, run, start_loader,
                      start_patched_loader, stop_within, stored_values,
                      summary_row, wait_for_renamed, write_gz)


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
    assert '(%s encoder threads)' % workers in text
    for name in map(os.path.basename, paths):
        assert '%s %10d %10d %8d' % (name.ljust(28), 4000, 4000, 0) in text


def test_lines_split_across_chunks_load_as_with_one_thread(
        tmp_path, memcached_set, monkeypatch):
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 1000)
    lines = lines_for('idfa', 400) + [
        # longer than a chunk, and one crossing several
        'gaid\tlong%d\t1\t2\t%s' % (i, ','.join(str(n) for n in
                                                range(i * 300)))
        for i in range(1, 5)] + lines_for('idfa', 400, 'later')
    path = write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    expected = expected_state([path])
    for workers, encoding in (('1', "the event loop's thread"),
                              ('2', '(2 encoder threads)')):
        for daemon in memcached_set.values():
            daemon.client().flush_all()
        status, text = run(tmp_path, memcached_set, '--workers', workers)
        assert status == 0, text
        assert encoding in text
        assert stored_values(memcached_set, expected) == expected
        # Once more, from a spool that never saw it.
        os.rename(tmp_path / '.20170929000000.tsv.gz', path)
        os.unlink(tmp_path / gmemcload.JOURNAL_FILE_NAME)


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


@pytest.mark.parametrize('signum, code', [(signal.SIGTERM, 143),
                                          (signal.SIGINT, 130)])
def test_a_signal_stops_a_run_with_encoder_threads(
        tmp_path, memcached_set, signum, code):
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 300))
    write_gz(tmp_path / '20170929000100.tsv.gz', lines_for('gaid', 3000))
    memcached_set['gaid'].pause()
    loader = start_loader(tmp_path, memcached_set, '--workers', '3')
    try:
        wait_for_renamed(tmp_path, '20170929000000.tsv.gz')
        assert stop_within(loader, signum, 2.5) == code
    finally:
        loader.kill()
        memcached_set['gaid'].resume()
    assert children_of(loader.pid) == []
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


SLOW_AND_UNEVEN = '''
import random
choose_encoder = gmemcload.choose_encoder
chance = random.Random(7)
def uneven_encoder():
    chosen = choose_encoder()
    def new(routes):
        encode = chosen.new(routes)
        def uneven(data):
            blocking_sleep(chance.choice((0, 0, 0.002, 0.02)))  # a thread
            return encode(data)
        return uneven
    return chosen._replace(new=new)
gmemcload.choose_encoder = uneven_encoder
'''


def test_results_are_taken_in_chunk_order_however_long_each_takes(
        tmp_path, memcached_set):
    # Chunks that take uneven times in 3 threads finish out of order; the
    # writer still takes them in the order they were read, so every key
    # holds the value of its newest line.
    paths = generate.generate(str(tmp_path), files=3, lines=3000,
                              repeat=0.7, seed=5)
    expected = expected_state(paths)
    loader = start_patched_loader(tmp_path, memcached_set, SLOW_AND_UNEVEN,
                                  '--workers', '3')
    try:
        assert loader.wait(timeout=60) == 0
    finally:
        loader.kill()
    assert stored_values(memcached_set, expected) == expected
    assert listing(tmp_path) == ['.' + os.path.basename(p) for p in paths]


def test_an_encoder_out_of_memory_fails_its_file_only(
        tmp_path, memcached_set, monkeypatch, capfd):
    # An exception in an encoder thread is the chunk's result: its file
    # fails (and so the renames after it stop), nothing is printed by the
    # pool, and the run goes on to its end.
    chosen = gmemcload.choose_encoder()

    def short_of_memory(routes):
        encode = chosen.new(routes)

        def encode_or_fail(data):
            if b'gaid\t' in data:
                raise MemoryError()
            return encode(data)
        return encode_or_fail
    monkeypatch.setattr(gmemcload, 'choose_encoder',
                        lambda: chosen._replace(new=short_of_memory))
    write_gz(tmp_path / '20170929000000.tsv.gz', lines_for('idfa', 10))
    write_gz(tmp_path / '20170929000100.tsv.gz', lines_for('gaid', 10))
    write_gz(tmp_path / '20170929000200.tsv.gz', lines_for('adid', 10))
    status, text = run(tmp_path, memcached_set, '--workers', '2')
    assert status == 1, text
    assert '20170929000100.tsv.gz: Failed load: could not be encoded: out' \
        ' of memory' in text
    assert listing(tmp_path) == ['.20170929000000.tsv.gz',
                                 '20170929000100.tsv.gz',
                                 '20170929000200.tsv.gz']
    assert summary_row(text, '20170929000200.tsv.gz') == (10, 10, 0)
    assert 'Traceback' not in capfd.readouterr().err


A_FIFTH_TYPE = '''
import functools
gmemcload.DEVICE_TYPES = gmemcload.DEVICE_TYPES + ('android_id',)
gmemcload.DEFAULT_ADDRESSES = dict(gmemcload.DEFAULT_ADDRESSES,
                                   android_id='127.0.0.1:1')
if %r == 'reference':
    gmemcload.choose_encoder = lambda: gmemcload.EncoderChoice(
        lambda routes: functools.partial(gmemcload.encode_chunk,
                                         routes=routes),
        False, 'reference')
'''


@pytest.mark.parametrize('encoder', ['compiled', 'reference'])
def test_a_new_device_type_is_one_tuple_entry_and_its_address(
        tmp_path, memcached_set, memcached_factory, encoder):
    # What a maintainer changes to add a type (DEVICE_TYPES and
    # DEFAULT_ADDRESSES, done here in the process) is all that either
    # encoder needs: its option exists, and its lines are stored there.
    fifth = memcached_factory()
    lines = [line.replace('idfa', 'android_id', 1)
             for line in lines_for('idfa', 300, tag='a')] \
        + lines_for('idfa', 300, tag='i')
    write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    loader = start_patched_loader(tmp_path, memcached_set,
                                  A_FIFTH_TYPE % encoder,
                                  '--android_id', fifth.address)
    assert loader.wait(timeout=60) == 0
    text = (tmp_path / 'run.log').read_text()
    assert summary_row(text, '20170929000000.tsv.gz') == (600, 600, 0)
    assert ('encoder: compiled' in text) == (encoder == 'compiled')
    wanted = dict(expected_value(line) for line in lines)
    fifth_keys = [key for key in wanted if key.startswith(b'android_id:')]
    assert len(fifth_keys) == 300
    assert fifth.get_many(fifth_keys) == {key: wanted[key]
                                          for key in fifth_keys}
    assert memcached_set['idfa'].get_many(fifth_keys) == {}
    idfa_keys = [key for key in wanted if key.startswith(b'idfa:')]
    assert memcached_set['idfa'].get_many(idfa_keys) == {
        key: wanted[key] for key in idfa_keys}
