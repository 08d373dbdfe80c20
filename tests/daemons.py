"""Real memcached daemons on free loopback ports, for tests and the bench."""
import os
import shutil
import signal
import socket
import subprocess
import time

import memcache


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class MemcachedDaemon:
    """A real memcached on a free loopback port, started and stopped by a
    test."""

    def __init__(self, memory_mb=64, threads=2, max_item='1m'):
        self.options = ['-U', '0', '-t', str(threads), '-m', str(memory_mb),
                        '-I', max_item]
        if os.geteuid() == 0:
            self.options += ['-u', 'root']
        for _ in range(3):  # another process may take the free port first
            self.port = free_port()
            self.address = '127.0.0.1:%d' % self.port
            if self._start():
                return
        raise RuntimeError('memcached did not start')

    def _start(self):
        self.process = subprocess.Popen(
            [self.binary(), '-l', '127.0.0.1', '-p', str(self.port)]
            + self.options)
        if self.wait_ready():
            return True
        self.stop()
        return False

    def restart(self):
        """Kill the daemon and start a new, empty one on the same port."""
        self.stop()
        if not self._start():
            raise RuntimeError('memcached did not restart')

    @staticmethod
    def binary():
        """Debian's memcached, or None when it is not installed."""
        return shutil.which('memcached') or (
            '/usr/bin/memcached' if os.path.exists('/usr/bin/memcached')
            else None)

    def wait_ready(self, seconds=5.0):
        """True once the daemon accepts connections; False if it died."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(('127.0.0.1', self.port), 0.2).close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def client(self):
        return memcache.Client([self.address], socket_timeout=2)

    def get_many(self, keys):
        return self.client().get_multi(list(keys))

    def connections(self):
        """TCP connections to the daemon's port that the kernel has
        accepted, whether or not the daemon has: counted while it is
        paused too."""
        count = 0
        with open('/proc/net/tcp') as table:
            next(table)
            for row in table:
                local, state = row.split()[1], row.split()[3]
                if int(local.split(':')[1], 16) == self.port and \
                        state != '0A':  # not the listening socket
                    count += 1
        return count

    def pause(self):
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
