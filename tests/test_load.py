"""End to end against real memcached: values, newest wins, renames."""
import os

import memcache
import pytest

import generate
import gmemcload
from conftest import (expected_state, expected_value, lines_for, listing,
                      run, stored_values, summary_row, write_gz)

FIRST, SECOND, THIRD = ('20170929000000.tsv.gz', '20170929000100.tsv.gz',
                        '20170929000200.tsv.gz')


def test_generated_files_load_byte_exact_with_newest_winning(
        tmp_path, memcached_set):
    paths = generate.generate(str(tmp_path), files=3, lines=3000,
                              repeat=0.5, seed=7)
    expected = expected_state(paths)
    status, text = run(tmp_path, memcached_set, '--batch-size', '50',
                       '--uploaders', '3')
    assert status == 0, text
    assert stored_values(memcached_set, expected) == expected
    assert listing(tmp_path) == ['.' + os.path.basename(p) for p in paths]
    assert text.count('Acceptable error rate (0). Successful load') == 3


def test_newest_wins_across_files_and_within_a_file(tmp_path, memcached_set):
    write_gz(tmp_path / '20170929000000.tsv.gz', [
        'idfa\tk1\t1\t1\t1', 'gaid\tk2\t1\t1\t1', 'idfa\tk1\t2\t2\t2'])
    write_gz(tmp_path / '20170929000100.tsv.gz', [
        'idfa\tk3\t3\t3\t3', 'gaid\tk2\t3\t3\t3'])
    write_gz(tmp_path / '20170929000200.tsv.gz', [
        'idfa\tk1\t4\t4\t4', 'idfa\tk3\t5\t5\t5', 'idfa\tk3\t6\t6\t6'])
    status, text = run(tmp_path, memcached_set, '--batch-size', '1',
                       '--uploaders', '4')
    assert status == 0, text
    want = {
        b'idfa:k1': expected_value('idfa\tk1\t4\t4\t4')[1],
        b'gaid:k2': expected_value('gaid\tk2\t3\t3\t3')[1],
        b'idfa:k3': expected_value('idfa\tk3\t6\t6\t6')[1],
    }
    assert stored_values(memcached_set, want) == want


def record_renames(monkeypatch):
    """The paths gmemcload renames from, in the order it renames them."""
    renamed = []
    real_rename = gmemcload.rename_noreplace

    def rename(source, target):
        renamed.append(source)
        real_rename(source, target)

    monkeypatch.setattr(gmemcload, 'rename_noreplace', rename)
    return renamed


def test_files_are_taken_by_name_not_mtime_and_renamed_in_order(
        tmp_path, memcached_set, monkeypatch):
    # Written newest name first, with mtimes that sort the other way; every
    # file sets the same keys to values of its own.
    names = [THIRD, SECOND, FIRST]
    paths = {}
    for age, name in enumerate(names):
        paths[name] = write_gz(tmp_path / name,
                               lines_for('idfa', 50, version=age))
        os.utime(paths[name], (1000 + age, 1000 + age))
    write_gz(tmp_path / '.20170928235900.tsv.gz', ['idfa\told\t1\t1\t1'])
    renamed = record_renames(monkeypatch)
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert renamed == [paths[name] for name in sorted(names)]
    # THIRD, written first and oldest by mtime, has the newest values.
    expected = dict(map(expected_value, lines_for('idfa', 50, version=0)))
    assert stored_values(memcached_set, expected) == expected
    assert memcached_set['idfa'].get_many([b'idfa:old']) == {}


@pytest.mark.parametrize('directories', [('a', 'b'), ('b', 'a')])
def test_files_load_by_name_whatever_their_directory(
        tmp_path, memcached_set, monkeypatch, directories):
    # An older minute in a directory that sorts later must still load
    # first, so that the newer minute's values win.
    older_dir, newer_dir = directories
    for directory in directories:
        (tmp_path / directory).mkdir()
    newer = write_gz(tmp_path / newer_dir / SECOND,
                     lines_for('idfa', 40, version=2))
    older = write_gz(tmp_path / older_dir / FIRST,
                     lines_for('idfa', 40, version=1))
    os.utime(older, (2000, 2000))
    os.utime(newer, (1000, 1000))
    renamed = record_renames(monkeypatch)
    status, text = run(tmp_path, memcached_set,
                       '--pattern', str(tmp_path / '*' / '*.tsv.gz'))
    assert status == 0, text
    assert renamed == [older, newer]
    expected = dict(map(expected_value, lines_for('idfa', 40, version=2)))
    assert stored_values(memcached_set, expected) == expected


