# cython: language_level=3, boundscheck=True, wraparound=False
# cython: initializedcheck=True, cdivision=False
"""The compiled encoder: gmemcload's ``encode_chunk``, in C where it can be.

``encode_chunk(data, routes)`` has exactly the contract and the result of
the pure-Python reference in gmemcload.py, for every input.  It encodes the
lines it is sure of itself, without the GIL: a line of exactly five
tab-separated fields, with nothing to strip at either end, a known device
type, a dev_id of printable ASCII other than space, a key of at most
MAX_KEY_LENGTH bytes, lat and lon written as plain decimals
(``-?DIGITS[.DIGITS]``, at most 31 bytes), and apps that are empty or
comma-separated items of 1 to 10 digits, each at most 2**32 - 1.  Any other
line is handed, in its place, to gmemcload's ``encode_line`` (the line
contract, written once, in Python), so the rules never fork.

Every write goes through ``Output.reserve``, which makes room for it first:
no input can overrun a buffer.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.string cimport memcpy, memcmp, memchr

cdef extern from "<locale.h>" nogil:
    ctypedef struct __locale_struct:
        pass
    ctypedef __locale_struct *locale_t
    int LC_ALL_MASK
    locale_t newlocale(int mask, const char *locale, locale_t base)

cdef extern from "<stdlib.h>" nogil:
    double strtod_l(const char *text, char **end, locale_t locale)

cdef extern from "<zlib.h>" nogil:
    unsigned long crc32(unsigned long crc, const unsigned char *buf,
                        unsigned int length)

cdef enum:
    MAX_FLOAT_BYTES = 31
    MAX_APP_DIGITS = 10
    MAX_LANES = 1 << 16

cdef uint64_t MAX_APP_ID = 4294967295UL  # apps are uint32
cdef locale_t C_LOCALE = newlocale(LC_ALL_MASK, b"C", NULL)

# Set by configure(): gmemcload's own pieces.
cdef object _encode_line = None
cdef object _bad_line = None
cdef Py_ssize_t _logged = 0
cdef Py_ssize_t _prefix = 0
cdef Py_ssize_t _max_key = 0

# The line kinds of the first pass.
cdef enum:
    BLANK = 0
    FAST = 1
    SLOW = 2


def configure(encode_line, bad_line, logged_lines, line_prefix,
              max_key_length):
    """Hand the module gmemcload's line contract: ``encode_line`` for the
    lines it is not sure of, the BadLine class it raises, and the limits
    (samples kept per chunk, bytes of a line shown, the key length)."""
    global _encode_line, _bad_line, _logged, _prefix, _max_key
    if C_LOCALE == NULL:
        raise OSError('newlocale("C") failed')
    _encode_line = encode_line
    _bad_line = bad_line
    _logged = logged_lines
    _prefix = line_prefix
    _max_key = max_key_length


cdef struct Output:
    char *data
    size_t size
    size_t capacity


cdef int reserve(Output *out, size_t more) noexcept nogil:
    """Room for ``more`` bytes after ``out.size``; 0, or -1 with no memory."""
    cdef size_t wanted = out.size + more
    cdef size_t capacity = out.capacity
    cdef char *grown
    if wanted <= capacity:
        return 0
    if capacity < 4096:
        capacity = 4096
    while capacity < wanted:
        capacity *= 2
    grown = <char *>realloc(out.data, capacity)
    if grown == NULL:
        return -1
    out.data = grown
    out.capacity = capacity
    return 0


cdef struct Entry:
    int kind          # BLANK, FAST or SLOW
    int lane          # FAST: its lane
    size_t start      # FAST: its command in the output; SLOW: the line
    size_t length


cdef struct Route:
    int servers       # servers of the device type
    int *lanes_of     # lanes per server
    int *first_lane   # per server: index of its first lane in ``lanes``
    int *lanes


cdef inline size_t write_varint(char *to, uint64_t value) noexcept nogil:
    cdef size_t written = 0
    while value >= 0x80:
        to[written] = <char>((value & 0x7f) | 0x80)
        value >>= 7
        written += 1
    to[written] = <char>value
    return written + 1


cdef inline size_t varint_size(uint64_t value) noexcept nogil:
    cdef size_t size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


cdef inline size_t decimal_size(size_t value) noexcept nogil:
    cdef size_t size = 1
    while value >= 10:
        value //= 10
        size += 1
    return size


cdef inline bint plain_decimal(const uint8_t *text, size_t length) noexcept nogil:
    """``-?DIGITS[.DIGITS]``, at most MAX_FLOAT_BYTES bytes."""
    cdef size_t at = 0
    cdef size_t digits = 0
    if length == 0 or length > MAX_FLOAT_BYTES:
        return False
    if text[0] == b'-':
        at = 1
    while at < length and b'0' <= text[at] <= b'9':
        at += 1
        digits += 1
    if digits == 0:
        return False
    if at == length:
        return True
    if text[at] != b'.':
        return False
    at += 1
    digits = 0
    while at < length and b'0' <= text[at] <= b'9':
        at += 1
        digits += 1
    return digits > 0 and at == length


cdef inline double parse_decimal(const uint8_t *text, size_t length) noexcept nogil:
    """A plain decimal (plain_decimal said so) as the nearest double, as
    Python's float() gives it: strtod in the C locale rounds correctly."""
    cdef char buffer[MAX_FLOAT_BYTES + 1]
    memcpy(buffer, text, length)
    buffer[length] = 0
    return strtod_l(buffer, NULL, C_LOCALE)


