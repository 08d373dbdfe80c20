"""Property tests of the line contract (README, "Lines"), with hypothesis.

parse_line, encode_chunk and read_chunks are judged by an oracle written
from the README's rules alone, never by calling the code under test, so
that it can judge a compiled encoder too.  ``make fuzz`` runs many more
examples (HYPOTHESIS_PROFILE=fuzz).
"""
import collections
import os
import re
import struct
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import gmemcload
from gmemcload import MALFORMED, UNKNOWN_TYPE, BadLine
from proto import appsinstalled_pb2

# No example database: it would leave a .hypothesis directory in the
# project; a failure prints its example and how to reproduce it.
settings.register_profile(
    'default', max_examples=100, deadline=None, database=None,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    'fuzz', max_examples=20000, deadline=None, database=None,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'default'))

# -- the oracle: the README's rules, written out again --

TYPES = (b'idfa', b'gaid', b'adid', b'dvid')
ASCII_WHITESPACE = b' \t\n\r\x0b\x0c'
DIGITS = b'0123456789'
MAX_KEY = 250
KEY_BYTES = bytes(byte for byte in range(256)  # no byte <= 0x20, no 0x7f
                  if byte > 0x20 and byte != 0x7f)
MAX_APP = 2 ** 32 - 1
SAMPLES = 5  # bad lines (and lines with dropped apps) shown per chunk
SAMPLE_BYTES = 1000  # what a sample keeps of its line

Record = collections.namedtuple(
    'Record', 'dev_type key lat lon apps dropped')
# ``reason`` is how the error's text starts: it names the broken rule.
Bad = collections.namedtuple('Bad', 'kind reason')


def bits(number):
    """A float as its 8 bytes, so that nan and -0.0 compare exactly."""
    return struct.pack('<d', number)


def strip(data):
    """``data`` without ASCII whitespace at either end."""
    start, end = 0, len(data)
    while start < end and data[start] in ASCII_WHITESPACE:
        start += 1
    while end > start and data[end - 1] in ASCII_WHITESPACE:
        end -= 1
    return data[start:end]


def app_ids(field):
    """(kept, dropped) for an apps field: the items that are ASCII
    decimal digits of at most 2^32-1 (leading zeros allowed), in order,
    and how many other items there were."""
    kept, dropped = [], 0
    for item in field.split(b','):
        item = strip(item)
        significant = item.lstrip(b'0') or b'0'
        if item and not item.translate(None, DIGITS) \
                and len(significant) <= 10 and int(significant) <= MAX_APP:
            kept.append(int(significant))
        else:
            dropped += 1
    return kept, dropped


def oracle(line):
    """What the README's rules make of one line (bytes, no b'\\n'): None
    for a blank line, Bad(kind, reason) for a bad one, else a Record.

    The rules are checked in the code's order, which decides the kind and
    the reason of a line that breaks several: the field count (a line of
    four fields is malformed whatever its type), the device type (an
    unknown type wins over every later fault), the empty id, the key, then
    lat and lon.  The apps never make a line bad.
    """
    line = strip(line)
    if not line:
        return None
    fields = line.split(b'\t')
    if len(fields) != 5:
        return Bad(MALFORMED, 'expected 5 tab-separated fields, got %d'
                   % len(fields))
    dev_type, dev_id, lat, lon, apps = fields
    if dev_type not in TYPES:
        return Bad(UNKNOWN_TYPE, 'unknown device type')
    if not dev_id:
        return Bad(MALFORMED, 'empty dev_id')
    key = dev_type + b':' + dev_id
    if len(key) > MAX_KEY or key.translate(None, KEY_BYTES):
        return Bad(MALFORMED, 'key is not a valid memcached key')
    try:
        lat, lon = float(lat), float(lon)  # the rule is float() itself
    except ValueError:
        return Bad(MALFORMED, 'lat or lon is not a number')
    kept, dropped = app_ids(apps)
    return Record(dev_type, key, lat, lon, kept, dropped)


def exact(answer):
    """An answer of the oracle (or of the code) with its floats as bits."""
    if isinstance(answer, Record):
        return answer._replace(lat=bits(answer.lat), lon=bits(answer.lon))
    return answer


