# cython: language_level=3, boundscheck=True, wraparound=False
# cython: initializedcheck=True, cdivision=False
"""The compiled encoder: gmemcload's ``encode_chunk``, in C where it can be.

``ChunkEncoder(routes, contract)`` is given a run's routes (gmemcload's
``Routes.by_type``: ``{dev_type (bytes): ((lane, ...) per server, ...)}``,
its keys the run's device types) and gmemcload's line contract
(``LINE_CONTRACT``: ``encode_line``, the ``bad_line`` class it raises, the
limits ``max_key_length``, ``max_app_id``, ``logged_lines`` and
``line_prefix``, and the result types ``encoded_chunk``, ``lane_batch``,
``bad_sample`` and ``dropped_sample``).  Its ``encode_chunk(data)`` has
exactly the result of ``gmemcload.encode_chunk(data, routes)``, for every
input, built of the contract's types.

It encodes the lines it is sure of itself, without the GIL: a line of
exactly five tab-separated fields, with nothing to strip at either end, a
device type of the routes (one made of key bytes only), a dev_id of
printable ASCII other than space, a key of at most ``max_key_length``
bytes, lat and lon written as plain decimals (``-?DIGITS[.DIGITS]``, at
most 31 bytes), and apps that are empty or comma-separated items of 1 to
10 digits, each at most ``max_app_id``.  Any other line is handed, in its
place, to the contract's ``encode_line`` (the line contract, written once,
in Python), so the rules never fork.

The hot loop indexes raw pointers, which Cython never bounds-checks.  What
keeps it inside its buffers: every write of a command goes through
``reserve``, which makes room for the whole command first, and after each
command the bytes written are checked against the size reserved (a
mismatch fails the chunk, an AssertionError).  ``boundscheck`` stays on
for the few Python-level and memoryview indexings, off the hot loop.

What a call holds besides its input: each lane's commands, written once
in that lane's own buffer as the lines are encoded (no table of lines, no
scratch of app ids), and their copies into the result's bytes; so its
memory grows with the commands it makes, never with the number of lines
(a chunk of blank lines takes none).
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
    # The decimal width of a uint32: an app of more digits goes to Python
    # (leading zeros), and the digits of one never overflow a uint64.
    MAX_APP_DIGITS = 10
    MAX_LANES = 1 << 16
    # The most a contract's key length, samples or prefix may be: far past
    # any real one (memcached's keys are 250 bytes), within every C type.
    MAX_LIMIT = 1 << 30
    # A lane's buffer starts at this much (or its first command): small,
    # as a chunk may touch many lanes.
    FIRST_CAPACITY = 256

cdef uint64_t UINT32_MAX = 4294967295UL  # apps are uint32
# The lanes this encoder can number; gmemcload.MAX_LANES, which bounds a
# run's lanes, must not be more (a test holds them equal).
LANE_LIMIT = MAX_LANES
# Set once at import, never changed: read by every thread.
cdef locale_t C_LOCALE = newlocale(LC_ALL_MASK, b"C", NULL)

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
    if capacity < FIRST_CAPACITY:
        capacity = FIRST_CAPACITY
    while capacity < wanted:
        capacity *= 2
    grown = <char *>realloc(out.data, capacity)
    if grown == NULL:
        return -1
    out.data = grown
    out.capacity = capacity
    return 0


cdef struct Route:
    int servers       # > 0
    int *lanes_of     # per server: its lanes, > 0
    int *first_lane   # per server: index of its first lane in ``lanes``
    int *lanes        # each in [0, MAX_LANES)


cdef struct DeviceType:
    char *name        # its bytes (``length`` of them)
    size_t length
    bint fast         # made of key bytes: the fast path may take its lines
    Route route


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


cdef inline bint plain_decimal(const uint8_t *text,
                               size_t length) noexcept nogil:
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


cdef inline double parse_decimal(const uint8_t *text,
                                 size_t length) noexcept nogil:
    """A plain decimal (plain_decimal said so) as the nearest double, as
    Python's float() gives it: strtod in the C locale rounds correctly."""
    cdef char buffer[MAX_FLOAT_BYTES + 1]
    memcpy(buffer, text, length)
    buffer[length] = 0
    return strtod_l(buffer, NULL, C_LOCALE)


cdef inline const DeviceType *device_type(
        const DeviceType *types, Py_ssize_t type_count, const uint8_t *text,
        size_t length) noexcept nogil:
    """The fast type spelt ``text``, or NULL."""
    cdef Py_ssize_t index
    for index in range(type_count):
        if types[index].fast and types[index].length == length \
                and memcmp(types[index].name, text, length) == 0:
            return &types[index]
    return NULL