cdef inline int device_type(const uint8_t *text, size_t length) noexcept nogil:
    """0-3 for idfa, gaid, adid, dvid; -1 for anything else."""
    if length != 4:
        return -1
    if memcmp(text, b"idfa", 4) == 0:
        return 0
    if memcmp(text, b"gaid", 4) == 0:
        return 1
    if memcmp(text, b"adid", 4) == 0:
        return 2
    if memcmp(text, b"dvid", 4) == 0:
        return 3
    return -1


cdef inline bint is_space(uint8_t byte) noexcept nogil:
    """What bytes.strip() strips."""
    return byte == b' ' or b'\t' <= byte <= b'\r'


cdef int encode_fast(const uint8_t *line, size_t length, Route *routes,
                     Output *out, Entry *entry, uint32_t *apps,
                     size_t max_key) noexcept nogil:
    """Encode one line the fast way into ``out`` and fill ``entry``; 0 if
    done, 1 if the line is not one to be sure of (the caller hands it to
    the Python contract), -1 with no memory, -2 if the command's size was
    computed wrong (a bug).  ``apps`` has room for
    length / 2 + 1 ids."""
    cdef size_t tabs[4]
    cdef size_t found = 0
    cdef size_t at
    cdef int dev_type
    cdef const uint8_t *dev_id
    cdef size_t dev_id_length, key_length
    cdef double lat, lon
    cdef const uint8_t *field
    cdef size_t field_length, app_count = 0, digits
    cdef uint64_t value
    cdef size_t packed_size = 0, value_size, command_size, index
    cdef uint32_t hash_value
    cdef int server, lane
    cdef Route *route
    cdef char *to
    cdef uint64_t lat_bits, lon_bits

    if is_space(line[0]) or is_space(line[length - 1]):
        return 1
    for at in range(length):
        if line[at] == b'\t':
            if found == 4:
                return 1
            tabs[found] = at
            found += 1
    if found != 4:
        return 1
    dev_type = device_type(line, tabs[0])
    if dev_type < 0:
        return 1
    dev_id = line + tabs[0] + 1
    dev_id_length = tabs[1] - tabs[0] - 1
    if dev_id_length == 0:
        return 1
    key_length = 5 + dev_id_length
    if key_length > max_key:
        return 1
    for at in range(dev_id_length):
        if dev_id[at] <= 0x20 or dev_id[at] >= 0x7f:
            return 1
    field = line + tabs[1] + 1
    field_length = tabs[2] - tabs[1] - 1
    if not plain_decimal(field, field_length):
        return 1
    lat = parse_decimal(field, field_length)
    field = line + tabs[2] + 1
    field_length = tabs[3] - tabs[2] - 1
    if not plain_decimal(field, field_length):
        return 1
    lon = parse_decimal(field, field_length)
    field = line + tabs[3] + 1
    field_length = length - tabs[3] - 1
    if field_length:
        at = 0
        while True:
            digits = 0
            value = 0
            while at < field_length and b'0' <= field[at] <= b'9':
                if digits == MAX_APP_DIGITS:
                    return 1
                value = value * 10 + (field[at] - c'0')
                digits += 1
                at += 1
            if digits == 0 or value > MAX_APP_ID:
                return 1
            apps[app_count] = <uint32_t>value
            app_count += 1
            packed_size += varint_size(value)
            if at == field_length:
                break
            if field[at] != b',':
                return 1
            at += 1

    # The value: UserApps, its fields in number order, as protobuf
    # serializes them: 1 (packed apps, only if any), 2 (lat), 3 (lon).
    value_size = 18
    if app_count:
        value_size += 1 + varint_size(packed_size) + packed_size
    command_size = (4 + key_length + 5 + decimal_size(value_size) + 2
                    + value_size + 2)
    if reserve(out, command_size) < 0:
        return -1
    to = out.data + out.size
    memcpy(to, b"set ", 4)
    to += 4
    memcpy(to, line, 4)
    to[4] = b':'
    memcpy(to + 5, dev_id, dev_id_length)
    to += key_length
    memcpy(to, b" 0 0 ", 5)
    to += 5
    index = decimal_size(value_size)
    at = value_size
    while index:
        index -= 1
        to[index] = <char>(c'0' + at % 10)
        at //= 10
    to += decimal_size(value_size)
    to[0] = b'\r'
    to[1] = b'\n'
    to += 2
    if app_count:
        to[0] = 0x0a
        to += 1
        to += write_varint(to, packed_size)
        for index in range(app_count):
            to += write_varint(to, apps[index])
    memcpy(&lat_bits, &lat, 8)
    memcpy(&lon_bits, &lon, 8)
    to[0] = 0x11
    for index in range(8):
        to[1 + index] = <char>((lat_bits >> (8 * index)) & 0xff)
    to[9] = 0x19
    for index in range(8):
        to[10 + index] = <char>((lon_bits >> (8 * index)) & 0xff)
    to += 18
    to[0] = b'\r'
    to[1] = b'\n'
    to += 2
    if <size_t>(to - (out.data + out.size)) != command_size:
        return -2  # a size computed wrong: never write past it unseen

    # The lane: python-memcached's server for the key, then crc32 mod the
    # server's lanes (gmemcload.lane_for).
    route = &routes[dev_type]
    hash_value = <uint32_t>crc32(0, <const unsigned char *>(out.data
                                 + out.size + 4), <unsigned int>key_length)
    server = 0
    if route.servers > 1:
        server = ((hash_value >> 16) & 0x7fff) % route.servers
    lane = route.lanes[route.first_lane[server]]
    if route.lanes_of[server] > 1:
        lane = route.lanes[route.first_lane[server]
                           + hash_value % <uint32_t>route.lanes_of[server]]
    entry.kind = FAST
    entry.lane = lane
    entry.start = out.size
    entry.length = command_size
    out.size += command_size
    return 0


