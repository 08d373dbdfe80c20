"""The line contract: parse_line and pack_user_apps, no server needed."""
import math
import subprocess
import sys
import zlib

import memcache
import pytest

import gmemcload
from conftest import ROOT
from gmemcload import MALFORMED, UNKNOWN_TYPE, BadLine, parse_line
from proto import appsinstalled_pb2

GOOD = b'idfa\te7e1a50c0ec2747ca56cd9e1558c0d7c\t67.7835424444\t' \
       b'-22.8044005471\t7942,8519,4232'


def bad_kind(line):
    with pytest.raises(BadLine) as caught:
        parse_line(line)
    return caught.value.kind


def test_a_good_line_parses_to_key_coords_and_apps():
    assert parse_line(GOOD) == (
        b'idfa', b'idfa:e7e1a50c0ec2747ca56cd9e1558c0d7c', 67.7835424444,
        -22.8044005471, [7942, 8519, 4232], 0)


@pytest.mark.parametrize('ending', [b'\n', b'\r\n', b'  \r\n', b'\x0b'])
def test_ascii_whitespace_is_stripped_at_both_ends(ending):
    assert parse_line(b' \t' + GOOD + ending) == parse_line(GOOD)


@pytest.mark.parametrize('line', [b'', b'\n', b'   \t \r\n'])
def test_blank_lines_are_skipped(line):
    assert parse_line(line) is None


@pytest.mark.parametrize('line', [
    b'idfa\tabc\t1\t2',
    b'idfa\tabc\t1\t2\t3\textra',
    b'idfa abc 1 2 3',
    b'idfa\tabc\t1\t2\t',  # the strip eats the empty apps field's tab
])
def test_a_line_without_exactly_five_fields_is_malformed(line):
    assert bad_kind(line) == MALFORMED


@pytest.mark.parametrize('dev_type', [b'IDFA', b'xxxx', b'idf', b'',
                                      b'\xff\xfe'])
def test_an_unknown_device_type_is_its_own_error(dev_type):
    line = dev_type + b'\tabc\t1\t2\t3'
    if not dev_type:
        line = b'x' + line  # keep five fields after the strip
    assert bad_kind(line) == UNKNOWN_TYPE


@pytest.mark.parametrize('dev_type', gmemcload.DEVICE_TYPES)
def test_every_configured_type_is_accepted(dev_type):
    line = dev_type.encode() + b'\tabc\t1\t2\t3'
    assert parse_line(line)[1] == dev_type.encode() + b':abc'


def test_an_empty_dev_id_is_malformed():
    assert bad_kind(b'idfa\t\t1\t2\t3') == MALFORMED


@pytest.mark.parametrize('dev_id', [b'a b', b'a\x00b', b'a\x7fb', b'a\x1fb',
                                    b'x' * 246])
def test_an_id_that_makes_an_invalid_memcached_key_is_malformed(dev_id):
    assert bad_kind(b'idfa\t' + dev_id + b'\t1\t2\t3') == MALFORMED


def test_a_key_of_exactly_250_bytes_and_high_bytes_are_valid():
    dev_id = b'\x80\xff' + b'x' * 243  # 'idfa:' + 245 bytes = 250
    record = parse_line(b'idfa\t' + dev_id + b'\t1\t2\t3')
    assert len(record[1]) == 250


@pytest.mark.parametrize('lat, lon', [
    (b'abc', b'1'), (b'1', b''), (b'1,5', b'2'), (b'0x10', b'1'),
])
def test_coordinates_float_rejects_are_malformed(lat, lon):
    assert bad_kind(b'idfa\tabc\t' + lat + b'\t' + lon + b'\t1') == MALFORMED


@pytest.mark.parametrize('text, value', [
    (b'1e3', 1000.0), (b' 2.5 ', 2.5), (b'-0', -0.0), (b'inf', math.inf),
    (b'1_0', 10.0),
])
def test_coordinates_are_read_as_python_float_reads_them(text, value):
    assert parse_line(b'idfa\tabc\t' + text + b'\t0\t1')[2] == value


def test_nan_coordinates_are_accepted():
    assert math.isnan(parse_line(b'idfa\tabc\tnan\t0\t1')[2])


