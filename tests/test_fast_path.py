"""The compiled encoder's fast path at each of its boundaries.

Random bytes almost never make a line that is clean but for one field, so
here each field (and the line around them) is generated at an edge inside
an otherwise clean line: the device type (a byte more or less, another
case, types that are prefixes of each other), the dev_id (every edge of
the key bytes, keys of 249 to 252 bytes), lat and lon (signs, points,
exponents, trailing bytes, whitespace, every form C's strtod reads, 29 to
34 bytes), the apps (digit counts around 10, values around 2^32 and past
2^64, leading zeros, empty items, other separators) and the line
(whitespace at either end, \\r, a field too many or too few, long lines).

Each chunk is judged twice: the compiled result is the reference's
exactly (records, counts, bad and dropped samples), and the lines handed
to the reference are exactly those the fast path's contract (the module
docstring of native_encoder) does not take, so the fast path neither
stores a line the reference would judge otherwise nor leaves a clean line
to Python.  The five ways a fast path goes wrong unseen by random input
also have examples with their exact results.
"""
import math
import random
import re
import struct

import pytest
from hypothesis import given, settings, strategies as st

import gmemcload
from gmemcload import (MALFORMED, UNKNOWN_TYPE, BadSample, DroppedSample,
                       EncodedChunk, LaneBatch)
from test_native import (ALL_TYPES, CONTRACT, ONE_ROUTE, REFERENCE, SERVERS,
                         compiled, counting, extra_routes, routes_of)
from test_properties import routes as four_type_routes

MAX_FLOAT_BYTES = 31  # the longest lat or lon the fast path takes
MAX_APP_DIGITS = 10
PRINTABLE = bytes(range(0x21, 0x7f))  # the fast path's dev_id bytes
TO_PRINTABLE = bytes(PRINTABLE[byte % len(PRINTABLE)] for byte in range(256))
WHITESPACE = [b' ', b'\r', b'\x0b', b'\x0c']  # bytes.strip's, but \t, \n

# -- the fast path's contract, written out from native_encoder's docstring

_FAST_NUMBER = re.compile(rb'-?[0-9]+(?:\.[0-9]+)?\Z')
_FAST_APPS = re.compile(rb'(?:[0-9]{1,10}(?:,[0-9]{1,10})*)?\Z')
_FAST_ID = re.compile(rb'[\x21-\x7e]+\Z')
_NOT_KEY_BYTE = re.compile(rb'[\x00-\x20\x7f]')


def taken_fast(line, routes, contract=CONTRACT):
    """Whether the fast path encodes ``line`` itself: five tab-separated
    fields, nothing to strip at either end, a type of the routes made of
    key bytes, a dev_id of printable ASCII but space, a key of at most
    max_key_length bytes, lat and lon ``-?DIGITS[.DIGITS]`` of at most 31
    bytes, apps empty or items of 1 to 10 digits, each at most
    max_app_id."""
    if not line or line.strip() != line:
        return False
    fields = line.split(b'\t')
    if len(fields) != 5:
        return False
    dev_type, dev_id, lat, lon, apps = fields
    return (dev_type in routes and bool(dev_type)
            and not _NOT_KEY_BYTE.search(dev_type)
            and bool(_FAST_ID.match(dev_id))
            and len(dev_type) + 1 + len(dev_id) <= contract.max_key_length
            and all(_FAST_NUMBER.match(number)
                    and len(number) <= MAX_FLOAT_BYTES
                    for number in (lat, lon))
            and bool(_FAST_APPS.match(apps))
            and all(int(app) <= contract.max_app_id
                    for app in apps.split(b',') if app))


def assert_fast_path_keeps_its_contract(data, routes):
    """The compiled result of ``data`` is the reference's, and it handed
    the reference exactly the non-empty lines taken_fast refuses, in
    order."""
    calls = []
    encoded = compiled(data, routes, counting(calls))
    assert encoded == REFERENCE(data, routes)
    assert calls == [line for line in data.split(b'\n')
                     if line and not taken_fast(line, routes)]
    return encoded


def test_the_contract_written_here_is_the_encoders():
    # The limits taken_fast reads are the ones the compiled encoder gets.
    assert (CONTRACT.max_key_length, CONTRACT.max_app_id) == \
        (250, 2 ** 32 - 1)
    assert taken_fast(b'idfa\tk\t-1.5\t0\t1', ONE_ROUTE)
    assert not taken_fast(b'idfa\tk\t+1.5\t0\t1', ONE_ROUTE)
    # No apps: the line ends in a tab, stripped; four fields are left.
    assert not taken_fast(b'idfa\tk\t1\t0\t', ONE_ROUTE)


