"""Shared fixtures: real memcached daemons, the fake server, log files."""
from gevent import monkey
monkey.patch_all()

import gzip  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import memcache  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from fake_memcached import FakeMemcached  # noqa: E402
from proto import appsinstalled_pb2  # noqa: E402

GMEMCLOAD = os.path.join(ROOT, 'gmemcload.py')
DEVICE_TYPES = ('idfa', 'gaid', 'adid', 'dvid')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class MemcachedDaemon:
    """A real memcached on a free loopback port, started and stopped by a
    test."""

    def __init__(self, memory_mb=64):
        self.port = free_port()
        self.address = '127.0.0.1:%d' % self.port
        binary = shutil.which('memcached') or '/usr/bin/memcached'
        if not os.path.exists(binary):
            if os.environ.get('CI'):
                pytest.fail('memcached is not installed')
            pytest.skip('memcached is not installed (make test installs it)')
        args = [binary, '-l', '127.0.0.1', '-p', str(self.port), '-U', '0',
                '-t', '2', '-m', str(memory_mb)]
        if os.geteuid() == 0:
            args += ['-u', 'root']
        self.process = subprocess.Popen(args)
        self.wait_ready()

    def wait_ready(self, seconds=5.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                socket.create_connection(('127.0.0.1', self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError('memcached on %s did not start' % self.address)

    def client(self):
        return memcache.Client([self.address], socket_timeout=2)

    def get_many(self, keys):
        return self.client().get_multi(list(keys))

    def pause(self):
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()


@pytest.fixture
def memcached_factory():
    """Start real memcached daemons on demand; all stop at teardown."""
    daemons = []

    def start(**kwargs):
        daemon = MemcachedDaemon(**kwargs)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def memcached_set(memcached_factory):
    """One real daemon per device type: {dev_type: MemcachedDaemon}."""
    return {dev_type: memcached_factory() for dev_type in DEVICE_TYPES}


@pytest.fixture
def fake_memcached():
    with FakeMemcached() as server:
        yield server


def address_args(daemons):
    """Command-line options that point every device type at ``daemons``
    (a dict by device type, of objects with ``.address``)."""
    args = []
    for dev_type in DEVICE_TYPES:
        args += ['--' + dev_type, daemons[dev_type].address]
    return args


def write_gz(path, lines):
    """Write ``lines`` (bytes or str, without newline) as a gzip log."""
    data = b''.join((line.encode() if isinstance(line, str) else line)
                    + b'\n' for line in lines)
    with gzip.open(str(path), 'wb') as out:
        out.write(data)
    return str(path)


def expected_value(line):
    """Independent encoding of a clean generated line: (key, value)."""
    dev_type, dev_id, lat, lon, apps = line.rstrip('\n').split('\t')
    message = appsinstalled_pb2.UserApps()
    message.lat = float(lat)
    message.lon = float(lon)
    message.apps.extend(int(app) for app in apps.split(',') if app)
    return ('%s:%s' % (dev_type, dev_id)).encode(), \
        message.SerializeToString()
