"""Shared fixtures: real memcached daemons, the fake server, log files."""
from gevent import monkey
monkey.patch_all()

import ast  # noqa: E402
import gzip  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
from prometheus_client.parser import (  # noqa: E402
    text_string_to_metric_families)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from daemons import MemcachedDaemon  # noqa: E402
from fake_memcached import FakeMemcached  # noqa: E402
import gmemcload  # noqa: E402
from proto import appsinstalled_pb2  # noqa: E402

GMEMCLOAD = os.path.join(ROOT, 'gmemcload.py')
blocking_sleep = monkey.get_original('time', 'sleep')
DEVICE_TYPES = ('idfa', 'gaid', 'adid', 'dvid')


def pytest_configure(config):
    """Under CI the tests run on the compiled encoder, never on the
    pure-Python fallback: a build that failed must not pass unseen."""
    encoder = gmemcload.choose_encoder()
    if os.environ.get('CI') and not encoder.compiled:
        raise pytest.UsageError('CI: the compiled encoder is not built: %s'
                                % encoder.words)


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


# -- running the loader and reading what it left --

def with_workers(extra):
    """``extra`` options, with ``--workers 1`` unless they choose: no test
    lets the machine's CPU count decide how it runs."""
    extra = list(extra)
    return extra if '--workers' in extra else extra + ['--workers', '1']


def run(tmp_path, daemons, *extra):
    """Run main() on tmp_path/*.tsv.gz; return (exit status, log text).
    ``--workers`` is 1 unless ``extra`` says otherwise."""
    log_path = tmp_path / 'run.log'
    status = gmemcload.main(['--pattern', str(tmp_path / '*.tsv.gz'),
                             '--log', str(log_path)]
                            + address_args(daemons) + with_workers(extra))
    return status, log_path.read_text()


def summary_row(text, name):
    """The summary's counts for the file shown as ``name`` (no spaces):
    (lines, stored, errors)."""
    rows = [line.split()[4:7] for line in
            text.split('Summary:', 1)[1].splitlines()
            if line.split()[3:4] == [name]]
    assert len(rows) == 1, rows
    return tuple(map(int, rows[0]))


def listing(tmp_path):
    return sorted(name for name in os.listdir(tmp_path)
                  if name.endswith('.tsv.gz'))


def expected_state(paths):
    """What loading ``paths`` one at a time, in order, leaves: key->value."""
    state = {}
    for path in paths:
        with gzip.open(path, 'rt') as lines:
            for line in lines:
                key, value = expected_value(line)
                state[key] = value
    return state


def stored_values(daemons, keys):
    found = {}
    by_type = {}
    for key in keys:
        by_type.setdefault(key.split(b':')[0].decode(), []).append(key)
    for dev_type, type_keys in by_type.items():
        found.update(daemons[dev_type].get_many(type_keys))
    return found


# -- the metrics file --

def metrics(path):
    """{(sample name, labels as sorted pairs): value}, read with
    prometheus-client's own parser."""
    with open(path) as text:
        return {(sample.name, tuple(sorted(sample.labels.items()))):
                sample.value
                for family in text_string_to_metric_families(text.read())
                for sample in family.samples}


def value(found, name, **labels):
    return found[('gmemcload_' + name, tuple(sorted(labels.items())))]


def files(found, result, reason=''):
    """gmemcload_last_run_files: of a ``result``, for ``reason`` or, for
    kept files without one, summed over every reason."""
    if result == 'kept' and not reason:
        return sum(count for (name, labels), count in found.items()
                   if name == 'gmemcload_last_run_files'
                   and ('result', 'kept') in labels)
    return value(found, 'last_run_files', result=result, reason=reason)


# -- lines, processes and bounded waits --

def same_server(server):
    return {dev_type: server for dev_type in DEVICE_TYPES}


def lines_for(dev_type, count, tag='', start=0, version=0):
    """``count`` clean lines of ``dev_type``, ids ``tag`` + a number from
    ``start``; ``version`` changes every value, so that files sharing
    keys show which of them won."""
    return ['%s\t%s%05d\t%d.5\t-1.25\t%d,%d'
            % (dev_type, tag, i, i, i + version, i + 1)
            for i in range(start, start + count)]


def assert_all_in_fake(fake, lines):
    want = dict(expected_value(line) for line in lines)
    assert {key: fake.data.get(key) for key in want} == want


def start_loader(tmp_path, daemons, *extra):
    """Run gmemcload.py as a process; its log goes to tmp_path/run.log.
    ``--workers`` is 1 unless ``extra`` says otherwise."""
    return subprocess.Popen(
        [sys.executable, GMEMCLOAD, '--pattern', str(tmp_path / '*.tsv.gz'),
         '--log', str(tmp_path / 'run.log')] + address_args(daemons)
        + with_workers(extra))


