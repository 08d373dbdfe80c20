#!/usr/bin/env python3
"""gmemcload: load installed-apps logs into memcached, fast and in order.

Each ``*.tsv.gz`` file holds one line per device::

    dev_type <TAB> dev_id <TAB> lat <TAB> lon <TAB> app,app,...

and each valid line becomes one memcached entry: key ``dev_type:dev_id``,
value the serialized ``appsinstalled.UserApps`` protobuf.  Every device type
has its own memcached server (or list of servers).  The device types are
DEVICE_TYPES, with their DEFAULT_ADDRESSES: a new type is one entry in each.

The pipeline::

    files -> reader -> chunks -> encoder -> results in chunk order
          -> writer -> lanes -> memcached -> rename-time checks -> renames

The sections of this file, from the pure parts to the I/O:

1. the line contract: parse_line states it (the README has it in words);
2. chunks and encoding: read_chunks cuts a stream at line ends,
   encode_chunk turns a chunk into each lane's ``set`` commands, and
   choose_encoder gives a run the compiled twin of it (native_encoder,
   handed LINE_CONTRACT and the run's routes) or this reference;
3. the encoders: in_thread, the one way work crosses to a thread, and
   the encoder's two executors (the event loop's thread, or N threads);
4. the wire: one memcached Connection, server identities, and
   connections in doubt;
5. lanes: FileLoad's accounting, RetryPolicy (the one retry policy, for
   batches and rename-time checks alike), the Lane over a Connection;
6. files: matching, choosing (--min-age, --reload-processed) and late
   files;
7. reading a file: opened and read in threads, which a stop can leave;
8. renames: the checks around each (InstanceCheck) and RenameInOrder,
   whose docstring lists every condition a rename needs;
9. locks and stop signals;
10. the run: the Loader (reader, writer, lanes) wired to the renames;
11. the metrics file;
12. the command line, where outcomes become exit statuses.

* The reader (a greenlet) takes the files in load order, decompresses each
  once and cuts it into chunks at line ends.  The encoder, a pure
  function (encode_chunk, or its compiled twin), parses and serializes a
  chunk's lines into each lane's ``set`` commands: in the event loop's
  thread with ``--workers 1``, else in N threads.  The writer (a
  greenlet) takes the results strictly in chunk order and hands batches to
  the lanes, so each key's writes follow the file order by construction.
* Each memcached server has ``--uploaders`` lanes: a greenlet with a
  bounded queue of batches and one Connection, which sends a batch as one
  pipelined buffer and counts every reply.  A key always travels through
  the same lane.
* RenameInOrder, the one place where files are renamed, takes each file in
  order once every record of it is acknowledged or counted as an error.

Where things run (the invariant that keeps the shared state safe without
locks): importing this module changes nothing; main() first makes the
process cooperative (cooperative(): gevent's monkey-patching), and from
then on every greenlet (reader, writer, lanes, checks, progress, signal
callbacks) runs in the hub's one thread, switching only where it waits
for I/O, a queue, an event or a sleep.  Only three kinds of work run in
other threads, each a call handed over by in_thread and answered in the
hub's thread: the encoder with ``--workers`` above 1 (its input a chunk of
bytes, its output an EncodedChunk), a file's open (open_regular) and its
reads (ReadAhead); gevent's resolver also looks host names up in threads.
None of them touches a FileLoad, an Acknowledgements, a Server, a Lane or
the Loader, which only greenlets change (FileLoad's counts and verdict
by the reader, the writer and the lanes; Server.down and its identity by
the lanes and the checks), each change made between two switches.

A file is renamed to ``.<name>`` only when it is neither late nor
re-delivered nor modified ahead of this clock, it was read to its end,
every record in it was acknowledged by memcached or counted as an error,
its error rate is within ``--max-error-rate``, every server it wrote to is
still the instance that acknowledged the writes and evicted and flushed
nothing (unless ``--accept-evictions``) from its first write to the check
after its rename, and its path still names the bytes that were read.  The
first file that is not loaded stops the renames for the rest of the run.
A renamed file never replaces another.
"""
import signal
import sys

EARLY_SIGNALS = []
if __name__ == '__main__':
    # Run as a program, and only then: a stop while it is still starting
    # (the imports take a fifth of a second) is noted, and acted on once
    # the run can stop; gevent patches the standard library before the
    # rest is imported, as gevent asks of a program (see cooperative()).
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, lambda signum, _: EARLY_SIGNALS.append(signum))
    from gevent import monkey
    monkey.patch_all()

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import enum  # noqa: E402
import errno  # noqa: E402
import fcntl  # noqa: E402
import fnmatch  # noqa: E402
import functools  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
import zlib  # noqa: E402
from typing import (Callable, Dict, List, NamedTuple, Optional,  # noqa: E402
                    Tuple)

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.monkey  # noqa: E402
import gevent.pool  # noqa: E402
import gevent.queue  # noqa: E402
import gevent.socket  # noqa: E402
import gevent.threadpool  # noqa: E402
import memcache  # noqa: E402
from isal import igzip  # noqa: E402

from proto import appsinstalled_pb2  # noqa: E402

__version__ = '0.9.0'

log = logging.getLogger('gmemcload')

DEVICE_TYPES = ('idfa', 'gaid', 'adid', 'dvid')
DEFAULT_ADDRESSES = {
    'idfa': '127.0.0.1:33013',
    'gaid': '127.0.0.1:33014',
    'adid': '127.0.0.1:33015',
    'dvid': '127.0.0.1:33016',
}
DEFAULT_PATTERN = '/data/appsinstalled/*.tsv.gz'
LOCK_FILE_NAME = '.gmemcload.lock'
JOURNAL_FILE_NAME = '.gmemcload.journal'  # beside the lock: see Journal
JOURNAL_VERSION = 1
JOURNAL_RENAMES = 10080  # renames the journal keeps: a week of minutes

MAX_KEY_LENGTH = 250  # memcached's own limit
MAX_APP_ID = 2 ** 32 - 1  # apps are uint32

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock, try later
EXIT_SIGNAL_BASE = 128  # exit status 128 + signal number, as shells do
EXIT_STATUSES = """exit status:
  0        every matched file was loaded and renamed (or none matched, in
           a directory that exists)
  1        a file was not loaded, was kept after one that was not, or is
           late; or the pattern's directory does not exist, is not a
           directory or could not be listed; or a server lost the records
           of processed files, not yet loaded again
  2        bad usage: an option, an address or a lock file that cannot be
           used
  75       another run holds the lock: nothing was read or renamed
  130, 143 stopped by SIGINT or SIGTERM"""

READ_CHUNK = 1 << 20  # decompressed bytes read at a time
# A longer line is one malformed line, skipped without being held whole:
# parsing a line can take tens of times its size in memory.
MAX_LINE_BYTES = 8 << 20  # at least READ_CHUNK: a line within a chunk fits
OVERSIZED_PREFIX = 4096  # what is kept of such a line, to log it
QUEUED_BATCHES_PER_LANE = 4  # back-pressure: bounds memory per lane
# A batch is cut before its commands pass this many bytes (or at the end
# of the chunk that brings it to --batch-size records): a record bigger
# than this is a batch of its own.
BATCH_BYTES = 2 << 20
# The writer's bytes, whatever the records' size or number of lanes: its
# pending batches together hold at most PENDING_BYTES (past it, the
# largest are sent early), and batches handed to the lanes and not yet
# done at most LANE_BYTES (or one batch alone, bigger): the writer waits.
PENDING_BYTES = 8 << 20
LANE_BYTES = 32 << 20
# Decompressed bytes of chunks between the reader and the writer (being
# encoded, or encoded and not yet taken), at most, or one chunk alone,
# bigger: whatever --workers, this bounds the encoders' memory.
CHUNK_BYTES = 8 << 20
# Files queued to be renamed behind the one whose rename is awaited: at
# most OPEN_FILES + 1 files are read and not yet renamed or kept.
OPEN_FILES = 3
ENCODER_CHUNKS = 2  # chunks in flight per encoder thread (see CHUNK_BYTES)
# An mtime further ahead of this clock is clock skew, not a file still
# being written (--min-age).
FUTURE_MTIME_TOLERANCE = 60.0
# More encoder threads than this only hold memory: one process cannot
# feed them (see the README).
MAX_WORKERS = 64
# Lanes of a run, at most: each lane is a connection and a greenlet, and
# the compiled encoder numbers lanes in 16 bits.
MAX_LANES = 1 << 16
# Of the last commands of a batch, how many a read-back sample is chosen
# from (choose_samples).
READ_BACK_LAST = 8
# Records read back from one server at a check, at most: with many lanes,
# the oldest of each come first.
READ_BACK_PER_SERVER = 8
REFUSED_KEYS_KEPT = 100000  # refused keys a lane remembers, at most
SUMMARY_ROWS = 100  # past this many files the summary lists only kept ones
BACKOFF_FIRST = 0.25  # seconds before the first retry; doubles per retry
BACKOFF_MAX = 4.0
PROGRESS_INTERVAL = 5.0  # seconds between progress lines
LOGGED_LINES_PER_FILE = 5  # bad lines logged in full; the rest are counted
LINE_PREFIX = 1000  # bytes of a bad line kept to log it

MALFORMED = 'malformed'
UNKNOWN_TYPE = 'unknown device type'

# The device types as lines and routes spell them.
DEVICE_TYPE_NAMES = frozenset(t.encode() for t in DEVICE_TYPES)
# A tracker's file name begins with its minute: YYYYmmddHHMMSS.
MINUTE_NAME = re.compile(r'[0-9]{14}(?![0-9])')

# Any byte that memcached's text protocol does not allow in a key.
_BAD_KEY_BYTE = re.compile(rb'[\x00-\x20\x7f]')
_UserApps = appsinstalled_pb2.UserApps
_STORED = b'STORED\r\n'


class BadLine(ValueError):
    """A log line that breaks the line contract: the input's fault."""

    def __init__(self, kind, reason):
        super().__init__(reason)
        self.kind = kind


class ConfigError(Exception):
    """An option value that cannot be used: the operator's fault."""


class ProtocolError(Exception):
    """memcached answered something a ``set`` cannot answer: the server's
    fault, or a connection out of step; the connection is not reused."""


class Interrupted(Exception):
    """A stop was requested by a signal while a file was being read."""


class Unlistable(Exception):
    """The pattern's directory does not exist, is not a directory, or
    cannot be listed: the run fails (exit 1), never a success."""


class DiskFailure(Exception):
    """The files' filesystem failed (full, read-only, an I/O error)."""


class Unreadable(Exception):
    """The decompressor rejected a file: the input's fault, never the
    tool's; the message says why."""


class AbandonIO(gevent.GreenletExit):
    """Thrown into a greenlet blocked on memcached after a stop, so that
    the stop does not wait out ``--timeout``."""


class Reason(enum.Enum):
    """Why a file is not loaded: the closed set of kinds.  A member's value
    is its label in the metrics (``reason``); its ``template`` makes the
    words of the log and the summary from a Verdict's details.  Code
    compares members, never words."""

    def __new__(cls, label, template):
        member = object.__new__(cls)
        member._value_ = label
        member.template = template
        return member

    NOT_READ_TO_END = 'not_read_to_its_end', '%s'
    UNREADABLE = 'unreadable', 'unreadable: %s'
    STOPPED = 'stopped', 'stopped by a signal'
    UNACKNOWLEDGED = 'unacknowledged', \
        '%d records not acknowledged by memcached (%s)'
    ERROR_RATE = 'error_rate', 'error rate %.4g above %g'
    SERVER_RESTARTED = 'server_restarted', 'memcached %s restarted %s'
    EVICTED = 'evicted', 'memcached %s dropped items while this file was' \
        ' written and checked (%s): some of its records may be gone (give' \
        ' memcached more memory, or load anyway with --accept-evictions)'
    READ_BACK = 'read_back', 'memcached %s does not hold this file\'s' \
        ' records as written: %s (a delayed flush_all, or a drop no counter' \
        ' shows): some of its records are gone'
    SERVER_NOT_CHECKABLE = 'server_not_checkable', \
        'cannot check memcached %s before the rename: %s'
    CHANGED = 'changed', 'changed while loading (replaced or written to):' \
        ' the next run loads it again'
    NOT_RENAMED = 'not_renamed', '%s'
    FUTURE_MTIME = 'future_mtime', 'modified %.0f s ahead of this clock' \
        ' (clock skew, or a copy that kept a future mtime): --min-age would' \
        ' wait for ever; set its mtime right (touch it) or fix the clock'
    LATE = 'late', 'late: %s, a newer file, was already processed and' \
        ' this older one would overwrite its values; move it aside, or' \
        ' load it anyway with --load-late'
    REDELIVERED = 'redelivered', 'late: a processed copy %s already' \
        ' exists (the same minute delivered again?); move one of them aside'
    AFTER_A_FILE_NOT_LOADED = 'after_a_file_not_loaded', \
        'an earlier file was not loaded'


class Verdict:
    """Why one file is not loaded: a Reason and the details its template
    takes; ``str()`` gives the words."""

    __slots__ = ('reason', 'details')

    def __init__(self, reason, *details):
        self.reason = reason
        self.details = details

    def __str__(self):
        return self.reason.template % self.details if self.details \
            else self.reason.template


STOPPED = Verdict(Reason.STOPPED)


# -- 1. the line contract ----------------------------------------------------

def _parse_apps_slowly(raw_apps):
    """Return (apps, dropped) for an apps field that is not plain digits."""
    apps = []
    dropped = 0
    if not raw_apps:
        return apps, dropped
    for item in raw_apps.split(b','):
        item = item.strip()
        # Leading zeros first: int() refuses over 4300 digits, and no uint32
        # needs more than 10.
        digits = item.lstrip(b'0') or b'0'
        if item.isdigit() and len(digits) <= 10 \
                and int(digits) <= MAX_APP_ID:
            apps.append(int(digits))
        else:
            dropped += 1
    return apps, dropped


class Record(NamedTuple):
    """One valid line: ``key`` is ``dev_type:dev_id``; ``dropped_apps``
    counts the app items that were not decimal uint32 and were left out."""
    dev_type: bytes
    key: bytes
    lat: float
    lon: float
    apps: List[int]
    dropped_apps: int


def parse_line(line, device_types=DEVICE_TYPE_NAMES):
    """Parse one log line (bytes): None for a blank line, else a Record.

    ``device_types`` holds the known types, as bytes (a run's routes, whose
    keys they are, will do).  Raises BadLine for a line that breaks the
    contract; ``BadLine.kind`` is MALFORMED or UNKNOWN_TYPE.
    """
    line = line.strip()
    if not line:
        return None
    fields = line.split(b'\t')
    if len(fields) != 5:
        raise BadLine(MALFORMED, 'expected 5 tab-separated fields, got %d'
                      % len(fields))
    dev_type, dev_id, lat, lon, raw_apps = fields
    if dev_type not in device_types:
        raise BadLine(UNKNOWN_TYPE, 'unknown device type %r'
                      % dev_type.decode('ascii', 'replace'))
    if not dev_id:
        raise BadLine(MALFORMED, 'empty dev_id')
    key = dev_type + b':' + dev_id
    if len(key) > MAX_KEY_LENGTH or _BAD_KEY_BYTE.search(key):
        raise BadLine(MALFORMED, 'key is not a valid memcached key (at most'
                      ' %d bytes, no space or control bytes)'
                      % MAX_KEY_LENGTH)
    try:
        lat = float(lat)
        lon = float(lon)
    except ValueError:
        raise BadLine(MALFORMED, 'lat or lon is not a number') from None
    # Fast path: digits and commas only, no empty item, all within uint32.
    if raw_apps.translate(None, b',').isdigit():
        try:
            apps = list(map(int, raw_apps.split(b',')))
        except ValueError:  # an empty item
            pass
        else:
            if max(apps) <= MAX_APP_ID:
                return Record(dev_type, key, lat, lon, apps, 0)
    apps, dropped = _parse_apps_slowly(raw_apps)
    return Record(dev_type, key, lat, lon, apps, dropped)


def pack_user_apps(apps, lat, lon):
    """Serialize one record as the ``appsinstalled.UserApps`` protobuf."""
    return _UserApps(apps=apps, lat=lat, lon=lon).SerializeToString()


def set_command(key, value):
    """The memcached text-protocol ``set`` for one record, flags 0, no
    expiry."""
    return b'set %b 0 0 %d\r\n%b\r\n' % (key, len(value), value)


def describe_value(value):
    """Show a packed UserApps on one line, as the original tool logged it."""
    return str(_UserApps.FromString(value)).replace('\n', ' ').strip()


# -- 2. chunks and encoding: pure functions ----------------------------------

class Chunk(NamedTuple):
    """Whole lines as read_chunks cuts them (``pieces``), and the prefixes
    of the oversized lines skipped since the last chunk."""
    pieces: list
    oversized: List[bytes]


def read_chunks(read):
    """Yield a Chunk at a time from ``read(size)``, a reader of
    decompressed bytes.

    ``pieces`` is a list of bytes-like objects that together hold whole
    lines, each ended by b'\\n' except perhaps a last line without one at
    the very end; they are parts of what was read, not copies.  A line
    longer than a chunk spans pieces.  A line longer than MAX_LINE_BYTES is
    never held whole: ``oversized`` has its first OVERSIZED_PREFIX bytes,
    to count and log it as one malformed line.  Raises Unreadable for any
    error of the decompressor; passes on Interrupted (a stop).
    """
    held, held_bytes = [], 0  # the start of a line not ended yet
    skipped = None  # the prefix of an oversized line being skipped
    while True:
        try:
            data = read(READ_CHUNK)
        except (MemoryError, Interrupted):
            raise
        except Exception as exc:  # whatever the decompressor rejects
            raise Unreadable('%s (%s)' % (exc, type(exc).__name__)) \
                from None
        if not data:
            break
        oversized = []
        start = 0
        first_end = data.find(b'\n')
        if first_end >= 0 and (skipped is not None or held):
            if skipped is not None or held_bytes + first_end > MAX_LINE_BYTES:
                oversized.append(skipped if skipped is not None else
                                 b''.join(held)[:OVERSIZED_PREFIX])
                held, start = [], first_end + 1
            held_bytes, skipped = 0, None
        last_end = data.rfind(b'\n')
        pieces = held
        held = []
        if last_end >= start:  # the held line, if any, ends in this chunk
            pieces.append(memoryview(data)[start:last_end + 1])
        else:  # still inside one long line
            held, pieces = pieces, []
        tail = data[max(last_end + 1, start):]
        if tail and skipped is None:
            held.append(tail)
            held_bytes += len(tail)
            if held_bytes > MAX_LINE_BYTES:
                skipped = b''.join(held)[:OVERSIZED_PREFIX]
                held, held_bytes = [], 0
        # Empty inside a long line: the caller still gets its turn.
        yield Chunk(pieces, oversized)
        pieces = None  # the caller's: not held here while the next read
    if skipped is not None:
        yield Chunk([], [skipped])
    elif held:
        yield Chunk(held, [])