def test_the_first_failed_file_stops_the_renames(tmp_path, memcached_set):
    write_gz(tmp_path / '20170929000000.tsv.gz', ['idfa\ta\t1\t1\t1'])
    (tmp_path / '20170929000100.tsv.gz').write_bytes(b'not gzip at all\n')
    write_gz(tmp_path / '20170929000200.tsv.gz', ['idfa\tc\t1\t1\t1'])
    status, text = run(tmp_path, memcached_set)
    assert status == 1
    assert listing(tmp_path) == ['.20170929000000.tsv.gz',
                                 '20170929000100.tsv.gz',
                                 '20170929000200.tsv.gz']
    assert 'unreadable' in text
    assert 'an earlier file was not loaded' in text
    # The later file was still loaded; only its rename waits for a re-run.
    assert memcached_set['idfa'].get_many([b'idfa:c'])


def test_a_truncated_gzip_is_kept_and_fails_the_run(
        tmp_path, memcached_set):
    lines = ['idfa\t%06d\t1\t1\t%d' % (i, i) for i in range(20000)]
    path = write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) * 2 // 3])
    status, text = run(tmp_path, memcached_set)
    assert status == 1
    assert listing(tmp_path) == ['20170929000000.tsv.gz']
    assert 'Failed load: unreadable' in text


@pytest.mark.parametrize('bad, limit, loaded', [
    (1, None, True),    # 1 / 100 = 0.01, at the default limit
    (2, None, False),   # 2 / 100 = 0.02
    (2, '0.02', True),
    (0, '0', True),
    (1, '0', False),
])
def test_the_error_rate_threshold_decides_the_rename(
        tmp_path, memcached_set, bad, limit, loaded):
    lines = ['idfa\tgood%d\t1\t1\t1' % i for i in range(100 - bad)]
    lines += ['idfa\tbad\tnot-a-number\t1\t1'] * bad
    lines += ['', '   ']  # blank lines are not counted
    write_gz(tmp_path / FIRST, lines)
    write_gz(tmp_path / SECOND, lines_for('gaid', 10))  # always good
    extra = ['--max-error-rate', limit] if limit else []
    status, text = run(tmp_path, memcached_set, *extra)
    assert status == (0 if loaded else 1)
    mark = '.' if loaded else ''
    assert listing(tmp_path) == [mark + FIRST, mark + SECOND]
    assert summary_row(text, FIRST) == (100, 100 - bad, bad)
    if loaded:
        assert 'Acceptable error rate' in text
    else:
        assert 'High error rate (%.4g > %.4g). Failed load' % (
            bad / 100, float(limit or 0.01)) in text
        assert '%s: kept: an earlier file was not loaded' % SECOND in text


@pytest.mark.parametrize('workers', ['1', '2'])
def test_a_files_errors_are_summed_over_all_its_chunks(
        tmp_path, memcached_set, monkeypatch, workers):
    # About 20 lines a chunk, a bad line in every few: every chunk's count
    # must reach the file's.
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 512)
    lines = []
    for i in range(600):
        lines.append('idfa\tg%04d\t1\t1\t%d' % (i, i) if i % 30
                     else 'idfa\tbad%d\tx\t1\t1' % i)
    write_gz(tmp_path / FIRST, lines)
    status, text = run(tmp_path, memcached_set, '--workers', workers,
                       '--max-error-rate', '0.05', '--batch-size', '7')
    assert status == 0, text
    assert summary_row(text, FIRST) == (600, 580, 20)
    assert 'Acceptable error rate (0.03333). Successful load' in text
    assert '15 more bad lines not shown' in text
    good = [line for line in lines if 'bad' not in line]
    want = dict(map(expected_value, good))
    assert stored_values(memcached_set, want) == want


@pytest.mark.parametrize('workers', ['1', '2'])
def test_an_app_id_of_thousands_of_digits_is_dropped_not_a_crash(
        tmp_path, memcached_set, workers):
    # int() refuses more than 4300 digits: such an item is one dropped app
    # id, never a failed chunk or a dead encoder.
    lines = lines_for('idfa', 50)
    lines[10] = 'idfa\tlong\t1\t2\t3,%s,4' % ('9' * 5000)
    lines[20] = 'idfa\tzeros\t1\t2\t%s5' % ('0' * 5000)
    write_gz(tmp_path / FIRST, lines)
    status, text = run(tmp_path, memcached_set, '--workers', workers)
    assert status == 0, text
    assert summary_row(text, FIRST) == (50, 50, 0)
    want = dict(map(expected_value, lines[:10] + lines[11:20] + lines[21:]
                    + ['idfa\tlong\t1\t2\t3,4', 'idfa\tzeros\t1\t2\t5']))
    assert stored_values(memcached_set, want) == want


