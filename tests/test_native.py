"""The compiled encoder (native_encoder) against the reference
encode_chunk: identical results for every input, from well-formed lines to
random bytes, and at every boundary of the line contract, for any device
types the routes name; and what a ChunkEncoder takes and refuses."""
import gzip
import os
import struct
import subprocess
import sys
import types

import pytest
from hypothesis import given, settings, strategies as st

import gmemcload
import native_encoder
from conftest import ROOT
from test_properties import (TOKENS, any_line, apps_field, chunk_lines,
                             id_field, number_field, routes, well_formed)

CONTRACT = gmemcload.LINE_CONTRACT
REFERENCE = gmemcload.encode_chunk


def routes_of(addresses, uploaders):
    return gmemcload.build_routes(addresses, uploaders).by_type


ONE_ROUTE = routes_of({t: ['127.0.0.1:33013'] for t in gmemcload.DEVICE_TYPES},
                      1)
MANY_ROUTES = routes_of(
    {'idfa': ['127.0.0.1:1'], 'gaid': ['127.0.0.1:2', '127.0.0.1:3'],
     'adid': ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'],
     'dvid': ['127.0.0.1:4']}, 3)


def compiled(data, routes, contract=CONTRACT):
    return native_encoder.ChunkEncoder(routes, contract).encode_chunk(data)


def assert_same(data, routes=MANY_ROUTES):
    """The compiled result, once it is the reference's."""
    encoded = compiled(data, routes)
    assert encoded == REFERENCE(data, routes)
    return encoded


def test_the_runs_lane_bound_is_what_the_encoder_can_number():
    # Settings refuses more lanes than MAX_LANES (exit 2); the compiled
    # encoder would refuse them later, at every run's start.
    assert gmemcload.MAX_LANES == native_encoder.LANE_LIMIT == 1 << 16
    top = gmemcload.MAX_LANES - 1
    native_encoder.ChunkEncoder({b'idfa': ((top,),)}, gmemcload.LINE_CONTRACT)
    with pytest.raises(ValueError):
        native_encoder.ChunkEncoder({b'idfa': ((top + 1,),)},
                                    gmemcload.LINE_CONTRACT)


def test_the_loader_runs_the_compiled_encoder():
    # make install builds it; CI fails without it (see conftest).
    choice = gmemcload.choose_encoder()
    assert choice.compiled is True
    assert choice.words == 'compiled (native_encoder)'
    encode = choice.new(ONE_ROUTE)
    assert isinstance(encode.__self__, native_encoder.ChunkEncoder)
    data = b'idfa\tabc\t1\t2\t3\nnope'
    assert encode(data) == REFERENCE(data, ONE_ROUTE)


# Bytes that make lines, fields and numbers, and break them.
soup = st.lists(st.one_of(st.sampled_from(TOKENS + [b'\n', b'idfa', b'gaid',
                                                    b'adid', b'dvid', b'00',
                                                    b'4294967295',
                                                    b'4294967296']),
                          st.binary(max_size=3)),
                max_size=60).map(b''.join)


@settings(deadline=None, max_examples=4 * settings.default.max_examples)
@given(soup, routes())
def test_any_bytes_encode_as_the_reference_encodes_them(data, routes):
    assert_same(data, routes)


@settings(deadline=None)
@given(chunk_lines, st.booleans(), routes())
def test_any_lines_encode_as_the_reference_encodes_them(lines, newline,
                                                        routes):
    assert_same(b'\n'.join(lines) + (b'\n' if newline else b''), routes)


@settings(deadline=None)
@given(st.lists(any_line, min_size=1, max_size=40), routes())
def test_lines_of_every_kind_interleaved_keep_their_order(lines, routes):
    # Clean lines (compiled) and every other kind (handed to Python) mixed:
    # each lane's commands stay in line order, the lanes in first use.
    clean = [b'idfa\tk%d\t1.5\t-2\t%d' % (number, number)
             for number in range(len(lines))]
    mixed = [line for pair in zip(clean, lines) for line in pair]
    assert_same(b'\n'.join(mixed), routes)


def line(dev_id=b'abc', lat=b'55.5', lon=b'-42.25', apps=b'1,2,3',
         dev_type=b'idfa'):
    return b'\t'.join((dev_type, dev_id, lat, lon, apps))