@pytest.mark.parametrize('raw, apps, dropped', [
    (b'1,2,3', [1, 2, 3], 0),
    (b' 1 , 2,3 ', [1, 2, 3], 0),
    (b'1,x,3', [1, 3], 1),
    (b'1,,3', [1, 3], 1),
    (b'1,2,', [1, 2], 1),
    (b'+1,-2,1_0,3', [3], 3),
    (b'4294967295,4294967296', [4294967295], 1),
    (b'0,007', [0, 7], 0),
    (b'\xd9\xa3,5', [5], 1),  # an Arabic-Indic digit is not ASCII
    (b'a,b', [], 2),
    (b'0' * 4300 + b'7,8', [7, 8], 0),  # more digits than int() takes
    (b'9' * 4301 + b',8', [8], 1),
])
def test_apps_keep_decimal_uint32_items_in_order(raw, apps, dropped):
    assert parse_line(b'idfa\tabc\t1\t2\t' + raw)[4:] == (apps, dropped)


def test_a_line_with_no_valid_app_is_still_a_record():
    record = parse_line(b'idfa\tabc\t1\t2\tnone')
    assert record[4] == []
    value = gmemcload.pack_user_apps(record[4], record[2], record[3])
    message = appsinstalled_pb2.UserApps.FromString(value)
    assert list(message.apps) == [] and message.lat == 1.0


def test_pack_matches_an_independent_encoding():
    message = appsinstalled_pb2.UserApps()
    message.lat = 67.7835424444
    message.lon = -22.8044005471
    message.apps.extend([7942, 8519, 4232])
    _, _, lat, lon, apps, _ = parse_line(GOOD)
    assert gmemcload.pack_user_apps(apps, lat, lon) == \
        message.SerializeToString()


def test_apps_are_packed_on_the_wire():
    value = gmemcload.pack_user_apps([1, 2, 3], 0.0, 0.0)
    assert value.startswith(b'\x0a\x03\x01\x02\x03')  # field 1, LEN, 3 bytes


def test_set_command_frames_the_value_by_length():
    assert gmemcload.set_command(b'k', b'v\r\nx') == \
        b'set k 0 0 4\r\nv\r\nx\r\n'


def chunked(data):
    """The lines and oversized prefixes read_chunks finds in ``data``;
    every chunk but the last holds whole lines."""
    import io
    reader = io.BytesIO(data)
    chunks, oversized = [], []
    for pieces, chunk_oversized in gmemcload.read_chunks(reader.read):
        chunks.append(b''.join(pieces))
        oversized += chunk_oversized
    assert all(chunk.endswith(b'\n') for chunk in chunks[:-1] if chunk)
    lines = b''.join(chunks).split(b'\n')
    return [line for line in lines if line], oversized


def test_read_chunks_joins_lines_longer_than_a_chunk(monkeypatch):
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 7)
    data = b'short\n' + b'L' * 50 + b'\nlast'
    assert chunked(data) == ([b'short', b'L' * 50, b'last'], [])


@pytest.mark.parametrize('chunk', [7, 64, 100])  # <= MAX_LINE_BYTES
@pytest.mark.parametrize('ending', [b'', b'\n'])
def test_a_line_over_the_limit_is_reported_by_its_prefix_only(
        monkeypatch, chunk, ending):
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', chunk)
    monkeypatch.setattr(gmemcload, 'MAX_LINE_BYTES', 100)
    monkeypatch.setattr(gmemcload, 'OVERSIZED_PREFIX', 10)
    data = b'a\n' + b'B' * 100 + b'\n' + b'C' * 101 + b'\nd\n' + \
        b'E' * 300 + ending
    assert chunked(data) == ([b'a', b'B' * 100, b'd'],
                             [b'C' * 10, b'E' * 10])


@pytest.mark.parametrize('chunk', [1, 2, 3, 5, 8, 13, 64])
def test_chunks_cut_anywhere_give_back_every_line(monkeypatch, chunk):
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', chunk)
    lines = [b'x' * (i * 7 % 23 + 1) for i in range(60)]
    assert chunked(b'\n'.join(lines) + b'\n') == (lines, [])


def test_read_chunks_gives_a_turn_for_every_read_inside_a_long_line(
        monkeypatch):
    import io
    monkeypatch.setattr(gmemcload, 'READ_CHUNK', 10)
    monkeypatch.setattr(gmemcload, 'MAX_LINE_BYTES', 50)
    monkeypatch.setattr(gmemcload, 'OVERSIZED_PREFIX', 8)
    reader = io.BytesIO(b'x' * 1000 + b'\n')  # skipped, never held whole
    turns = list(gmemcload.read_chunks(reader.read))
    assert len(turns) >= 100
    assert [oversized for _, oversized in turns if oversized] == [[b'x' * 8]]