class Routes(NamedTuple):
    """The lanes of a run, numbered: ``by_type`` is what the encoders take,
    ``{dev_type (bytes): ((lane, ...) per server, ...)}``, its keys the
    run's device types in order; ``lane_addresses[lane]`` is the server of
    that lane."""
    by_type: Dict[bytes, Tuple[Tuple[int, ...], ...]]
    lane_addresses: List[str]


def build_routes(addresses, uploaders):
    """Number the lanes: ``uploaders`` for each server of ``addresses``
    (device type -> list of addresses, the types in order), a server
    listed for several types having the same lanes in each.  Returns
    Routes."""
    lanes_of = {}
    lane_addresses = []
    by_type = {}
    for dev_type, type_addresses in addresses.items():
        servers = []
        for address in type_addresses:
            if address not in lanes_of:
                first = len(lane_addresses)
                lane_addresses += [address] * uploaders
                lanes_of[address] = tuple(range(first, first + uploaders))
            servers.append(lanes_of[address])
        by_type[dev_type.encode()] = tuple(servers)
    return Routes(by_type, lane_addresses)


def lane_for(lanes_by_server, key):
    """The lane a key always travels through, among its type's route.

    The server is python-memcached's own choice for that server list
    (``serverHashFunction(key) % len(servers)``), so a Client with the
    same list finds the key; the lane within it is crc32 mod uploaders.
    """
    lanes = lanes_by_server[0] if len(lanes_by_server) == 1 else \
        lanes_by_server[memcache.serverHashFunction(key)
                        % len(lanes_by_server)]
    return lanes[0] if len(lanes) == 1 else lanes[zlib.crc32(key)
                                                  % len(lanes)]


class EncodedLine(NamedTuple):
    """One valid line, encoded: its lane, its ``set`` command, and the
    app ids left out of it."""
    lane: int
    command: bytes
    dropped_apps: int


class BadSample(NamedTuple):
    """A bad line, to log it: BadLine's kind and reason, and the first
    LINE_PREFIX bytes of the line."""
    kind: str
    reason: str
    line: bytes


class DroppedSample(NamedTuple):
    """A line with app ids left out, to log it: how many, and its first
    LINE_PREFIX bytes."""
    count: int
    line: bytes


class LaneBatch(NamedTuple):
    """``count`` set commands of one chunk for one lane, joined in line
    order."""
    lane: int
    count: int
    commands: bytes


class EncodedChunk(NamedTuple):
    """What an encoder makes of a chunk: ``lines`` counts every line but
    the blank ones, ``errors`` the bad ones; ``batches`` are LaneBatches,
    the lanes in the order of their first line; ``bad`` holds up to
    LOGGED_LINES_PER_FILE BadSamples; ``dropped`` counts the lines with
    app ids left out, ``dropped_samples`` shows a few (DroppedSamples)."""
    lines: int
    errors: int
    batches: List[LaneBatch]
    bad: List[BadSample]
    dropped: int
    dropped_samples: List[DroppedSample]


def encode_line(line, routes):
    """One line of encode_chunk, by the line contract: None for a blank
    line, else an EncodedLine; ``routes`` is Routes.by_type.  Raises
    BadLine.  The compiled encoder hands every line it is not sure of to
    this."""
    record = parse_line(line, routes)
    if record is None:
        return None
    return EncodedLine(
        lane_for(routes[record.dev_type], record.key),
        set_command(record.key, pack_user_apps(record.apps, record.lat,
                                               record.lon)),
        record.dropped_apps)


def encode_chunk(data, routes):
    """Parse and serialize every line of ``data`` (whole lines) for
    ``routes`` (Routes.by_type): an EncodedChunk.

    A pure function of its arguments: no I/O, no state.  This is the
    reference; the compiled encoder (native_encoder) gives the same result
    for every input.
    """
    lines = errors = dropped = 0
    bad, dropped_samples = [], []
    commands_of = {}  # lane -> set commands, lanes in order of first use
    for line in data.split(b'\n'):
        try:
            encoded = encode_line(line, routes)
        except BadLine as exc:
            lines += 1
            errors += 1
            if len(bad) < LOGGED_LINES_PER_FILE:
                bad.append(BadSample(exc.kind, str(exc), line[:LINE_PREFIX]))
            continue
        if encoded is None:
            continue
        lines += 1
        if encoded.dropped_apps:
            dropped += 1
            if len(dropped_samples) < LOGGED_LINES_PER_FILE:
                dropped_samples.append(DroppedSample(encoded.dropped_apps,
                                                     line[:LINE_PREFIX]))
        commands_of.setdefault(encoded.lane, []).append(encoded.command)
    batches = [LaneBatch(lane, len(commands), b''.join(commands))
               for lane, commands in commands_of.items()]
    return EncodedChunk(lines, errors, batches, bad, dropped,
                        dropped_samples)


# The line contract as the compiled encoder is given it when a run starts:
# the lines it is not sure of go to encode_line, and it builds its results
# of these types.  Its device types are the keys of the routes it is given.
LINE_CONTRACT = types.SimpleNamespace(
    encode_line=encode_line, bad_line=BadLine,
    max_key_length=MAX_KEY_LENGTH, max_app_id=MAX_APP_ID,
    logged_lines=LOGGED_LINES_PER_FILE, line_prefix=LINE_PREFIX,
    encoded_chunk=EncodedChunk, lane_batch=LaneBatch, bad_sample=BadSample,
    dropped_sample=DroppedSample)


class EncoderChoice(NamedTuple):
    """Which encoder a run uses: ``new(routes)`` (Routes.by_type) gives
    its ``encode(data) -> EncodedChunk``; ``compiled`` says whether it is
    native_encoder's; ``words`` say which, for the start line."""
    new: Callable[[dict], Callable[[bytes], EncodedChunk]]
    compiled: bool
    words: str


def choose_encoder():
    """The compiled encoder (native_encoder, built beside this file by
    ``make install``), given this file's line contract, or the reference
    encode_chunk if it is not built."""
    try:
        import native_encoder
    except ImportError as exc:
        return EncoderChoice(
            lambda routes: functools.partial(encode_chunk, routes=routes),
            False, 'pure Python (native_encoder is not built: %s; make'
            ' install builds it)' % exc)
    return EncoderChoice(
        lambda routes: native_encoder.ChunkEncoder(
            routes, LINE_CONTRACT).encode_chunk,
        True, 'compiled (native_encoder)')


def iter_commands(payload):
    """Yield ``(key, value)`` of each ``set`` command in ``payload``."""
    position = 0
    while position < len(payload):
        header_end = payload.index(b'\r\n', position)
        _, key, _, _, length = payload[position:header_end].split(b' ')
        start = header_end + 2
        yield key, payload[start:start + int(length)]
        position = start + int(length) + 2


def cut_commands(commands, count, limit):
    """Yield ``(count, commands)`` parts of ``count`` joined ``set``
    commands, in order, cut between two commands: each part is at most
    ``limit`` bytes, or one command alone.  Whole commands within the
    limit are yielded as they are, uncut and uncopied."""
    if len(commands) <= limit:
        yield count, commands
        return
    start = position = taken = 0
    while position < len(commands):
        header_end = commands.index(b'\r\n', position)
        length = int(commands[commands.rindex(b' ', position, header_end)
                              + 1:header_end])
        end = header_end + 2 + length + 2
        if taken and end - start > limit:
            yield taken, commands[start:position]
            start, taken = position, 0
        taken += 1
        position = end
    if taken:
        yield taken, commands[start:]


# -- 3. the encoders: in the event loop, or in threads -----------------------

def in_thread(pool, function, *args):
    """Run ``function(*args)`` in a thread of ``pool`` (a gevent
    ThreadPool).  Returns an AsyncResult, set in the hub's thread, that
    gets the value or the exception (which the pool would print).  The
    one way work crosses to a thread."""
    result = gevent.event.AsyncResult()

    def call():
        try:
            return function(*args), None
        except Exception as exc:
            return None, exc

    def done(job):
        value, error = job.value
        if error is None:
            result.set(value)
        else:
            result.set_exception(error)
    pool.spawn(call).rawlink(done)
    return result


class Encoder:
    """What the two executors of a run's encoder (see choose_encoder) have
    in common: one code path, two executors.

    ``submit(pieces)`` takes a chunk as read_chunks gives it and returns an
    AsyncResult whose ``get()`` gives its EncodedChunk (or raises what the
    encoder raised).  The caller takes results in the order it submitted
    them, and bounds how many are in flight.  ``close()`` ends the
    executor once the chunks in flight are done.
    """

    def submit(self, pieces):
        raise NotImplementedError

    def close(self):
        pass


class InProcessEncoder(Encoder):
    """``--workers 1``: the encoder runs in the event loop's thread, at
    submit."""

    def __init__(self, encode):
        self.encode = encode

    def submit(self, pieces):
        """The encoder's failure (MemoryError, say) is the result's, as
        in a thread: the writer decides what it means."""
        result = gevent.event.AsyncResult()
        try:
            result.set(self.encode(b''.join(pieces)))
        except Exception as exc:
            result.set_exception(exc)
        return result


class EncoderThreads(Encoder):
    """``--workers N`` (N > 1): the encoder runs in N threads of a thread
    pool of its own (reads have gevent's own pool), so that chunks are
    encoded while the event loop sends, reads and checks.  The compiled
    encoder lets go of the GIL for its heavy loop, so the threads use
    several cores; the pure-Python fallback holds the GIL, and gains
    nothing from them."""

    def __init__(self, count, encode):
        self.encode = encode
        self.pool = gevent.threadpool.ThreadPool(count)

    def submit(self, pieces):
        return in_thread(self.pool, self.encode, b''.join(pieces))

    def close(self):
        self.pool.join()
        self.pool.kill()


# -- 4. the wire: one memcached connection -----------------------------------