BOUNDARIES = {
    'key of 250 bytes': line(dev_id=b'x' * 245),
    'key of 251 bytes': line(dev_id=b'x' * 246),
    'app 2**32-1': line(apps=b'4294967295'),
    'app 2**32': line(apps=b'4294967296'),
    'app of 10 digits': line(apps=b'1000000000'),
    'app of 11 digits': line(apps=b'10000000000'),
    'leading zeros': line(apps=b'0000000000001,007'),
    'empty app list': line(apps=b''),
    'empty app item': line(apps=b'1,,2'),
    'trailing comma': line(apps=b'1,2,'),
    'app list of 1 MB': line(apps=b','.join([b'4294967295'] * 95000)),
    'negative zero': line(lat=b'-0', lon=b'-0.0'),
    'exponent': line(lat=b'1e3'),
    'nan and inf': line(lat=b'nan', lon=b'-inf'),
    'underscores': line(lat=b'1_0'),
    'a plus sign': line(lat=b'+1'),
    'no digits after the point': line(lat=b'1.'),
    'no digits before the point': line(lat=b'.5'),
    'a float of 31 bytes': line(lat=b'1.' + b'3' * 29),
    'a float of 32 bytes': line(lat=b'1.' + b'3' * 30),
    'many digits, rounded': line(lat=b'0.1000000000000000055511151231257827'),
    'a space in a field': line(lat=b' 1'),
    'a carriage return': line() + b'\r',
    'leading space': b' ' + line(),
    'a tab too many': line() + b'\t',
    'unknown type': line(dev_type=b'idfb'),
    'empty id': line(dev_id=b''),
    'a high byte in the id': line(dev_id=b'a\xffb'),
    'DEL in the id': line(dev_id=b'a\x7fb'),
    'NUL in the id': line(dev_id=b'a\x00b'),
}


@pytest.mark.parametrize('name', sorted(BOUNDARIES))
def test_each_boundary_encodes_as_the_reference(name):
    for data in (BOUNDARIES[name], BOUNDARIES[name] + b'\n',
                 line(dev_id=b'before') + b'\n' + BOUNDARIES[name] + b'\n'
                 + line(dev_id=b'after')):
        assert_same(data)
        assert_same(data, ONE_ROUTE)


