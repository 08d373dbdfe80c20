#!/usr/bin/env python3
"""Break each guarantee on purpose and show that a test fails.

Every mutant is one textual change to a copy of gmemcload.py; the tests
named with it must then fail.  A mutant that survives (its tests still
pass) is a guarantee no test defends.  Exits 1 if any survives.

    python tests/mutants.py            # every mutant
    python tests/mutants.py NAME ...   # only these
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (what it breaks, the code, its broken form, the tests to run)
PROMISE = ['tests/test_rename_promise.py']
WIRE = ['tests/test_wire.py']
MUTANTS = {
    # -- the wire
    'no-in-doubt-settling': (
        'an abandoned connection is closed, not settled before the lane'
        ' sends again',
        "        try:\n"
        "            sock.shutdown(socket.SHUT_WR)\n",
        "        try:\n"
        "            sock.close()\n"
        "            return\n",
        WIRE),
    'no-settle-before-exit': (
        'a run exits without waiting for its abandoned connections',
        "            self.connection.close(settle=not self.stopping.is_set())",
        "            self.connection.close(settle=False)",
        WIRE),
    'protocol-errors-count-as-refusals': (
        'every reply but STORED counts as a refused record, so a protocol'
        ' error no longer forces a resend',
        "        if reply.startswith(b'SERVER_ERROR') or reply =="
        " b'NOT_STORED':",
        "        if True:",
        WIRE),
    'no-reply-count-check': (
        'more replies than commands go unnoticed',
        "    if lines > count or not replies.endswith(b'\\r\\n'):",
        "    if False:",
        WIRE),
    # -- newest wins, order
    'lines-of-a-chunk-reversed': (
        'newest-wins within a file: a lane gets a chunk\'s records in'
        ' reverse',
        "        commands_of[lane_for(routes[dev_type], key)].append(",
        "        commands_of[lane_for(routes[dev_type], key)].insert(0,",
        ['tests/test_load.py']),
    'files-in-reverse-order': (
        'newest-wins across files and the rename order',
        "    return sorted(paths, key=lambda path: (os.path.basename(path),"
        " path))",
        "    return sorted(paths, key=lambda path: (os.path.basename(path),"
        " path), reverse=True)",
        ['tests/test_load.py']),
    'encoder-results-out-of-order': (
        'chunk order in the encoder pipeline: a result goes to the newest'
        ' chunk in flight',
        "                chunk = self.in_flight.popleft()",
        "                chunk = self.in_flight.pop()",
        ['tests/test_encoders.py']),
    'dead-encoder-loses-its-chunks': (
        'a dead encoder\'s chunks in flight are dropped, not encoded again',
        "            else:\n"
        "                self.in_flight.append(chunk)\n"
        "                self._write(chunk.pieces)\n",
        "            else:\n"
        "                self._fail(chunk, 'dropped')\n",
        ['tests/test_encoders.py']),
    'no-encoder-watchdog': (
        'an encoder that stops answering hangs the run',
        "        return bool(self.in_flight) and \\\n",
        "        return False and \\\n",
        ['tests/test_encoders.py::'
         'test_an_encoder_that_stops_answering_is_replaced']),
    'encoder-outlives-its-parent': (
        'a stopped encoder outlives a killed parent',
        "        ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n",
        "        pass\n",
        ['tests/test_encoders.py::'
         'test_encoders_die_with_a_killed_parent']),
    # -- renames
    'no-stop-at-first-failure': (
        'files after a failed one are still renamed',
        "        if not load.loaded(self.max_error_rate):\n"
        "            self.renaming = False\n",
        "        if not load.loaded(self.max_error_rate):\n"
        "            pass\n",
        ['tests/test_load.py']),
    'no-rename-time-server-check': (
        'a server restarted after a file was written is not noticed',
        "                self.check.problem(load)\n"
        "                or rename_loaded(",
        "                None\n"
        "                or rename_loaded(",
        PROMISE),
    'no-connection-count-check': (
        'a restart that keeps pid and start time is not noticed',
        "            if now != instance or None not in (connections,"
        " connections_now) \\\n"
        "                    and connections_now < connections:",
        "            if now != instance:",
        PROMISE),
    'no-rename-time-retries': (
        'a short stall at rename time fails the run',
        "                if attempt == self.retries:",
        "                if True:",
        PROMISE),
    'no-file-identity-check': (
        'a file changed while loading is renamed',
        "    return (status.st_dev, status.st_ino, status.st_size,\n"
        "            status.st_mtime_ns, status.st_ctime_ns)\n",
        "    return None\n",
        PROMISE),
    'identity-without-ctime': (
        'a file rewritten in place with its size and mtime is renamed',
        "            status.st_mtime_ns, status.st_ctime_ns)\n",
        "            status.st_mtime_ns, 0)\n",
        PROMISE),
    'no-put-back-after-a-racing-replace': (
        'a file replaced during the rename stays renamed',
        "        if file_identity(os.stat(target))[:-1] == identity[:-1]:\n"
        "            return None\n",
        "        return None\n",
        PROMISE),
    'rename-replaces': (
        'a rename replaces an existing .<name>',
        "    renameat2 = getattr(_libc, 'renameat2', None)\n",
        "    os.replace(source, target)\n"
        "    return\n",
        PROMISE),
    'no-late-files': (
        'a late, older file is loaded silently',
        "        elif newest is None or name > newest:",
        "        elif True:",
        PROMISE),
    'late-files-per-directory': (
        'a late file in another directory is loaded silently',
        "    for directory in glob.glob(os.path.dirname(pattern) or '.'):",
        "    for directory in [os.path.dirname(pattern)]:",
        PROMISE),
    # -- input, stops, the lock
    'decompressor-errors-are-bugs': (
        'a corrupt deflate stream is logged as an internal error',
        "        except Exception as exc:  # whatever the decompressor",
        "        except OSError as exc:  # whatever the decompressor",
        PROMISE),
    'stop-waits-for-io': (
        'a stop waits out --timeout',
        "        for lane in self.lanes:\n"
        "            lane.abandon_io()\n",
        "        for lane in self.lanes:\n"
        "            pass\n",
        ['tests/test_faults.py::'
         'test_a_stop_abandons_io_at_once_whatever_the_timeout']),
    'early-stops-ignored': (
        'a stop while the program starts is lost',
        "    for signum in EARLY_SIGNALS[:1]:  # came while the program"
        " started\n"
        "        on_signal(signum)\n",
        "",
        ['tests/test_operators.py']),
    'lock-truncates': (
        '--lock destroys what its file holds',
        "        if _pid_written(handle) is not None or not os.fstat(\n"
        "                handle.fileno()).st_size:\n",
        "        if True:\n",
        PROMISE),
    'one-lock-per-pattern': (
        'runs whose patterns overlap load the same files at once',
        "            take_lock(locks, os.path.join(directory,"
        " LOCK_FILE_NAME))\n",
        "            pass\n",
        ['tests/test_faults.py::'
         'test_runs_whose_patterns_overlap_share_a_lock']),
}


def run_mutant(name, old, new, tests):
    """Run ``tests`` against a copy with ``old`` replaced by ``new``;
    return (caught, seconds)."""
    with tempfile.TemporaryDirectory(prefix='mutant-') as copy:
        for entry in ('gmemcload.py', 'proto', 'tests', 'setup.cfg'):
            source = os.path.join(ROOT, entry)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(copy, entry),
                                ignore=shutil.ignore_patterns('__pycache__'))
            else:
                shutil.copy(source, copy)
        path = os.path.join(copy, 'gmemcload.py')
        with open(path) as source:
            code = source.read()
        if code.count(old) != 1:
            raise SystemExit('mutant %s: its code is found %d times, not'
                             ' once; update tests/mutants.py'
                             % (name, code.count(old)))
        with open(path, 'w') as out:
            out.write(code.replace(old, new))
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, '-m', 'pytest', '-x', '-q', '-p',
             'no:cacheprovider'] + tests, cwd=copy,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=900)
        return result.returncode != 0, time.monotonic() - started


def main(names):
    names = names or list(MUTANTS)
    survived = []
    print('| mutant | what it breaks | tests | result |')
    print('|---|---|---|---|')
    for name in names:
        breaks, old, new, tests = MUTANTS[name]
        caught, seconds = run_mutant(name, old, new, tests)
        if not caught:
            survived.append(name)
        print('| %s | %s | %s | %s (%.0f s) |' % (
            name, breaks, ' '.join(tests),
            'caught' if caught else 'SURVIVED', seconds), flush=True)
    if survived:
        print('%d of %d mutants survived: %s' % (
            len(survived), len(names), ', '.join(survived)))
        return 1
    print('all %d mutants caught' % len(names))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