def _attribute_chains(target):
    """The dotted names under gmemcload that an assignment ``target``
    (an ast node) binds: 'gmemcload.a.b' for ``gmemcload.a.b``."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts
                for name in _attribute_chains(element)]
    if isinstance(target, ast.Starred):
        return _attribute_chains(target.value)
    attributes = []
    while isinstance(target, ast.Attribute):
        attributes.insert(0, target.attr)
        target = target.value
    if attributes and isinstance(target, ast.Name) and \
            target.id == 'gmemcload':
        return ['.'.join(['gmemcload'] + attributes)]
    return []


def patched_names(patch):
    """The dotted names under gmemcload that ``patch`` (Python source)
    assigns, anywhere in it: its Assign, AugAssign and
    AnnAssign targets that are attribute chains rooted at gmemcload."""
    names = []
    for node in ast.walk(ast.parse(patch)):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        else:
            continue
        for target in targets:
            names += _attribute_chains(target)
    return names


def assert_patch_replaces(patch):
    """AssertionError, naming it, unless every name ``patch`` assigns
    under gmemcload exists already: a patch of a renamed name would make
    a new one, and its fault would never happen."""
    for name in patched_names(patch):
        found = gmemcload
        for attribute in name.split('.')[1:]:
            assert hasattr(found, attribute), (
                'the patch replaces %s, which does not exist (no %r):'
                ' renamed?' % (name, attribute))
            found = getattr(found, attribute)


def start_patched_loader(tmp_path, daemons, patch, *extra):
    """start_loader, with ``patch`` (Python source) run once gmemcload is
    imported and before command_line() (what gmemcload.py runs): for
    faults no real file can show, such as a read that never returns.  The
    patch sees ``gmemcload`` and ``blocking_sleep`` (time.sleep, not
    gevent's).  Every name it assigns under gmemcload must exist (see
    assert_patch_replaces), or nothing starts."""
    assert_patch_replaces(patch)
    args = ['--pattern', str(tmp_path / '*.tsv.gz'), '--log',
            str(tmp_path / 'run.log')] + address_args(daemons) \
        + with_workers(extra)
    code = ('import sys\nimport gmemcload\nfrom gevent import monkey\n'
            'blocking_sleep = monkey.get_original("time", "sleep")\n'
            '%s\nsys.exit(gmemcload.command_line(%r))\n' % (patch, args))
    return subprocess.Popen([sys.executable, '-c', code], cwd=ROOT)


def wait_for(predicate, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, 'timed out waiting'
        time.sleep(0.05)


def wait_for_log(tmp_path, text):
    log_path = tmp_path / 'run.log'
    wait_for(lambda: log_path.exists() and text in log_path.read_text())


def wait_for_renamed(tmp_path, name):
    """Wait until ``name`` is renamed for good: its outcome is logged once
    the check after its rename is done (a stop before then may rename it
    back, as the rename is not yet proven)."""
    wait_for_log(tmp_path, '%s: Acceptable error rate' % name)
    assert (tmp_path / ('.' + name)).exists()


def stop_within(loader, signum, seconds):
    """Send ``signum``; return the exit status, due within ``seconds``."""
    loader.send_signal(signum)
    signalled = time.monotonic()
    status = loader.wait(timeout=seconds + 5)
    assert time.monotonic() - signalled < seconds
    return status


def wait_with_usage(process, seconds):
    """Wait at most ``seconds`` for ``process`` (a Popen) to end; return
    its exit status, its resource usage (os.wait4, its children's
    included) and its own peak RSS in MB.

    The peak is the highest VmHWM read from /proc while it runs: the
    process's own, since its exec.  ``ru_maxrss`` is not that: Linux
    carries the parent's peak into a child through the fork and the exec,
    so it would grow with whatever the test process itself holds."""
    deadline = time.monotonic() + seconds
    peak_kb = 0
    while True:
        peak_kb = max(peak_kb, _vm_hwm_kb(process.pid))
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage, peak_kb / 1024
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError('still running after %s s' % seconds)
        # Not gevent's sleep: its loop would reap the child first.
        blocking_sleep(0.01)


def _vm_hwm_kb(pid):
    """The peak resident size of process ``pid`` so far, in kB (0 once it
    has ended)."""
    try:
        with open('/proc/%d/status' % pid) as status:
            for line in status:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid):
    """Pids whose parent is ``pid``, read from /proc."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/stat' % entry) as stat:
                    fields = stat.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def catches(pid, signum):
    """Whether process ``pid`` has a handler for ``signum`` (SigCgt)."""
    with open('/proc/%d/status' % pid) as status:
        for line in status:
            if line.startswith('SigCgt:'):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


HOLD_LOCK = '''
import sys, time
sys.path.insert(0, sys.argv[1])
import gmemcload
locks = gmemcload.RunLocks()
locks.acquire(sys.argv[2])
print('locked', flush=True)
time.sleep(60)
'''


def hold_lock(path):
    """A process that holds the run lock ``path`` (as a run would) until
    it is killed; returned once it holds it."""
    holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, ROOT, path],
                              stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b'locked\n'
    return holder
