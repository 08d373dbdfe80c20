"""The compiled encoder (native_encoder) against the reference
encode_chunk: identical results for every input, from well-formed lines to
random bytes, and at every boundary of the line contract."""
import gzip
import os
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

import gmemcload
from conftest import ROOT
from test_properties import TOKENS, any_line, chunk_lines, routes

COMPILED = gmemcload.ENCODE
REFERENCE = gmemcload.encode_chunk
ONE_ROUTE = gmemcload.build_routes(
    {t: ['127.0.0.1:33013'] for t in gmemcload.DEVICE_TYPES}, 1)[0]
MANY_ROUTES = gmemcload.build_routes(
    {'idfa': ['127.0.0.1:1'], 'gaid': ['127.0.0.1:2', '127.0.0.1:3'],
     'adid': ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'],
     'dvid': ['127.0.0.1:4']}, 3)[0]


def test_the_loader_runs_the_compiled_encoder():
    # make install builds it; CI fails without it (see conftest).
    assert COMPILED is not REFERENCE
    assert gmemcload.ENCODER_KIND == 'compiled (native_encoder)'


def assert_same(data, routes=MANY_ROUTES):
    assert COMPILED(data, routes) == REFERENCE(data, routes)


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
    lines, errors, batches, bad, dropped, samples = COMPILED(
        b'gaid\tdev\t1.5\t-0.0\t1,300', ONE_ROUTE)
    value = (b'\x0a\x03\x01\xac\x02' + b'\x11' + struct.pack('<d', 1.5)
             + b'\x19' + struct.pack('<d', -0.0))
    assert (lines, errors, bad, dropped, samples) == (1, 0, [], 0, [])
    assert batches == [(0, 1, b'set gaid:dev 0 0 %d\r\n%b\r\n'
                        % (len(value), value))]


def test_a_generated_file_encodes_as_the_reference(tmp_path):
    subprocess.run([sys.executable, os.path.join(ROOT, 'tests',
                                                 'generate.py'),
                    str(tmp_path), '--files', '1', '--lines', '5000'],
                   check=True, capture_output=True)
    path, = tmp_path.glob('*.tsv.gz')
    assert_same(gzip.open(path).read())