def connect(host, timeout):
    """A new connection to python-memcached's ``host`` (a ``_Host``), with
    ``timeout`` on every operation.  Raises OSError with the real reason
    (python-memcached's own connect() drops it)."""
    sock = socket.socket(host.family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(host.address)
    except OSError as exc:
        sock.close()
        raise OSError('connect: %s' % exc) from None
    return sock


class Refusal(NamedTuple):
    """A record memcached refused for good: its place in the batch, and
    memcached's reply."""
    index: int
    reply: bytes


def read_replies(recv, count):
    """Read the replies to ``count`` pipelined ``set`` commands with
    ``recv(size)``, the only thing in flight on the connection.

    Returns a Refusal for each record that memcached refused for good
    (SERVER_ERROR, NOT_STORED), in batch order.  Raises ConnectionError if the
    stream ends first, and ProtocolError for any other reply or for more
    replies than commands: then the connection is out of step, and the batch
    must be sent again on a fresh one."""
    replies = bytearray()
    lines = 0
    while lines < count:
        chunk = recv(65536)
        if not chunk:
            raise ConnectionError('connection closed by memcached after %d'
                                  ' of %d replies' % (lines, count))
        replies += chunk
        lines += chunk.count(b'\n')
    if lines > count or not replies.endswith(b'\r\n'):
        raise ProtocolError('more replies than commands')
    if replies == _STORED * count:
        return []
    refused = []
    for index, reply in enumerate(bytes(replies).split(b'\r\n')[:-1]):
        if reply == b'STORED':
            continue
        if reply.startswith(b'SERVER_ERROR') or reply == b'NOT_STORED':
            refused.append(Refusal(index, reply))
        else:
            raise ProtocolError('unexpected reply %r' % reply[:80])
    return refused


def _read_reply(sock, done, limit=1 << 20):
    """Read a small reply until ``done(lines)`` says it is complete; for
    replies that are the only thing in flight on the connection."""
    reply = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError('connection closed by memcached')
        reply += chunk
        if reply.endswith(b'\r\n'):
            lines = reply[:-2].split(b'\r\n')
            if done(lines):
                return lines
        if len(reply) > limit:
            raise ProtocolError('reply too long')


class Instance(NamedTuple):
    """One memcached process: its pid and the time it started."""
    pid: int
    started: int


class Dropped(NamedTuple):
    """What a server let go so far, from the counters of its ``stats``
    that count items it dropped (DROP_COUNTERS): the items it evicted to
    make room, the flushes that emptied it (``cmd_flush``), and the items
    its slab mover lost while moving pages between slab classes.  Counts
    that only grow while the same instance runs."""
    evictions: int
    flushes: int
    moved_out: int

    def since(self, earlier):
        """The drops counted after ``earlier`` (a Dropped of the same
        instance), as a Dropped."""
        return Dropped(*(now - then for now, then in zip(self, earlier)))

    def describe(self):
        return '%d items evicted, %d flushes, %d items lost in slab moves' \
            % self


# Every ``stats`` counter of memcached 1.6 that grows when an item that was
# stored is gone before its time (doc/protocol.txt, memcached.h), by the
# Dropped field it adds to.  Items set with no expiry never expire, so the
# counters of expired items are not among them.  A counter the server does
# not report (an older memcached) counts 0, but ``evictions`` and
# ``cmd_flush`` must be there.
DROP_COUNTERS = (
    (b'evictions', 'evictions'),  # valid items evicted to make room
    (b'cmd_flush', 'flushes'),  # flush_all, counted when it is issued
    # valid items evicted during a slab page move, no free memory
    (b'slab_reassign_evictions_nomem', 'moved_out'),
    # items busy during a page move, deleted so the page could move
    (b'slab_reassign_busy_deletes', 'moved_out'),
)
_REQUIRED_DROP_COUNTERS = (b'evictions', b'cmd_flush')


def dropped_from(stats):
    """The Dropped of a server's ``stats`` (a dict of bytes), or None if
    it does not count evictions and flushes."""
    if not all(stats.get(name, b'').isdigit()
               for name in _REQUIRED_DROP_COUNTERS):
        return None
    counts = dict.fromkeys(Dropped._fields, 0)
    for name, field in DROP_COUNTERS:
        value = stats.get(name, b'')
        if value.isdigit():
            counts[field] += int(value)
    return Dropped(**counts)


class ServerIdentity(NamedTuple):
    """Who a server is, from its ``stats``: its Instance (None if its stats
    do not say), its ``total_connections`` so far, and Dropped (None if
    its stats do not say)."""
    instance: Optional[Instance]
    connections: Optional[int]
    dropped: Optional[Dropped]


def server_identity(sock):
    """Ask the server who it is: a ServerIdentity.  Raises ProtocolError
    with the server's own words if it answers anything but its stats (a
    server at its connection limit says so)."""
    sock.sendall(b'stats\r\n')
    lines = _read_reply(sock, lambda lines: not lines[-1].startswith(b'STAT '))
    if lines[-1] != b'END':
        raise ProtocolError('answer to stats: %s' % lines[-1][:200].decode(
            'ascii', 'replace'))
    stats = dict(line.split(b' ', 2)[1:] for line in lines[:-1]
                 if line.count(b' ') >= 2)
    try:
        instance = Instance(int(stats[b'pid']),
                            int(stats[b'time']) - int(stats[b'uptime']))
    except (KeyError, ValueError):
        instance = None  # a server (or proxy) that keeps no such stats
    connections = stats.get(b'total_connections', b'')
    return ServerIdentity(instance, int(connections) if connections.isdigit()
                          else None, dropped_from(stats))


def value_digest(value):
    """What a value read back is compared by with the one sent (see
    Sample): a 128-bit BLAKE2b digest."""
    return hashlib.blake2b(value, digest_size=16).digest()


def read_back(sock, keys):
    """Ask the server for ``keys`` (bytes) with one ``get``: a dict of the
    keys it holds, key -> value_digest of the value (one value at a time
    is held).  Raises ProtocolError for any answer but values and END,
    ConnectionError if the stream ends first."""
    sock.sendall(b'get %b\r\n' % b' '.join(keys))
    found = {}
    buffer = bytearray()
    position = 0
    while True:
        header_end = buffer.find(b'\r\n', position)
        if header_end < 0:
            if len(buffer) - position > 1024:
                raise ProtocolError('answer to get: a line too long')
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError('connection closed by memcached')
            buffer += chunk
            continue
        header = bytes(buffer[position:header_end])
        if header == b'END':
            return found
        parts = header.split(b' ')
        if len(parts) != 4 or parts[0] != b'VALUE' \
                or not parts[3].isdigit():
            raise ProtocolError('answer to get: %s' % header[:200].decode(
                'ascii', 'replace'))
        start = header_end + 2
        end = start + int(parts[3])
        while len(buffer) < end + 2:
            # What is still to come, so that many checks at once hold no
            # more than their values.
            chunk = sock.recv(min(1 << 20, end + 2 - len(buffer)))
            if not chunk:
                raise ConnectionError('connection closed by memcached')
            buffer += chunk
        if buffer[end:end + 2] != b'\r\n':
            raise ProtocolError('answer to get: a value not ended')
        found[parts[1]] = value_digest(memoryview(buffer)[start:end])
        del buffer[:end + 2]
        position = 0


class Connection:
    """A lane's connection to one memcached server.  It knows nothing of
    retries: a failed exchange raises, and the caller abandons it.

    A new connection first reads the server's ServerIdentity
    (``identity``), which ``identified(instance, dropped)`` is told.  A
    connection that failed without proof that memcached is done with it
    (a timeout, say, while memcached is stalled) may still hold commands
    that memcached will run later.  ``abandon`` shuts it for writing and
    keeps it in ``in_doubt``; ``exchange`` first settles every such
    connection, reading it to its end (memcached has run every command on
    it) or seeing it reset.  So a stale copy of a batch can never land
    after a newer one.
    """

    def __init__(self, address, timeout, identified):
        self.address = address
        self.host = memcache._Host(address)  # python-memcached's parsing
        self.timeout = timeout
        self.identified = identified
        self.sock = None
        # The server's ServerIdentity when this connection was made.
        self.identity = ServerIdentity(None, None, None)
        self.in_doubt = []

    def exchange(self, payload, count):
        """Send ``count`` pipelined sets and read every reply; see
        read_replies.  Raises OSError or ProtocolError when the batch must
        be sent again (after abandon())."""
        self.settle()
        if self.sock is None:
            self.sock = connect(self.host, self.timeout)
            self.identity = server_identity(self.sock)
            self.identified(self.identity.instance, self.identity.dropped)
        self.sock.sendall(payload)
        return read_replies(self.sock.recv, count)

    def abandon(self):
        """Give up the connection; keep it in doubt if it may still be
        live."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # not connected any more: nothing can still land
            sock.close()
            return
        self.in_doubt.append(sock)

    def settle(self):
        """Read every connection in doubt to its end; raise TimeoutError
        if one is still silent after the timeout."""
        while self.in_doubt:
            sock = self.in_doubt[0]
            try:
                while sock.recv(65536):
                    pass
            except TimeoutError:
                raise TimeoutError('timed out waiting for an abandoned'
                                   ' connection to be answered') from None
            except OSError:
                pass  # reset: memcached is done with it
            sock.close()
            self.in_doubt.pop(0)

    def close(self, settle):
        """Close; with ``settle``, give connections in doubt one timeout to
        be answered first, so that a stale batch does not land during the
        next run.  Warns if one is left unanswered."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        try:
            if settle:
                self.settle()
        except (OSError, AbandonIO):
            pass
        if self.in_doubt:
            log.warning('%s: an abandoned connection is still unanswered;'
                        ' memcached may yet apply its writes (their files'
                        ' are kept)', self.address)
        for sock in self.in_doubt:
            sock.close()
        self.in_doubt = []


# -- 5. lanes: accounting per file, the retry policy -------------------------

class Samples:
    """One kind of a file's problems, logged in full for the first
    LOGGED_LINES_PER_FILE and counted after that; log_unshown() says how
    many were not shown."""

    __slots__ = ('level', 'what', 'seen', 'shown')

    def __init__(self, level, what):
        self.level = level
        self.what = what  # words for the unshown ones, plural
        self.seen = self.shown = 0

    def room(self):
        """How many more may be shown."""
        return LOGGED_LINES_PER_FILE - self.shown

    def count(self, number):
        self.seen += number

    def show(self, message, *args):
        """Log one of those counted, if there is room."""
        if self.shown < LOGGED_LINES_PER_FILE:
            self.shown += 1
            log.log(self.level, message, *args)

    def log_unshown(self, name):
        if self.seen > self.shown:
            log.log(self.level, '%s: %d more %s not shown', name,
                    self.seen - self.shown, self.what)


class Acknowledgements:
    """The barrier a file's rename waits at: batches enqueued and not yet
    finished by an uploader.  It opens once enqueuing is over and none is
    left; ``on_open()`` is called then, once."""

    __slots__ = ('pending', 'enqueuing_done', 'event', 'on_open')

    def __init__(self, on_open):
        self.pending = 0
        self.enqueuing_done = False
        self.event = gevent.event.Event()
        self.on_open = on_open

    def enqueued(self):
        self.pending += 1

    def done(self):
        self.pending -= 1
        self._check()

    def finish(self):
        """Enqueuing is over: no batch will come any more."""
        self.enqueuing_done = True
        self._check()

    def wait(self):
        self.event.wait()

    def _check(self):
        if self.enqueuing_done and self.pending == 0 \
                and not self.event.is_set():
            self.on_open()
            self.event.set()


class FileLoad:
    """What happened to one file: its counts, its verdict, the server
    instances that acknowledged its writes, and timing.

    Its samples of bad lines, dropped app ids and refusals log a few of
    each (Samples).  ``acks`` is its Acknowledgements, which exist only
    while the file is being loaded (``track`` to ``release``), so a run of
    many files stays small.
    """

    __slots__ = ('path', 'name', 'lines', 'stored', 'errors',
                 'unacknowledged', 'verdict', 'unacknowledged_because',
                 'renamed', 'reloading', 'reloaded', 'bytes_read', 'size',
                 'started', 'seconds', 'identity', 'instances', 'acks',
                 'bad_lines', 'dropped_apps', 'refusals', 'samples')

    def __init__(self, path, name=None, reloading=False):
        self.path = path
        self.name = name or os.path.basename(path)  # as logs show it
        # A processed file loaded again (--reload-processed): never
        # renamed; ``reloaded`` once it is loaded and checked.
        self.reloading = reloading
        self.reloaded = False
        self.lines = 0
        self.stored = 0
        self.errors = 0
        self.unacknowledged = 0
        # Why the file is not loaded, once that is known (see kept()).
        self.verdict = None
        self.unacknowledged_because = None  # the first batch's failure
        self.renamed = False
        self.bytes_read = 0
        self.size = 0
        self.started = None
        self.seconds = 0.0
        self.identity = None  # file_identity() of the file when opened
        # address -> the ServerIdentity of the server that acknowledged
        # this file's writes there; see wrote_to
        self.instances = {}
        self.acks = None
        self.bad_lines = Samples(logging.ERROR, 'bad lines')
        self.dropped_apps = Samples(logging.INFO,
                                    'lines with dropped app ids')
        self.refusals = Samples(logging.ERROR,
                                'records memcached did not store')
        # Lane -> [oldest, latest]: Samples to read back at the rename
        # (choose_samples)
        self.samples = {}

    def track(self):
        self.acks = Acknowledgements(self._acknowledged)

    def release(self):
        self.acks = None

    def _acknowledged(self):
        if self.started is not None:
            self.seconds = time.monotonic() - self.started

    @property
    def error_rate(self):
        processed = self.stored + self.errors
        return self.errors / processed if processed else 0.0

    def kept(self, max_error_rate):
        """The Verdict that keeps the file (see the module docstring), or
        None while nothing does: a failure noted with fail(), else records
        not acknowledged, else an error rate above ``max_error_rate``."""
        if self.verdict is not None:
            return self.verdict
        if self.unacknowledged:
            return Verdict(Reason.UNACKNOWLEDGED, self.unacknowledged,
                           self.unacknowledged_because)
        if self.error_rate > max_error_rate:
            return Verdict(Reason.ERROR_RATE, self.error_rate,
                           max_error_rate)
        return None

    def loaded(self, max_error_rate):
        return self.kept(max_error_rate) is None

    def fail(self, verdict):
        """Note why the file is not loaded; the first Verdict stays (None
        is none)."""
        if self.verdict is None:
            self.verdict = verdict

    def wrote_to(self, address, identity):
        """Note that the server ``identity`` (a ServerIdentity: its
        instance, the connections it had counted when the connection was
        made, the items it had dropped before the writes were sent)
        acknowledged writes of this file; two instances mean the server
        restarted meanwhile.  Kept: the highest connection count, the
        lowest dropped counts."""
        seen = self.instances.get(address)
        if seen is None:
            self.instances[address] = identity
            return
        if seen.instance != identity.instance:
            self.fail(Verdict(Reason.SERVER_RESTARTED, address,
                              'while this file loaded'))
            return
        connections, dropped = identity.connections, identity.dropped
        if None not in (connections, seen.connections):
            connections = max(connections, seen.connections)
        if None not in (dropped, seen.dropped):
            dropped = Dropped(*map(min, dropped, seen.dropped))
        self.instances[address] = ServerIdentity(identity.instance,
                                                 connections, dropped)

    def add_lines(self, lines, errors, bad=(), dropped=0,
                  dropped_samples=()):
        """Count a chunk's lines and bad lines (``errors``), and its lines
        with dropped app ids; show their samples, as room is left."""
        self.lines += lines
        self.errors += errors
        self.bad_lines.count(errors)
        for sample in bad:
            self.bad_lines.show('%s: %s line: %s: %r', self.name,
                                sample.kind, sample.reason, sample.line)
        self.dropped_apps.count(dropped)
        for sample in dropped_samples:
            self.dropped_apps.show('%s: dropped %d app ids that are not'
                                   ' uint32: %r', self.name, sample.count,
                                   sample.line)

    def add_refusals(self, address, refused, payload):
        """Show the records memcached refused, by key, as room is left,
        from ``refused`` (read_replies' Refusals for ``payload``), in one
        pass over the payload.  Their errors are counted by batch_done."""
        self.refusals.count(len(refused))
        shown = {refusal.index: refusal.reply
                 for refusal in refused[:max(0, self.refusals.room())]}
        for index, (key, _) in enumerate(iter_commands(payload)):
            if not shown:
                break
            if index in shown:
                self.refusals.show('%s: %s not stored: %s', address,
                                   key.decode('ascii', 'backslashreplace'),
                                   shown.pop(index).decode('ascii',
                                                           'replace'))

    def batch_done(self, stored, refused, unacknowledged=0, because=None):
        """Record an uploader's count of one batch: records stored,
        refused, and not acknowledged ``because`` (words)."""
        self.stored += stored
        self.errors += refused + unacknowledged
        if unacknowledged:
            self.unacknowledged += unacknowledged
            if self.unacknowledged_because is None:
                self.unacknowledged_because = because
        self.acks.done()

    def log_unshown(self):
        for samples in (self.bad_lines, self.dropped_apps, self.refusals):
            samples.log_unshown(self.name)


class Sample(NamedTuple):
    """A record of a file as a lane had it acknowledged, to read back at
    the file's rename: its key and value, its lane, and the lane's count
    of batches sent (``sent``) once it was.  While that count has not
    moved, nothing this run sent can have changed the key (a key always
    travels through one lane, whose connections in doubt are settled
    before it sends anything newer), so its value must be exactly this;
    -1: it only has to be there."""
    key: bytes
    digest: bytes  # value_digest of its value: a big value is not held
    lane: 'Lane'
    sent: int


def command_at(payload, position):
    """The ``set`` command that begins at ``position`` of ``payload``:
    ``(key, value, where the next begins)``, or None if none begins
    there."""
    header_end = payload.find(b'\r\n', position,
                              position + MAX_KEY_LENGTH + 32)
    if header_end < 0:
        return None
    parts = payload[position:header_end].split(b' ')
    if len(parts) != 5 or parts[0] != b'set' or parts[2:4] != [b'0', b'0'] \
            or not parts[4].isdigit():
        return None
    start = header_end + 2
    end = start + int(parts[4])
    if payload[end:end + 2] != b'\r\n':
        return None
    return parts[1], payload[start:end], end + 2


def last_commands(payload, most=READ_BACK_LAST):
    """The last commands of ``payload`` (at most ``most``), in order, as
    ``(key, value)``: found from its end, each boundary proven by parsing
    every command after it to the payload's exact end (a value may hold
    any bytes, "\\r\\nset " too)."""
    found = []
    end = len(payload)
    search = end
    while len(found) < most and search > 0:
        position = payload.rfind(b'\r\nset ', 0, search) + 2
        if position == 1:  # none: the payload's first command
            position = 0
        search = position - 2
        command = command_at(payload, position)
        if command is None or command[2] != end:
            if position == 0:
                break
            continue
        found.insert(0, command[:2])
        end = position
    return found


def choose_samples(load, lane, batch, refused):
    """Keep, of an acknowledged ``batch`` of ``load`` on ``lane``, the
    records to read back at its rename: its first record if it is the
    file's first batch on the lane (the oldest, evicted first), and one
    of its last records, at random, that no later record of the batch
    rewrites (``load.samples[lane]``: [oldest, latest]).  A key memcached
    refused (``refused``, Refusals) is never chosen: a refused ``set``
    unlinks the item it would replace, so the lane notes the key
    (``refused_keys``), and no sample of it is asked for (see
    askable)."""
    refused_at = {refusal.index for refusal in refused}
    if refused and lane.refused_keys is not None:
        lane.refused_keys.update(
            key for index, (key, _) in enumerate(iter_commands(batch.payload))
            if index in refused_at)
        if len(lane.refused_keys) > REFUSED_KEYS_KEPT:
            lane.refused_keys = None  # too many: nothing is read back
    kept = load.samples.get(lane)
    if kept is None:
        kept = load.samples[lane] = [None, None]
        command = command_at(batch.payload, 0)
        if command is not None and askable(lane, command[0]):
            # Presence only (sent -1): a later record of the file may
            # rewrite it, in this batch or the next.
            kept[0] = Sample(command[0], value_digest(command[1]), lane, -1)
    last = last_commands(batch.payload)
    later = set()
    choices = []
    for offset in range(len(last) - 1, -1, -1):
        key, value = last[offset]
        # (samples_on asks askable again at the check: this one only
        # spares a sample for a record that can be asked.)
        if key not in later and askable(lane, key):
            choices.append((key, value))
        later.add(key)
    if choices:
        key, value = random.choice(choices)
        kept[1] = Sample(key, value_digest(value), lane, lane.sent)


def askable(lane, key):
    """Whether a record of ``key`` sent on ``lane`` may be asked back:
    not if memcached refused a record of that key on it in this run."""
    return lane.refused_keys is not None and key not in lane.refused_keys


def samples_on(load, address):
    """The Samples of ``load`` to read back from ``address``: of each of
    its lanes there, the oldest and the latest, at most
    READ_BACK_PER_SERVER (the oldest first: any flush takes them); for a
    file the journal names, what it says to read back."""
    journalled = getattr(load, 'read_back', None)
    if journalled is not None:
        return journalled.get(address, [])
    kept = [[sample if sample is None or askable(lane, sample.key) else None
             for sample in kept]
            for lane, kept in load.samples.items()
            if lane.server.address == address]
    chosen = [oldest for oldest, _ in kept if oldest is not None] \
        + [latest for _, latest in kept if latest is not None]
    return chosen[:READ_BACK_PER_SERVER]


class Batch:
    """``count`` consecutive ``set`` commands of one file for one lane,
    joined in ``payload``."""

    __slots__ = ('load', 'payload', 'count')

    def __init__(self, load, payload, count):
        self.load = load
        self.payload = payload
        self.count = count


class Server:
    """One memcached address and the lanes that write to it.

    A memcached restart empties it.  Every new connection reads the
    server's pid and start time; a change counts in ``restarts``, and a
    file that wrote to the server while it changed is not loaded.

    ``down`` is set once a batch has failed after all its retries; from then
    on the server's remaining batches in this run fail at once, so a dead
    host costs one retry cycle, not one per batch.
    """

    def __init__(self, address):
        self.address = address
        self.lanes = []
        self.down = None
        self.instance = None  # the Instance of the memcached process
        self.restarts = 0  # restarts seen in this run
        # The highest Dropped seen of this instance, and the items it
        # evicted or lost in slab moves, seen to grow in this run.
        self.dropped = None
        self.evictions = 0

    def check_instance(self, instance, dropped=None):
        """Note the identity a new connection or a check found, and its
        counts of items dropped; count a restart, and evictions."""
        if instance is None:
            return
        if self.instance is not None and instance != self.instance:
            self.restarts += 1
            log.warning('%s: memcached restarted (pid %s, was %s): what it'
                        ' stored earlier is gone; files not yet renamed'
                        ' that wrote to it are kept', self.address,
                        instance.pid, self.instance.pid)
            self.dropped = None
        self.instance = instance
        if dropped is not None:
            if self.dropped is not None:
                lost = dropped.since(self.dropped)
                self.evictions += max(0, lost.evictions) \
                    + max(0, lost.moved_out)
                dropped = Dropped(*map(max, dropped, self.dropped))
            self.dropped = dropped


class Attempt(NamedTuple):
    """What RetryPolicy.call gives: the operation's ``value``, or None and
    the last failure's words (``error``)."""
    value: object
    error: Optional[str]


class RetryPolicy:
    """The one retry policy for memcached operations, batches and
    rename-time checks alike: an operation that fails with OSError or
    ProtocolError is tried ``retries`` times more (--retries), after a
    backoff of BACKOFF_FIRST seconds doubling to BACKOFF_MAX."""

    def __init__(self, retries):
        self.retries = retries

    @staticmethod
    def backoff(attempt):
        """Seconds to wait before retry ``attempt + 1``."""
        return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt)

    def call(self, operation, announce, on_failure=None, giving_up=None,
             wait=gevent.sleep):
        """An Attempt: ``operation()``'s value, or the last error's words
        once every try failed, or once ``giving_up()`` says so after a
        failure.  ``on_failure()`` runs after each failure (to abandon a
        connection, say); ``announce(error, retry, delay)`` logs each
        retry before ``wait(delay)``, which a stop may cut short."""
        error = None
        for attempt in range(self.retries + 1):
            if attempt and giving_up is not None and giving_up():
                break
            try:
                return Attempt(operation(), None)
            except (OSError, ProtocolError) as exc:
                if on_failure is not None:
                    on_failure()
                error = str(exc) or type(exc).__name__
            if attempt == self.retries or giving_up is not None \
                    and giving_up():
                break
            delay = self.backoff(attempt)
            announce(error, attempt + 1, delay)
            wait(delay)
        return Attempt(None, error)