cdef inline bint is_space(uint8_t byte) noexcept nogil:
    """What bytes.strip() strips."""
    return byte == b' ' or b'\t' <= byte <= b'\r'


cdef inline bint is_key_byte(uint8_t byte) noexcept nogil:
    """What memcached's text protocol allows in a key."""
    return byte > 0x20 and byte != 0x7f


cdef int encode_fast(const uint8_t *line, size_t length,
                     const DeviceType *types, Py_ssize_t type_count,
                     Output *outs, int *lane_of, size_t max_key,
                     uint64_t max_app_id) noexcept nogil:
    """Encode one line (``length`` > 0) the fast way: its command appended
    to its lane's buffer ``outs[lane]``, the lane in ``lane_of``; 0 if
    done, 1 if the line is not one to be sure of (the caller hands it to
    the Python contract; nothing written), -1 with no memory, -2 if the
    command's size was computed wrong (a bug)."""
    cdef size_t tabs[4]
    cdef size_t found = 0
    cdef size_t at
    cdef const DeviceType *dev_type
    cdef const uint8_t *dev_id
    cdef size_t dev_id_length, key_length
    cdef double lat, lon
    cdef const uint8_t *field
    cdef size_t field_length, app_count = 0, digits
    cdef uint64_t value
    cdef size_t packed_size = 0, value_size, command_size, index
    cdef uint32_t hash_value
    cdef int server, lane
    cdef const Route *route
    cdef Output *out
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
    dev_type = device_type(types, type_count, line, tabs[0])
    if dev_type == NULL:
        return 1
    dev_id = line + tabs[0] + 1
    dev_id_length = tabs[1] - tabs[0] - 1
    if dev_id_length == 0:
        return 1
    key_length = dev_type.length + 1 + dev_id_length
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
    # The apps, checked and measured here, and read again as they are
    # written: no scratch that grows with the line.
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
            if digits == 0 or value > max_app_id:
                return 1
            app_count += 1
            packed_size += varint_size(value)
            if at == field_length:
                break
            if field[at] != b',':
                return 1
            at += 1

    # The lane: python-memcached's server for the key, then crc32 mod the
    # server's lanes (gmemcload.lane_for); crc32 of the key's parts in
    # turn is crc32 of the key.
    hash_value = <uint32_t>crc32(0, <const unsigned char *>dev_type.name,
                                 <unsigned int>dev_type.length)
    hash_value = <uint32_t>crc32(hash_value,
                                 <const unsigned char *>b":", 1)
    hash_value = <uint32_t>crc32(hash_value, dev_id,
                                 <unsigned int>dev_id_length)
    route = &dev_type.route
    server = 0
    if route.servers > 1:
        server = ((hash_value >> 16) & 0x7fff) % route.servers
    lane = route.lanes[route.first_lane[server]]
    if route.lanes_of[server] > 1:
        lane = route.lanes[route.first_lane[server]
                           + hash_value % <uint32_t>route.lanes_of[server]]

    # The value: UserApps, its fields in number order, as protobuf
    # serializes them: 1 (packed apps, only if any), 2 (lat), 3 (lon).
    value_size = 18
    if app_count:
        value_size += 1 + varint_size(packed_size) + packed_size
    command_size = (4 + key_length + 5 + decimal_size(value_size) + 2
                    + value_size + 2)
    out = &outs[lane]
    if reserve(out, command_size) < 0:
        return -1
    # From here to the size check, at most command_size bytes are written.
    to = out.data + out.size
    memcpy(to, b"set ", 4)
    to += 4
    memcpy(to, dev_type.name, dev_type.length)
    to[dev_type.length] = b':'
    memcpy(to + dev_type.length + 1, dev_id, dev_id_length)
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
        # Checked above: items of digits, one comma between two.
        at = 0
        for index in range(app_count):
            value = 0
            while at < field_length and field[at] != b',':
                value = value * 10 + (field[at] - c'0')
                at += 1
            at += 1
            to += write_varint(to, value)
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
    out.size += command_size
    lane_of[0] = lane
    return 0