def test_dropped_app_ids_are_not_errors(tmp_path, memcached_set):
    lines = ['idfa\td%04d\t1\t2\t%d,x%d,%d' % (i, i, i, i + 1)
             for i in range(500)]
    write_gz(tmp_path / FIRST, lines)
    status, text = run(tmp_path, memcached_set, '--max-error-rate', '0')
    assert status == 0, text
    assert summary_row(text, FIRST) == (500, 500, 0)
    assert listing(tmp_path) == ['.' + FIRST]
    want = dict(expected_value('idfa\td%04d\t1\t2\t%d,%d' % (i, i, i + 1))
                for i in range(500))
    assert stored_values(memcached_set, want) == want
    assert text.count('dropped 1 app ids that are not uint32') == 5
    assert '495 more lines with dropped app ids not shown' in text


def test_bad_lines_are_logged_a_few_in_full_then_counted(
        tmp_path, memcached_set):
    lines = ['idfa\tg%d\t1\t1\t1' % i for i in range(1000)]
    lines += ['zzzz\tx\t1\t1\t1'] * 3 + ['idfa\tx\t1\t1'] * 7
    write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    status, text = run(tmp_path, memcached_set, '--max-error-rate', '0.1')
    assert status == 0
    assert text.count('unknown device type line') == 3
    assert text.count('malformed line') == 2
    assert '5 more bad lines not shown' in text


def test_several_servers_for_one_type_share_its_keys_as_the_client_hashes(
        tmp_path, memcached_set, memcached_factory):
    extra = [memcached_factory(), memcached_factory()]
    servers = [memcached_set['idfa']] + extra
    lines = ['idfa\tdev%04d\t1\t2\t%d' % (i, i) for i in range(600)]
    write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    status, text = run(tmp_path, memcached_set, '--idfa',
                       ','.join(s.address for s in servers))
    assert status == 0, text
    counts = [len(s.get_many(b'idfa:dev%04d' % i for i in range(600)))
              for s in servers]
    assert sum(counts) == 600 and min(counts) > 100
    reader = memcache.Client([s.address for s in servers])
    want = dict(expected_value(line) for line in lines)
    assert reader.get_multi(list(want)) == want


def test_a_record_memcached_cannot_store_is_an_error_not_a_crash(
        tmp_path, memcached_set):
    huge_apps = ','.join(['4000000000'] * 300000)  # ~1.5 MB packed value
    lines = ['idfa\tg%d\t1\t1\t1' % i for i in range(199)]
    lines.insert(100, 'idfa\thuge\t1\t1\t' + huge_apps)
    write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    status, text = run(tmp_path, memcached_set, '--batch-size', '64')
    assert status == 0, text  # 1 error in 200 records
    assert 'idfa:huge not stored: SERVER_ERROR' in text
    assert summary_row(text, FIRST) == (200, 199, 1)
    assert 'Acceptable error rate (0.005). Successful load' in text
    want = dict(map(expected_value, lines[:100] + lines[101:]))
    got = memcached_set['idfa'].get_many(list(want) + [b'idfa:huge'])
    assert got == want


def test_a_line_over_the_length_limit_is_one_malformed_line(
        tmp_path, memcached_set, monkeypatch):
    monkeypatch.setattr(gmemcload, 'MAX_LINE_BYTES', 1 << 20)
    lines = ['idfa\tg%d\t1\t1\t1' % i for i in range(199)]
    lines.insert(7, 'idfa\tlong\t1\t1\t' + '1,' * (2 << 20))
    write_gz(tmp_path / '20170929000000.tsv.gz', lines)
    status, text = run(tmp_path, memcached_set)
    assert status == 0, text
    assert 'malformed line: line longer than 1048576 bytes' in text
    assert '%s %10d %10d %8d' % ('20170929000000.tsv.gz'.ljust(28),
                                 200, 199, 1) in text


def test_an_empty_file_is_loaded_and_renamed(tmp_path, memcached_set):
    write_gz(tmp_path / '20170929000000.tsv.gz', [])
    status, _ = run(tmp_path, memcached_set)
    assert status == 0
    assert listing(tmp_path) == ['.20170929000000.tsv.gz']


def test_a_zero_byte_file_is_not_loaded(tmp_path, memcached_set):
    (tmp_path / '20170929000000.tsv.gz').write_bytes(b'')
    status, text = run(tmp_path, memcached_set)
    assert status == 1
    assert 'unreadable: empty file' in text
    assert listing(tmp_path) == ['20170929000000.tsv.gz']