cdef void free_routes(Route *routes) noexcept:
    cdef int dev_type
    for dev_type in range(4):
        free(routes[dev_type].lanes_of)
        free(routes[dev_type].first_lane)
        free(routes[dev_type].lanes)


cdef int fill_routes(Route *routes, object table) except -1:
    """``routes`` (4 of them) from build_routes' table; returns the number
    of lanes (the highest lane + 1)."""
    cdef int dev_type, server, lane, count, lane_count = 0
    for dev_type, name in enumerate((b'idfa', b'gaid', b'adid', b'dvid')):
        servers = table[name]
        routes[dev_type].servers = len(servers)
        count = sum(len(lanes) for lanes in servers)
        if not 0 < routes[dev_type].servers <= count <= MAX_LANES:
            raise ValueError('routes of %r: bad lanes' % name)
        routes[dev_type].lanes_of = <int *>malloc(len(servers) * sizeof(int))
        routes[dev_type].first_lane = <int *>malloc(
            len(servers) * sizeof(int))
        routes[dev_type].lanes = <int *>malloc(count * sizeof(int))
        if routes[dev_type].lanes_of == NULL or \
                routes[dev_type].first_lane == NULL or \
                routes[dev_type].lanes == NULL:
            raise MemoryError()
        count = 0
        for server, lanes in enumerate(servers):
            if not lanes:
                raise ValueError('routes of %r: a server without lanes'
                                 % name)
            routes[dev_type].lanes_of[server] = len(lanes)
            routes[dev_type].first_lane[server] = count
            for lane in lanes:
                if not 0 <= lane < MAX_LANES:
                    raise ValueError('routes of %r: lane %r' % (name, lane))
                routes[dev_type].lanes[count] = lane
                lane_count = max(lane_count, lane + 1)
                count += 1
    return lane_count