cdef class ChunkEncoder:
    """gmemcload's encode_chunk for one run's routes, compiled: see the
    module docstring.  Raises ValueError or TypeError for routes or a
    contract it cannot take.

    Its tables are read-only once built: threads may share one encoder
    and call encode_chunk at once (each call has its own scratch).
    """
    # The routes: a copy, for encode_line, and as C tables, the types in
    # the routes' order; every lane in [0, lane_count).
    cdef dict routes
    cdef DeviceType *types
    cdef Py_ssize_t type_count  # entries of ``types`` that may own memory
    cdef int lane_count
    # The contract.
    cdef object encode_line
    cdef object bad_line
    cdef object encoded_chunk
    cdef object lane_batch
    cdef object bad_sample
    cdef object dropped_sample
    cdef size_t max_key
    cdef uint64_t max_app_id
    cdef Py_ssize_t logged
    cdef Py_ssize_t prefix

    def __cinit__(self, routes, contract):
        self.types = NULL
        self.type_count = 0
        if C_LOCALE == NULL:
            raise OSError('newlocale("C") failed')
        self._read_contract(contract)
        self._read_routes(routes)

    def __dealloc__(self):
        cdef Py_ssize_t index
        if self.types == NULL:
            return
        for index in range(self.type_count):
            free(self.types[index].name)
            free(self.types[index].route.lanes_of)
            free(self.types[index].route.first_lane)
            free(self.types[index].route.lanes)
        free(self.types)
        self.types = NULL

    cdef int _read_contract(self, contract) except -1:
        bad_line = contract.bad_line
        if not (isinstance(bad_line, type)
                and issubclass(bad_line, BaseException)):
            raise TypeError('contract.bad_line: not an exception class')
        max_key = contract.max_key_length
        max_app_id = contract.max_app_id
        logged = contract.logged_lines
        prefix = contract.line_prefix
        if not 0 < max_key <= MAX_LIMIT:
            raise ValueError('contract.max_key_length: %r' % (max_key,))
        if not 0 <= max_app_id <= UINT32_MAX:
            raise ValueError('contract.max_app_id: %r (apps are uint32)'
                             % (max_app_id,))
        if not 0 <= logged <= MAX_LIMIT or not 0 <= prefix <= MAX_LIMIT:
            raise ValueError('contract.logged_lines or line_prefix: %r, %r'
                             % (logged, prefix))
        self.encode_line = contract.encode_line
        self.bad_line = bad_line
        self.encoded_chunk = contract.encoded_chunk
        self.lane_batch = contract.lane_batch
        self.bad_sample = contract.bad_sample
        self.dropped_sample = contract.dropped_sample
        self.max_key = max_key
        self.max_app_id = max_app_id
        self.logged = logged
        self.prefix = prefix
        return 0

    cdef int _read_routes(self, routes) except -1:
        """The C tables of ``routes``, checked: each type has servers, each
        server lanes, each lane in [0, MAX_LANES), at most MAX_LANES lanes
        per type."""
        cdef DeviceType *dev_type
        cdef Route *route
        cdef bytes name
        cdef int server, count
        self.routes = dict(routes)
        self.types = <DeviceType *>calloc(len(self.routes) or 1,
                                          sizeof(DeviceType))
        if self.types == NULL:
            raise MemoryError()
        self.lane_count = 0
        for name_object, servers in self.routes.items():
            if not isinstance(name_object, bytes):
                raise TypeError('routes: device type %r is not bytes'
                                % (name_object,))
            name = name_object
            servers = tuple(tuple(lanes) for lanes in servers)
            total = sum(len(lanes) for lanes in servers)
            if not 0 < len(servers) <= total <= MAX_LANES:
                raise ValueError('routes of %r: bad lanes' % name)
            # Counted before it owns memory: __dealloc__ frees it then.
            dev_type = &self.types[self.type_count]
            self.type_count += 1
            dev_type.length = len(name)
            dev_type.name = <char *>malloc(dev_type.length + 1)
            route = &dev_type.route
            route.servers = len(servers)
            route.lanes_of = <int *>malloc(len(servers) * sizeof(int))
            route.first_lane = <int *>malloc(len(servers) * sizeof(int))
            route.lanes = <int *>malloc(total * sizeof(int))
            if dev_type.name == NULL or route.lanes_of == NULL \
                    or route.first_lane == NULL or route.lanes == NULL:
                raise MemoryError()
            memcpy(dev_type.name, PyBytes_AS_STRING(name), dev_type.length)
            # A type with a byte no key may hold is left to encode_line.
            dev_type.fast = dev_type.length > 0 and all(
                is_key_byte(byte) for byte in name)
            count = 0
            for server, lanes in enumerate(servers):
                if not lanes:
                    raise ValueError('routes of %r: a server without lanes'
                                     % name)
                route.lanes_of[server] = len(lanes)
                route.first_lane[server] = count
                for lane in lanes:
                    if not 0 <= lane < MAX_LANES:
                        raise ValueError('routes of %r: lane %r'
                                         % (name, lane))
                    route.lanes[count] = lane
                    self.lane_count = max(self.lane_count, lane + 1)
                    count += 1
        return 0

    def encode_chunk(self, data):
        """gmemcload.encode_chunk(data, routes), compiled: ``data`` is
        whole lines (bytes-like); an EncodedChunk of the contract.

        The lines are taken in order: runs of them without the GIL, each
        line it is not sure of in its place, with the GIL, through
        encode_line.  Each command goes to its lane's buffer as it is
        made, so every lane's commands are in line order."""
        cdef const uint8_t[::1] view = data
        cdef const uint8_t *text = (&view[0] if view.shape[0]
                                    else <const uint8_t *>b"")
        cdef size_t size = view.shape[0]
        cdef size_t start = 0, end = 0, length
        cdef const uint8_t *newline
        cdef bint last = False
        cdef int status = 0, lane = 0, used = 0, index
        cdef int lanes = self.lane_count or 1  # calloc(0) may give NULL
        # Per lane: its commands so far, and their number; the lanes in
        # order of first use.
        cdef Output *outs = <Output *>calloc(lanes, sizeof(Output))
        cdef Py_ssize_t *counts = <Py_ssize_t *>calloc(lanes,
                                                       sizeof(Py_ssize_t))
        cdef int *order = <int *>calloc(lanes, sizeof(int))
        cdef Py_ssize_t lines = 0, errors = 0, dropped = 0
        cdef list bad = []
        cdef list dropped_samples = []
        cdef bytes command
        # Read-only after construction: safe to read without the GIL.
        cdef const DeviceType *types = self.types
        cdef Py_ssize_t type_count = self.type_count
        cdef size_t max_key = self.max_key
        cdef uint64_t max_app_id = self.max_app_id
        try:
            if outs == NULL or counts == NULL or order == NULL:
                raise MemoryError()
            # Lines are what data.split(b'\n') gives: the last one is what
            # follows the last newline (blank if nothing does).
            while not last:
                with nogil:
                    while True:
                        newline = NULL
                        if start < size:
                            newline = <const uint8_t *>memchr(
                                text + start, b'\n', size - start)
                        if newline == NULL:
                            end = size
                            last = True
                        else:
                            end = <size_t>(newline - text)
                        if end > start:
                            status = encode_fast(
                                text + start, end - start, types,
                                type_count, outs, &lane, max_key,
                                max_app_id)
                            if status != 0:
                                break
                            lines += 1
                            if counts[lane] == 0:
                                order[used] = lane
                                used += 1
                            counts[lane] += 1
                        start = end + 1
                        if last:
                            break
                if status < 0:
                    break
                if status == 0:  # the last line was blank or fast
                    continue
                # A line the fast path is not sure of, in its place.
                status = 0
                line = PyBytes_FromStringAndSize(
                    <const char *>(text + start), end - start)
                start = end + 1
                try:
                    encoded = self.encode_line(line, self.routes)
                except self.bad_line as exc:
                    lines += 1
                    errors += 1
                    if len(bad) < self.logged:
                        bad.append(self.bad_sample(
                            exc.kind, str(exc), line[:self.prefix]))
                    continue
                if encoded is None:
                    continue
                encoded_lane = encoded.lane
                if not 0 <= encoded_lane < self.lane_count:
                    raise AssertionError('a lane outside the routes')
                lane = encoded_lane
                command = encoded.command
                if encoded.dropped_apps:
                    dropped += 1
                    if len(dropped_samples) < self.logged:
                        dropped_samples.append(self.dropped_sample(
                            encoded.dropped_apps, line[:self.prefix]))
                length = len(command)
                if reserve(&outs[lane], length) < 0:
                    raise MemoryError()
                memcpy(outs[lane].data + outs[lane].size,
                       PyBytes_AS_STRING(command), length)
                outs[lane].size += length
                lines += 1
                if counts[lane] == 0:
                    order[used] = lane
                    used += 1
                counts[lane] += 1
            if status == -2:
                raise AssertionError('a command of the wrong size')
            if status < 0:
                raise MemoryError()
            batches = []
            for index in range(used):
                lane = order[index]
                batches.append(self.lane_batch(
                    lane, counts[lane], PyBytes_FromStringAndSize(
                        outs[lane].data, outs[lane].size)))
                free(outs[lane].data)  # copied: the chunk's peak shrinks
                outs[lane].data = NULL
            return self.encoded_chunk(lines, errors, batches, bad, dropped,
                                      dropped_samples)
        finally:
            if outs != NULL:
                for index in range(lanes):
                    free(outs[index].data)
            free(outs)
            free(counts)
            free(order)
