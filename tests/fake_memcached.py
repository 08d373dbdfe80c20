"""A fake memcached for faults a real one cannot be made to show on cue.

It speaks the part of the text protocol the loader and the tests use:
``set`` (with ``noreply``), ``get``, ``delete``, ``version``, ``stats``
(pid, uptime, time), ``flush_all`` and ``quit``, and can be told to:

* refuse connections (``refuse = True``: accept, then reset at once);
* delay each reply by ``delay`` seconds, for the next ``delay_replies``
  replies (None: every reply);
* reset a connection after it has carried ``reset_after`` commands, for
  the next ``resets`` connections (None: every connection);
* answer ``SERVER_ERROR object too large for cache`` to a ``set`` whose
  value is longer than ``max_value`` bytes, as real memcached does;
* count ``evictions`` in ``stats`` (set by a test), and flushes;
* ``restart()``: drop every connection and all data and take a new pid,
  as a restarted memcached does (or keep the pid, or the pid and start
  time: see restart);
* count ``connection_step`` connections for each (a busy server);
* answer ``stats`` without pid and uptime (``tells_identity = False``), as
  a proxy in front of memcached may;
* stall a connection at its first ``set`` for ``stall_seconds`` while
  serving every other connection at once, for the next ``stall_sets``
  connections: as a memcached that stalls and then runs what it holds,
  after what newer connections sent; with ``stall_part_seconds``, it
  then answers that connection's commands one at a time, that long apart
  (a stale batch answered slowly, in parts);
* answer the next ``garbage_replies`` sets with ``ERROR`` without storing
  them (a reply a ``set`` cannot get), and the next ``extra_replies`` sets
  with one ``STORED`` too many;
* run ``before_set[n]()`` once, just before the n-th set of its life is
  served, for a fault on cue (count evictions, restart); a connection the
  action dropped (``restart()``) serves nothing more.

It runs as a greenlet server in the test process; use it as a context
manager so that it always stops.
"""
import itertools
import socket
import struct
import time

import gevent
from gevent.server import StreamServer


class FakeMemcached:
    """A gevent StreamServer on a free loopback port, holding a dict."""

    def __init__(self, max_value=1024 * 1024):
        self.data = {}
        self.max_value = max_value
        self.refuse = False
        self.delay = 0.0
        self.delay_replies = None
        self.reset_after = None
        self.resets = None
        self.tells_identity = True
        self.stall_sets = 0
        self.stall_seconds = 0.0
        self.stall_part_seconds = 0.0
        self.garbage_replies = 0
        self.extra_replies = 0
        self.before_set = {}  # n -> what to do before the n-th set
        self.evictions = 0  # what stats say it evicted
        self.flushes = 0
        self.commands = 0  # commands seen, over all connections
        self.sets = 0
        self.connections = 0
        self.connection_step = 1  # as if others connected in between
        self.pid = next(_PIDS)
        self.started = int(time.time())
        self._open = set()
        self._server = StreamServer(('127.0.0.1', 0), self._handle)

    @property
    def address(self):
        return '127.0.0.1:%d' % self._server.server_port

    def __enter__(self):
        self._server.start()
        return self

    def __exit__(self, *exc_info):
        self._server.stop(timeout=1)

    def serving(self):
        """Connections still being served (a stalled one among them)."""
        return len(self._open)

    def restart(self, same_identity=False, same_pid=False):
        """Drop every connection and all data; a new pid and start time,
        unless ``same_identity`` (a container's pid 1 restarted within the
        same second): then only the connection count starts anew.  With
        ``same_pid`` (a container's pid 1 restarted later) only the start
        time changes, and the connection count goes on growing."""
        for sock in list(self._open):
            try:  # shutdown reaches the connection whatever holds the socket
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._open.clear()
        self.data.clear()
        self.evictions = self.flushes = 0
        if same_pid:
            self.started += 1
            return
        self.connections = 0
        if not same_identity:
            self.pid = next(_PIDS)
            self.started = int(time.time()) - 1

    def _handle(self, sock, _peer):
        self.connections += self.connection_step
        self._open.add(sock)
        if self.refuse:
            _reset(sock)
            return
        reset_after = None
        if self.reset_after is not None and self.resets != 0:
            reset_after = self.reset_after
            if self.resets is not None:
                self.resets -= 1
        served = 0
        part_pause = 0.0  # between replies, once a stall is over
        stall = self.stall_sets > 0
        if stall:
            self.stall_sets -= 1
        reader = sock.makefile('rb')
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                action = self.before_set.pop(self.sets + 1, None) \
                    if line.startswith(b'set ') else None
                if action is not None:
                    action()
                    if sock not in self._open:
                        return
                if reset_after is not None and served >= reset_after:
                    _reset(sock)
                    return
                served += 1
                self.commands += 1
                if stall and line.startswith(b'set '):
                    stall = False
                    gevent.sleep(self.stall_seconds)
                    part_pause = self.stall_part_seconds
                elif part_pause:
                    gevent.sleep(part_pause)
                reply = self._command(line.rstrip(b'\r\n').split(), reader)
                if reply is None:
                    return
                if reply:
                    self._pause()
                    sock.sendall(reply)
        except OSError:
            return
        finally:
            self._open.discard(sock)
            reader.close()
            sock.close()

    def _pause(self):
        if self.delay and self.delay_replies != 0:
            if self.delay_replies is not None:
                self.delay_replies -= 1
            gevent.sleep(self.delay)

    def _command(self, words, reader):
        """Return the reply bytes (b'' for none), or None to hang up."""
        if not words:
            return b'ERROR\r\n'
        name = words[0]
        if name == b'set':
            self.sets += 1
            key, length = words[1], int(words[4])
            value = reader.read(length + 2)[:-2]
            if self.garbage_replies:
                self.garbage_replies -= 1
                return b'ERROR\r\n'
            if length > self.max_value:
                reply = b'SERVER_ERROR object too large for cache\r\n'
            else:
                self.data[key] = value
                reply = b'STORED\r\n'
                if self.extra_replies:
                    self.extra_replies -= 1
                    reply *= 2
            return b'' if words[-1] == b'noreply' else reply
        if name == b'get':
            out = []
            for key in words[1:]:
                if key in self.data:
                    value = self.data[key]
                    out.append(b'VALUE %s 0 %d\r\n%s\r\n'
                               % (key, len(value), value))
            return b''.join(out) + b'END\r\n'
        if name == b'delete':
            found = self.data.pop(words[1], None) is not None
            return b'DELETED\r\n' if found else b'NOT_FOUND\r\n'
        if name == b'stats':
            if not self.tells_identity:
                return b'STAT version 1.6.0-fake\r\nEND\r\n'
            now = int(time.time())
            return (b'STAT pid %d\r\nSTAT uptime %d\r\nSTAT time %d\r\n'
                    b'STAT total_connections %d\r\nSTAT cmd_flush %d\r\n'
                    b'STAT evictions %d\r\nEND\r\n'
                    % (self.pid, now - self.started, now, self.connections,
                       self.flushes, self.evictions))
        if name == b'version':
            return b'VERSION 1.6.0-fake\r\n'
        if name == b'flush_all':
            self.flushes += 1
            self.data.clear()
            return b'OK\r\n'
        if name == b'quit':
            return None
        return b'ERROR\r\n'


_PIDS = itertools.count(1000)


def _reset(sock):
    """Close with RST, as a crashed or restarted server looks."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack('ii', 1, 0))
    sock.close()
