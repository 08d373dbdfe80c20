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
MUTANTS = {
    'no-rename-time-server-check': (
        'a server restarted after a file was written is not noticed',
        "                self.check.problem(load)\n"
        "                or rename_loaded(",
        "                None\n"
        "                or rename_loaded(",
        ['tests/test_rename_promise.py']),
    'no-file-identity-check': (
        'a file changed while loading is renamed',
        "    return (status.st_dev, status.st_ino, status.st_size,\n"
        "            status.st_mtime_ns)\n",
        "    return None\n",
        ['tests/test_rename_promise.py']),
    'no-put-back-after-a-racing-replace': (
        'a file replaced during the rename stays renamed',
        "        if file_identity(os.stat(target)) == identity:\n"
        "            return None\n",
        "        return None\n",
        ['tests/test_rename_promise.py']),
    'rename-replaces': (
        'a rename replaces an existing .<name>',
        "    renameat2 = getattr(_libc, 'renameat2', None)\n",
        "    os.replace(source, target)\n"
        "    return\n",
        ['tests/test_rename_promise.py']),
    'no-late-files': (
        'a late, older file is loaded silently',
        "        newer = late.get(load.path)\n",
        "        newer = None\n",
        ['tests/test_rename_promise.py']),
    'decompressor-errors-are-bugs': (
        'a corrupt deflate stream is logged as an internal error',
        "        except Exception as exc:  # whatever the decompressor",
        "        except OSError as exc:  # whatever the decompressor",
        ['tests/test_rename_promise.py']),
    'stop-waits-for-io': (
        'a stop waits out --timeout',
        "            lane.abandon_io()\n",
        "            pass\n",
        ['tests/test_faults.py::'
         'test_a_stop_abandons_io_at_once_whatever_the_timeout']),
    'lock-truncates': (
        '--lock destroys what its file holds',
        "        if self._pid_written() is not None or not os.fstat(\n"
        "                self.handle.fileno()).st_size:\n",
        "        if True:\n",
        ['tests/test_rename_promise.py']),
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