class Lane:
    """One uploader greenlet of a server: its queue of batches and its
    Connection, with the retry policy.

    Only the writer puts batches in ``queue``; only this lane's greenlet
    takes from it.  Batches are sent strictly in queue order, each (with
    its retries) finished before the next is taken, so writes of one key
    keep their order.  A failed batch is sent again on a fresh connection,
    after a backoff, up to --retries times; then the server is down for the
    rest of the run and its batches fail at once.  ``released(batch)``, if
    given, is called once for every batch taken, once it is done with,
    whatever its outcome.
    """

    def __init__(self, server, settings, stopping, released=None):
        self.server = server
        self.settings = settings
        self.stopping = stopping
        self.released = released
        self.queue = gevent.queue.Queue(QUEUED_BATCHES_PER_LANE)
        self.connection = Connection(server.address, settings.timeout,
                                     server.check_instance)
        self.greenlet = None  # the uploader, once it runs
        self.sent = 0  # batches sent, each try counted: see Sample
        # Keys of the records memcached refused on this lane (None: more
        # than REFUSED_KEYS_KEPT): see choose_samples.
        self.refused_keys = set()

    def submit(self, batch):
        """Queue a batch for upload; blocks while the queue is full."""
        self.queue.put(batch)

    def close(self):
        """Let the uploader finish what is queued, then end."""
        self.queue.put(None)

    def abandon_io(self):
        """After a stop: end the operation in flight now, whatever its
        timeout; its batch fails and the rest fail at once."""
        if self.greenlet is not None:
            self.greenlet.kill(AbandonIO, block=False)

    def run(self):
        """Upload batches until the None sentinel arrives.  Whatever fails,
        this loop keeps taking batches until the sentinel, so the writer
        never blocks on a queue nobody empties."""
        self.greenlet = gevent.getcurrent()
        try:
            while True:
                batch = None
                try:
                    batch = self.queue.get()
                    if batch is None:
                        return
                    self._upload(batch)
                except AbandonIO:
                    if batch is not None:  # else the connection is idle
                        self.connection.abandon()
                        batch.load.batch_done(0, 0, batch.count,
                                              str(STOPPED))
                except MemoryError:  # the batch's failure, not a bug
                    log.error('%s: out of memory while sending a batch',
                              self.server.address)
                    self.connection.abandon()
                    if batch is not None:
                        batch.load.batch_done(0, 0, batch.count,
                                              'out of memory')
                except Exception:
                    log.exception('%s: uploader failed on a batch',
                                  self.server.address)
                    self.connection.abandon()
                    if batch is not None:
                        batch.load.batch_done(0, 0, batch.count,
                                              'internal error')
                finally:
                    if batch is not None and self.released is not None:
                        self.released(batch)
        finally:
            # Not after a stop: a stop abandons connections at once.
            self.connection.close(settle=not self.stopping.is_set())

    def _upload(self, batch):
        count = batch.count
        address = self.server.address
        if self.stopping.is_set():
            batch.load.batch_done(0, 0, count, str(STOPPED))
            return
        if self.server.down:
            batch.load.batch_done(0, 0, count, self.server.down)
            return
        policy = self.settings.retry
        # What the server had dropped before this batch was sent.
        known_instance, known_dropped = self.server.instance, \
            self.server.dropped

        def announce(error, retry, delay):
            log.warning('%s: %s; retry %d/%d of a batch of %d in %.2fs',
                        address, error, retry, policy.retries, count, delay)

        def send():
            self.sent += 1  # before: memcached may run what it never acks
            return self.connection.exchange(batch.payload, count)

        refused, error = policy.call(
            send,
            announce, on_failure=self.connection.abandon,
            giving_up=lambda: self.stopping.is_set() or self.server.down,
            wait=self.stopping.wait)  # a backoff a signal cuts short
        if error is None:  # refused: the Refusals of an acknowledged batch
            if refused:
                batch.load.add_refusals(address, refused, batch.payload)
            identity = self.connection.identity
            if known_instance == identity.instance \
                    and known_dropped is not None:
                identity = identity._replace(dropped=known_dropped)
            batch.load.wrote_to(address, identity)
            choose_samples(batch.load, self, batch, refused)
            batch.load.batch_done(count - len(refused), len(refused))
            return
        if self.server.down:  # another lane gave up on it meanwhile
            batch.load.batch_done(0, 0, count, self.server.down)
            return
        reason = '%s: %s' % (address, error)
        if not self.stopping.is_set():
            self.server.down = '%s is down: %s' % (address, error)
            log.error('%s; giving up after %d retries, its remaining'
                      ' records in this run fail at once', reason,
                      policy.retries)
        batch.load.batch_done(0, 0, count, reason)


class DryLane:
    """Stands in for a Lane under --dry: logs each record, sends nothing;
    ``released`` as for a Lane."""

    def __init__(self, server, released=None):
        self.server = server
        self.released = released

    def run(self):
        pass

    def close(self):
        pass

    def abandon_io(self):
        pass

    def submit(self, batch):
        for key, value in iter_commands(batch.payload):
            log.debug('%s - %s -> %s', self.server.address,
                      key.decode('ascii', 'backslashreplace'),
                      describe_value(value))
        batch.load.batch_done(batch.count, 0)
        if self.released is not None:
            self.released(batch)


# -- 6. files: matching, choosing, late files --------------------------------

def pattern_directory(pattern):
    """The deepest directory of ``pattern`` with no glob characters."""
    directory = os.path.dirname(pattern)
    while directory and glob.has_magic(directory):
        directory = os.path.dirname(directory)
    return directory or '.'


def find_files(pattern):
    """Files matching ``pattern`` in the order they must be loaded.

    Sorted by name (the timestamp), never by mtime; names that begin with a
    dot (already processed) are never matched.  Entries that are not
    regular files are listed too: open_regular refuses them, loudly.
    Raises OSError when the pattern's directory exists but cannot be
    listed (glob would say nothing).
    """
    directory = pattern_directory(pattern)
    if os.path.isdir(directory):
        os.listdir(directory)
    paths = []
    for path in glob.glob(pattern):
        if os.path.basename(path).startswith('.'):
            continue
        # Anything else that matches is taken: one that is not a regular
        # file (a FIFO, a directory) is refused when opened, and kept.
        paths.append(path)
    return sorted(paths, key=load_order)


def load_order(path):
    """The key files are loaded by: the base name (the timestamp), then
    the whole path, for the same name in two directories."""
    return os.path.basename(path), path


def is_minute_name(name):
    """Whether a base name begins with a timestamp, YYYYmmddHHMMSS, as the
    tracker names its files; only such files are judged late."""
    return MINUTE_NAME.match(name) is not None


def display_names(paths):
    """How logs name each path: its base name, or the whole path where
    two matched files share a base name."""
    names = collections.Counter(map(os.path.basename, paths))
    return [os.path.basename(path) if names[os.path.basename(path)] == 1
            else path for path in paths]


def processed_files(pattern):
    """The files already processed anywhere the pattern looks: each
    ``.<name>`` whose name the pattern's last part matches (the lock file
    is not one), as ``(path it had, path it has)``, in load order."""
    name_glob = os.path.basename(pattern)
    found = []
    for directory in glob.glob(os.path.dirname(pattern) or '.'):
        if not os.path.isdir(directory):
            continue
        for entry in os.listdir(directory):
            name = entry[1:]
            if entry.startswith('.') and not name.startswith('.') \
                    and entry != LOCK_FILE_NAME \
                    and not entry.startswith(JOURNAL_FILE_NAME) \
                    and fnmatch.fnmatchcase(name, name_glob):
                found.append((os.path.join(directory, name),
                              os.path.join(directory, entry)))
    return sorted(found, key=lambda paths: load_order(paths[0]))


def last_processed(pattern):
    """Of the processed files with a minute name, the last in load order,
    as processed_files gives it; None if there is none."""
    minutes = [paths for paths in processed_files(pattern)
               if is_minute_name(os.path.basename(paths[0]))]
    return minutes[-1] if minutes else None


def set_aside_late(loads, pattern, load_late):
    """Mark the late and re-delivered files of ``loads`` failed (a late
    one not with ``load_late``); return the loads that go on to be loaded.

    Files are loaded in load order (load_order: name, then path) over
    every directory the pattern matches, so a file is late when a file
    already processed comes after it in that order: loading it would
    overwrite newer values.  Only minute names are judged (is_minute_name):
    a file named otherwise is never late, and never makes a file late.  A
    file whose ``.<name>`` exists is never loaded, so that its rename
    cannot meet the processed copy.
    """
    last = last_processed(pattern)
    to_load = []
    for load in loads:
        name = os.path.basename(load.path)
        if os.path.lexists(dot_path(load.path)):
            load.fail(Verdict(Reason.REDELIVERED, dot_path(load.path)))
        elif not is_minute_name(name):
            log.warning('%s: not a minute name (YYYYmmddHHMMSS...): loaded'
                        ' in name order, never judged late', load.name)
            to_load.append(load)
        elif last is None or load_order(load.path) > load_order(last[0]):
            to_load.append(load)
        elif not load_late:
            load.fail(Verdict(Reason.LATE, last[1]))
        else:
            log.warning('%s: late (%s is newer and already processed),'
                        ' loaded on --load-late: its values overwrite newer'
                        ' ones', load.name, last[1])
            to_load.append(load)
        if load.verdict is not None:
            log.error('%s: kept: %s', load.name, load.verdict)
    return to_load


def younger_than(paths, min_age):
    """``(index, ahead)``: the index of the first path modified less than
    ``min_age`` seconds ago (len(paths) if none is), which waits with every
    later path, and how many seconds its mtime is ahead of this clock
    (0 if it is not)."""
    if min_age:
        now = time.time()
        for index, path in enumerate(paths):
            try:
                modified = os.stat(path).st_mtime
            except FileNotFoundError:
                continue  # gone: loading it will say so
            if now - modified < min_age:
                return index, max(0.0, modified - now)
    return len(paths), 0.0


@contextlib.contextmanager
def listing(pattern):
    """An OSError while listing the files of ``pattern`` is Unlistable."""
    try:
        yield
    except OSError as exc:
        raise Unlistable('cannot list the files of %s: %s'
                         % (pattern, exc)) from None


class ChosenFiles(NamedTuple):
    """What choose_files took: a FileLoad for each file taken (those set
    aside included), those of them to load, in order, and the number of
    files left waiting for the next run."""
    loads: List['FileLoad']
    to_load: List['FileLoad']
    waiting: int


def choose_files(settings, locks, journal, reload=False):
    """List the files of the pattern, lock their directories, leave the
    young ones (--min-age) and set aside the late and re-delivered ones;
    with ``reload`` (--reload-processed), the processed files come first,
    in the order their renames happened (Journal.order).  Returns
    ChosenFiles."""
    with listing(settings.pattern):
        paths = find_files(settings.pattern)
        processed = journal.order(processed_files(settings.pattern)) \
            if reload else []
    if not settings.dry and not settings.lock:
        # Two runs whose patterns overlap share a directory, and so a lock.
        for directory in sorted({os.path.dirname(path)
                                 for path in paths + processed}):
            take_lock(locks, os.path.join(directory, LOCK_FILE_NAME))
    if not paths:
        log.info('No files match %s', settings.pattern)
    if reload:
        log.info('%d processed files are loaded again first, in the order'
                 ' they were processed, and stay as they are',
                 len(processed))
    reloads = [FileLoad(path, name, reloading=True)
               for path, name in zip(processed, display_names(processed))]
    names = display_names(paths)
    young, ahead = younger_than(paths, settings.min_age)
    loads = [FileLoad(path, name)
             for path, name in zip(paths[:young], names[:young])]
    with listing(settings.pattern):
        to_load = reloads + (set_aside_late(
            loads, settings.pattern, settings.load_late) if loads else [])
    loads = reloads + loads
    if ahead > FUTURE_MTIME_TOLERANCE:
        # It would wait for ever, and every later file with it: kept, so
        # that the run says so, and the later files wait.
        skewed = FileLoad(paths[young], names[young])
        skewed.fail(Verdict(Reason.FUTURE_MTIME, ahead))
        log.error('%s: kept: %s; the %d later files wait behind it',
                  skewed.name, skewed.verdict, len(paths) - young - 1)
        loads.append(skewed)
        young += 1
    elif young < len(paths):
        log.info('%s was modified less than %gs ago (--min-age)%s: it and %d'
                 ' later files wait for the next run', names[young],
                 settings.min_age, ', or %.0f s ahead of this clock' % ahead
                 if ahead else '', len(paths) - young - 1)
    return ChosenFiles(loads, to_load, len(paths) - young)


# -- 7. reading a file: opened and read in threads ---------------------------

class OpenedFile(NamedTuple):
    """A file open to be read, and its status when it was opened."""
    file: object
    status: os.stat_result