@pytest.mark.parametrize('odd_entry', ['directory', 'fifo'])
def test_odd_names_and_non_files_are_handled(tmp_path, memcached_set,
                                             odd_entry):
    # A name with a byte that is not UTF-8 loads; a matched entry that is
    # not a regular file is kept, loudly (exit 1), and so is the file after
    # it: were it skipped, a real file of its minute would come late.
    odd = os.fsencode(str(tmp_path)) + b'/20170929000000 \xff.tsv.gz'
    write_gz(os.fsdecode(odd), ['idfa\todd\t1\t1\t1'])
    if odd_entry == 'directory':
        os.mkdir(tmp_path / '20170929000100.tsv.gz')
    else:
        os.mkfifo(tmp_path / '20170929000100.tsv.gz')
    write_gz(tmp_path / '20170929000200.tsv.gz', ['idfa\tafter\t1\t1\t1'])
    status, text = run(tmp_path, memcached_set)
    assert status == 1, text
    assert '20170929000000 \\udcff.tsv.gz' in text  # the byte, shown
    assert 'Successful load' in text
    assert '20170929000100.tsv.gz: Failed load: unreadable: ' in text
    assert '20170929000200.tsv.gz: kept: ' in text
    assert os.path.exists(os.fsencode(str(tmp_path))
                          + b'/.20170929000000 \xff.tsv.gz')


def test_an_unlistable_directory_is_a_failure_not_no_files(
        tmp_path, memcached_set, monkeypatch):
    real_listdir = os.listdir

    def listdir(path='.'):
        if str(path) == str(tmp_path):
            raise PermissionError(13, 'Permission denied', str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, 'listdir', listdir)
    status, text = run(tmp_path, memcached_set)
    assert status == 1
    assert 'cannot list the files' in text and 'Permission denied' in text


def test_no_matching_files_is_not_an_error(tmp_path, memcached_set):
    status, text = run(tmp_path, memcached_set)
    assert status == 0
    assert 'No files match' in text


def test_dry_run_connects_to_nothing_renames_nothing_logs_records(tmp_path):
    write_gz(tmp_path / '20170929000000.tsv.gz', [
        'idfa\te7e1\t67.5\t-22.5\t7942,8519', 'gaid\tab\t1\t2\t3'])
    nowhere = {t: type('A', (), {'address': '127.0.0.1:1'})
               for t in gmemcload.DEVICE_TYPES}
    status, text = run(tmp_path, nowhere, '--dry')
    assert status == 0, text
    assert listing(tmp_path) == ['20170929000000.tsv.gz']
    assert ' D 127.0.0.1:1 - idfa:e7e1 -> apps: 7942 apps: 8519 lat: 67.5' \
           ' lon: -22.5' in text
    assert ' D 127.0.0.1:1 - gaid:ab -> apps: 3 lat: 1 lon: 2' in text


def test_a_dry_run_exits_1_for_a_file_that_would_not_load(tmp_path):
    write_gz(tmp_path / FIRST, lines_for('idfa', 10)
             + ['idfa\tbad\tx\t1\t1'])
    nowhere = {t: type('A', (), {'address': '127.0.0.1:1'})
               for t in gmemcload.DEVICE_TYPES}
    status, text = run(tmp_path, nowhere, '--dry')
    assert status == 1, text
    assert 'High error rate (0.09091 > 0.01). Failed load' in text
    assert listing(tmp_path) == [FIRST]


def test_version_is_printed_and_named_in_the_start_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        gmemcload.main(['--version'])
    assert caught.value.code == 0
    assert capsys.readouterr().out == 'gmemcload.py %s\n' % (
        gmemcload.__version__)
    status, text = run(tmp_path, {t: type('A', (), {'address': '127.0.0.1:1'})
                                  for t in gmemcload.DEVICE_TYPES}, '--dry')
    assert status == 0, text
    assert 'Memc loader %s started with options' % gmemcload.__version__ \
        in text.splitlines()[0]


def test_help_lists_every_exit_status(capsys):
    with pytest.raises(SystemExit):
        gmemcload.main(['--help'])
    epilog = capsys.readouterr().out.split('exit status:')[1]
    for status in ('0 ', '1 ', '2 ', '75 ', '130, 143 '):
        assert '\n  ' + status in epilog


def test_self_test_exits_zero(tmp_path):
    assert gmemcload.main(['-t', '--log', str(tmp_path / 'log')]) == 0


@pytest.mark.parametrize('args', [
    ['--batch-size', '0'], ['--uploaders', 'x'], ['--timeout', '0'],
    ['--retries', '-1'], ['--max-error-rate', '2'], ['--nope'],
])
def test_bad_option_values_are_usage_errors(args):
    with pytest.raises(SystemExit) as caught:
        gmemcload.main(args)
    assert caught.value.code == 2


@pytest.mark.parametrize('address', ['localhost', '127.0.0.1:x', ':11211',
                                     '127.0.0.1:70000', 'a:1,a:1',
                                     '[::1]:11211', 'a:b:1'])
def test_a_bad_address_is_a_usage_error(tmp_path, address):
    log_path = tmp_path / 'log'
    status = gmemcload.main(['--pattern', str(tmp_path / '*.tsv.gz'),
                             '--gaid', address, '--log', str(log_path)])
    assert status == 2
    assert '--gaid' in log_path.read_text()