def encode_chunk(data, routes):
    """gmemcload's encode_chunk, compiled: the same arguments, the same
    result for every input (see gmemcload.encode_chunk)."""
    cdef const uint8_t[::1] view = data
    cdef const uint8_t *text = &view[0] if view.shape[0] else <const uint8_t *>b""
    cdef size_t size = view.shape[0]
    cdef size_t line_count = 1, at = 0, start, end, index
    cdef const uint8_t *newline
    cdef Route table[4]
    cdef Output out
    cdef Entry *entries = NULL
    cdef uint32_t *apps = NULL
    cdef int status = 0
    cdef size_t max_key = _max_key
    cdef int lane_count

    if _encode_line is None:
        raise RuntimeError('native_encoder.configure() was not called')
    for index in range(4):
        table[index].lanes_of = NULL
        table[index].first_lane = NULL
        table[index].lanes = NULL
    out.data = NULL
    out.size = 0
    out.capacity = 0
    try:
        lane_count = fill_routes(table, routes)
        with nogil:
            # Lines are what data.split(b'\n') gives: one more than the
            # newlines.
            while at < size:
                newline = <const uint8_t *>memchr(text + at, b'\n', size - at)
                if newline == NULL:
                    break
                line_count += 1
                at = newline - text + 1
        entries = <Entry *>malloc(line_count * sizeof(Entry))
        # The longest line has at most size / 2 + 1 app ids.
        apps = <uint32_t *>malloc((size // 2 + 1) * sizeof(uint32_t))
        if entries == NULL or apps == NULL:
            raise MemoryError()
        with nogil:
            start = 0
            for index in range(line_count):
                newline = NULL
                if start < size:
                    newline = <const uint8_t *>memchr(text + start, b'\n',
                                                      size - start)
                end = size if newline == NULL else <size_t>(newline - text)
                entries[index].start = start
                entries[index].length = end - start
                if end == start:
                    entries[index].kind = BLANK
                else:
                    status = encode_fast(text + start, end - start, table,
                                         &out, &entries[index], apps,
                                         max_key)
                    if status < 0:
                        break
                    if status > 0:
                        entries[index].kind = SLOW
                        entries[index].start = start
                        entries[index].length = end - start
                start = end + 1
        if status == -2:
            raise AssertionError('a command of the wrong size')
        if status < 0:
            raise MemoryError()
        return _gather(text, entries, line_count, &out, routes,
                       lane_count)
    finally:
        free(entries)
        free(apps)
        free(out.data)
        free_routes(table)


cdef object _gather(const uint8_t *text, Entry *entries,
                    size_t line_count, Output *out, object routes,
                    int lane_count):
    """With the GIL: the slow lines through encode_line, then every
    lane's commands joined in line order, the lanes in order of first
    use, and the counts and samples, as the reference builds them."""
    cdef Py_ssize_t lines = 0, errors = 0, dropped = 0
    cdef size_t index, length
    cdef Entry *entry
    cdef int lane
    cdef size_t *sizes = <size_t *>calloc(lane_count, sizeof(size_t))
    cdef Py_ssize_t *counts = <Py_ssize_t *>calloc(lane_count,
                                                   sizeof(Py_ssize_t))
    cdef char **ends = <char **>calloc(lane_count, sizeof(char *))
    cdef list order = []  # lanes, in order of first use
    cdef list commands = []  # of the slow lines, in line order
    cdef list bad = []
    cdef list dropped_samples = []
    cdef bytes command
    try:
        if sizes == NULL or counts == NULL or ends == NULL:
            raise MemoryError()
        for index in range(line_count):
            entry = &entries[index]
            if entry.kind == BLANK:
                continue
            if entry.kind == SLOW:
                line = PyBytes_FromStringAndSize(
                    <const char *>(text + entry.start), entry.length)
                try:
                    encoded = _encode_line(line, routes)
                except _bad_line as exc:
                    lines += 1
                    errors += 1
                    if len(bad) < _logged:
                        bad.append((exc.kind, str(exc), line[:_prefix]))
                    entry.kind = BLANK
                    continue
                if encoded is None:
                    entry.kind = BLANK
                    continue
                lane, command, dropped_apps = encoded
                if not 0 <= lane < lane_count:
                    raise AssertionError('a lane outside the routes')
                if dropped_apps:
                    dropped += 1
                    if len(dropped_samples) < _logged:
                        dropped_samples.append((dropped_apps,
                                                line[:_prefix]))
                commands.append(command)
                entry.lane = lane
                entry.length = len(command)
            lines += 1
            lane = entry.lane
            if counts[lane] == 0:
                order.append(lane)
            counts[lane] += 1
            sizes[lane] += entry.length
        joined = {}
        for lane in order:
            joined[lane] = PyBytes_FromStringAndSize(NULL, sizes[lane])
            ends[lane] = PyBytes_AS_STRING(joined[lane])
        slow = 0
        for index in range(line_count):
            entry = &entries[index]
            if entry.kind == BLANK:
                continue
            lane = entry.lane
            length = entry.length
            if sizes[lane] < length:
                raise AssertionError('a lane\'s commands overrun it')
            sizes[lane] -= length
            if entry.kind == FAST:
                if entry.start + length > out.size:
                    raise AssertionError('a command outside the output')
                memcpy(ends[lane], out.data + entry.start, length)
            else:
                command = commands[slow]
                slow += 1
                memcpy(ends[lane], PyBytes_AS_STRING(command), length)
            ends[lane] += length
        batches = [(lane, counts[lane], joined[lane]) for lane in order]
        return lines, errors, batches, bad, dropped, dropped_samples
    finally:
        free(sizes)
        free(counts)
        free(ends)