def open_regular(path):
    """An OpenedFile: ``path`` opened to be read, if it is a regular file.
    Opened without blocking (opening a FIFO waits for a writer), then read as
    usual.  Raises Unreadable if it is not a regular file, OSError if it cannot
    be opened."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise Unreadable('not a regular file (a FIFO or a device?)')
        flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
        fcntl.fcntl(descriptor, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return OpenedFile(os.fdopen(descriptor, 'rb'), status)
    except BaseException:
        os.close(descriptor)
        raise


def _close_opened(opened):
    opened.file.close()


def await_or_stop(result, stopping):
    """The value of ``result`` (an AsyncResult of the thread pool), or
    Interrupted if ``stopping`` is set first."""
    gevent.wait([result, stopping], count=1)
    if not result.ready():
        raise Interrupted()
    return result.get()


def await_in_thread(function, args, stopping, release):
    """``function(*args)`` run in gevent's thread pool (in_thread) and
    awaited as await_or_stop awaits it; its exception is raised here.  If
    a stop ends the wait, ``release`` is called on the value when it
    comes."""
    result = in_thread(gevent.get_hub().threadpool, function, *args)
    try:
        return await_or_stop(result, stopping)
    except Interrupted:
        result.rawlink(lambda done: done.successful() and release(
            done.value))
        raise


def file_identity(status):
    """What tells one unchanged file from any other, from an
    ``os.stat_result``: device, inode, size, modification time, and the
    change time (which a rename changes too: see rename_loaded)."""
    return (status.st_dev, status.st_ino, status.st_size,
            status.st_mtime_ns, status.st_ctime_ns)


class ReadAhead:
    """Reads ``stream`` in gevent's thread pool, one read ahead of its
    caller: the next piece inflates (isal lets go of the GIL) while this
    one is cut and encoded, and the event loop runs meanwhile.  A read's
    exception is raised by ``read``, never printed by the pool; a stop
    (``stopping`` set) while a read is awaited raises Interrupted.

    Use it as a context manager: it owns ``stream`` and ``raw`` (the
    compressed file) and closes both once no read is in flight; a read
    abandoned by a stop closes them when it returns, if ever.
    """

    def __init__(self, stream, size, raw, stopping):
        self.stream = stream
        self.size = size
        self.raw = raw
        self.stopping = stopping
        self.position = 0  # compressed bytes read for what read returned
        self.pending = self._read_ahead()

    def _read_ahead(self):
        return in_thread(gevent.get_hub().threadpool, self._read_piece)

    def _read_piece(self):
        """In a thread: the next piece and the compressed position after
        it."""
        return self.stream.read(self.size), self.raw.tell()

    def read(self, size):
        """The next piece, of ``self.size`` bytes or fewer at the end."""
        assert size == self.size
        data, self.position = await_or_stop(self.pending, self.stopping)
        self.pending = self._read_ahead() if data else None
        return data

    def _close(self, _=None):
        try:
            self.stream.close()
        finally:
            self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.pending is None or self.pending.ready():
            self._close()
        else:  # abandoned: the thread still reads the stream
            self.pending.rawlink(self._close)


# -- 8. renames: the checks around each, in order ----------------------------

def dot_path(path):
    head, name = os.path.split(path)
    return os.path.join(head, '.' + name)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


@functools.lru_cache(maxsize=None)
def _libc():
    """The C library, opened at the first rename (not at import)."""
    return ctypes.CDLL(None, use_errno=True)


def rename_noreplace(source, target):
    """Rename ``source`` to ``target``; raise FileExistsError rather than
    replace an existing ``target``.  Atomic with Linux's renameat2; on a
    filesystem without RENAME_NOREPLACE, a check just before the rename."""
    renameat2 = getattr(_libc(), 'renameat2', None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD,
                     os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        error = ctypes.get_errno()
        if error not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(error, os.strerror(error), source, None, target)
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST),
                              source, None, target)
    os.rename(source, target)


def rename_loaded(path, identity):
    """Rename ``path`` to ``.<name>`` if it still names the file that was
    read (``identity``, see file_identity), never over an existing file.
    Returns None, or the Verdict that keeps the file."""
    target = dot_path(path)
    changed = Verdict(Reason.CHANGED)
    try:
        if file_identity(os.stat(path)) != identity:
            return changed
        rename_noreplace(path, target)
    except FileExistsError:
        return Verdict(Reason.NOT_RENAMED, 'not renamed: %s already exists'
                       % target)
    except OSError as exc:
        return Verdict(Reason.NOT_RENAMED, 'rename failed: %s' % exc)
    # The path may have been replaced between the check and the rename:
    # then the file renamed is not the one read, and goes back.  (The
    # rename itself changed the change time.)
    try:
        if file_identity(os.stat(target))[:-1] == identity[:-1]:
            return None
    except OSError:
        pass
    put_back(path, 'was replaced while being renamed')
    return changed


def still_there(load):
    """None if ``load``'s path still names the bytes that were read, else
    the Verdict (CHANGED) that keeps the file."""
    try:
        if file_identity(os.stat(load.path)) == load.identity:
            return None
    except OSError:
        pass
    return Verdict(Reason.CHANGED)


def put_back(path, why):
    """Rename ``.<name>`` back to ``path``, never over a file; log it if
    it cannot be (``why`` says why it was to go back)."""
    try:
        rename_noreplace(dot_path(path), path)
    except OSError as exc:
        log.error('%s %s, and could not be put back: %s; rename it back by'
                  ' hand', dot_path(path), why, exc)


class InstanceCheck:
    """Proof, just before a rename and just after it, that a file's
    records are still in memcached: every server the file wrote to is
    asked at once who it is (one ``stats`` round trip each, on connections
    of the check's own, not the lanes').  It must be the instance that
    acknowledged the writes, with at least as many connections counted as
    then, and, unless --accept-evictions, it must have evicted nothing and
    been flushed never since the file's first write.  A restarted server
    is empty; one that cannot be asked, after --retries tries, proves
    nothing.

    A server that tells no pid or start time (a proxy, say) cannot be
    checked: that is logged once per run and does not keep files.
    """

    def __init__(self, settings, servers):
        self.timeout = settings.timeout
        self.policy = settings.retry
        self.accept_evictions = settings.accept_evictions
        self.servers = servers  # address -> Server, to count restarts
        self.connections = {}  # address -> a connection kept for reuse
        # addresses logged as not checkable; (path, address) of evictions
        # accepted and logged
        self.warned = set()
        self.greenlet = None  # the check in flight, for abort()
        # address -> the ServerIdentity its last answer gave, and the
        # keys it held of those asked (key -> value_digest)
        self.last_seen = {}
        self.last_found = {}

    def problem(self, load, accept_evictions=None):
        """The Verdict that ``load``'s records are not proven to be in
        memcached now, or None; ``accept_evictions`` overrides the run's
        --accept-evictions.  abort() ends it at once, STOPPED."""
        if accept_evictions is None:
            accept_evictions = self.accept_evictions
        self.greenlet = gevent.spawn(self._problem, load, accept_evictions)
        try:
            result = self.greenlet.get()
        finally:
            self.greenlet = None
        return STOPPED if isinstance(result, AbandonIO) else result

    def abort(self):
        if self.greenlet is not None:
            self.greenlet.kill(AbandonIO, block=False)

    def close(self):
        for sock in self.connections.values():
            sock.close()
        self.connections.clear()

    def _problem(self, load, accept_evictions):
        """Ask every server the file wrote to at once; the first problem in
        the order of their addresses, or None."""
        wrote = []  # (address, ServerIdentity) of the checkable servers
        for address, seen in sorted(load.instances.items()):
            if seen.instance is None:
                self._cannot_check(address)
            else:
                wrote.append((address, seen))
        asking = gevent.pool.Group()
        answers = [asking.spawn(self._ask, address, samples_on(load, address))
                   for address, _ in wrote]
        try:
            asking.join()
        finally:
            asking.kill(block=False)  # after abort(): no question goes on
        for (address, then), asked in zip(wrote, answers):
            answer, error = asked.value  # an Attempt
            if error is not None:
                return Verdict(Reason.SERVER_NOT_CHECKABLE, address, error)
            now, found = answer
            self.last_seen[address] = now
            self.last_found[address] = found
            if address in self.servers:
                self.servers[address].check_instance(now.instance,
                                                     now.dropped)
            if now.instance != then.instance \
                    or None not in (then.connections, now.connections) \
                    and now.connections < then.connections:
                return Verdict(
                    Reason.SERVER_RESTARTED, address,
                    'after this file was written (now %s, wrote to %s): its'
                    ' records there are gone'
                    % (describe_identity(now), describe_identity(then)))
            # A server that does not count them drops nothing it says.
            dropped = None if None in (then.dropped, now.dropped) \
                else now.dropped.since(then.dropped)
            if dropped is not None and any(dropped):
                if not accept_evictions:
                    return Verdict(Reason.EVICTED, address,
                                   dropped.describe())
                if (load.path, address) not in self.warned:
                    self.warned.add((load.path, address))
                    log.warning('%s: memcached %s dropped items while it'
                                ' was written and checked (%s); renamed on'
                                ' --accept-evictions: some of its records'
                                ' may be gone', load.name, address,
                                dropped.describe())
            verdict = read_back_problem(
                address, samples_on(load, address), found,
                accepted=accept_evictions and dropped is not None
                and any(dropped))
            if verdict is not None:
                return verdict
        return None

    def _ask(self, address, samples=()):
        """An Attempt: server_identity's answer and, of ``samples``, the
        values the server holds (read_back), or why it gave none after
        every retry of the policy."""
        keys = sorted({sample.key for sample in samples})

        def question(sock):
            identity = server_identity(sock)
            return identity, read_back(sock, keys) if keys else {}

        def ask():
            sock = self.connections.pop(address, None)
            if sock is not None:  # kept from an earlier check
                try:
                    answer = question(sock)
                except (OSError, ProtocolError):
                    sock.close()  # it may have died with a restart
                else:
                    self.connections[address] = sock
                    return answer
            sock = connect(memcache._Host(address), self.timeout)
            try:
                answer = question(sock)
            except BaseException:
                sock.close()
                raise
            self.connections[address] = sock
            return answer

        def announce(error, retry, delay):
            log.warning('%s: cannot check it before a rename: %s;'
                        ' retry %d/%d in %.2fs', address, error, retry,
                        self.policy.retries, delay)

        return self.policy.call(ask, announce)

    def _cannot_check(self, address):
        if address not in self.warned:
            self.warned.add(address)
            log.warning('%s tells no pid and start time (a proxy?): a'
                        ' restart of it cannot be noticed, and files are'
                        ' renamed without that check', address)


class Journal:
    """What the runs of one spool directory proved, beside its lock
    (JOURNAL_FILE_NAME): JSON lines a person can read, each fsynced when
    appended.  Its first line says what it is; then, in the order they
    happened:

    * ``{"renaming": FILE, "servers": {ADDRESS: IDENTITY}, "at": T}``
      just before FILE (its path as it was, relative to the directory) is
      renamed, with the identities that acknowledged its writes;
    * ``{"proven": FILE, "servers": {...}, "at": T}`` once the check after
      the rename finished, with what each server was then;
    * ``{"undone": FILE}`` when the rename was put back;
    * ``{"server": ADDRESS, ...}``: a server's identity now proven;
    * ``{"lost": ADDRESS, "why": WORDS, "files": N}`` when a server lost
      the records of processed files since it was proven, and
      ``{"answered": [ADDRESS, ...]}`` once a reload of them is proven.

    IDENTITY is a ServerIdentity (identity_record): pid, start time,
    connections and the drop counters (Dropped).  Replayed, the lines give
    ``renames`` (file -> its last entry, in the order of the renames),
    ``servers`` (address -> last proven identity) and ``lost``.  A run
    rewrites the journal atomically, compacted to its last
    JOURNAL_RENAMES renames, once it has grown past twice that.

    A missing journal starts empty.  A torn last line (a run killed while
    appending it) is ignored.  Any other line that cannot be read is
    skipped and said plainly, the journal as it was is copied aside
    (``.corrupt``) and written again from the other lines; a journal
    whose first line is not its header is set aside whole, and the run
    goes on as if it were missing.  A line
    that cannot be written is logged once, and the run goes on: the
    checks of this run still hold.  Under --dry nothing is written.
    """

    def __init__(self, directory, dry=False):
        self.directory = directory
        self.path = os.path.join(directory, JOURNAL_FILE_NAME)
        self.dry = dry
        # file -> {'file', 'state' ('renaming' or 'proven'), 'at',
        # 'servers'}, in the order of the renames
        self.renames = {}
        self.servers = {}  # address -> identity_record, with 'at'
        self.lost = {}  # address -> {'why', 'files', 'at'}
        self.lines = 0  # lines in the file
        self.failed = False  # a write failed, and was logged

    # -- reading --

    def read(self):
        """Read and replay the journal, compacting it if it grew past
        twice JOURNAL_RENAMES; True if there was one to read."""
        try:
            with open(self.path, 'rb') as source:
                lines = source.read().split(b'\n')
            torn = lines.pop()  # b'' unless the last line is torn
            header = json.loads(lines[0]) if lines else None
            if not isinstance(header, dict) \
                    or header.get('journal') != 'gmemcload' \
                    or header.get('version') != JOURNAL_VERSION:
                raise ValueError('not a gmemcload journal of version %d'
                                 % JOURNAL_VERSION)
        except FileNotFoundError:
            log.info('%s: no journal yet: this run starts it', self.path)
            return False
        except (OSError, ValueError) as exc:
            self._set_aside(exc)
            return False
        damaged = []  # (line number, why) of the lines skipped
        for number, line in enumerate(lines[1:], 2):
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError('not an object')
                self._replay(entry)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                damaged.append((number, exc))
        self.lines = len(lines)
        if damaged:
            self._salvage(damaged)
        elif torn:
            log.warning('%s: its last line is incomplete (a run was killed'
                        ' while writing it): ignored', self.path)
            self._rewrite()
        elif len(self.renames) > 2 * JOURNAL_RENAMES \
                or self.lines > 4 * JOURNAL_RENAMES:
            self._rewrite()
        return True

    def _set_aside(self, exc):
        """The journal is no journal at all: start again, saying so."""
        aside = self.path + '.corrupt'
        log.error('%s: the journal cannot be read (%s); %s and started'
                  ' again: renames it left unproven are not proven again,'
                  ' a loss it recorded is forgotten (if a server lost'
                  ' records, run once with --reload-processed), and'
                  ' --reload-processed goes by name order', self.path, exc,
                  'kept as it is under --dry' if self.dry
                  else 'set aside as %s' % aside)
        self.renames, self.servers, self.lost = {}, {}, {}
        if not self.dry:
            try:
                os.replace(self.path, aside)
            except OSError:
                pass

    def _salvage(self, damaged):
        """Some lines cannot be read: keep what the others say, copy the
        journal aside as it was, and write it again without them."""
        aside = self.path + '.corrupt'
        number, exc = damaged[0]
        log.error('%s: %d lines cannot be read (line %d: %s): skipped; a'
                  ' rename, a loss or its answer they recorded may be'
                  ' forgotten (if a server lost records, run once with'
                  ' --reload-processed); %s', self.path, len(damaged),
                  number, exc, 'kept as it is under --dry' if self.dry
                  else 'the journal as it was is copied to %s' % aside)
        if not self.dry:
            try:
                shutil.copyfile(self.path, aside)
            except OSError:
                pass
            self._rewrite()

    def _replay(self, entry):
        """Apply one line's entry (a dict) to the state."""
        if 'renaming' in entry or 'proven' in entry:
            state = 'renaming' if 'renaming' in entry else 'proven'
            file = entry[state]
            servers = entry['servers']
            if not isinstance(file, str) or not isinstance(servers, dict):
                raise ValueError('not a rename: %r' % (entry,))
            read_back = entry.get('read_back', {})
            samples_from(read_back)  # ValueError unless it is samples
            for record in servers.values():
                identity_from_record(record)  # ValueError unless one
            if state == 'renaming':
                self.renames.pop(file, None)  # it moves to the end
                self.renames[file] = {'file': file, 'state': state,
                                      'at': float(entry['at']),
                                      'servers': servers,
                                      'read_back': read_back}
            elif file in self.renames:
                self.renames[file]['state'] = state
                if servers:
                    self.renames[file]['proven_servers'] = servers
                if read_back:
                    self.renames[file]['read_back'] = read_back
                self._replay_servers(servers, entry['at'])
        elif 'undone' in entry:
            self.renames.pop(entry['undone'], None)
        elif 'server' in entry:
            if not isinstance(entry['server'], str):
                raise ValueError('not a server: %r' % (entry,))
            identity_from_record(entry['identity'])
            self._replay_servers({entry['server']: entry['identity']},
                                 entry['at'])
        elif 'lost' in entry:
            if not isinstance(entry['lost'], str) \
                    or not isinstance(entry['why'], str) \
                    or not isinstance(entry['files'], int):
                raise ValueError('not a loss: %r' % (entry,))
            self.lost[entry['lost']] = {'why': entry['why'],
                                        'files': entry['files'],
                                        'at': float(entry['at'])}
        elif 'answered' in entry:
            if not isinstance(entry['answered'], list):
                raise ValueError('not an answer: %r' % (entry,))
            for address in entry['answered']:
                self.lost.pop(address, None)
        else:
            raise ValueError('an entry of no known kind: %r' % (entry,))

    def _replay_servers(self, servers, at):
        for address, record in servers.items():
            if record.get('pid') is not None:
                self.servers[address] = dict(record, at=at)

    # -- writing --

    def _append(self, entry):
        """Replay ``entry`` and append it as one line, fsynced."""
        self._replay(entry)
        if self.dry:
            return
        if not self.lines:
            self._rewrite()
            return
        line = json.dumps(entry, sort_keys=True).encode() + b'\n'
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND
                                 | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, line)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            self.lines += 1
        except OSError as exc:
            self._write_failed(exc)

    def _rewrite(self):
        """Write the state whole, compacted: a temporary file, fsynced,
        renamed over the journal, the directory fsynced."""
        if self.dry:
            return
        entries = [{'journal': 'gmemcload', 'version': JOURNAL_VERSION,
                    'about': 'the renames of this directory in the order'
                             ' they happened, and what each server was'
                             ' when last proven: one JSON object a line'}]
        for entry in list(self.renames.values())[-JOURNAL_RENAMES:]:
            entries.append({'renaming': entry['file'], 'at': entry['at'],
                            'servers': entry['servers'],
                            'read_back': entry.get('read_back', {})})
            if entry['state'] == 'proven':
                entries.append({'proven': entry['file'], 'at': entry['at'],
                                'servers': entry.get('proven_servers', {}),
                                'read_back': entry.get('read_back', {})})
        # After the renames, whose proven identities are older.
        entries += [{'server': address, 'identity': dict(record),
                     'at': record['at']}
                    for address, record in sorted(self.servers.items())]
        entries += [dict(lost=address, **loss)
                    for address, loss in sorted(self.lost.items())]
        temporary = self.path + '.new'
        try:
            with open(temporary, 'wb') as target:
                for entry in entries:
                    target.write(json.dumps(entry, sort_keys=True).encode()
                                 + b'\n')
                target.flush()
                os.fsync(target.fileno())
            os.replace(temporary, self.path)
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            self.lines = len(entries)
        except OSError as exc:
            self._write_failed(exc)

    def _write_failed(self, exc):
        if not self.failed:
            self.failed = True
            log.error('%s: cannot write the journal: %s; renames go on, but'
                      ' the next run cannot prove this one\'s last rename'
                      ' or see a restart since', self.path, exc)

    def _file(self, path):
        return os.path.relpath(path, self.directory)

    def renaming(self, load, samples):
        """Note, before it happens, that ``load`` is being renamed, with
        the Samples the check before it found (address -> Samples)."""
        self._append({'renaming': self._file(load.path), 'at': time.time(),
                      'servers': {address: identity_record(identity)
                                  for address, identity
                                  in sorted(load.instances.items())},
                      'read_back': samples_record(samples)})

    def proven(self, path, identities, samples=None):
        """Note that the rename of ``path`` is proven by ``identities``
        (address -> ServerIdentity, asked after it) and by ``samples``
        (address -> the Samples read back there)."""
        self._append({'proven': self._file(path), 'at': time.time(),
                      'servers': {address: identity_record(identity)
                                  for address, identity
                                  in sorted(identities.items())},
                      'read_back': samples_record(samples or {})})

    def undone(self, path):
        """Forget the last rename of ``path``: it was put back."""
        self._append({'undone': self._file(path), 'at': time.time()})

    def note_server(self, address, identity):
        """Note what ``address`` is now (a ServerIdentity), proven."""
        self._append({'server': address, 'at': time.time(),
                      'identity': identity_record(identity)})

    def note_lost(self, address, why, files):
        self._append({'lost': address, 'why': why, 'files': files,
                      'at': time.time()})

    def answered(self):
        """The losses are answered: the processed files are reloaded."""
        self._append({'answered': sorted(self.lost), 'at': time.time()})

    # -- questions --

    def unfinished(self):
        """The renames whose check after them never finished."""
        return [entry for entry in self.renames.values()
                if entry['state'] == 'renaming']

    def to_read_back(self, address):
        """What the next run reads back from ``address``: the Samples
        (no lane: presence only) that the first and the last proven
        renames still in the journal that wrote there read back (any
        delayed flush that struck since takes the first, a drop may take
        either), and the names of those files."""
        proven = [entry for entry in self.renames.values()
                  if entry['state'] == 'proven'
                  and address in entry['servers']]
        chosen = proven[:1] + proven[-1:] if len(proven) > 1 else proven
        return [entry['file'] for entry in chosen], [
            sample for entry in chosen
            for sample in samples_from(entry.get('read_back', {})).get(
                address, [])]

    def proven_instance(self, file, address):
        """The Instance of ``address`` when the rename of ``file`` was
        proven, or None if the journal does not say."""
        record = self.renames.get(file, {}).get('proven_servers', {}).get(
            address)
        return None if record is None \
            else identity_from_record(record).instance

    def files_on(self, address):
        """The proven renames that wrote to ``address``: file names."""
        return [entry['file'] for entry in self.renames.values()
                if entry['state'] == 'proven'
                and address in entry['servers']]

    def order(self, processed):
        """The current paths of ``processed`` (processed_files' pairs, in
        load order) in the order their renames happened: first those the
        journal does not know, in load order (said), then the others in
        the journal's order.  Never by change times, which a copy or a
        restore of the spool rewrites."""
        position = {file: index for index, file in enumerate(self.renames)}
        unknown = [paths for paths in processed
                   if self._file(paths[0]) not in position]
        known = sorted((paths for paths in processed
                        if self._file(paths[0]) in position),
                       key=lambda paths: position[self._file(paths[0])])
        if unknown:
            log.info('%d processed files are not in the journal (processed'
                     ' before it, or it was lost): they come first, in name'
                     ' order', len(unknown))
        return [dotted for _, dotted in unknown + known]


def samples_record(samples):
    """Samples (address -> Samples) as the journal keeps them: each key
    (as Latin-1, so any byte comes back) and the hex of its digest."""
    return {address: [[sample.key.decode('latin-1'), sample.digest.hex()]
                      for sample in kept]
            for address, kept in sorted(samples.items()) if kept}


def samples_from(record):
    """The Samples (address -> Samples with no lane) a journal's record
    holds; raises ValueError if it holds anything else."""
    try:
        return {address: [Sample(key.encode('latin-1'),
                                 bytes.fromhex(digest), None, 0)
                          for key, digest in kept]
                for address, kept in record.items()
                if isinstance(address, str)}
    except (AttributeError, TypeError, ValueError,
            UnicodeEncodeError) as exc:
        raise ValueError('not records read back: %r' % (record,)) from exc


def identity_record(identity):
    """A ServerIdentity as the journal keeps it."""
    record = {'pid': None, 'started': None,
              'connections': identity.connections}
    if identity.instance is not None:
        record.update(pid=identity.instance.pid,
                      started=identity.instance.started)
    if identity.dropped is not None:
        record.update(identity.dropped._asdict())
    return record


def identity_from_record(record):
    """The ServerIdentity of a journal's record; raises ValueError if it
    is not one."""
    try:
        instance = None if record.get('pid') is None else Instance(
            int(record['pid']), int(record['started']))
        dropped = None
        if all(field in record for field in Dropped._fields):
            dropped = Dropped(*(int(record[field])
                                for field in Dropped._fields))
        connections = record.get('connections')
        return ServerIdentity(instance, None if connections is None
                              else int(connections), dropped)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError('not a server identity: %r' % (record,)) from exc


class _JournalledFile:
    """What InstanceCheck.problem needs of a file the journal names: its
    servers' identities, and the Samples to read back (``read_back``:
    address -> Samples with no lane: a later run may have rewritten their
    keys, so only their presence is asked)."""

    __slots__ = ('path', 'name', 'instances', 'samples', 'read_back')

    def __init__(self, path, instances, read_back=None):
        self.path = path
        self.name = os.path.basename(path)
        self.instances = instances
        self.samples = {}  # no lanes
        self.read_back = read_back or {}


def prove_unfinished(journal, check):
    """At start: for each rename whose check never finished (the run was
    killed in its last window), ask the servers it wrote to again; note
    it proven if every one is unchanged since the file's writes, else put
    the file back (it loads again now)."""
    for entry in journal.unfinished():
        path = os.path.join(journal.directory, entry['file'])
        if not os.path.lexists(dot_path(path)) or os.path.lexists(path):
            journal.undone(path)  # the rename never happened
            continue
        try:
            instances = {address: identity_from_record(record)
                         for address, record in entry['servers'].items()}
            samples = samples_from(entry.get('read_back', {}))
        except (AttributeError, ValueError) as exc:
            verdict = 'its journal entry is damaged (%s)' % exc
        else:
            found = check.problem(_JournalledFile(path, instances, samples))
            verdict = None if found is None else str(found)
        if verdict is None:
            journal.proven(path, {address: check.last_seen[address]
                                  for address in instances
                                  if address in check.last_seen}, samples)
            log.info('%s: its rename was not proven when the last run'
                     ' ended; proven now', entry['file'])
            continue
        journal.undone(path)
        put_back(path, 'was renamed by a run that ended before it was'
                 ' proven')
        log.error('%s: renamed by a run that ended before the check after'
                  ' the rename, and not provable now: %s; put back, to be'
                  ' loaded again', entry['file'], verdict)