def test_a_line_of_exactly_max_line_bytes():
    head = line(apps=b'')
    apps = b','.join([b'7'] * ((gmemcload.MAX_LINE_BYTES - len(head)) // 2))
    data = head + apps
    data += b'7' * (gmemcload.MAX_LINE_BYTES - len(data))
    assert len(data) == gmemcload.MAX_LINE_BYTES
    assert_same(data)


def test_the_wire_format_of_one_clean_line():
    # Independent of both: the bytes protobuf's encoding gives.
    encoded = compiled(b'gaid\tdev\t1.5\t-0.0\t1,300', ONE_ROUTE)
    value = (b'\x0a\x03\x01\xac\x02' + b'\x11' + struct.pack('<d', 1.5)
             + b'\x19' + struct.pack('<d', -0.0))
    assert (encoded.lines, encoded.errors, encoded.bad, encoded.dropped,
            encoded.dropped_samples) == (1, 0, [], 0, [])
    assert encoded.batches == [(0, 1, b'set gaid:dev 0 0 %d\r\n%b\r\n'
                                % (len(value), value))]


def test_a_generated_file_encodes_as_the_reference(tmp_path):
    subprocess.run([sys.executable, os.path.join(ROOT, 'tests',
                                                 'generate.py'),
                    str(tmp_path), '--files', '1', '--lines', '5000'],
                   check=True, capture_output=True)
    path, = tmp_path.glob('*.tsv.gz')
    assert_same(gzip.open(path).read())


# -- device types of any number and length --

EXTRA_TYPES = (b'mac', b'android_id')
ALL_TYPES = tuple(t.encode() for t in gmemcload.DEVICE_TYPES) + EXTRA_TYPES
SERVERS = ['127.0.0.1:%d' % port for port in range(1, 6)]


def routes_with(*extra):
    """The four types and ``extra`` ones, 1-3 servers each, 3 lanes per
    server."""
    addresses = {'idfa': SERVERS[:1], 'gaid': SERVERS[1:3],
                 'adid': SERVERS[:3], 'dvid': SERVERS[3:4]}
    for number, dev_type in enumerate(extra):
        addresses[dev_type.decode()] = SERVERS[number + 2:number + 5]
    return routes_of(addresses, 3)


EXTRA_ROUTES = [pytest.param(routes_with(b'mac'), id='mac'),
                pytest.param(routes_with(b'android_id'), id='android_id'),
                pytest.param(routes_with(*EXTRA_TYPES), id='both')]


def counting(calls, **changes):
    """The contract, changed by ``changes``, its encode_line noting each
    line it is handed in ``calls``."""
    def encode_line(line, routes):
        calls.append(line)
        return gmemcload.encode_line(line, routes)
    return types.SimpleNamespace(**dict(vars(CONTRACT),
                                        encode_line=encode_line, **changes))


@pytest.mark.parametrize('routes', EXTRA_ROUTES)
def test_a_device_type_of_any_length_is_compiled_as_the_reference(routes):
    lines = [line(dev_type=dev_type, dev_id=b'd%d' % number,
                  apps=b'%d' % number)
             for number in range(60) for dev_type in routes]
    # The longest key (250 bytes) and one byte more, for each type.
    for dev_type in routes:
        room = gmemcload.MAX_KEY_LENGTH - len(dev_type) - 1
        lines += [line(dev_type=dev_type, dev_id=b'k' * room),
                  line(dev_type=dev_type, dev_id=b'k' * (room + 1))]
    data = b'\n'.join(lines)
    encoded = assert_same(data, routes)
    assert (encoded.lines, encoded.errors) == (len(lines), len(routes))
    payload = b''.join(batch.commands for batch in encoded.batches)
    for dev_type in routes:
        assert b'set %b:d0 0 0 ' % dev_type in payload
        assert b'set %b:%b 0 0 ' % (dev_type, b'k' * (
            gmemcload.MAX_KEY_LENGTH - len(dev_type) - 1)) in payload
    assert len(encoded.batches) > 3
    # The fast path took every clean line of every type itself.
    calls = []
    assert compiled(data, routes, counting(calls)) == encoded
    assert calls == lines[-2 * len(routes) + 1::2]


@st.composite
def extra_routes(draw):
    """Routes for the four types and one or both extra ones, 1-3 servers
    each, 1-3 uploaders."""
    extra = draw(st.sampled_from([EXTRA_TYPES[:1], EXTRA_TYPES[1:],
                                  EXTRA_TYPES]))
    addresses = {dev_type.decode(): draw(st.lists(st.sampled_from(SERVERS),
                                                  min_size=1, max_size=3,
                                                  unique=True))
                 for dev_type in ALL_TYPES[:4] + extra}
    return routes_of(addresses, draw(st.integers(1, 3)))


# A type of the six, or one a byte off one of them.
any_type = st.sampled_from(ALL_TYPES + (b'ma', b'maca', b'MAC', b'android',
                                        b'android_idx', b'android id'))
retyped_line = st.tuples(any_type, well_formed).map(
    lambda pair: pair[1][0].replace(pair[1][1].dev_type + b'\t',
                                    pair[0] + b'\t', 1))
typed_line = st.tuples(any_type, id_field, number_field, number_field,
                       apps_field).map(b'\t'.join)
clean_line = st.tuples(st.sampled_from(ALL_TYPES),
                       st.integers(0, 10 ** 6)).map(
    lambda pair: line(dev_type=pair[0], dev_id=b'c%d' % pair[1],
                      apps=b'%d' % pair[1]))


@settings(deadline=None)
@given(st.lists(st.one_of(clean_line, retyped_line, typed_line, any_line),
                max_size=30), st.booleans(), extra_routes())
def test_lines_of_every_type_encode_as_the_reference(lines, newline,
                                                     routes):
    assert_same(b'\n'.join(lines) + (b'\n' if newline else b''), routes)


def test_a_type_no_key_may_hold_is_left_to_the_reference():
    # Such a type makes every key of it invalid, or matches no line: the
    # fast path never takes it.
    routes = {b'a b': ((0,),), b'x\x7f': ((1,),), b'': ((2,),),
              b'\xfftype': ((3,),), b'idfa': ((4,),)}
    data = b'\n'.join(line(dev_type=dev_type) for dev_type in routes)
    assert assert_same(data, routes).errors == 3
    calls = []
    assert compiled(data, routes, counting(calls)) == REFERENCE(data, routes)
    assert calls == [line(dev_type=b'a b'), line(dev_type=b'x\x7f'),
                     line(dev_type=b'')]


def test_the_contracts_limits_decide_what_the_fast_path_takes():
    # Within the reference's limits, the rest is handed to encode_line:
    # the same results, the lines over the limits the Python way.
    data = b'\n'.join([line(apps=b'1000'), line(apps=b'1001'),
                       line(dev_id=b'x' * 5), line(dev_id=b'x' * 6)])
    calls = []
    contract = counting(calls, max_app_id=1000, max_key_length=10)
    assert compiled(data, MANY_ROUTES, contract) == \
        REFERENCE(data, MANY_ROUTES)
    assert calls == [line(apps=b'1001'), line(dev_id=b'x' * 6)]


def test_the_results_are_of_the_contracts_types():
    data = b'\n'.join([line(), b' ' + line(dev_id=b'slow'), b'bad',
                       line(apps=b'1,x')])
    encoded = compiled(data, MANY_ROUTES)
    assert type(encoded) is gmemcload.EncodedChunk
    assert encoded.batches and all(type(batch) is gmemcload.LaneBatch
                                   for batch in encoded.batches)
    assert [type(sample) for sample in encoded.bad] == [gmemcload.BadSample]
    assert [type(sample) for sample in encoded.dropped_samples] == \
        [gmemcload.DroppedSample]
    assert encoded == REFERENCE(data, MANY_ROUTES)


def test_two_encoders_keep_their_own_routes():
    data = b'\n'.join(line(dev_type=dev_type, dev_id=b'i%d' % number)
                      for number in range(20) for dev_type in ALL_TYPES)
    mac_routes = routes_of({'mac': SERVERS[:3]}, 2)
    four = native_encoder.ChunkEncoder(ONE_ROUTE, CONTRACT)
    mac = native_encoder.ChunkEncoder(mac_routes, CONTRACT)
    first = four.encode_chunk(data)
    for _ in range(2):
        assert mac.encode_chunk(data) == REFERENCE(data, mac_routes)
        assert four.encode_chunk(data) == first == REFERENCE(data, ONE_ROUTE)
    assert [batch.lane for batch in first.batches] == [0]
    assert first.errors == 40
    assert mac.encode_chunk(data).errors == 100


def test_an_encoder_keeps_the_routes_it_was_given():
    routes = dict(ONE_ROUTE)
    encoder = native_encoder.ChunkEncoder(routes, CONTRACT)
    data = b'\n'.join([line(), b' ' + line()])
    before = encoder.encode_chunk(data)
    routes[b'idfa'] = ((7,),)
    assert encoder.encode_chunk(data) == before == REFERENCE(data, ONE_ROUTE)


@pytest.mark.parametrize('routes', [
    {b'idfa': ((0,), ())},  # a server without lanes
    {b'idfa': ()},  # no server
    {b'idfa': ((0,),), b'gaid': ((65536,),)},  # a lane past 65535
    {b'idfa': ((-1,),)},
    {b'idfa': (tuple(range(65537)),)},  # more lanes than 65536
], ids=['no lanes', 'no servers', 'lane 65536', 'lane -1', '65537 lanes'])
def test_routes_it_cannot_take_are_a_value_error(routes):
    with pytest.raises(ValueError):
        native_encoder.ChunkEncoder(routes, CONTRACT)


def test_more_lanes_than_the_compiled_encoder_takes():
    # The reference routes to any lane; the compiled encoder refuses
    # routes past 65536 lanes at once, never a chunk.
    routes = routes_of({'idfa': SERVERS[:1]}, 65537)
    encoded = REFERENCE(b'\n'.join(b'idfa\t%d\t1\t2\t3' % number
                                   for number in range(500)), routes)
    assert max(batch.lane for batch in encoded.batches) > 60000
    with pytest.raises(ValueError):
        native_encoder.ChunkEncoder(routes, CONTRACT)


@pytest.mark.parametrize('changes, error', [
    ({'max_app_id': 2 ** 32}, ValueError),
    ({'max_app_id': -1}, ValueError),
    ({'max_key_length': 0}, ValueError),
    ({'line_prefix': -1}, ValueError),
    ({'logged_lines': -1}, ValueError),
    ({'bad_line': 'BadLine'}, TypeError),
])
def test_a_contract_it_cannot_take_is_refused(changes, error):
    contract = types.SimpleNamespace(**dict(vars(CONTRACT), **changes))
    with pytest.raises(error):
        native_encoder.ChunkEncoder(ONE_ROUTE, contract)


def test_a_type_that_is_not_bytes_is_a_type_error():
    with pytest.raises(TypeError):
        native_encoder.ChunkEncoder({'idfa': ((0,),)}, CONTRACT)


def test_a_lane_outside_the_routes_from_encode_line_is_a_bug():
    def encode_line(line, routes):
        return gmemcload.EncodedLine(1, b'set x 0 0 0\r\n\r\n', 0)
    contract = types.SimpleNamespace(**dict(vars(CONTRACT),
                                            encode_line=encode_line))
    with pytest.raises(AssertionError, match='a lane outside the routes'):
        compiled(b' ' + line(), ONE_ROUTE, contract)