# -- the five breaks, by example, with their exact results

def double(value):
    """A double's 8 bytes, little-endian, as protobuf writes it."""
    return struct.pack('<d', value)


NAN = bytes.fromhex('000000000000f87f')  # float('nan')
NEGATIVE_NAN = bytes.fromhex('000000000000f8ff')  # float('-nan')


def varint(number):
    out = bytearray()
    while number > 0x7f:
        out.append(number & 0x7f | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def stored(key, lat, lon, apps=()):
    """The set command of one record, written out by hand: apps packed
    (field 1, left out if none), lat and lon (fields 2 and 3) as the 8
    bytes given or a float's."""
    packed = b''.join(varint(app) for app in apps)
    value = (b'\x0a' + varint(len(packed)) + packed if apps else b'') \
        + b'\x11' + (lat if isinstance(lat, bytes) else double(lat)) \
        + b'\x19' + (lon if isinstance(lon, bytes) else double(lon))
    return b'set %b 0 0 %d\r\n%b\r\n' % (key, len(value), value)


def one_record(command, dropped=0, line=None):
    """A chunk of one line that is one record: ``dropped``, the app ids
    left out of ``line`` (none, or their count)."""
    samples = [DroppedSample(dropped, line)] if dropped else []
    return EncodedChunk(1, 0, [LaneBatch(0, 1, command)], [],
                        len(samples), samples)


def one_bad(line, kind=MALFORMED, reason='lat or lon is not a number'):
    """A chunk of one bad line."""
    return EncodedChunk(1, 1, [], [BadSample(kind, reason, line)], 0, [])


def assert_encodes_to(data, want, routes=ONE_ROUTE):
    """Both encoders give exactly ``want`` for ``data``."""
    assert REFERENCE(data, routes) == want
    assert compiled(data, routes) == want


TRAILING_BYTES = [b'1.5x', b'1.5.2', b'1.5e', b'1.5e+', b'1.5 x', b'1x',
                  b'1.5\x00', b'1.5-', b'1.5,2', b'-1.5:', b'1.5_',
                  b'0.' + b'5' * 28 + b'x']


@pytest.mark.parametrize('number', TRAILING_BYTES)
@pytest.mark.parametrize('field', ['lat', 'lon'])
def test_a_number_with_trailing_bytes_is_a_bad_line(field, number):
    line = b'idfa\tID\t%b\t%b\t3' % ((number, b'2') if field == 'lat'
                                     else (b'2', number))
    assert_encodes_to(line, one_bad(line))


def test_an_exponent_is_read_whole_not_stopped_at():
    assert_encodes_to(b'idfa\tID\t1.5e3\t2E-1\t3', one_record(
        stored(b'idfa:ID', 1500.0, 0.2, [3])))


# What float() reads in each form C's strtod reads (None: it reads
# nothing): the forms whose value differs, and those only one reads.
STRTOD_FORMS = [
    (b'0x1p3', None), (b'0X1P-3', None), (b'-0x1p3', None),
    (b'0x10', None), (b'0x1.8p1', None), (b'0x0', None),
    (b'nan(123)', None), (b'nan()', None), (b'nan(0x7ff)', None),
    (b'nan(abc)', None), (b'-nan(1)', None),
    (b'infinit', None), (b'infx', None), (b'nanx', None),
    (b'1_0', 10.0), (b'1_0.5_0', 10.5), (b'1e1_0', 1e10),
    (b'inf', math.inf), (b'INF', math.inf), (b'+inf', math.inf),
    (b'-inf', -math.inf), (b'infinity', math.inf),
    (b'-Infinity', -math.inf), (b'iNfInItY', math.inf),
    (b'nan', NAN), (b'NaN', NAN), (b'+nan', NAN), (b'-nan', NEGATIVE_NAN),
    (b'1e5', 1e5), (b'1E+5', 1e5), (b'1e400', math.inf),
    (b'-1e400', -math.inf), (b'1e-400', 0.0), (b'.5', 0.5), (b'5.', 5.0),
    (b'-.5', -0.5), (b'+1.5', 1.5), (b' 1.5 ', 1.5),
    (b'\x0b\x0c1.5\r ', 1.5), (b'-0', -0.0), (b'-0.0', -0.0)]


@pytest.mark.parametrize('number, value', STRTOD_FORMS,
                         ids=[repr(number)[2:-1] for number, _ in
                              STRTOD_FORMS])
@pytest.mark.parametrize('field', ['lat', 'lon'])
def test_each_form_strtod_reads_is_what_float_makes_of_it(field, number,
                                                          value):
    numbers = (number, b'2') if field == 'lat' else (b'2', number)
    line = b'idfa\tID\t%b\t%b\t3' % numbers
    if value is None:
        want = one_bad(line)
    else:
        lat, lon = (value, 2.0) if field == 'lat' else (2.0, value)
        want = one_record(stored(b'idfa:ID', lat, lon, [3]))
    assert_encodes_to(line, want)


@pytest.mark.parametrize('number', [b'-', b'+', b'.', b'-.', b'+.', b'',
                                    b'--', b'-e5', b'.e5', b'-_'])
@pytest.mark.parametrize('field', ['lat', 'lon'])
def test_a_sign_or_point_without_digits_is_a_bad_line(field, number):
    line = b'idfa\tID\t%b\t%b\t3' % ((number, b'2') if field == 'lat'
                                     else (b'2', number))
    assert_encodes_to(line, one_bad(line))


# (item, what the record keeps of it, or None: it is dropped)
APP_ITEMS = [
    (b'18446744073709551621', None),  # 2^64 + 5
    (b'18446744073709551616', None),  # 2^64
    (b'18446744078004518911', None),  # 2^64 + 2^32 - 1
    (b'55340232221128654855', None),  # 3 * 2^64 + 7
    (b'99999999999999999999', None),
    (b'100000000000000000000000007', None),
    (b'4294967295', 4294967295), (b'4294967296', None),
    (b'04294967295', 4294967295), (b'004294967296', None),
    (b'9999999999', None), (b'10000000000', None), (b'99999999999', None),
    (b'0000000001', 1), (b'00000000001', 1),
    (b'0' * 22 + b'1', 1), (b'0' * 20 + b'4294967295', 4294967295),
    (b'0' * 20, 0), (b'0', 0)]


@pytest.mark.parametrize('item, kept', APP_ITEMS,
                         ids=[item.decode() for item, _ in APP_ITEMS])
def test_an_app_item_of_any_digit_count_is_kept_or_dropped_whole(item,
                                                                 kept):
    line = b'idfa\tID\t1\t2\t' + item
    if kept is None:
        want = one_record(stored(b'idfa:ID', 1.0, 2.0), 1, line)
    else:
        want = one_record(stored(b'idfa:ID', 1.0, 2.0, [kept]))
    assert_encodes_to(line, want)


def test_an_app_past_2_to_the_64_among_others_is_dropped_alone():
    line = b'idfa\tID\t1\t2\t1,18446744073709551621,5'
    assert_encodes_to(line, one_record(stored(b'idfa:ID', 1.0, 2.0, [1, 5]),
                                       1, line))


# (apps field, the ids kept, the items dropped): empty items and other
# separators, which the fast path must leave to the reference.
APP_SEPARATORS = [
    (b'1,,2', [1, 2], 1), (b'1,2,', [1, 2], 1), (b',1', [1], 1),
    (b',', [], 2), (b'1x2', [], 1), (b'1;2', [], 1), (b'1.2', [], 1),
    (b'1 ,2', [1, 2], 0), (b'1, 2', [1, 2], 0), (b'1\r,2', [1, 2], 0)]


@pytest.mark.parametrize('apps, kept, dropped', APP_SEPARATORS,
                         ids=[repr(apps)[2:-1] for apps, _, _ in
                              APP_SEPARATORS])
def test_an_empty_app_item_or_another_separator_is_judged_by_item(
        apps, kept, dropped):
    line = b'idfa\tID\t1\t2\t' + apps
    assert_encodes_to(line, one_record(stored(b'idfa:ID', 1.0, 2.0, kept),
                                       dropped, line))


REAL = b'idfa\tID\t1\t2\t3'


@pytest.mark.parametrize('dev_type', [
    b'idfax', b'idfa ', b'idfa\x00', b'idfa\r', b'idfaa', b'idf', b'id',
    b'i', b'dfa', b'xidfa', b'IDFA', b'Idfa', b'idfb', b'idfa:'])
def test_a_type_a_byte_off_a_real_one_leaves_that_types_record(dev_type):
    # The real record stands alone; the other line is a bad one.
    impostor = dev_type + b'\tID\t9\t9\t9'
    reason = 'unknown device type %r' % dev_type.decode('ascii', 'replace')
    for data, bad in ((REAL + b'\n' + impostor, impostor),
                      (impostor + b'\n' + REAL, impostor)):
        assert_encodes_to(data, EncodedChunk(
            2, 1, [LaneBatch(0, 1, stored(b'idfa:ID', 1.0, 2.0, [3]))],
            [BadSample(UNKNOWN_TYPE, reason, bad)], 0, []))


def test_types_that_are_prefixes_of_each_other_are_each_their_own():
    # Each type its own lane: a line goes to its own type, or none.
    routes = {b'idf': ((0,),), b'idfa': ((1,),), b'idfa_x': ((2,),),
              b'i': ((3,),)}
    lines = [dev_type + b'\tID\t1\t2\t3' for dev_type in
             (b'idfa_x', b'idfa', b'idf', b'i', b'idfa_', b'idfa_xy', b'id',
              b'idfa_y')]
    data = b'\n'.join(lines)
    want = EncodedChunk(8, 4, [
        LaneBatch(2, 1, stored(b'idfa_x:ID', 1.0, 2.0, [3])),
        LaneBatch(1, 1, stored(b'idfa:ID', 1.0, 2.0, [3])),
        LaneBatch(0, 1, stored(b'idf:ID', 1.0, 2.0, [3])),
        LaneBatch(3, 1, stored(b'i:ID', 1.0, 2.0, [3]))],
        [BadSample(UNKNOWN_TYPE, "unknown device type 'idfa_'", lines[4]),
         BadSample(UNKNOWN_TYPE, "unknown device type 'idfa_xy'", lines[5]),
         BadSample(UNKNOWN_TYPE, "unknown device type 'id'", lines[6]),
         BadSample(UNKNOWN_TYPE, "unknown device type 'idfa_y'", lines[7])],
        0, [])
    assert_encodes_to(data, want, routes)
    calls = []
    assert compiled(data, routes, counting(calls)) == want
    assert calls == lines[4:]


# -- what the fast path must take itself: its own boundaries, inclusive

FAST_EDGES = {
    'a key of 250 bytes': b'idfa\t' + b'k' * 245 + b'\t1\t2\t3',
    'app 2**32-1': b'idfa\tID\t1\t2\t4294967295',
    'an app of 10 digits': b'idfa\tID\t1\t2\t0000000001',
    'a lat of 31 bytes': b'idfa\tID\t-' + b'1' * 15 + b'.' + b'2' * 14
                         + b'\t2\t3',
    'a lon of 31 bytes': b'idfa\tID\t1\t' + b'9' * 31 + b'\t3',
    'negative numbers': b'idfa\tID\t-0\t-12.5\t3',
    'the id bytes at each end': b'idfa\t!~\t1\t2\t3',
}


@pytest.mark.parametrize('name', sorted(FAST_EDGES))
def test_the_fast_path_takes_its_boundaries_itself(name):
    calls = []
    data = FAST_EDGES[name]
    assert taken_fast(data, ONE_ROUTE)
    encoded = compiled(data, ONE_ROUTE, counting(calls))
    assert encoded == REFERENCE(data, ONE_ROUTE)
    assert (encoded.lines, encoded.errors, len(encoded.batches)) == (1, 0, 1)
    assert calls == []


# -- clean fields, and each field at its edges

def _routes_with_nested_types():
    """Types that are prefixes of each other, each with its own servers."""
    addresses = {'idf': SERVERS[:1], 'idfa': SERVERS[1:3],
                 'idfa_x': SERVERS[2:5], 'i': SERVERS[4:5],
                 'gaid': SERVERS[:2]}
    return routes_of(addresses, 2)


NESTED_ROUTES = _routes_with_nested_types()
any_routes = st.one_of(four_type_routes(), extra_routes(),
                       st.just(NESTED_ROUTES))

clean_id = st.binary(min_size=1, max_size=16).map(
    lambda data: data.translate(TO_PRINTABLE))
BOUNDARY_APPS = [0, 1, 9, 10, 2 ** 32 - 2, 2 ** 32 - 1]
clean_app = st.one_of(st.integers(0, 2 ** 32 - 1),
                      st.sampled_from(BOUNDARY_APPS))


@st.composite
def type_edge(draw, routes):
    """A type of the routes or of another run, or one of them a byte
    longer, shorter, or changed: a prefix, an extension, another case."""
    real = draw(st.sampled_from(sorted(routes) + list(ALL_TYPES)))
    byte = draw(st.sampled_from([b'x', b'a', b'_', b':', b'\x00', b'\x7f',
                                 b'\x80', b'\xff', real[-1:]]
                                + WHITESPACE))
    return draw(st.sampled_from([
        real, real, real[:-1], real[1:], real + byte, byte + real,
        real[:-1] + byte, real.upper(), real.capitalize(), b'']))


KEY_EDGE_BYTES = [b'\x00', b'\x01', b'\x1f', b' ', b'!', b'~', b'\x7f',
                  b'\x80', b'\xff', b':'] + WHITESPACE


@st.composite
def id_edge(draw, dev_type):
    """A dev_id with a byte at or across an edge of the key bytes, or
    making a key of 249 to 252 bytes (with such a byte now and then), or
    empty."""
    dev_id = draw(clean_id)
    room = gmemcload.MAX_KEY_LENGTH - len(dev_type) - 1
    kind = draw(st.sampled_from(['byte', 'byte', 'length', 'length',
                                 'empty']))
    if kind == 'empty':
        return b''
    if kind == 'length':
        size = max(1, room + draw(st.integers(-1, 2)))
        dev_id = (dev_id * size)[:size]
        if draw(st.booleans()):
            return dev_id
    edge = draw(st.sampled_from(KEY_EDGE_BYTES))
    if kind == 'length':  # a byte replaced: the length stays
        where = draw(st.integers(0, len(dev_id) - 1))
        return dev_id[:where] + edge + dev_id[where + 1:]
    where = draw(st.integers(0, len(dev_id)))
    return dev_id[:where] + edge + dev_id[where:]


# Forms float() and C's strtod read differently, or only one of them
# reads: named forms, hex floats, nan payloads, underscores, other digits.
SPECIAL_NUMBERS = [
    b'inf', b'INF', b'-inf', b'+inf', b'infinity', b'-Infinity',
    b'iNfInItY', b'infinit', b'infinityx', b'infx', b'in', b'nan', b'NaN',
    b'-nan', b'+nan', b'nan(123)', b'nan()', b'nan(0x7ff)', b'nan(abc)',
    b'nanx', b'nan(', b'0x1p3', b'0X1P-3', b'-0x1p3', b'0x10', b'0x',
    b'0x1.8p1', b'0xp1', b'1e', b'1e+', b'1e-', b'e5', b'.e5', b'1e5',
    b'1E5', b'1e400', b'-1e400', b'1e-400', b'1_0', b'1__0', b'_1', b'1_',
    b'1_0.5', b'1.5_0', b'1_e5', b'1e1_0', b'\xd9\xa1', b'\xef\xbc\x91',
    b'1,5', b'1d', b'1f', b'1L', b'--1', b'+-1', b'-+1', b'+', b'-', b'.',
    b'-.', b'+.', b'', b'.5', b'5.', b'-.5', b'-5.', b'00', b'-0', b'-0.0',
    b'0e0', b'1.5x', b'1.5.2', b'1.5e', b'1..5', b'1.5-', b'1.5+']
number_parts = st.tuples(
    st.sampled_from([b''] * 6 + WHITESPACE),  # whitespace before it
    st.sampled_from([b'', b'', b'-', b'-', b'+', b'--', b'+-']),  # a sign
    st.sampled_from([b'', b'0', b'1', b'00', b'12', b'1234567890123']),
    st.sampled_from([b'', b'', b'.', b'.', b'..', b',']),  # a point
    st.sampled_from([b'', b'', b'5', b'25', b'0000000001']),  # fraction
    st.sampled_from([b''] * 6 + [b'e', b'E', b'e5', b'e-5', b'e+5', b'E+',
                                 b'e400', b'e-400', b'e0', b'e1_0']),
    st.sampled_from([b''] * 8 + [b'x', b'.2', b'.', b'e', b'_', b'_0',
                                 b'f', b'-', b'+', b'\x00', b'\x80', b':']
                    + WHITESPACE),  # trailing bytes
).map(b''.join)


@st.composite
def long_decimal(draw):
    """A plain decimal of 29 to 34 bytes, around the fast path's 31."""
    size = draw(st.integers(MAX_FLOAT_BYTES - 2, MAX_FLOAT_BYTES + 3))
    sign = draw(st.sampled_from([b'', b'-']))
    digits = draw(st.binary(min_size=size, max_size=size)).translate(
        bytes(b'0123456789'[byte % 10] for byte in range(256)))
    whole = draw(st.integers(1, size - len(sign)))
    number = sign + digits[:whole]
    if len(number) + 1 < size:
        number += b'.' + digits[:size - len(number) - 1]
    return number


number_edge = st.one_of(st.sampled_from(SPECIAL_NUMBERS), number_parts,
                        long_decimal())

# App ids whose digits wrap in 64 bits to one within uint32.
WRAPPING_APPS = [2 ** 64 + 5, 2 ** 64, 2 ** 64 + 2 ** 32 - 1,
                 2 ** 64 + 2 ** 32, 3 * 2 ** 64 + 7, 2 ** 65 + 1]
LARGE_APPS = [2 ** 32, 2 ** 32 + 1, 9999999999, 10 ** 10, 99999999999,
              2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 10 ** 19, 10 ** 20,
              10 ** 25 + 7]
ZEROS = [b'', b'', b'0', b'00', b'0' * 9, b'0' * 10, b'0' * 20]
JUNK_APPS = [b'', b' 1', b'1 ', b'+1', b'-1', b'1_0', b'0x1', b'1.0',
             b'1e3', b'\r', b'\x0b1', b'x', b'\x00', b'\xd9\xa3',
             b'\xef\xbc\x91', b'1\x002']
# The values at which the fast path's reading of an item turns, bare.
TURNING_APPS = [2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 9999999999, 10 ** 10,
                2 ** 64, 2 ** 64 + 5]
edge_app = st.one_of(
    st.sampled_from(TURNING_APPS).map(b'%d'.__mod__),
    st.tuples(st.sampled_from(ZEROS),
              st.one_of(st.sampled_from(BOUNDARY_APPS + LARGE_APPS
                                        + WRAPPING_APPS),
                        st.tuples(st.integers(1, 5),
                                  st.integers(0, 2 ** 32 - 1)).map(
                            lambda pair: pair[0] * 2 ** 64 + pair[1]))).map(
        lambda pair: b'%b%d' % pair),
    st.sampled_from(JUNK_APPS))


@st.composite
def apps_edge(draw):
    """Clean app ids with one item at an edge (digit counts, 2^32, past
    2^64, leading zeros, junk) among them, or one separator that is not
    a comma, or a comma too many at either end, or no apps at all."""
    items = [b'%d' % app for app in draw(st.lists(clean_app, max_size=4))]
    kind = draw(st.sampled_from(['item', 'item', 'item', 'separator',
                                 'end', 'empty']))
    if kind == 'empty':  # the line ends in a tab
        return b''
    if kind == 'item' or not items:
        items.insert(draw(st.integers(0, len(items))), draw(edge_app))
    field = b','.join(items)
    if kind == 'separator' and len(items) > 1:
        commas = [at for at, byte in enumerate(field) if byte == 0x2c]
        at = draw(st.sampled_from(commas))
        field = field[:at] + draw(st.sampled_from(
            [b',,', b', ', b' ,', b';', b' ', b'.', b'\t', b'\r', b'']))\
            + field[at + 1:]
    elif kind == 'end':
        field = draw(st.sampled_from([b',', b''])) + field \
            + draw(st.sampled_from([b',', b'', b',,']))
    return field


def _clean_number(rng):
    """A plain decimal of at most 21 bytes, negative now and then."""
    number = b'-' * rng.randrange(2) \
        + b'%d' % rng.randrange(10 ** rng.randrange(1, 10))
    if rng.randrange(2):
        number += b'.%d' % rng.randrange(10 ** rng.randrange(1, 10))
    return number


@st.composite
def clean_fields(draw, routes):
    """The five fields of a line the fast path takes, made from one drawn
    seed: a clean field needs no shrinking, and each draw costs."""
    rng = random.Random(draw(st.integers(0, 2 ** 32)))
    fast = [dev_type for dev_type in sorted(routes)
            if not _NOT_KEY_BYTE.search(dev_type) and dev_type]
    apps = [rng.choice(BOUNDARY_APPS) if rng.randrange(4) == 0
            else rng.randrange(2 ** 32) for _ in range(rng.randrange(1, 7))]
    return [rng.choice(fast),
            bytes(rng.choice(PRINTABLE) for _ in range(rng.randrange(1, 17))),
            _clean_number(rng), _clean_number(rng),
            b','.join(b'%d' % app for app in apps)]


FIELD_EDGES = ['type', 'id', 'lat', 'lon', 'apps']
LINE_EDGES = ['head', 'tail', 'both ends', 'field too many',
              'field too few', 'blank', 'long']


@st.composite
def edge_line(draw, routes, edges):
    """A clean line with one of ``edges`` (of FIELD_EDGES and LINE_EDGES)
    made: the field at an edge, or the line's ends, fields or length."""
    fields = draw(clean_fields(routes))
    edge = draw(st.sampled_from(edges))
    if edge == 'type':
        fields[0] = draw(type_edge(routes))
    elif edge == 'id':
        fields[1] = draw(id_edge(fields[0]))
    elif edge in ('lat', 'lon'):
        fields[2 + (edge == 'lon')] = draw(number_edge)
    elif edge == 'apps':
        fields[4] = draw(apps_edge())
    elif edge == 'field too many':
        fields.insert(draw(st.integers(0, 5)),
                      draw(st.sampled_from([b'', b'1', fields[1]])))
    elif edge == 'field too few':
        del fields[draw(st.integers(0, 4))]
    elif edge == 'blank':
        return draw(st.lists(st.sampled_from(WHITESPACE + [b'\t']),
                             max_size=3).map(b''.join))
    elif edge == 'long':  # some thousands of app ids
        fields[4] = b','.join([b'%d' % draw(clean_app)]
                              * draw(st.integers(200, 2000)))
    line = b'\t'.join(fields)
    ends = st.sampled_from(WHITESPACE + [b'\t', b'\r\r', b' \t'])
    if edge in ('head', 'both ends'):
        line = draw(ends) + line
    if edge in ('tail', 'both ends'):
        line += draw(ends)
    return line


@st.composite
def edge_chunk(draw, edges):
    """(data, routes): 1 to 8 lines, each clean or a clean line with one
    of ``edges`` made, for routes of any types; a final newline or not."""
    routes = draw(any_routes)
    lines = draw(st.lists(st.one_of(
        st.builds(b'\t'.join, clean_fields(routes)),
        edge_line(routes, edges), edge_line(routes, edges)),
        min_size=1, max_size=8))
    return b'\n'.join(lines) + draw(st.sampled_from([b'', b'\n'])), routes


# -- the properties: one per field, the line's own edges, all together

@settings(deadline=None, max_examples=2 * settings.default.max_examples)
@given(edge_chunk(['type']))
def test_a_device_type_at_an_edge_is_judged_as_the_reference(case):
    assert_fast_path_keeps_its_contract(*case)


@settings(deadline=None, max_examples=2 * settings.default.max_examples)
@given(edge_chunk(['id']))
def test_a_dev_id_at_an_edge_is_judged_as_the_reference(case):
    assert_fast_path_keeps_its_contract(*case)


@settings(deadline=None, max_examples=4 * settings.default.max_examples)
@given(edge_chunk(['lat', 'lon']))
def test_a_lat_or_lon_at_an_edge_is_judged_as_the_reference(case):
    assert_fast_path_keeps_its_contract(*case)


@settings(deadline=None, max_examples=4 * settings.default.max_examples)
@given(edge_chunk(['apps']))
def test_an_apps_field_at_an_edge_is_judged_as_the_reference(case):
    assert_fast_path_keeps_its_contract(*case)


@settings(deadline=None, max_examples=2 * settings.default.max_examples)
@given(edge_chunk(LINE_EDGES))
def test_a_line_at_an_edge_is_judged_as_the_reference(case):
    assert_fast_path_keeps_its_contract(*case)


@settings(deadline=None, max_examples=2 * settings.default.max_examples)
@given(edge_chunk(FIELD_EDGES + LINE_EDGES))
def test_edges_of_every_kind_in_one_chunk_are_judged_as_the_reference(
        case):
    assert_fast_path_keeps_its_contract(*case)