class Loss(NamedTuple):
    """A server that lost the records of processed files since they were
    proven, as the metrics count it: whether it restarted, and the items
    it evicted or lost in slab moves (the journal keeps the words)."""
    address: str
    restarted: bool
    dropped: int


def losses_since_proven(journal, check, addresses):
    """At start, and again at the end of a run: ask each server of
    ``addresses`` that the journal proved before, and read back what the
    first and the last proven file the journal holds wrote there
    (Journal.to_read_back); a server restarted, flushed, dropping items
    or missing those records since then has lost processed files'
    records.  Each is logged and kept in the
    journal's ``lost`` until a reload is proven; the journal's identity
    of it becomes the current one, so one change is counted once.
    Returns the new Losses."""
    found = []
    for address in sorted(set(addresses) & set(journal.servers)):
        try:
            then = identity_from_record(journal.servers[address])
        except ValueError:
            continue
        files_read, samples = journal.to_read_back(address)
        verdict = check.problem(_JournalledFile(
            journal.path, {address: then}, {address: samples}),
            accept_evictions=False)
        if verdict is None:
            continue
        now = check.last_seen.get(address)
        if verdict.reason is Reason.EVICTED and check.accept_evictions:
            # Accepted as within a run; a restart, or a record gone with
            # no drop counted, never is.
            log.warning('memcached %s dropped items since it was last'
                        ' proven (%s); accepted on --accept-evictions',
                        address, verdict.details[1])
            journal.note_server(address, now)
            continue
        if verdict.reason is Reason.SERVER_NOT_CHECKABLE:
            log.warning('%s: cannot check it against the last run: %s',
                        address, verdict)
            continue
        files = journal.files_on(address)
        restarted = verdict.reason is Reason.SERVER_RESTARTED
        dropped = 0
        if not restarted and now is not None and now.dropped is not None \
                and then.dropped is not None:
            lost = now.dropped.since(then.dropped)
            dropped = max(0, lost.evictions) + max(0, lost.moved_out)
        if restarted:
            why = 'restarted since it was last proven (now %s, then' \
                ' %s)' % (describe_identity(now), describe_identity(then))
        elif verdict.reason is Reason.READ_BACK:
            before = [file for file in files_read
                      if journal.proven_instance(file, address)
                      not in (None, now.instance)]
            why = 'does not hold what %s wrote there, %s: %s' % (
                ' or '.join(files_read), 'restarted since %s was proven'
                ' (now %s)' % (before[0], describe_identity(now)) if before
                else 'though it counts no drop since (a delayed flush_all?)',
                verdict.details[1])
        else:
            why = 'dropped items since it was last proven (%s)' \
                % now.dropped.since(then.dropped).describe()
        log.error('memcached %s %s: the records there of %d processed'
                  ' files%s are gone or may be', address, why, len(files),
                  ' (%s to %s)' % (files[0], files[-1]) if files else '')
        journal.note_lost(address, why, len(files))
        journal.note_server(address, now)
        found.append(Loss(address, restarted, dropped))
    return found


def read_back_problem(address, samples, found, accepted=False):
    """The Verdict (READ_BACK) that the Samples a file wrote to
    ``address`` are not what the server holds (``found``: key -> value),
    or None.  A sample missing keeps the file, unless ``accepted``
    (--accept-evictions, and the server counted drops since); a value
    that differs keeps it when nothing this run sent since can have
    rewritten the key (see Sample)."""
    missing = sorted(sample.key for sample in samples
                     if sample.key not in found)
    differs = sorted(sample.key for sample in samples
                     if sample.key in found and sample.lane is not None
                     and sample.lane.sent == sample.sent
                     and found[sample.key] != sample.digest)
    if missing and not accepted:
        return Verdict(Reason.READ_BACK, address, '%d of the %d records'
                       ' read back are missing (%s)' % (
                           len(missing), len(samples),
                           b', '.join(missing[:3]).decode(
                               'ascii', 'backslashreplace')))
    if differs:
        return Verdict(Reason.READ_BACK, address, '%d of the %d records'
                       ' read back hold another value (%s)' % (
                           len(differs), len(samples),
                           b', '.join(differs[:3]).decode(
                               'ascii', 'backslashreplace')))
    return None


def describe_identity(identity):
    """A ServerIdentity in words, for a log line."""
    if identity.instance is None:
        return 'an instance with no pid'
    return 'pid %d started %s, %s connections' % (
        identity.instance.pid, time.strftime(
            '%Y-%m-%d %H:%M:%S', time.localtime(identity.instance.started)),
        identity.connections)


def log_outcome(load, max_error_rate):
    """Log a file's verdict in the original tool's words."""
    rate = load.error_rate
    verdict = load.kept(max_error_rate)
    if verdict is None:
        log.info('%s: Acceptable error rate (%.4g). Successful load',
                 load.name, rate)
    elif verdict.reason is Reason.ERROR_RATE:
        log.error('%s: High error rate (%.4g > %.4g). Failed load',
                  load.name, rate, max_error_rate)
    else:
        log.error('%s: Failed load: %s', load.name, verdict)


class RenameInOrder:
    """The one place where files are renamed: called with each FileLoad in
    sorted order, it renames a loaded file to ``.<name>`` until the first
    file that is not loaded; every file after that is kept
    (AFTER_A_FILE_NOT_LOADED).

    A file is renamed only if all of these hold, each a Reason if not:

    * it is neither late nor re-delivered (set_aside_late, before loading:
      LATE, REDELIVERED), and its mtime is not further ahead of this clock
      than FUTURE_MTIME_TOLERANCE (choose_files: FUTURE_MTIME);
    * it was read to its end (UNREADABLE, NOT_READ_TO_END, STOPPED);
    * every record in it was acknowledged by memcached or counted as an
      error (UNACKNOWLEDGED), and its error rate is within
      ``--max-error-rate`` (ERROR_RATE): FileLoad.kept;
    * every server it wrote to is, at the moment of the rename, the
      instance that acknowledged its writes, and evicted no item and was
      flushed never from the file's first write to the check after its
      rename (unless --accept-evictions): all of them are asked at once
      just before the rename and again just after it, and a change seen
      after it renames the file back (InstanceCheck, _confirm:
      SERVER_RESTARTED, EVICTED, SERVER_NOT_CHECKABLE, after --retries
      tries);
    * its path still names the bytes that were read, just before the
      rename and just after it (rename_loaded: CHANGED), and the rename
      replaces nothing (NOT_RENAMED);
    * no stop has come (STOPPED).

    A processed file loaded again (--reload-processed) passes the same
    checks, and is never renamed: it is ``reloaded``.  Under --dry nothing
    is checked or renamed.
    """

    def __init__(self, max_error_rate, check, dry=False, journal=None):
        self.max_error_rate = max_error_rate
        self.check = check  # an InstanceCheck (None under --dry)
        # The Journal each rename is noted in before it happens and once
        # it is proven (None: none, as under --dry).
        self.journal = journal
        self.dry = dry  # --dry: check nothing, rename nothing
        self.renaming = True  # until the first file not loaded
        self.stopped = False

    def _prove_and_rename(self, load):
        """The steps of a loaded file's rename, in turn: None once it is
        renamed (or, reloaded, proven), else the Verdict of the first step
        that failed."""
        if self.stopped:
            return STOPPED
        verdict = self.check.problem(load)  # every server, just before
        if verdict is not None:
            return verdict
        if load.reloading:  # the same checks, and no rename
            return still_there(load)
        if self.journal is not None:  # fsynced before the rename
            self.journal.renaming(load, self._found(load))
        verdict = rename_loaded(load.path, load.identity)
        if verdict is None:
            verdict = self._confirm(load)  # every server again, just after
        if self.journal is not None:
            if verdict is None:
                self.journal.proven(load.path, {
                    address: self.check.last_seen[address]
                    for address in load.instances
                    if address in self.check.last_seen}, self._found(load))
            else:
                self.journal.undone(load.path)
        return verdict

    def _found(self, load):
        """The Samples of ``load`` that the last check found, by address:
        what a later run may ask again (one missing and accepted under
        --accept-evictions is not)."""
        return {address: [sample for sample in samples_on(load, address)
                          if sample.key in self.check.last_found.get(
                              address, ())]
                for address in load.instances}

    def _confirm(self, load):
        """Ask the servers again once the file is renamed: an answer of the
        first check may be old by the time of the rename, so a server that
        changed before the rename is seen now, and the rename is undone.
        Returns the Verdict that undid it, or None."""
        verdict = STOPPED if self.stopped else self.check.problem(load)
        if verdict is not None:
            put_back(load.path, 'was renamed while a server changed')
        return verdict

    def stop(self):
        """Rename nothing more, and end a check in flight at once."""
        self.stopped = True
        if self.check is not None:
            self.check.abort()

    def __call__(self, load):
        if self.renaming and not self.dry \
                and load.loaded(self.max_error_rate):
            verdict = self._prove_and_rename(load)
            if verdict is not None:
                load.fail(verdict)
            elif load.reloading:
                load.reloaded = True
            else:
                load.renamed = True
        log_outcome(load, self.max_error_rate)
        if not load.loaded(self.max_error_rate):
            self.renaming = False
        elif not self.renaming:
            load.fail(Verdict(Reason.AFTER_A_FILE_NOT_LOADED))
            log.warning('%s: kept: %s', load.name, load.verdict)


# -- 9. locks and stop signals -----------------------------------------------

class Locked(Exception):
    """Another run holds a lock this run needs: nothing was read."""

    def __init__(self, path, holder):
        super().__init__('another run (pid %s) holds the lock %s'
                         % (holder, path))


class RunLocks:
    """Exclusive, non-blocking flocks held for the whole run.

    The kernel drops a lock when the process dies, however it dies, so a
    killed run leaves no stale lock.  Lock files are never removed, and a
    file that holds anything but a pid is locked as it is, never written.
    """

    def __init__(self):
        self.handles = {}  # path -> open file holding its lock

    def acquire(self, path):
        """Lock ``path`` (created if missing) unless this run holds it.
        Raises Locked if another run holds it, OSError if it cannot be
        opened."""
        if path in self.handles:
            return
        handle = open(path, 'a+b')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _pid_written(handle) or '?'
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise Locked(path, holder) from None
            raise
        if _pid_written(handle) is not None or not os.fstat(
                handle.fileno()).st_size:
            handle.seek(0)
            handle.truncate()
            handle.write(b'%d\n' % os.getpid())
            handle.flush()
        self.handles[path] = handle

    def release(self):
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()


def _pid_written(handle):
    """The pid a lock file holds, or None if it holds anything else (a
    pid and white space fit in 32 bytes; a longer file is not one)."""
    handle.seek(0)
    text = handle.read(33)
    return text.strip().decode() if len(text) <= 32 and \
        text.strip().isdigit() else None


# A lock file that cannot be made for one of these is the disk's failure,
# not a bad option: exit 1, not 2.
DISK_FAILURES = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EIO,
                           errno.EROFS))


def take_lock(locks, path):
    try:
        locks.acquire(path)
    except OSError as exc:
        if exc.errno in DISK_FAILURES:
            raise DiskFailure('cannot create lock file %s: %s'
                              % (path, exc)) from None
        raise ConfigError('cannot open lock file %s: %s (choose another'
                          ' with --lock)' % (path, exc)) from None


class StopSignals:
    """The SIGINT and SIGTERM handlers of this process, installed by the
    first run and kept until the process ends: a signal in a run's last
    milliseconds (its summary, its metrics, closing its log) is never the
    default action, which would end the process with no metrics or with
    metrics that say otherwise.

    While a run can stop (``arm`` to ``disarm``), a signal calls its
    ``on_stop(signum)``, and a second SIGINT exits at once; after that, a
    signal is logged and the run's outcome stands.
    """

    def __init__(self):
        self.on_stop = None
        self.caught = []
        self.handlers = None

    def arm(self, on_stop):
        """Call ``on_stop(signum)`` on a stop signal until disarm(); a
        signal noted while the program started counts too.  Returns the
        list of the signals caught meanwhile."""
        if self.handlers is None:
            self.handlers = [gevent.signal_handler(signum, self._on_signal,
                                                   signum)
                             for signum in (signal.SIGINT, signal.SIGTERM)]
        self.caught = []
        self.on_stop = on_stop
        for signum in EARLY_SIGNALS[:1]:  # came while the program started
            self._on_signal(signum)
        return self.caught

    def disarm(self):
        self.on_stop = None

    def ignore(self):
        """Once the outcome is written: the handlers go (gevent's last one
        to go restores the default action), then stop signals are
        ignored until the process ends."""
        for handler in self.handlers or ():
            handler.cancel()
        self.handlers = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)

    def _on_signal(self, signum):
        name = signal.Signals(signum).name
        if self.on_stop is None:
            log.warning('%s received as the run ends: its outcome stands',
                        name)
            return
        if self.caught and signum == signal.SIGINT:
            log.error('second SIGINT: stopping at once')
            os._exit(EXIT_SIGNAL_BASE + signum)
        self.caught.append(signum)
        log.warning('%s received: stopping; files not fully loaded are kept',
                    name)
        self.on_stop(signum)


STOP_SIGNALS = StopSignals()


# -- 10. the run: the pipeline wired to the renames --------------------------

class Settings:
    """What a run needs, built once from the parsed options (whose only
    defaults are build_parser's).  Raises ConfigError for an address that
    is not HOST:PORT, or for more lanes than MAX_LANES."""

    def __init__(self, args):
        self.pattern = args.pattern
        # device type -> list of 'host:port'
        self.addresses = {dev_type: parse_addresses(dev_type,
                                                    getattr(args, dev_type))
                          for dev_type in DEVICE_TYPES}
        self.batch_size = args.batch_size
        self.uploaders = args.uploaders
        servers = {address for addresses in self.addresses.values()
                   for address in addresses}
        if len(servers) * self.uploaders > MAX_LANES:
            raise ConfigError('--uploaders: %d servers with %d lanes each'
                              ' make more than %d lanes'
                              % (len(servers), self.uploaders, MAX_LANES))
        self.timeout = args.timeout
        self.retry = RetryPolicy(args.retries)
        self.max_error_rate = args.max_error_rate
        self.dry = args.dry
        self.workers = args.workers  # encoders; 1: in this process
        self.min_age = args.min_age
        self.load_late = args.load_late
        self.reload_processed = args.reload_processed
        self.accept_evictions = args.accept_evictions
        self.refill_after_loss = args.refill_after_loss
        self.lock = args.lock  # None: the default locks (see load_files)
        self.show_bar = not args.log and sys.stderr.isatty()
        self.encoder = choose_encoder()


class ByteBudget:
    """Bytes held by one stage of the pipeline, at most ``limit``, or one
    holding alone that is bigger: ``take(size)`` waits while other bytes
    are held and ``size`` more would pass the limit; ``give(size)`` gives
    them back.  Greenlets only; one taker waits at a time."""

    __slots__ = ('limit', 'held', 'freed')

    def __init__(self, limit):
        self.limit = limit
        self.held = 0
        self.freed = gevent.event.Event()

    def take(self, size):
        while self.held and self.held + size > self.limit:
            self.freed.clear()
            self.freed.wait()
        self.held += size

    def give(self, size):
        self.held -= size
        self.freed.set()


class ChunkInFlight(NamedTuple):
    """A chunk of ``load`` on its way to the writer: the encoder's
    AsyncResult for it, the prefixes of its oversized lines, and its size
    (what it holds of the Loader's chunk budget until the writer took
    it)."""
    load: 'FileLoad'
    result: gevent.event.AsyncResult
    oversized: List[bytes]
    size: int


class FileEnd(NamedTuple):
    """After the last chunk of ``load``: ``ending`` is the Verdict of a
    file that failed while being read, or None."""
    load: 'FileLoad'
    ending: Optional[Verdict]


