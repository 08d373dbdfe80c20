"""Shared fixtures: real memcached daemons, the fake server, log files."""
from gevent import monkey
monkey.patch_all()

import gzip  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from daemons import MemcachedDaemon, free_port  # noqa: E402,F401
from fake_memcached import FakeMemcached  # noqa: E402
from proto import appsinstalled_pb2  # noqa: E402

GMEMCLOAD = os.path.join(ROOT, 'gmemcload.py')
DEVICE_TYPES = ('idfa', 'gaid', 'adid', 'dvid')


@pytest.fixture
def memcached_factory():
    """Start real memcached daemons on demand; all stop at teardown."""
    daemons = []

    def start(**kwargs):
        if MemcachedDaemon.binary() is None:
            if os.environ.get('CI'):
                pytest.fail('memcached is not installed')
            pytest.skip('memcached is not installed (make test installs it)')
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