def user_apps(apps, lat, lon):
    """An independent encoding of one record: protobuf's own message."""
    message = appsinstalled_pb2.UserApps()
    message.apps.extend(apps)
    message.lat = lat
    message.lon = lon
    return message.SerializeToString()


def varint(number):
    out = bytearray()
    while number > 0x7f:
        out.append(number & 0x7f | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def wire(apps, lat, lon):
    """UserApps written by hand from its .proto: apps packed (field 1,
    left out when empty), then lat and lon as doubles (fields 2 and 3)."""
    packed = b''.join(varint(app) for app in apps)
    head = b'\x0a' + varint(len(packed)) + packed if apps else b''
    return head + b'\x11' + bits(lat) + b'\x19' + bits(lon)


def decoded(value):
    """A memcached value as (apps, lat bits, lon bits)."""
    message = appsinstalled_pb2.UserApps.FromString(value)
    return list(message.apps), bits(message.lat), bits(message.lon)


_COMMAND = re.compile(rb'set ([\x21-\x7e\x80-\xff]+) 0 0 (0|[1-9][0-9]*)'
                      rb'\r\n')


def commands_in(payload):
    """(key, value) of each ``set`` command of a lane's payload, read by
    the text protocol's framing; fails on any other byte."""
    found, position = [], 0
    while position < len(payload):
        header = _COMMAND.match(payload, position)
        assert header, payload[position:position + 100]
        start = header.end()
        end = start + int(header.group(2))
        assert payload[end:end + 2] == b'\r\n'
        found.append((header.group(1), payload[start:end]))
        position = end + 2
    return found


def expected_encoding(data, routes):
    """What encoding ``data`` must give, from the oracle alone: a dict of
    the counts, each lane's [(key, decoded value)] in line order, and the
    first bad and dropped samples."""
    want = {'lines': 0, 'errors': 0, 'dropped': 0, 'records': 0,
            'lanes': collections.defaultdict(list), 'bad': [],
            'dropped_samples': []}
    for line in data.split(b'\n'):
        answer = oracle(line)
        if answer is None:
            continue
        want['lines'] += 1
        if isinstance(answer, Bad):
            want['errors'] += 1
            want['bad'].append((answer.kind, answer.reason,
                                line[:SAMPLE_BYTES]))
            continue
        want['records'] += 1
        if answer.dropped:
            want['dropped'] += 1
            want['dropped_samples'].append((answer.dropped,
                                            line[:SAMPLE_BYTES]))
        lane = gmemcload.lane_for(routes[answer.dev_type], answer.key)
        want['lanes'][lane].append(
            (answer.key, (answer.apps, bits(answer.lat), bits(answer.lon))))
    want['bad'] = want['bad'][:SAMPLES]
    want['dropped_samples'] = want['dropped_samples'][:SAMPLES]
    return want


def lanes_of(batches):
    """encode_chunk's batches as {lane: (count, payload)}; a lane is listed
    once at most, and one listed with no command has an empty payload."""
    lanes = {}
    for batch in batches:
        assert batch.lane not in lanes
        assert batch.count or not batch.commands
        if batch.count:
            lanes[batch.lane] = (batch.count, bytes(batch.commands))
    return lanes


def assert_samples(bad, expected):
    """Bad samples are (kind, reason, line[:1000]), the reason starting
    with the wording of the rule the oracle found broken."""
    assert [(kind, line) for kind, _, line in bad] == \
        [(kind, line) for kind, _, line in expected]
    for (_, reason, _), (_, start, _) in zip(bad, expected):
        assert isinstance(reason, str) and reason.startswith(start)


def assert_encodes_as_oracle(data, routes, encode):
    """encode(data, routes), an encoder, gives exactly what the oracle
    says."""
    encoded = encode(data, routes)
    want = expected_encoding(data, routes)
    assert (encoded.lines, encoded.errors, encoded.dropped) == \
        (want['lines'], want['errors'], want['dropped'])
    lanes = lanes_of(encoded.batches)
    assert encoded.lines == \
        sum(count for count, _ in lanes.values()) + encoded.errors
    got = {}
    for lane, (count, payload) in lanes.items():
        commands = commands_in(payload)
        assert count == len(commands)
        got[lane] = [(key, decoded(value)) for key, value in commands]
    assert got == dict(want['lanes'])
    assert_samples(encoded.bad, want['bad'])
    assert encoded.dropped_samples == want['dropped_samples']


# -- strategies --

TO_KEY_BYTES = bytes(KEY_BYTES[byte % len(KEY_BYTES)] for byte in range(256))
SPACE = [b' ', b'\t', b'\r', b'\x0b', b'\x0c']  # ASCII whitespace but b'\n'
JUNK_APPS = [b'', b' ', b'x', b'-1', b'+1', b'1_0', b'4294967296',
             b'99999999999', b'1.0', b'1e3', b'0x1', b'\x00', b'1\x002',
             b'\x7f', b'nan', b'\xd9\xa3', b'\xef\xbc\x91', b'\x80',
             b'9' * 4301, b'0' * 4300 + b'4294967296']
TOKENS = [b'\t', b',', b'+', b'-', b'.', b'e', b'E', b'nan', b'inf', b'_',
          b' ', b'\r', b'\x0b', b'\x0c', b'\x00', b'\x1f', b'\x7f', b'\x80',
          b'\xa0', b'\xff', b'x', b':'] + [bytes([d]) for d in DIGITS]


def no_newline(data):
    return data.replace(b'\n', b'')


def texts(values, form):
    return values.map(lambda value: (form(value).encode(), value))


def _coordinates():
    """(text, value): a double written in a way float() reads as value."""
    finite = st.floats(allow_nan=False)
    nan = float('nan')
    return st.one_of(
        texts(finite, repr),
        texts(finite, lambda value: repr(value).upper()),
        texts(finite, lambda value: '%.17g' % value),
        texts(finite, lambda value: ' \x0c%r\r ' % value),
        texts(st.floats(min_value=0.0), lambda value: '+%r' % value),
        st.integers(-10 ** 20, 10 ** 20).map(
            lambda number: ('{:_}'.format(number).encode(), float(number))),
        st.sampled_from([
            (b'nan', nan), (b'NaN', nan), (b'+nan', nan), (b'-nan', -nan),
            (b'-0', -0.0), (b'infinity', float('inf')),
            (b'-Infinity', float('-inf')), (b'1_0.5_0', 10.5),
            (b'.5', 0.5), (b'5.', 5.0), (b'1e-400', 0.0),
            (b'-1e400', float('-inf'))]))


coordinates = _coordinates()
# (app, leading zeros, spaces around it): a valid app id as an item.
ZEROS = [b'', b'0', b'000']
dressed_apps = st.lists(
    st.tuples(st.integers(0, MAX_APP), st.sampled_from(ZEROS),
              st.sampled_from([b'', b' ', b'\r\x0b', b'\x0c '])),
    min_size=1, max_size=8)
# (where, item): invalid items to slip in among the valid ones.
junk_apps = st.lists(st.tuples(st.integers(0, 8),
                               st.sampled_from(JUNK_APPS)), max_size=3)


def _dev_ids(room):
    """Ids of valid key bytes, short or right up to the key limit."""
    return st.one_of(st.binary(min_size=1, max_size=12),
                     st.binary(min_size=room - 4, max_size=room)).map(
        lambda data: data.translate(TO_KEY_BYTES))


dev_ids = {dev_type: _dev_ids(MAX_KEY - len(dev_type) - 1)
           for dev_type in TYPES}
# Now and then the app with this index gets 4400 zeros more: past 4300
# digits int() refuses a number, yet zeros do not make an app id invalid.
_many_zeros = st.sampled_from([-1] * 7 + [0, 1, 7])
line_heads = st.sampled_from([b'', b' ', b'\t', b'\r', b' \x0b\x0c'])
line_tails = st.sampled_from([b'', b'\r', b' \t', b'\x0c\r'])


@st.composite
def good_fields(draw):
    """(head, fields, tail, truth): the five fields of a line that must
    become a record, the ASCII whitespace around them, and the Record it
    must become, as generated (not as read back)."""
    dev_type = draw(st.sampled_from(TYPES))
    dev_id = draw(dev_ids[dev_type])
    lat_text, lat = draw(coordinates)
    lon_text, lon = draw(coordinates)
    dressed = draw(dressed_apps)
    many = draw(_many_zeros)
    items = [space + zeros + b'0' * 4400 * (number == many) + b'%d' % app
             + space for number, (app, zeros, space) in enumerate(dressed)]
    junk = draw(junk_apps)
    for where, item in junk:
        items.insert(where % (len(items) + 1), item)
    fields = [dev_type, dev_id, lat_text, lon_text, b','.join(items)]
    return draw(line_heads), fields, draw(line_tails), Record(
        dev_type, dev_type + b':' + dev_id, lat, lon,
        [app for app, _, _ in dressed], len(junk))


well_formed = good_fields().map(
    lambda case: (case[0] + b'\t'.join(case[1]) + case[2], case[3]))


soup = st.lists(st.one_of(st.sampled_from(TOKENS),
                          st.binary(min_size=1, max_size=1).map(no_newline)),
                max_size=12).map(b''.join)
type_field = st.one_of(
    st.sampled_from(TYPES),
    st.sampled_from([b'IDFA', b'idf', b'idfa ', b'idfax', b'\xffidfa',
                     b'gaid\x00', b'', b':']),
    soup)
id_field = st.one_of(
    soup, st.binary(max_size=8).map(no_newline), st.just(b''),
    st.integers(MAX_KEY - 10, MAX_KEY - 3).map(lambda size: b'x' * size),
    st.sampled_from([b'a b', b'a\x00b', b'a\x7fb', b'a\x1f', b'\x80\xff']))
number_field = st.one_of(coordinates.map(lambda pair: pair[0]), soup)
apps_field = st.one_of(
    st.lists(st.one_of(st.integers(0, MAX_APP + 2).map(b'%d'.__mod__),
                       st.sampled_from(JUNK_APPS)),
             min_size=1, max_size=6).map(b','.join),
    soup)


_field_counts = st.sampled_from([5, 5, 5, 5, 4, 3, 2, 1])
_extra_fields = st.one_of(st.just([]), st.just([]),
                          st.lists(soup, min_size=1, max_size=2))
_soup_heads = st.sampled_from([b'', b' ', b'\t'])
_soup_tails = st.sampled_from([b'', b'\r', b'\t', b' \x0b'])


@st.composite
def soup_line(draw):
    """A line of fields each good or drawn from a soup of tokens, with a
    field or two too many or too few now and then."""
    fields = [draw(type_field), draw(id_field), draw(number_field),
              draw(number_field), draw(apps_field)]
    fields = fields[:draw(_field_counts)] + draw(_extra_fields)
    return draw(_soup_heads) + b'\t'.join(fields) + draw(_soup_tails)


BAD_KEY_BYTES = [bytes([byte]) for byte in range(0x21) if byte != 0x0a] \
    + [b'\x7f']
# The bytes either side of each edge of the key bytes, or any bad one.
_key_edge_bytes = st.one_of(
    st.sampled_from([b' ', b'!', b'~', b'\x7f', b'\x80', b'\x00', b'\x1f',
                     b'\xff']),
    st.sampled_from(BAD_KEY_BYTES))
_faults = st.sampled_from(['id byte', 'id byte', 'id length', 'id length',
                           'type', 'lat', 'lon', 'apps', 'fewer', 'more'])
_near_types = st.sampled_from([b'IDFA', b'idf', b'idfa ', b'idfax', b'xidfa',
                               b'gaid\x00', b'', b'dvid\x7f', b'ad\tid'])


@st.composite
def near_miss(draw):
    """A well-formed line with one field made bad or taken to an edge: a
    key byte at or next to a bad one, a key of 249 to 252 bytes, a
    near-miss type, numbers or apps from the soup, a field too few or too
    many."""
    head, fields, tail, _ = draw(good_fields())
    fault = draw(_faults)
    where = draw(st.integers(0, 255))
    if fault == 'id byte':
        place = where % (len(fields[1]) + 1)
        fields[1] = fields[1][:place] + draw(_key_edge_bytes) \
            + fields[1][place:]
    elif fault == 'id length':
        room = MAX_KEY - len(fields[0]) - 1
        fields[1] = b'k' * (room + draw(st.integers(-1, 2)))
    elif fault == 'type':
        fields[0] = draw(_near_types)
    elif fault in ('lat', 'lon', 'apps'):
        fields[('lat', 'lon', 'apps').index(fault) + 2] = draw(soup)
    elif fault == 'fewer':
        del fields[where % 5]
    else:
        fields.insert(where % 6, draw(soup))
    return head + b'\t'.join(fields) + tail


blank_line = st.lists(st.sampled_from(SPACE), max_size=4).map(b''.join)
long_line = st.one_of(
    st.tuples(well_formed, st.integers(SAMPLE_BYTES - 100, 1200)).map(
        lambda pair: pair[0][0] + b',' + b'y' * pair[1]),
    st.tuples(type_field, st.integers(SAMPLE_BYTES - 10, 1100)).map(
        lambda pair: pair[0] + b'\t' + b'z' * pair[1]))
any_line = st.one_of(well_formed.map(lambda pair: pair[0]), near_miss(),
                     near_miss(), soup_line(),
                     st.binary(max_size=40).map(no_newline), blank_line,
                     long_line)

# A well-formed line with at least one app id to drop.
dropping_line = st.tuples(well_formed, st.sampled_from(JUNK_APPS)).map(
    lambda pair: pair[0][0] + b',' + pair[1])
# The lines of a chunk: any lines, or enough bad lines or lines with
# dropped app ids to fill their samples.
chunk_lines = st.one_of(
    st.lists(any_line, max_size=25),
    st.lists(st.one_of(near_miss(), dropping_line, any_line),
             min_size=SAMPLES, max_size=20))

ADDRESSES = ['127.0.0.1:%d' % port for port in range(33013, 33017)]


@st.composite
def routes(draw):
    """Real routes (Routes.by_type) for the README's types: 1-3 servers
    per type (shared between types now and then, as build_routes allows),
    1-3 uploaders."""
    addresses = {dev_type.decode(): draw(st.lists(st.sampled_from(ADDRESSES),
                                                  min_size=1, max_size=3,
                                                  unique=True))
                 for dev_type in TYPES}
    return gmemcload.build_routes(addresses,
                                  draw(st.integers(1, 3))).by_type


piece_sizes = st.lists(st.one_of(st.just(1), st.integers(1, 64)),
                       min_size=1, max_size=12)


def reader(data, sizes):
    """A read(size) that ignores size: it returns the next piece of
    ``data``, sized by ``sizes`` in turn, then b''."""
    pieces = []
    position, turn = 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        pieces.append(data[position:position + size])
        position += size
        turn += 1
    pieces.reverse()
    return lambda size: pieces.pop() if pieces else b''


def chunks_of(data, sizes):
    """(chunks, oversized): what read_chunks gives for ``data`` read in
    pieces of ``sizes``, each chunk joined as the loader joins it; every
    chunk but the last ends at a line end."""
    chunks, oversized = [], []
    for pieces, chunk_oversized in gmemcload.read_chunks(
            reader(data, sizes)):
        chunks.append(b''.join(pieces))
        oversized += chunk_oversized
    assert all(chunk.endswith(b'\n') for chunk in chunks[:-1] if chunk)
    return chunks, oversized


# -- the properties --

def assert_parses_as_oracle(line):
    """parse_line(line) gives what the oracle gives: None, a BadLine of
    the right kind and rule, or exactly the Record (floats bit for bit)."""
    want = oracle(line)
    try:
        answer = gmemcload.parse_line(line)
    except BadLine as exc:
        assert isinstance(want, Bad), (want, exc)
        assert exc.kind == want.kind
        assert str(exc).startswith(want.reason)
        return
    if want is None:
        assert answer is None
    else:
        assert isinstance(answer, tuple) and len(answer) == 6
        assert exact(Record(*answer)) == exact(want)


def test_every_byte_in_an_id_is_judged_as_the_oracle_judges_it():
    """Exhaustive where random lines are thin: each byte value once at
    the start, the middle and the end of an id (b'\\n' ends a line)."""
    for byte in bytes(range(256)).replace(b'\n', b''):
        for dev_id in (bytes([byte]) + b'ab', b'a' + bytes([byte]) + b'b',
                       b'ab' + bytes([byte])):
            assert_parses_as_oracle(b'gaid\t' + dev_id + b'\t1\t2\t3')


def test_every_key_length_is_judged_as_the_oracle_judges_it():
    """Exhaustive too: keys of 5 to 253 bytes, for each type."""
    for dev_type in TYPES:
        for size in range(MAX_KEY + 3):
            assert_parses_as_oracle(dev_type + b'\t' + b'i' * size
                                    + b'\t1\t2\t3')


# parse_line is cheap to run: it gets more examples than the rest.
@settings(deadline=None, max_examples=4 * settings.default.max_examples)
@given(any_line)
def test_parse_line_agrees_with_the_oracle_on_any_line(line):
    assert_parses_as_oracle(line)


CHOICE = gmemcload.choose_encoder()


def compiled(data, routes):
    """The encoder the loader runs (choose_encoder's), for ``routes``."""
    return CHOICE.new(routes)(data)


# Both encoders: the reference, and the compiled one the loader runs.
ENCODERS = [pytest.param(gmemcload.encode_chunk, id='python'),
            pytest.param(compiled, id='compiled')]


@pytest.mark.parametrize('encode', ENCODERS)
@settings(deadline=None)
@given(chunk_lines, routes())
def test_encode_chunk_agrees_with_the_oracle_lane_by_lane(encode, lines,
                                                          routes):
    assert_encodes_as_oracle(b'\n'.join(lines), routes, encode)


@pytest.mark.parametrize('encode', ENCODERS)
@settings(deadline=None)
@given(chunk_lines, st.booleans(), piece_sizes, routes())
def test_chunks_cut_anywhere_encode_as_the_whole_stream(
        encode, lines, final_newline, sizes, routes):
    data = b'\n'.join(lines) + (b'\n' if final_newline else b'')
    chunks, oversized = chunks_of(data, sizes)
    assert b''.join(chunks) == data and oversized == []
    whole = encode(data, routes)
    lines = errors = dropped = 0
    payloads = collections.defaultdict(bytes)
    counts = collections.Counter()
    bad, dropped_samples = [], []
    for chunk in filter(None, chunks):
        encoded = encode(chunk, routes)
        lines += encoded.lines
        errors += encoded.errors
        for lane, (count, payload) in lanes_of(encoded.batches).items():
            payloads[lane] += payload
            counts[lane] += count
        bad += encoded.bad
        dropped += encoded.dropped
        dropped_samples += encoded.dropped_samples
    assert (lines, errors, dropped) == \
        (whole.lines, whole.errors, whole.dropped)
    assert {lane: (counts[lane], payloads[lane]) for lane in payloads} == \
        lanes_of(whole.batches)
    assert bad[:SAMPLES] == whole.bad
    assert dropped_samples[:SAMPLES] == whole.dropped_samples
    assert_encodes_as_oracle(data, routes, encode)


def test_the_shipped_limits_keep_the_chunking_precondition():
    """A read gives at most READ_CHUNK bytes, and READ_CHUNK +
    OVERSIZED_PREFIX <= MAX_LINE_BYTES: so a line within one read is
    within the limit, and an oversized line is held for at least its
    prefix before its end is found."""
    assert gmemcload.READ_CHUNK + gmemcload.OVERSIZED_PREFIX <= \
        gmemcload.MAX_LINE_BYTES


# Lines for a limit of L bytes: (a size, a pattern), the size L-1, L or
# L+1 or (a number n) L-2 to 3L; or any line with up to 2L bytes more.
_near_limit = st.tuples(
    st.one_of(st.sampled_from(['-1', '0', '0', '1']), st.integers(0, 1000)),
    st.sampled_from([b'L', b'x\t', b'1,', b' ']))
_padded = st.tuples(any_line, st.integers(0, 1000))


_limits = st.integers(10, 40)
_prefixes = st.integers(1, 8)
_limit_lines = st.lists(st.one_of(
    st.tuples(st.just('any'), any_line),
    st.tuples(st.just('near'), _near_limit),
    st.tuples(st.just('padded'), _padded)), max_size=12)


@st.composite
def oversized_case(draw):
    """(limit, prefix, read size, lines): small limits, with lines just
    under, at and over the limit among arbitrary ones."""
    limit = draw(_limits)
    prefix = draw(_prefixes)
    lines = []
    for kind, line in draw(_limit_lines):
        if kind == 'near':
            size = limit + int(line[0]) if isinstance(line[0], str) \
                else limit - 2 + line[0] % (2 * limit + 3)
            line = (line[1] * size)[:size]
        elif kind == 'padded':
            line = line[0] + b'p' * (line[1] % (2 * limit + 1))
        lines.append(line)
    return limit, prefix, limit - prefix, lines


@pytest.mark.parametrize('encode', ENCODERS)
@settings(deadline=None)
@given(oversized_case(), st.booleans(), piece_sizes, routes())
def test_a_line_over_the_limit_comes_back_only_as_its_prefix(
        encode, case, final_newline, sizes, routes):
    limit, prefix, read_size, lines = case
    data = b'\n'.join(lines) + (b'\n' if final_newline else b'')
    kept, prefixes = [], []
    ends = data.split(b'\n')
    for number, line in enumerate(ends):
        if len(line) > limit:
            prefixes.append(line[:prefix])
        else:
            kept.append(line + (b'\n' if number < len(ends) - 1 else b''))
    sizes = [min(size, read_size) for size in sizes]
    with mock.patch.object(gmemcload, 'MAX_LINE_BYTES', limit), \
            mock.patch.object(gmemcload, 'OVERSIZED_PREFIX', prefix), \
            mock.patch.object(gmemcload, 'READ_CHUNK', read_size):
        chunks, oversized = chunks_of(data, sizes)
    assert oversized == prefixes
    assert b''.join(chunks) == b''.join(kept)
    for chunk in filter(None, chunks):  # only the kept lines are records
        assert_encodes_as_oracle(chunk, routes, encode)


@pytest.mark.parametrize('encode', ENCODERS)
@settings(deadline=None)
@given(st.lists(well_formed, min_size=1, max_size=8), routes())
def test_well_formed_lines_round_trip_to_one_record_each(encode, cases,
                                                         routes):
    for line, truth in cases:
        assert exact(Record(*gmemcload.parse_line(line))) == exact(truth)
    encoded = encode(b'\n'.join(line for line, _ in cases), routes)
    assert (encoded.lines, encoded.errors, encoded.bad) == \
        (len(cases), 0, [])
    assert encoded.dropped == sum(1 for _, truth in cases if truth.dropped)
    want = collections.defaultdict(list)
    for _, truth in cases:
        value = user_apps(truth.apps, truth.lat, truth.lon)
        assert value == wire(truth.apps, truth.lat, truth.lon)
        want[gmemcload.lane_for(routes[truth.dev_type], truth.key)].append(
            b'set %b 0 0 %d\r\n%b\r\n' % (truth.key, len(value), value))
    assert lanes_of(encoded.batches) == {
        lane: (len(commands), b''.join(commands))
        for lane, commands in want.items()}


@pytest.mark.parametrize('item, apps, dropped', [
    (b'0' * 4300 + b'7', [7], 0),  # leading zeros are fine, however many
    (b'9' * 4301, [], 1),  # more digits than int() takes: too large
])
def test_an_app_item_of_any_length_is_kept_or_dropped(item, apps, dropped):
    line = b'idfa\tabc\t1\t2\t1,' + item
    assert oracle(line).apps == [1] + apps
    assert gmemcload.parse_line(line)[4:] == ([1] + apps, dropped)