class Loader:
    """Loads sorted files into memcached: one reader, an encoder, one
    writer, the lanes; see the module docstring.

    The reader greenlet decompresses each file once, cuts it into chunks
    and submits them to the encoder; the writer greenlet takes the
    results strictly in submission order and appends them to the lanes, so
    writes of a key keep the file order by construction.
    """

    def __init__(self, settings, servers=None):
        self.settings = settings
        self.stopping = gevent.event.Event()
        routes = build_routes(settings.addresses, settings.uploaders)
        # One code path, two executors of the run's encoder.
        encode = settings.encoder.new(routes.by_type)
        if settings.workers == 1:
            self.encoder = InProcessEncoder(encode)
        else:
            self.encoder = EncoderThreads(settings.workers, encode)
        # address -> Server: those given, and any other written to
        self.servers = {} if servers is None else servers
        self.lanes = []  # by lane number
        for address in routes.lane_addresses:
            server = self.servers.get(address)
            if server is None:
                server = self.servers[address] = Server(address)
            lane = DryLane(server, self._released) if settings.dry else \
                Lane(server, settings, self.stopping, self._released)
            server.lanes.append(lane)
            self.lanes.append(lane)
        # In file order: a ChunkInFlight per chunk, and a FileEnd after a
        # file's chunks.  Room for every encoder to have its chunks in
        # flight, and two more; and at most CHUNK_BYTES of them (or one
        # bigger chunk) from submit until the writer took the result.
        self.ordered = gevent.queue.Queue(
            settings.workers * ENCODER_CHUNKS + 2)
        self.chunk_bytes = ByteBudget(CHUNK_BYTES)
        # The writer's: the commands of each lane's next batch and their
        # number and bytes, all of one file (the writer empties them at
        # each file's end).  A batch is cut at the end of the chunk that
        # brings it to --batch-size records or more (a chunk's records for
        # a lane go whole), before it would pass BATCH_BYTES (a record
        # bigger is a batch of its own), at PENDING_BYTES for all lanes
        # together (the largest first), or at a file's end.
        self.pending = [[] for _ in self.lanes]
        self.pending_count = [0] * len(self.lanes)
        self.pending_bytes = [0] * len(self.lanes)
        self.pending_total = 0
        # Batches handed to the lanes and not yet done with (Lane's
        # ``released``): queued or in flight.
        self.lane_bytes = ByteBudget(LANE_BYTES)
        self.current = None  # the FileLoad being read, for progress

    def stop(self, signum=None):
        """Stop reading; abandon what is in flight or queued (see Lane)."""
        self.stopping.set()
        for lane in self.lanes:
            lane.abandon_io()
        self.encoder.close()

    def current_load(self):
        return self.current

    def run(self, loads, on_done):
        """Load the files of ``loads`` (FileLoads, sorted).

        ``on_done(load)`` is called for each file strictly in order, once
        every record of it is acknowledged or counted as an error.
        """
        # A Group, not a Pool: every lane runs from start to end.
        uploaders = gevent.pool.Group()
        for lane in self.lanes:
            uploaders.spawn(lane.run)
        # Files read and not yet handed to on_done: few enough that memory
        # does not grow with the number of files.
        started = gevent.queue.Queue(OPEN_FILES)
        reader = gevent.spawn(self._read_files, loads, started)
        writer = gevent.spawn(self._write)
        try:
            for load in iter(started.get, None):
                load.acks.wait()
                load.log_unshown()
                on_done(load)
                load.release()
        finally:
            reader.kill()
            self.ordered.put(None)
            writer.join()
            for lane in self.lanes:
                lane.close()
            uploaders.join()
            self.encoder.close()

    # -- the reader --

    def _read_files(self, loads, started):
        """Read every file in order; after a stop, mark the rest stopped."""
        for load in loads:
            load.track()
            started.put(load)
            self.current = load
            load.started = time.monotonic()
            if self.stopping.is_set():
                self.ordered.put(FileEnd(load, STOPPED))
                continue
            log.info('Processing %s', load.path)
            try:
                self._read_file(load)
            except Interrupted:
                ending = STOPPED
            except (OSError, Unreadable) as exc:
                ending = Verdict(Reason.UNREADABLE, exc)
            except MemoryError:  # the file's failure, not a bug
                log.error('%s: out of memory while reading', load.name)
                ending = Verdict(Reason.NOT_READ_TO_END,
                                 'out of memory while reading')
            except Exception:
                log.exception('%s: failed while reading', load.name)
                ending = Verdict(Reason.NOT_READ_TO_END,
                                 'internal error while reading')
            else:
                ending = None
            self.ordered.put(FileEnd(load, ending))
        self.current = None
        started.put(None)

    def _read_file(self, load):
        """Submit the chunks of one file to the encoder, in order.  The
        open and every read run in gevent's thread pool, so that a read
        that never returns (a hung filesystem) cannot hold the event loop,
        and a stop ends the wait for it (Interrupted)."""
        opened = await_in_thread(open_regular, (load.path,), self.stopping,
                                 _close_opened)
        raw = opened.file
        load.identity = file_identity(opened.status)
        load.size = opened.status.st_size
        if not load.size:  # an empty gzip stream is 20 bytes, not 0
            raw.close()
            raise Unreadable('empty file, not gzip (still being written?)')
        with ReadAhead(igzip.IGzipFile(fileobj=raw, mode='rb'), READ_CHUNK,
                       raw, self.stopping) as ahead:
            for chunk in read_chunks(ahead.read):
                load.bytes_read = ahead.position
                if self.stopping.is_set():
                    raise Interrupted()
                if load.verdict is not None and \
                        load.verdict.reason is Reason.NOT_READ_TO_END:
                    return  # failed (out of memory, say): read no more
                if chunk.pieces or chunk.oversized:
                    size = sum(map(len, chunk.pieces))
                    self.chunk_bytes.take(size)
                    self.ordered.put(ChunkInFlight(
                        load, self.encoder.submit(chunk.pieces),
                        chunk.oversized, size))
                del chunk  # only the encoder's copy stays
                gevent.sleep(0)  # signals, progress, lanes: a turn
            load.bytes_read = load.size

    # -- the writer --

    def _write(self):
        """Take encoded chunks in file order and hand them to the lanes;
        at each file's end flush its last batches (dropped if it was
        stopped).  A file that fails here (out of memory, or a bug, which
        is logged with its traceback) fails alone: its pending records
        count as not acknowledged, none is left for the next file, and
        the writer goes on: a file must always end, or the run would wait
        for it forever."""
        for item in iter(self.ordered.get, None):
            load = item.load
            try:
                if isinstance(item, FileEnd):
                    self._end_file(load, item.ending)
                else:
                    try:
                        self._append_chunk(load, item.result,
                                           item.oversized)
                    finally:
                        self.chunk_bytes.give(item.size)
            except Exception as exc:
                if isinstance(exc, MemoryError):
                    log.error('%s: out of memory while writing', load.name)
                    words = 'out of memory while writing'
                else:
                    log.exception('%s: failed while writing', load.name)
                    words = 'internal error while writing'
                load.fail(Verdict(Reason.NOT_READ_TO_END, words))
                self._drop_pending(load, words)
                if isinstance(item, FileEnd) \
                        and not load.acks.enqueuing_done:
                    load.acks.finish()

    def _append_chunk(self, load, result, oversized):
        try:
            chunk = result.get()
        except MemoryError:
            load.fail(Verdict(Reason.NOT_READ_TO_END,
                              'could not be encoded: out of memory'))
            return
        load.add_lines(chunk.lines, chunk.errors, chunk.bad, chunk.dropped,
                       chunk.dropped_samples)
        for prefix in oversized:
            load.add_lines(1, 1, [BadSample(MALFORMED, 'line longer than %d'
                                            ' bytes' % MAX_LINE_BYTES,
                                            prefix)])
        # Records counted in lines and not yet pending or sent: if this
        # fails half way, they count as not acknowledged, so that lines
        # are always stored + errors (+ what a stop left unsent).
        unplaced = sum(batch.count for batch in chunk.batches)
        try:
            for batch in chunk.batches:
                number = batch.lane
                for count, commands in cut_commands(
                        batch.commands, batch.count, BATCH_BYTES):
                    if self.pending_count[number] and \
                            self.pending_bytes[number] + len(commands) \
                            > BATCH_BYTES:
                        self._flush(number, load)
                    self._add(number, count, commands)
                    unplaced -= count
                    if self.pending_count[number] >= self.settings.batch_size \
                            or self.pending_bytes[number] >= BATCH_BYTES:
                        self._flush(number, load)
            while self.pending_total > PENDING_BYTES:
                sizes = self.pending_bytes
                self._flush(max(range(len(sizes)), key=sizes.__getitem__),
                            load)
        except Exception as exc:
            self._lose(load, unplaced, 'out of memory' if isinstance(
                exc, MemoryError) else 'internal error')
            raise

    def _add(self, number, count, commands):
        """Add ``count`` joined commands to lane ``number``'s pending
        batch."""
        self.pending[number].append(commands)
        self.pending_count[number] += count
        self.pending_bytes[number] += len(commands)
        self.pending_total += len(commands)

    def _end_file(self, load, ending):
        """Flush the file's last batches, or drop them if it was stopped;
        ``ending`` is the Verdict of a file that failed, or None."""
        stopped = self.stopping.is_set() or ending is not None \
            and ending.reason is Reason.STOPPED
        for number, count in enumerate(self.pending_count):
            if count and not stopped:
                self._flush(number, load)
        self._clear_pending()  # a stop's: left unsent, and said so
        load.fail(ending or (STOPPED if stopped else None))
        load.acks.finish()

    def _clear_pending(self):
        self.pending = [[] for _ in self.lanes]
        self.pending_count = [0] * len(self.lanes)
        self.pending_bytes = [0] * len(self.lanes)
        self.pending_total = 0

    def _drop_pending(self, load, because):
        """Empty every lane's pending batch (all of ``load``), its records
        counted as not acknowledged ``because`` (words)."""
        lost = sum(self.pending_count)
        self._clear_pending()
        self._lose(load, lost, because)

    @staticmethod
    def _lose(load, count, because):
        """Count ``count`` records of ``load`` that will never be sent as
        not acknowledged ``because`` (words)."""
        if count:
            load.acks.enqueued()
            load.batch_done(0, 0, count, because)

    def _flush(self, number, load):
        """Hand lane ``number``'s pending batch to it: blocks while its
        queue is full, or while the lanes hold LANE_BYTES."""
        commands, count = self.pending[number], self.pending_count[number]
        # Taken out first: whatever fails below, none of it is left
        # pending for a later batch, or for the next file.
        self.pending_total -= self.pending_bytes[number]
        self.pending[number] = []
        self.pending_count[number] = 0
        self.pending_bytes[number] = 0
        try:
            batch = Batch(load, b''.join(commands), count)
        except Exception as exc:
            self._lose(load, count, 'out of memory' if isinstance(
                exc, MemoryError) else 'internal error')
            raise
        del commands
        load.acks.enqueued()
        self.lane_bytes.take(len(batch.payload))
        self.lanes[number].submit(batch)

    def _released(self, batch):
        """A lane is done with ``batch``: its bytes are the lanes' no
        more."""
        self.lane_bytes.give(len(batch.payload))


class Progress:
    """Progress lines every PROGRESS_INTERVAL and, on a terminal, a bar.

    ``current()`` returns the FileLoad being read, or None.
    """

    def __init__(self, current, bar=False):
        self.current = current
        self.greenlets = gevent.pool.Group()
        self.greenlets.spawn(self._report)
        if bar:
            self.greenlets.spawn(self._draw_bar)

    def stop(self):
        self.greenlets.kill()

    def _report(self):
        last_lines, last_time, last_load = 0, time.monotonic(), None
        while True:
            gevent.sleep(PROGRESS_INTERVAL)
            load = self.current()
            if load is None:
                continue
            now = time.monotonic()
            if load is not last_load:
                last_lines, last_time, last_load = 0, load.started, load
            rate = (load.lines - last_lines) / max(now - last_time, 1e-9)
            log.info('progress: %s %d lines, %.0f lines/s, %d errors',
                     load.name, load.lines, rate, load.errors)
            last_lines, last_time = load.lines, now

    def _draw_bar(self):
        """A bar of the current file's compressed bytes read."""
        from tqdm import tqdm  # only on a terminal: encoders never need it
        bar, shown = None, None
        try:
            while True:
                load = self.current()
                if load is not None:
                    if load is not shown:
                        if bar is not None:
                            bar.close()
                        bar = tqdm(desc=load.name, unit='B', unit_scale=True,
                                   leave=False, dynamic_ncols=True)
                        shown = load
                    bar.total = load.size or None
                    bar.n = load.bytes_read
                    bar.set_postfix(lines=load.lines, errors=load.errors)
                gevent.sleep(0.5)
        finally:
            if bar is not None:
                bar.close()


class RunResult:
    """What a run did, for the exit status and the metrics."""

    def __init__(self, settings, loads=(), waiting=0, servers=(),
                 signum=None, lost=()):
        self.settings = settings
        self.loads = list(loads)  # FileLoads of the files taken
        self.waiting = waiting  # files left for the next run (--min-age)
        self.servers = list(servers)  # Server objects, with down, restarts
        self.signum = signum  # the signal that stopped the run, or None
        # Servers that lost processed files' records, not yet refilled.
        self.lost = list(lost)


def load_files(settings, locks, journal):
    """The run: what changed since the last run (the journal, if any),
    the files chosen (choose_files), loaded and renamed in order
    (load_in_order), and summed up.  Returns a RunResult.  Raises
    Locked, Unlistable or DiskFailure."""
    servers = {address: Server(address) for address in sorted(
        {address for addresses in settings.addresses.values()
         for address in addresses})}
    if not settings.dry:
        ask_since_proven(settings, journal, servers, at_start=True)
    lost = [] if settings.dry else sorted(journal.lost)
    refill = bool(lost) and settings.refill_after_loss
    if refill:
        log.warning('memcached %s lost records of processed files: they are'
                    ' loaded again first (--refill-after-loss)',
                    ', '.join(lost))
    elif lost and not settings.reload_processed:
        log.error('memcached %s lost records of processed files since they'
                  ' were proven (see the journal %s): load them again with'
                  ' --reload-processed, or let runs do it with'
                  ' --refill-after-loss', ', '.join(lost), journal.path)
    chosen = choose_files(settings, locks, journal,
                          settings.reload_processed or refill)
    if not chosen.loads:
        return RunResult(settings, waiting=chosen.waiting,
                         servers=servers.values(), lost=lost)
    _, signum = load_in_order(settings, chosen.to_load, journal, servers)
    if not settings.dry and signum is None:
        # What struck after a file's own check, during the rest of the
        # run: seen now, not by the next run.
        ask_since_proven(settings, journal, servers, at_start=False)
        lost = sorted(journal.lost)
    reloads = [load for load in chosen.loads if load.reloading]
    if lost and (settings.reload_processed or refill) \
            and signum is None and all(load.reloaded for load in reloads):
        log.info('the processed files are loaded again and proven: the'
                 ' loss on %s is answered', ', '.join(lost))
        journal.answered()
        lost = []
    log_summary(chosen.loads, settings.max_error_rate, settings.dry)
    log_cpu(settings.workers)
    return RunResult(settings, chosen.loads, chosen.waiting,
                     servers.values(), signum, lost)


def ask_since_proven(settings, journal, servers, at_start):
    """Ask every server of ``servers`` (address -> Server) what changed
    since the journal last proved it (losses_since_proven), and count
    what it lost in its Server; ``at_start``, first prove the renames the
    last run left unproven.  A restart seen at the end of a run is counted
    already, by the check itself, whose Servers know the instance."""
    check = InstanceCheck(settings, servers)
    try:
        if at_start:
            prove_unfinished(journal, check)
        for loss in losses_since_proven(journal, check, servers):
            if at_start:
                servers[loss.address].restarts += loss.restarted
            servers[loss.address].evictions += loss.dropped
    finally:
        check.close()


def load_in_order(settings, loads, journal=None, servers=None):
    """Load ``loads`` and rename them in order, the pipeline wired to the
    renames, stop signals and progress; then prove every reloaded file
    again, as each was proven before the later files were loaded.
    Returns ``(servers, signum)``: the Servers written to, and the signal
    that stopped the run or None."""
    engine = Loader(settings, servers)
    check = None if settings.dry else InstanceCheck(settings, engine.servers)
    renamer = RenameInOrder(settings.max_error_rate, check, settings.dry,
                            None if settings.dry else journal)

    def stop(signum):
        renamer.stop()  # first: nothing is renamed after the signal
        engine.stop(signum)

    caught = STOP_SIGNALS.arm(stop)
    progress = Progress(engine.current_load, bar=settings.show_bar)
    try:
        with (_log_around_the_bar() if settings.show_bar
              else contextlib.nullcontext()):
            engine.run(loads, renamer)
        if check is not None:
            prove_reloaded(loads, renamer)
    finally:
        progress.stop()
        if check is not None:
            check.close()
        gevent.sleep(0)  # run a signal callback that is still pending
        STOP_SIGNALS.disarm()
    return list(engine.servers.values()), caught[0] if caught else None


def prove_reloaded(loads, renamer):
    """At the end of a run, ask again for every reloaded file whether its
    servers are unchanged since its writes: a restart after its own check
    would otherwise go unseen.  One not proven is no longer reloaded."""
    for load in loads:
        if not load.reloaded:
            continue
        verdict = STOPPED if renamer.stopped \
            else renamer.check.problem(load)
        if verdict is not None:
            load.reloaded = False
            load.fail(verdict)
            log.error('%s: reloaded, but not proven at the end of the'
                      ' reload: %s', load.name, verdict)


def _log_around_the_bar():
    """Log lines printed above the progress bar, not through it."""
    from tqdm.contrib.logging import logging_redirect_tqdm
    return logging_redirect_tqdm(loggers=[log])


# -- 11. the metrics file ----------------------------------------------------

def write_metrics(path, status, started, result):
    """Write the run's metrics to ``path`` in Prometheus text format, as
    node_exporter's textfile collector reads them: atomically (a temporary
    file in the same directory, then a rename).  The counters and the last
    success time carry over from the file the previous run wrote, read and
    written under one lock (_metrics_lock).  A failure is logged; it does
    not change the exit status."""
    # Imported here: runs without --metrics-file need none of it.
    import prometheus_client
    try:
        with _metrics_lock(path):
            registry = run_metrics(status, started, time.time(), result,
                                   previous_metrics(path))
            prometheus_client.write_to_textfile(path, registry)
    except (OSError, ValueError) as exc:
        log.error('cannot write the metrics file %s: %s', path, exc)


def previous_metrics(path):
    """The samples of the metrics file the previous run wrote, as
    ``{(sample name, labels as sorted pairs): value}``; empty if there is
    none, or if it cannot be read (then a warning says the counters start
    again)."""
    from prometheus_client.parser import text_string_to_metric_families
    try:
        with open(path) as old:
            return {(sample.name, tuple(sorted(sample.labels.items()))):
                    sample.value
                    for family in text_string_to_metric_families(old.read())
                    for sample in family.samples}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning('%s: the previous metrics cannot be read (%s); counters'
                    ' start again from 0', path, exc)
        return {}


def run_metrics(status, started, ended, result, previous):
    """A registry of the run's samples: the run that ended at ``ended``
    with ``status`` and ``result`` (a RunResult, or None if the run never
    began), its counters added to those of ``previous`` (see
    previous_metrics)."""
    import prometheus_client
    prometheus_client.disable_created_metrics()
    registry = prometheus_client.CollectorRegistry()

    def gauge(name, help_text, value=None, labels=()):
        metric = prometheus_client.Gauge('gmemcload_' + name, help_text,
                                         labels, registry=registry)
        if value is not None:
            metric.set(value)
        return metric

    def counter(name, help_text, counts):
        """A counter, ``counts`` ({labels as sorted pairs: this run's
        count}) added to the previous run's."""
        names = [label for label, _ in next(iter(counts), ())]
        metric = prometheus_client.Counter('gmemcload_' + name, help_text,
                                           names, registry=registry)
        for labels, count in counts.items():
            total = previous.get(('gmemcload_%s_total' % name, labels),
                                 0) + count
            (metric.labels(**dict(labels)) if labels else metric).inc(total)

    def per_server(name, help_text, attribute):
        """A counter per server, of ``attribute`` of its Server; servers
        of earlier runs carry on with 0 more."""
        seen = {labels: 0 for sample, labels in previous
                if sample == 'gmemcload_%s_total' % name}
        for server in servers:
            seen[(('server', server.address),)] = getattr(server, attribute)
        if seen:
            counter(name, help_text, seen)

    loads = result.loads if result else []
    servers = result.servers if result else []
    # A dry run stores nothing: it is no success, and stores 0.
    dry = result is not None and result.settings.dry
    last_success = ended if status == EXIT_OK and not dry else previous.get(
        ('gmemcload_last_success_timestamp_seconds', ()), 0)
    gauge('last_run_end_timestamp_seconds', 'When the last run ended',
          ended)
    gauge('last_run_exit_status', 'Exit status of the last run', status)
    gauge('last_run_duration_seconds', 'How long the last run took',
          ended - started)
    gauge('last_success_timestamp_seconds',
          'When a run last ended with status 0 (0: never)', last_success)
    files = gauge('last_run_files', 'Files of the last run, by result, and'
                  ' by reason for the kept ones', labels=['result', 'reason'])
    renamed = sum(load.renamed for load in loads)
    files.labels(result='renamed', reason='').set(renamed)
    files.labels(result='reloaded', reason='').set(
        sum(load.reloaded for load in loads))
    verdicts = [load.kept(result.settings.max_error_rate) for load in loads
                if not (load.renamed or load.reloaded)]
    kept = collections.Counter(verdict.reason for verdict in verdicts
                               if verdict is not None)
    for reason in Reason:  # every one, so that none goes missing
        files.labels(result='kept', reason=reason.value).set(kept[reason])
    # Neither renamed nor kept: loaded under --dry.
    files.labels(result='parsed', reason='').set(verdicts.count(None))
    files.labels(result='waiting', reason='').set(
        result.waiting if result else 0)
    lines = sum(load.lines for load in loads)
    stored = 0 if dry else sum(load.stored for load in loads)
    errors = sum(load.errors for load in loads)
    gauge('last_run_lines', 'Lines read in the last run', lines)
    gauge('last_run_records_stored', 'Records stored in the last run',
          stored)
    gauge('last_run_errors', 'Errors in the last run', errors)
    down = gauge('last_run_server_down', '1 if the server was down in the'
                 ' last run', labels=['server'])
    restarts = gauge('last_run_server_restarts', 'Restarts of the server'
                     ' seen in the last run', labels=['server'])
    evictions = gauge('last_run_server_evictions', 'Items the server'
                      ' evicted, seen in the last run', labels=['server'])
    for server in servers:
        down.labels(server=server.address).set(bool(server.down))
        restarts.labels(server=server.address).set(server.restarts)
        evictions.labels(server=server.address).set(server.evictions)
    runs = {labels: 0 for name, labels in previous
            if name == 'gmemcload_runs_total'}
    runs[(('status', str(status)),)] = 1
    counter('runs', 'Runs, by exit status', runs)
    counter('files_renamed', 'Files renamed', {(): renamed})
    counter('lines', 'Lines read', {(): lines})
    counter('records_stored', 'Records stored', {(): stored})
    counter('errors', 'Errors: bad lines and records not stored',
            {(): errors})
    per_server('server_restarts', 'Restarts of the server seen', 'restarts')
    per_server('server_evictions', 'Items the server evicted, seen while'
               ' files were written and checked', 'evictions')
    return registry