@pytest.mark.parametrize('error', [zlib.error('invalid distance'),
                                   EOFError('Compressed file ended'),
                                   ValueError('bad header'), OSError(5)])
def test_any_decompressor_error_is_unreadable_input(error):
    def read(size):
        raise error

    with pytest.raises(gmemcload.Unreadable) as caught:
        list(gmemcload.read_chunks(read))
    assert str(caught.value) == '%s (%s)' % (error, type(error).__name__)


def test_memory_running_out_while_reading_is_not_the_inputs_fault():
    def read(size):
        raise MemoryError()

    with pytest.raises(MemoryError):
        list(gmemcload.read_chunks(read))


def test_every_type_has_its_servers_and_each_server_its_own_lanes():
    addresses = {'idfa': ['a:1'], 'gaid': ['b:1', 'c:1'], 'adid': ['a:1'],
                 'dvid': ['d:1']}
    routes, lane_addresses = gmemcload.build_routes(addresses, 2)
    assert routes == {b'idfa': ((0, 1),), b'gaid': ((2, 3), (4, 5)),
                      b'adid': ((0, 1),), b'dvid': ((6, 7),)}
    assert lane_addresses == ['a:1', 'a:1', 'b:1', 'b:1', 'c:1', 'c:1',
                              'd:1', 'd:1']


@pytest.mark.parametrize('servers', [1, 2, 3])
@pytest.mark.parametrize('uploaders', [1, 2, 3])
def test_a_keys_lane_is_its_clients_server_and_its_crc32_uploader(
        servers, uploaders):
    # The server is the one a memcache.Client with the same list uses; the
    # lane within it is crc32 mod --uploaders, so every lane gets keys.
    addresses = ['127.0.0.1:%d' % (11211 + n) for n in range(servers)]
    routes, lane_addresses = gmemcload.build_routes(
        {t: addresses for t in gmemcload.DEVICE_TYPES}, uploaders)
    client = memcache.Client(addresses)
    used = set()
    for n in range(300):
        key = b'idfa:%d' % n
        lane = gmemcload.lane_for(routes[b'idfa'], key)
        server = client.buckets[memcache.serverHashFunction(key)
                                % len(client.buckets)]
        assert lane_addresses[lane] == '%s:%d' % server.address
        lanes = routes[b'idfa'][addresses.index(lane_addresses[lane])]
        assert lane == lanes[zlib.crc32(key) % uploaders]
        used.add(lane)
    assert used == set(range(servers * uploaders))


def test_iter_commands_gives_back_each_key_and_value():
    records = [(b'k1', b''), (b'k2', b'v\r\nset x 0 0 1\r\n'),
               (b'k3', bytes(range(256)))]
    payload = b''.join(gmemcload.set_command(key, value)
                       for key, value in records)
    assert list(gmemcload.iter_commands(payload)) == records
    assert list(gmemcload.iter_commands(b'')) == []


IMPORT_ALONE = '''
import signal, socket, sys, time
handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
sys.path.insert(0, sys.argv[1])
import gmemcload
assert socket.socket.__module__ == 'socket', socket.socket
assert time.sleep.__module__ == 'time', time.sleep
assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] \\
    == handlers
assert 'native_encoder' not in sys.modules
assert gmemcload._libc.cache_info().currsize == 0
from gevent import monkey
assert not monkey.is_module_patched('socket')
# The pure parts work in this unpatched process.
record = gmemcload.parse_line(b'idfa\\tabc\\t1.5\\t-2\\t1,2')
routes = gmemcload.build_routes({'idfa': ['127.0.0.1:1']}, 2).by_type
chunk = gmemcload.encode_chunk(b'idfa\\tabc\\t1.5\\t-2\\t1,2\\n', routes)
assert (record.key, chunk.lines, chunk.errors) == (b'idfa:abc', 1, 0)
print('clean')
'''


def test_importing_changes_nothing_in_the_importers_process():
    # No monkey-patching, no signal handler, no native module, no libc
    # until a run starts (main patches; the program's guard patches first).
    done = subprocess.run([sys.executable, '-c', IMPORT_ALONE, ROOT],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, 'clean\n', '')


def test_main_makes_the_process_cooperative_first(monkeypatch):
    patched = []
    monkeypatch.setattr(gmemcload.gevent.monkey, 'is_module_patched',
                        lambda name: False)
    monkeypatch.setattr(gmemcload.gevent.monkey, 'patch_all',
                        lambda: patched.append(True))
    with pytest.raises(SystemExit):
        gmemcload.main(['--version'])
    assert patched == [True]