@contextlib.contextmanager
def _metrics_lock(path):
    """Hold ``PATH.lock`` while the metrics file is read and written, so
    that two runs ending at once never write counters that go back."""
    with open(path + '.lock', 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# -- 12. the command line ----------------------------------------------------

def parse_addresses(option, text):
    """Split a comma-separated list of HOST:PORT; raise ConfigError."""
    addresses = [part.strip() for part in text.split(',')]
    for address in addresses:
        host, _, port = address.rpartition(':')
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError('--%s: %r is not HOST:PORT' % (option, address))
        try:
            memcache._Host(address)  # what python-memcached will parse
        except ValueError as exc:
            raise ConfigError('--%s: %r: %s (an IPv6 address is written'
                              ' inet6:[ADDRESS]:PORT)'
                              % (option, address, exc)) from None
    if len(set(addresses)) != len(addresses):
        raise ConfigError('--%s: a server is listed twice' % option)
    return addresses


def bounded(kind, low=None, high=None, above=None, words=None):
    """An argparse type: ``kind(text)`` within the bounds given (``low`` and
    ``high`` inclusive, ``above`` exclusive); out of them, an error whose
    message ``words`` (or the bounds) says what was expected."""
    def parse(text):
        value = kind(text)
        if not ((low is None or value >= low)
                and (high is None or value <= high)
                and (above is None or value > above)):
            raise argparse.ArgumentTypeError('must be %s, got %s'
                                             % (expected, text))
        return value
    if words is not None:
        expected = words
    elif above is not None:
        expected = 'above %g' % above
    elif high is None:
        expected = 'at least %g' % low
    elif low is None:
        expected = 'at most %g' % high
    else:
        expected = 'in [%g, %g]' % (low, high)
    parse.__name__ = kind.__name__  # argparse names the type in errors
    return parse


_positive_int = bounded(int, low=1)
_non_negative_int = bounded(int, low=0)
_positive_float = bounded(float, above=0)
_non_negative_float = bounded(float, low=0)
_rate = bounded(float, low=0, high=1)
_at_most_workers = bounded(int, high=MAX_WORKERS)


def _workers(text):
    """--workers: a count of encoder threads, or auto (the CPUs this
    process may use, its affinity, not the host's; at most MAX_WORKERS)."""
    if text == 'auto':
        try:
            usable = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # no affinity on this platform
            usable = os.cpu_count() or 1
        return min(MAX_WORKERS, usable)
    _positive_int(text)
    return _at_most_workers(text)


def build_parser():
    parser = argparse.ArgumentParser(
        prog='gmemcload.py',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Load installed-apps logs (*.tsv.gz) into memcached,'
                    ' then rename each loaded file to .<name>, in order.',
        epilog=EXIT_STATUSES)
    parser.add_argument('--version', action='version',
                        version='%(prog)s ' + __version__)
    parser.add_argument('-t', '--test', action='store_true',
                        help='run a protobuf round-trip self-test and exit')
    parser.add_argument('-l', '--log', metavar='FILE',
                        help='append the log to FILE (default: stderr)')
    parser.add_argument('--dry', action='store_true',
                        help='parse and log every record at debug level;'
                             ' connect to nothing, rename nothing')
    parser.add_argument('--pattern', default=DEFAULT_PATTERN,
                        help='glob of the files to load'
                             ' (default: %(default)s)')
    for dev_type in DEVICE_TYPES:
        parser.add_argument('--' + dev_type,
                            default=DEFAULT_ADDRESSES[dev_type],
                            metavar='HOST:PORT[,HOST:PORT...]',
                            help='memcached server(s) for %s keys; a list'
                                 ' spreads them by key hash (default:'
                                 ' %%(default)s)' % dev_type)
    parser.add_argument('--batch-size', type=_positive_int, default=1000,
                        help='records per pipelined batch (default:'
                             ' %(default)s)')
    parser.add_argument('--uploaders', type=_positive_int, default=2,
                        help='connections (uploader greenlets) per memcached'
                             ' server (default: %(default)s)')
    parser.add_argument('--timeout', type=_positive_float, default=2.0,
                        help='seconds allowed for each memcached operation'
                             ' (default: %(default)s)')
    parser.add_argument('--retries', type=_non_negative_int, default=5,
                        help='times a failed batch is re-sent on a fresh'
                             ' connection, and a server that cannot be'
                             ' asked before a rename is asked again, with'
                             ' backoff %.2gs doubling to %gs (default:'
                             ' %%(default)s)' % (BACKOFF_FIRST, BACKOFF_MAX))
    parser.add_argument('--max-error-rate', type=_rate, default=0.01,
                        help='highest error rate at which a file still counts'
                             ' as loaded (default: %(default)s)')
    parser.add_argument('--workers', type=_workers, default='auto',
                        metavar='N|auto',
                        help='encoder threads that parse and serialize'
                             ' lines, at most %d; 1 encodes in the event'
                             ' loop\'s thread, auto is the CPUs this process'
                             ' may use (default: %%(default)s)' % MAX_WORKERS)
    parser.add_argument('--min-age', type=_non_negative_float, default=0,
                        metavar='SECONDS',
                        help='leave a file modified less than SECONDS ago,'
                             ' and every file after it, for the next run'
                             ' (default: %(default)s, take every file)')
    parser.add_argument('--metrics-file', metavar='PATH',
                        help='write the run\'s metrics to PATH, in'
                             ' Prometheus text format, at the end of every'
                             ' run (for node_exporter\'s textfile'
                             ' collector: PATH ends in .prom)')
    parser.add_argument('--reload-processed', action='store_true',
                        help='refill a memcached that restarted empty:'
                             ' first load every processed file of the'
                             ' pattern (.<name>) again, in the order they'
                             ' were processed (as the journal %s says),'
                             ' renaming none of them, then the new files'
                             ' as usual' % JOURNAL_FILE_NAME)
    parser.add_argument('--refill-after-loss', action='store_true',
                        help='when the journal shows that a server lost'
                             ' the records of processed files since they'
                             ' were proven (it restarted, was flushed or'
                             ' dropped items between runs), load them'
                             ' again first, as --reload-processed does;'
                             ' without it such a run says so and exits 1')
    parser.add_argument('--load-late', action='store_true',
                        help='load a late file too: one that comes'
                             ' before a file already processed, in load'
                             ' order (name, then path) over every directory'
                             ' the pattern matches (its values then'
                             ' overwrite newer ones); by default such a'
                             ' file is kept and the run exits 1')
    parser.add_argument('--accept-evictions', action='store_true',
                        help='rename a file even if a server it wrote to'
                             ' evicted items (or was flushed) while it was'
                             ' written and checked, so that some of its'
                             ' records may be gone; by default such a file'
                             ' is kept and the run exits 1')
    parser.add_argument('--lock', metavar='PATH',
                        help='lock file that keeps runs apart, instead of'
                             ' the default: %s in the directory of'
                             ' --pattern and in every directory holding a'
                             ' matched file' % LOCK_FILE_NAME)
    return parser


# C0 and C1 controls, the Unicode line separators and the bidirectional
# controls (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069):
# whatever a reader of the log may take for the end of a line or a
# terminal command, or that shows the text around it in another order.
_CONTROL = re.compile('[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f'
                      '\u2028-\u202e\u2066-\u2069]')


def escape_controls(record):
    """A logging filter: control characters in a message (a newline in a
    file name, say) are written escaped, so that no message can forge a
    log line.  Tracebacks are formatted apart, and keep their lines."""
    message = record.getMessage()
    if _CONTROL.search(message):
        record.msg = _CONTROL.sub(
            lambda found: repr(found.group())[1:-1], message)
        record.args = None
    return True


class LogFile(logging.FileHandler):
    """The --log file: a record it cannot write (a full disk) is said once
    on stderr, not with a traceback per record; the run goes on."""

    failed = False

    def handleError(self, record):
        if not self.failed:
            self.failed = True
            print('gmemcload: cannot write the log file: %s; the run goes'
                  ' on, its outcome in the exit status and the metrics'
                  % sys.exc_info()[1], file=sys.stderr)


def setup_logging(log_path, debug):
    """Log in the original format to stderr or to ``log_path``; with
    ``log_path``, warnings and errors go to stderr too, where cron mails
    them (the log file keeps everything).  Control characters in messages
    are escaped (escape_controls).  Returns the handler that writes
    ``log_path`` (or stderr)."""
    handler = (LogFile(log_path, errors='backslashreplace')
               if log_path else logging.StreamHandler(sys.stderr))
    handlers = [handler]
    if log_path:
        warnings = logging.StreamHandler(sys.stderr)
        warnings.setLevel(logging.WARNING)
        handlers.append(warnings)
    formatter = logging.Formatter(
        '[%(asctime)s] %(levelname).1s %(message)s', '%Y.%m.%d %H:%M:%S')
    for each in handlers:
        each.addFilter(escape_controls)
        each.setFormatter(formatter)
    log.handlers[:] = handlers
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    return handler


def prototest():
    """Round-trip sample lines through parse, pack and unpack."""
    sample = (b'idfa\t1rfw452y52g2gq4g\t55.55\t42.42\t1423,43,567,3,7,23\n'
              b'gaid\t7rfw452y52g2gq4g\t55.55\t42.42\t7423,424')
    for line in sample.splitlines():
        record = parse_line(line)
        unpacked = _UserApps.FromString(pack_user_apps(
            record.apps, record.lat, record.lon))
        assert (list(unpacked.apps), unpacked.lat, unpacked.lon) == \
            (record.apps, record.lat, record.lon)


def log_summary(loads, max_error_rate, dry=False):
    """One row per file (past SUMMARY_ROWS files, per kept file), then the
    totals.  Under --dry nothing is stored: the records are counted."""
    records = 'records' if dry else 'stored'
    log.info('Summary:')
    log.info('%-28s %10s %10s %8s %8s %8s  %s', 'file', 'lines', records,
             'errors', 'err.rate', 'seconds', 'result')
    listed = loads if len(loads) <= SUMMARY_ROWS else \
        [load for load in loads
         if not (load.renamed or load.reloaded)][:SUMMARY_ROWS]
    for load in listed:
        verdict = load.kept(max_error_rate)
        if load.renamed:
            result = 'renamed'
        elif load.reloaded:
            result = 'reloaded (already processed: not renamed)'
        elif verdict is None:  # loaded, under --dry
            result = 'parsed (dry run: nothing sent or renamed)'
        else:
            result = 'kept: %s' % verdict
        log.info('%-28s %10d %10d %8d %8.4f %8.1f  %s', load.name, load.lines,
                 load.stored, load.errors, load.error_rate, load.seconds,
                 result)
    renamed = sum(load.renamed for load in loads)
    reloaded = sum(load.reloaded for load in loads)
    if len(listed) < len(loads):
        log.info('(%d more files not listed)', len(loads) - len(listed))
    lines = sum(load.lines for load in loads)
    stored = sum(load.stored for load in loads)
    errors = sum(load.errors for load in loads)
    # lines = stored + errors + records a stop left unsent (dropped from
    # the batches not yet handed to a lane); under --dry, stored is parsed.
    unsent = lines - stored - errors
    log.info('total: %d files, %d lines, %d %s, %d errors%s; %d renamed%s',
             len(loads), lines, stored, records, errors,
             ', %d not sent (stopped)' % unsent if unsent else '', renamed,
             ', %d reloaded' % reloaded if reloaded else '')
    kept = len(loads) - renamed - reloaded
    if kept and not dry:
        log.warning('%d of %d files kept; the next run retries them in'
                    ' order', kept, len(loads))
        # A reload kept by an earlier one says nothing of its own.
        reasons = {load.name: load.kept(max_error_rate).reason
                   for load in loads if load.reloading and not load.reloaded
                   and load.kept(max_error_rate) is not None}
        for name, reason in reasons.items():
            if reason is Reason.UNREADABLE:
                log.error('%s: this processed file is corrupt or cannot be'
                          ' read: loading it again cannot help; restore it'
                          ' from a copy, or remove it (its records are then'
                          ' not reloaded), and run with --reload-processed'
                          ' again', name)
        if set(reasons.values()) - {Reason.UNREADABLE,
                                    Reason.AFTER_A_FILE_NOT_LOADED}:
            log.warning('some processed files were not loaded again: run'
                        ' with --reload-processed again once memcached is'
                        ' up')


def log_cpu(workers):
    """CPU seconds of this process, its threads included."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    log.info('CPU: %.2f s in this process (%s)', own.ru_utime + own.ru_stime,
             '%d encoder threads' % workers if workers > 1
             else 'encoding in the event loop\'s thread: --workers 1')


def cooperative():
    """Make this process's I/O cooperative, once: gevent patches the
    standard library (sockets, sleep, threads), so that the lanes'
    connections and the waits yield to each other.  The program's entry
    points call it; importing this module does not."""
    if not gevent.monkey.is_module_patched('socket'):
        gevent.monkey.patch_all()


def main(argv=None):
    """Run the loader; return the exit status (see README), and write the
    metrics file, if asked, whatever the outcome.  Patches the process
    with gevent first (cooperative)."""
    cooperative()
    args = build_parser().parse_args(argv)
    started = time.time()
    try:
        handler = setup_logging(args.log, args.dry)
    except OSError as exc:
        print('gmemcload: cannot open log file: %s' % exc, file=sys.stderr)
        # A full or failing disk is no bad usage; the metrics say either.
        status = EXIT_FAILED if exc.errno in DISK_FAILURES else EXIT_USAGE
        if args.metrics_file:
            write_metrics(args.metrics_file, status, started, None)
        return status
    try:
        status, result = outcome(args)
        if args.metrics_file:
            write_metrics(args.metrics_file, status, started, result)
        return status
    finally:
        for each in list(log.handlers):
            log.removeHandler(each)
        try:
            handler.close()  # flushes: a full disk says so here
        except OSError as exc:
            print('gmemcload: cannot write the log file: %s' % exc,
                  file=sys.stderr)


def outcome(args):
    """Run; return ``(exit status, RunResult or None)``.  This is the one
    place where outcomes become exit statuses."""
    if args.test:
        prototest()
        log.info('Self-test passed')
        return EXIT_OK, None
    try:
        result = _run(args)
    except ConfigError as exc:
        log.error('%s', exc)
        return EXIT_USAGE, None
    except Locked as exc:
        log.error('%s; exiting', exc)
        return EXIT_LOCKED, None
    except (Unlistable, DiskFailure) as exc:
        log.error('%s', exc)
        return EXIT_FAILED, None
    if result.signum is None and EARLY_SIGNALS:  # before the run could stop
        result.signum = EARLY_SIGNALS[0]
    if result.signum is not None:
        return EXIT_SIGNAL_BASE + result.signum, result
    settings = result.settings
    if result.lost:  # processed files' records lost, not loaded again
        return EXIT_FAILED, result
    if all(load.renamed or load.reloaded or (
            settings.dry and load.loaded(settings.max_error_rate))
            for load in result.loads):
        return EXIT_OK, result
    return EXIT_FAILED, result


def _run(args):
    """Check the options, take the lock, load: a RunResult.  Raises
    ConfigError, Locked, Unlistable or DiskFailure."""
    settings = Settings(args)
    options = dict(vars(args))
    log.info('Memc loader %s started with options: %s; encoder: %s',
             __version__, options, settings.encoder.words)
    if not settings.encoder.compiled:
        log.warning('encoding in pure Python, about 7 times slower per line:'
                    ' the compiled encoder is not built (make install)')
    directory = pattern_directory(args.pattern)
    if not os.path.isdir(directory):
        # A typo in a cron line must not be a success for ever after.
        raise Unlistable('cannot list the files of %s: %s %s (a typo in'
                         ' --pattern?)' % (args.pattern, directory,
                                           'is not a directory'
                                           if os.path.exists(directory)
                                           else 'does not exist'))
    locks = RunLocks()
    try:
        if not settings.dry:
            take_lock(locks, settings.lock or os.path.join(directory,
                                                           LOCK_FILE_NAME))
        journal = Journal(directory, dry=settings.dry)
        journal.read()
        return load_files(settings, locks, journal)
    finally:
        locks.release()


def command_line(argv=None):
    """main(), then stop signals ignored: the outcome is decided and
    written (exit status, metrics), and a SIGINT or SIGTERM while the
    interpreter shuts down, once gevent's handlers are gone, must not end
    the process by its default action instead."""
    status = main(argv)
    STOP_SIGNALS.ignore()
    return status


if __name__ == '__main__':
    raise SystemExit(command_line())
