#!/usr/bin/env python3
"""Break each guarantee on purpose and show that a test fails.

Every mutant is a textual change to one file of a copy of the project
(one replacement, or a tuple of them, made in turn): its ``path``, or by
default native_encoder.pyx for a mutant named ``native-...`` and
gmemcload.py for any other.  A change to a .pyx, a .pxd or setup.py
rebuilds the compiled encoder in the copy.  The tests named with the
mutant then run in the copy, and give its verdict:

    caught    pytest exits 1: the tests ran and some failed;
    SURVIVED  pytest exits 0: a guarantee no test defends;
    BROKEN    anything else (the build failed, pytest exited 2 to 5 or by
              a signal, or ran past the timeout): no verdict either way.

Before any mutant, a baseline runs every test the chosen mutants name on
an unmutated copy, built the same way; unless it passes, no mutant runs.

Exits 0 if every mutant is caught, 1 if any survives or is broken, and 2
if none ran: a name is unknown, a mutant's code is not found exactly
once, or the baseline does not pass.

    python tests/mutants.py            # every mutant
    python tests/mutants.py NAME ...   # only these
"""
import enum
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple, Optional, Sequence, Tuple, Union

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTANT_TIMEOUT = 900  # seconds a mutant's build and tests may take
BASELINE_TIMEOUT = 3600  # the baseline runs every chosen test at once
TAIL_LINES = 20  # of a broken run's output, shown
GIT = 'git'
PYTEST = [sys.executable, '-m', 'pytest', '-x', '-q', '-p',
          'no:cacheprovider']
BUILD = [sys.executable, 'setup.py', '--quiet', 'build_ext', '--inplace',
         '--force']
PYTEST_EXITS = {0: 'the tests passed', 1: 'some tests failed',
                2: 'interrupted, or errors while collecting',
                3: 'internal error', 4: 'usage error (a named test or'
                ' path that does not exist, or a conftest that fails?)',
                5: 'no tests collected'}
# Without git, a copy holds every file but these (see project_files).
SKIPPED_ANYWHERE = {'.git', '.venv', '__pycache__', '.pytest_cache',
                    '.hypothesis'}
SKIPPED_AT_THE_TOP = {'build', 'data', '.bench', '.run'}


class Mutant(NamedTuple):
    """What a mutant breaks; the code and its broken form (strings, or
    tuples of replacements made in turn); the tests that must catch it;
    the file it changes, relative to the project (None: by its name, see
    target())."""
    breaks: str
    old: Union[str, Tuple[str, ...]]
    new: Union[str, Tuple[str, ...]]
    tests: Sequence[str]
    path: Optional[str] = None


# name -> Mutant, or the tuple (what it breaks, the code, its broken form,
# the tests to run[, the file it changes]); the code and its broken form
# may be tuples of replacements, made in turn.
PROMISE = ['tests/test_rename_promise.py']
WIRE = ['tests/test_wire.py']
LOAD = ['tests/test_load.py']
OPERATORS = ['tests/test_operators.py']
ENCODERS = ['tests/test_encoders.py']
FILES = ['tests/test_files.py']
NATIVE = ['tests/test_native.py']
ACROSS = ['tests/test_across_runs.py']
MEMORY_BATCHES = ['tests/test_memory.py::test_batches_are_cut_by_bytes_'
                  'and_a_bigger_record_goes_alone']
MEMORY_PAUSED = ['tests/test_memory.py::'
                 'test_memory_stays_bounded_while_memcached_is_paused']
MEMORY_BLANK = ['tests/test_memory.py::'
                'test_blank_lines_take_no_memory_per_line_with_64_threads']
MEMORY_7_MB = ['tests/test_memory.py::'
               'test_lines_of_7_mb_load_byte_for_byte_within_the_bound']
MEMORY_RUNNING_OUT = ['tests/test_memory.py::'
                      'test_memory_running_out_fails_only_its_file']
FAST_PATH = ['tests/test_fast_path.py']
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
    'no-batch-retries': (
        'a batch that fails once is not sent again',
        "        policy = self.settings.retry\n",
        "        policy = RetryPolicy(0)\n",
        ['tests/test_faults.py']),
    'no-backoff-between-retries': (
        'retries follow each other at once, so a stall of a few seconds'
        ' uses them all up',
        "            wait(delay)\n",
        "",
        ['tests/test_faults.py']),
    'settle-at-the-first-reply': (
        'a connection in doubt counts as settled at its first reply, so the'
        ' rest of a stale batch lands after newer writes',
        "                while sock.recv(65536):\n"
        "                    pass\n",
        "                sock.recv(65536)\n",
        WIRE),
    'no-settle-before-sending': (
        'a lane sends on a fresh connection without settling the ones in'
        ' doubt',
        "        self.settle()\n"
        "        if self.sock is None:\n",
        "        if self.sock is None:\n",
        WIRE),
    'refusals-resent': (
        'a record memcached refuses for good is sent again and again',
        "            refused.append(Refusal(index, reply))",
        "            raise ProtocolError('refused')",
        ['tests/test_faults.py::'
         'test_a_refused_record_is_an_error_and_is_not_retried']),
    'samples-logged-without-limit': (
        'every bad line, and every record memcached refuses, gets a log'
        ' line of its own',
        "        if self.shown < LOGGED_LINES_PER_FILE:\n",
        "        if True:\n",
        LOAD),
    # -- error accounting
    'refusals-counted-as-stored': (
        'a record memcached refused counts as stored, not as an error',
        "            batch.load.batch_done(count - len(refused),"
        " len(refused))",
        "            batch.load.batch_done(count, 0)",
        LOAD),
    'errors-not-summed-over-chunks': (
        'a file\'s errors are its last chunk\'s, not the sum of all',
        "        self.errors += errors\n",
        "        self.errors = errors\n",
        LOAD),
    'dropped-apps-are-errors': (
        'the reference encoder counts a line with dropped app ids as an'
        ' error',
        "        if encoded.dropped_apps:\n"
        "            dropped += 1\n",
        "        if encoded.dropped_apps:\n"
        "            dropped += 1\n"
        "            errors += 1\n",
        ['tests/test_properties.py']),
    'native-every-key-to-the-first-server': (
        'the compiled encoder sends every key of a type to its first server',
        "        server = ((hash_value >> 16) & 0x7fff) % route.servers",
        "        server = 0",
        NATIVE),
    'native-every-key-to-the-first-uploader': (
        'the compiled encoder sends every key of a server to its first lane',
        "    if route.lanes_of[server] > 1:",
        "    if False:",
        NATIVE),
    'native-dropped-apps-are-errors': (
        'the compiled encoder counts a line with dropped app ids as an'
        ' error',
        "                if encoded.dropped_apps:\n"
        "                    dropped += 1\n",
        "                if encoded.dropped_apps:\n"
        "                    dropped += 1\n"
        "                    errors += 1\n",
        NATIVE + LOAD),
    'error-rate-limit-exclusive': (
        'a file exactly at --max-error-rate is not loaded',
        "        if self.error_rate > max_error_rate:",
        "        if self.error_rate >= max_error_rate:",
        LOAD),
    # -- the line contract
    'largest-app-id-dropped': (
        'the app id 2^32-1 is dropped, not kept',
        "                and int(digits) <= MAX_APP_ID:",
        "                and int(digits) < MAX_APP_ID:",
        ['tests/test_parse.py']),
    'app-items-not-stripped': (
        'an app item with spaces around it is dropped',
        "        item = item.strip()\n",
        "",
        ['tests/test_parse.py']),
    'key-one-byte-too-long': (
        'a key of 251 bytes is sent to memcached',
        "    if len(key) > MAX_KEY_LENGTH or",
        "    if len(key) > MAX_KEY_LENGTH + 1 or",
        ['tests/test_parse.py']),
    'every-key-to-the-first-uploader': (
        'a server\'s keys all travel through its first lane',
        "    return lanes[0] if len(lanes) == 1 else",
        "    return lanes[0] if True else",
        ['tests/test_parse.py']),
    'every-key-to-the-first-server': (
        'a type\'s keys all go to its first server, where a Client with'
        ' the same list does not look for them',
        "    lanes = lanes_by_server[0] if len(lanes_by_server) == 1"
        " else \\\n",
        "    lanes = lanes_by_server[0] if True else \\\n",
        ['tests/test_parse.py']),
    'types-share-lanes': (
        'two device types with different servers share lanes',
        "                lane_addresses += [address] * uploaders\n",
        "                lane_addresses = [address] * uploaders\n",
        ['tests/test_parse.py']),
    'decompressor-error-escapes': (
        'an error of the decompressor escapes as a crash, not Unreadable',
        "            raise Unreadable('%s (%s)' % (exc,"
        " type(exc).__name__)) \\\n",
        "            raise Unreadable('%s (%s)' / (exc,"
        " type(exc).__name__)) \\\n",
        ['tests/test_parse.py']),
    'reference-ignores-its-routes-types': (
        'the reference encoder knows the four device types only, not those'
        ' of the routes it is given',
        "    if dev_type not in device_types:",
        "    if dev_type not in DEVICE_TYPE_NAMES:",
        ['tests/test_native.py::'
         'test_a_device_type_of_any_length_is_compiled_as_the_reference']),
    # -- newest wins, order
    'lines-of-a-chunk-reversed': (
        'newest-wins within a file: the reference encoder gives a lane a'
        ' chunk\'s records in reverse',
        "        commands_of.setdefault(encoded.lane, [])"
        ".append(encoded.command)",
        "        commands_of.setdefault(encoded.lane, [])"
        ".insert(0, encoded.command)",
        ['tests/test_properties.py']),
    'files-in-reverse-order': (
        'newest-wins across files and the rename order',
        "    return sorted(paths, key=load_order)",
        "    return sorted(paths, key=load_order, reverse=True)",
        ['tests/test_load.py']),
    'files-sorted-by-path': (
        'files load in the order of their paths, so an older minute in a'
        ' later directory overwrites a newer one',
        "    return sorted(paths, key=load_order)",
        "    return sorted(paths)",
        LOAD),
    'files-sorted-by-mtime': (
        'files load in the order they were written, not by name',
        "    return sorted(paths, key=load_order)",
        "    return sorted(paths, key=os.path.getmtime)",
        LOAD),
    'no-stop-at-first-failure': (
        'files after a failed one are still renamed',
        "        if not load.loaded(self.max_error_rate):\n"
        "            self.renaming = False\n",
        "        if not load.loaded(self.max_error_rate):\n"
        "            pass\n",
        ['tests/test_load.py']),
    'unacknowledged-records-within-the-limit-renamed': (
        'a file with a few records never acknowledged is loaded when its'
        ' error rate is within the limit',
        "        if self.unacknowledged:\n"
        "            return Verdict(Reason.UNACKNOWLEDGED,"
        " self.unacknowledged,\n"
        "                           self.unacknowledged_because)\n",
        "",
        PROMISE),
    'only-read-failures-stop-renames': (
        'a file kept for its error rate, unacknowledged records, a restart'
        ' or a change does not stop the later renames',
        "        if not load.loaded(self.max_error_rate):\n"
        "            self.renaming = False\n",
        "        if load.verdict is not None:\n"
        "            self.renaming = False\n",
        PROMISE),
    'rename-check-asks-the-first-server-only': (
        'a restart of any server but the first one asked is not noticed',
        "        for address, seen in sorted(load.instances.items()):",
        "        for address, seen in sorted(load.instances.items())[:1]:",
        PROMISE),
    'rename-check-asks-the-last-server-only': (
        'a restart of any server but the last one asked is not noticed',
        "        for address, seen in sorted(load.instances.items()):",
        "        for address, seen in sorted(load.instances.items())[-1:]:",
        PROMISE),
    'lowest-connection-count-compared': (
        'a restart that keeps pid and start time is missed when the check'
        ' counts more connections than the file\'s first one did',
        "            connections = max(connections, seen.connections)",
        "            connections = min(connections, seen.connections)",
        PROMISE),
    'no-check-after-the-rename': (
        'a restart between the check\'s answers and the rename is missed',
        "            verdict = self._confirm(load)  # every server again,"
        " just after\n",
        "            pass\n",
        PROMISE),
    'evictions-ignored': (
        'a file whose server evicted items while it loaded is renamed',
        "                    return Verdict(Reason.EVICTED, address,\n"
        "                                   dropped.describe())\n",
        "                    pass\n",
        PROMISE),
    'flushes-ignored': (
        'a file whose server was flushed while it loaded is renamed',
        "                else now.dropped.since(then.dropped)\n",
        "                else now.dropped.since(then.dropped)._replace("
        "flushes=0)\n",
        PROMISE),
    'evictions-not-counted': (
        'the metrics say a server evicted nothing',
        "                self.evictions += max(0, lost.evictions) \\\n"
        "                    + max(0, lost.moved_out)\n",
        "                self.evictions += 0\n",
        PROMISE),
    'slab-move-drops-ignored': (
        'items the slab mover drops (slab_reassign_evictions_nomem) are not'
        ' counted, and a file that lost them is renamed',
        "    (b'slab_reassign_evictions_nomem', 'moved_out'),\n",
        "",
        ['tests/test_rename_promise.py::'
         'test_items_the_slab_mover_drops_keep_the_file']),
    'reload-by-change-time': (
        '--reload-processed orders the processed files by their change'
        ' times, which a restore of the spool rewrites',
        "        return [dotted for _, dotted in unknown + known]",
        "        return [dotted for _, dotted in sorted(\n"
        "            processed,\n"
        "            key=lambda paths: os.stat(paths[1]).st_ctime)]",
        ACROSS),
    'no-read-back': (
        'nothing is read back at a rename: a delayed flush or a drop no'
        ' counter shows goes unseen',
        "        keys = sorted({sample.key for sample in samples})\n",
        "        keys = []\n",
        [PROMISE[0] + '::test_a_delayed_flush_whose_deadline_falls_before'
         '_the_rename_keeps_it']),
    'read-back-values-not-compared': (
        'a record read back counts if it is there, whatever its value',
        "                     and found[sample.key] != sample.digest)\n",
        "                     and False)\n",
        [PROMISE[0] + '::test_a_record_changed_behind_the_loaders_back'
         '_keeps_the_file']),
    'no-read-back-between-runs': (
        'a run does not read back what the last proven file wrote, so a'
        ' delayed flush that struck after it goes unseen',
        "        files_read, samples = journal.to_read_back(address)\n",
        "        files_read, samples = [], []\n",
        ACROSS),
    'the-first-boundary-found-trusted': (
        'a batch\'s last commands are cut at the first "\\r\\nset " found'
        ' from its end, even inside a value',
        "        if command is None or command[2] != end:\n",
        "        if command is None:\n",
        ['tests/test_wire.py::test_the_last_commands_of_a_batch_are_found'
         '_whatever_its_values_hold']),
    'refused-records-read-back': (
        'a sample whose key memcached refused on its lane after it was'
        ' chosen is still read back, and keeps a sound file',
        "    kept = [[sample if sample is None or askable(lane, sample.key)"
        " else None\n",
        "    kept = [[sample if True else None\n",
        [PROMISE[0] + '::test_a_record_memcached_refused_is_never_read'
         '_back', PROMISE[0] + '::test_a_key_refused_later_is_not_read'
         '_back']),
    'a-rewritten-sample-compared': (
        'a record read back is compared with a value a later record of'
        ' the same batch rewrote',
        "        if key not in later and askable(lane, key):\n",
        "        if askable(lane, key):\n",
        [PROMISE[0] + '::test_a_record_a_later_one_of_its_batch_rewrote_is'
         '_not_read_back']),
    'the-oldest-record-compared': (
        'the oldest record read back must hold its first value, though a'
        ' later record of the file rewrote it',
        "            kept[0] = Sample(command[0], value_digest(command[1]),"
        " lane, -1)",
        "            kept[0] = Sample(command[0], value_digest(command[1]),"
        " lane,\n"
        "                             lane.acked)",
        [PROMISE[0] + '::test_a_files_first_record_rewritten_later_in_its'
         '_batch_is_no_fault']),
    'evictions-between-runs-never-accepted': (
        'under --accept-evictions, evictions between two runs still count'
        ' as a loss, and every run exits 1',
        "        if verdict.reason is Reason.EVICTED and"
        " check.accept_evictions:\n",
        "        if False:\n",
        ACROSS),
    'a-refused-key-read-back': (
        'a key memcached refused later (which unlinks it) is still read'
        ' back from an earlier record, and keeps a sound file',
        "    return lane.refused_keys is not None and key not in"
        " lane.refused_keys\n",
        "    return True\n",
        [PROMISE[0] + '::test_a_key_refused_later_is_not_read_back']),
    'no-check-at-the-end-of-a-run': (
        'what strikes after a file\'s own check, later in the run, is left'
        ' for the next run to see',
        "    if not settings.dry and signum is None:\n"
        "        # What struck after a file's own check, during the rest of"
        " the\n",
        "    if False:\n"
        "        # What struck after a file's own check, during the rest of"
        " the\n",
        [ACROSS[0] + '::test_a_delayed_flush_that_strikes_later_in_the_run'
         '_is_seen_at_its_end']),
    'only-the-last-file-read-back-next': (
        'the next run reads back only the last proven file, which a flush'
        ' that struck before it spared',
        "        chosen = proven[:1] + proven[-1:] if len(proven) > 1 else"
        " proven\n",
        "        chosen = proven[-1:]\n",
        [ACROSS[0] + '::test_a_run_reads_back_the_first_and_the_last_proven'
         '_file_of_a_server']),
    'an-unfinished-rename-not-read-back': (
        'a rename a killed run left unproven is proven by its servers\''
        ' identities alone',
        "            found = check.problem(_JournalledFile(path, instances,"
        " samples))\n",
        "            found = check.problem(_JournalledFile(path,"
        " instances))\n",
        [ACROSS[0] + '::test_an_unfinished_rename_is_read_back_before_it_is'
         '_proven']),
    'records-gone-at-the-check-journalled': (
        'records missing at a check and accepted on --accept-evictions are'
        ' journalled, and the next run calls them a loss',
        "                          if sample.key in self.check.last_found.get("
        "\n",
        "                          if True or sample.key in"
        " self.check.last_found.get(\n",
        [ACROSS[0] + '::test_under_accept_evictions_records_gone_at_the'
         '_check_are_not_asked']),
    'keys-journalled-as-ascii': (
        'a key of bytes above 0x7f is journalled escaped, and read back as'
        ' another key',
        "    return {address: [[sample.key.decode('latin-1'),"
        " sample.digest.hex()]\n",
        "    return {address: [[sample.key.decode('ascii',"
        " 'backslashreplace'),\n"
        "                       sample.digest.hex()]\n",
        [ACROSS[0] + '::test_a_device_id_of_any_bytes_is_read_back_as_it_was'
         '_written']),
    'a-damaged-line-loses-the-journal': (
        'one damaged line sets the whole journal aside, and a loss it held'
        ' is forgotten',
        "                damaged.append((number, exc))\n",
        "                raise ValueError(exc)\n",
        [ACROSS[0] + '::test_damaged_lines_are_skipped_and_the_rest_kept']),
    'journal-types-unchecked': (
        'a hand-edited entry of the wrong types is taken, and the run fails'
        ' with a traceback',
        "            if not isinstance(entry['lost'], str) \\\n",
        "            if False and not isinstance(entry['lost'], str) \\\n",
        [ACROSS[0] + '::test_damaged_lines_are_skipped_and_the_rest_kept']),
    'a-missing-directory-is-a-success': (
        'a --pattern whose directory does not exist (a typo in the cron'
        ' line) ends 0, and counts as a success for ever after',
        "        raise Unlistable('cannot list the files of %s: %s %s (a typo"
        " in'\n",
        "        return RunResult(settings)\n"
        "        raise Unlistable('cannot list the files of %s: %s %s (a typo"
        " in'\n",
        OPERATORS),
    'errors-only-in-the-log-file': (
        'with --log, nothing reaches stderr: under cron a failed run mails'
        ' nothing',
        "        handlers.append(warnings)\n",
        "",
        OPERATORS),
    'no-journal-before-the-rename': (
        'a rename is not noted before it happens, so a run killed before'
        ' its check leaves nothing for the next run to prove',
        "            self.journal.renaming(load, self._found(load))\n",
        "            pass\n",
        ACROSS),
    'an-unfinished-rename-trusted': (
        'a rename that a killed run left unproven is taken as proven',
        "            found = check.problem(_JournalledFile(path, instances,"
        " samples))\n",
        "            found = None\n",
        ACROSS),
    'no-check-between-runs': (
        'a server restarted or flushed between two runs is not seen',
        "    found = []\n"
        "    for address in sorted(set(addresses) & set(journal.servers)):",
        "    found = []\n"
        "    for address in []:",
        ACROSS),
    'a-loss-forgotten-after-one-run': (
        'a loss between runs is said once, and the next run exits 0 with'
        ' the records still gone',
        "        journal.note_lost(address, why, len(files))\n",
        "",
        ACROSS),
    'a-loss-is-no-failure': (
        'a run that knows processed files lost their records exits 0',
        "    if result.lost:  # processed files' records lost, not loaded"
        " again\n",
        "    if False:\n",
        ACROSS),
    'no-refill': (
        '--refill-after-loss does not load the processed files again',
        "    refill = bool(lost) and settings.refill_after_loss\n",
        "    refill = False\n",
        ACROSS),
    'a-reload-not-proven-at-its-end': (
        'a reloaded file is checked once, and a restart after that check'
        ' goes unseen',
        "        if check is not None:\n"
        "            prove_reloaded(loads, renamer)\n",
        "",
        ACROSS),
    'a-torn-journal-is-corrupt': (
        'a journal whose last line a killed run left incomplete is set'
        ' aside as corrupt',
        "            torn = lines.pop()  # b'' unless the last line is torn\n",
        "            torn = b''\n",
        ACROSS),
    'start-time-not-compared': (
        'a restart that keeps the pid, with a new start time, is not'
        ' noticed',
        "                    int(stats[b'time']) - int(stats[b'uptime']))",
        "                    0)",
        PROMISE),
    'stop-does-not-end-the-rename-check': (
        'a stop waits for a rename-time check on a stalled server',
        "        self.stopped = True\n"
        "        if self.check is not None:\n"
        "            self.check.abort()\n",
        "        self.stopped = True\n",
        PROMISE),
    'identity-taken-after-reading': (
        'a file replaced while it is read is renamed: its identity is the'
        ' path\'s after the read, not the opened file\'s',
        ("        load.identity = file_identity(opened.status)\n",
         "            load.bytes_read = load.size\n"),
        ("",
         "            load.bytes_read = load.size\n"
         "        load.identity = file_identity(os.stat(load.path))\n"),
        PROMISE),
    'identity-of-the-path-not-the-opened-file': (
        'a file replaced just after it was opened is renamed: its identity'
        ' is the path\'s, not the opened file\'s',
        "        status = os.fstat(descriptor)",
        "        status = os.stat(path)",
        PROMISE),
    'late-same-name-in-another-directory-loaded': (
        'a file of the name of one processed in a later directory is'
        ' loaded, not late',
        "        elif last is None or load_order(load.path) >"
        " load_order(last[0]):",
        "        elif last is None or load_order(load.path) >="
        " load_order(last[0])[:1]:",
        PROMISE),
    'late-judged-by-the-first-processed-file': (
        'lateness is judged against the first processed file listed, not'
        ' the newest',
        "    return minutes[-1] if minutes else None",
        "    return minutes[0] if minutes else None",
        PROMISE),
    'late-judged-by-the-last-processed-file': (
        'lateness is judged against the last processed file listed, not'
        ' the newest',
        "    return sorted(found, key=lambda paths: load_order(paths[0]))",
        "    return found",
        PROMISE),
    'no-rename-time-server-check': (
        'a server restarted after a file was written is not noticed',
        ("        verdict = self.check.problem(load)  # every server, just"
         " before\n",
         "            verdict = self._confirm(load)  # every server again,"
         " just after\n"),
        ("        verdict = self.check.problem(load) if load.reloading"
         " else None\n",
         "            pass\n"),
        PROMISE),
    'no-connection-count-check': (
        'a restart that keeps pid and start time is not noticed',
        "            if now.instance != then.instance \\\n"
        "                    or None not in (then.connections,"
        " now.connections) \\\n"
        "                    and now.connections < then.connections:",
        "            if now.instance != then.instance:",
        PROMISE),
    'no-rename-time-retries': (
        'a short stall at rename time fails the run',
        "        self.policy = settings.retry\n",
        "        self.policy = RetryPolicy(0)\n",
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
        "    renameat2 = getattr(_libc(), 'renameat2', None)\n",
        "    os.replace(source, target)\n"
        "    return\n",
        PROMISE),
    'no-late-files': (
        'a late, older file is loaded silently',
        "        elif last is None or load_order(load.path) >"
        " load_order(last[0]):",
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
        "        for signum in EARLY_SIGNALS[:1]:  # came while the program"
        " started\n"
        "            self._on_signal(signum)\n",
        "",
        ['tests/test_operators.py']),
    'lock-truncates': (
        '--lock destroys what its file holds',
        "        if _pid_written(handle) is not None or not os.fstat(\n"
        "                handle.fileno()).st_size:\n",
        "        if True:\n",
        PROMISE),
    'lock-that-cannot-be-opened-ignored': (
        'a run whose lock cannot be opened loads without it',
        "    except OSError as exc:\n"
        "        if exc.errno in DISK_FAILURES:",
        "    except OSError as exc:\n"
        "        return\n"
        "        if exc.errno in DISK_FAILURES:",
        OPERATORS),
    'min-age-by-change-time': (
        '--min-age goes by the change time, so no file is ever old enough',
        "                modified = os.stat(path).st_mtime\n",
        "                modified = os.stat(path).st_ctime\n",
        OPERATORS),
    'min-age-by-access-time': (
        '--min-age goes by the access time',
        "                modified = os.stat(path).st_mtime\n",
        "                modified = os.stat(path).st_atime\n",
        OPERATORS),
    'future-mtimes-wait-for-ever': (
        'a file stamped hours ahead waits run after run, every run ending 0',
        "    if ahead > FUTURE_MTIME_TOLERANCE:\n",
        "    if False:\n",
        OPERATORS),
    'waiting-files-not-in-the-metrics': (
        'files left for the next run are not counted in the metrics',
        "        result.waiting if result else 0)",
        "        0)",
        OPERATORS),
    'waiting-uncounted-when-every-file-waits': (
        'a run whose every file is too young says no file waits',
        "    return ChosenFiles(loads, to_load, len(paths) - young)\n",
        "    return ChosenFiles(loads, to_load, len(loads) - young)\n",
        OPERATORS),
    'check-restarts-not-counted': (
        'a restart seen only by the rename-time check is not counted',
        "                self.servers[address].check_instance(now.instance,\n"
        "                                                     now.dropped)\n",
        "                pass\n",
        OPERATORS),
    'lane-restarts-not-counted': (
        'a restart seen only by a lane\'s new connection is not counted',
        "            self.identified(self.identity.instance,"
        " self.identity.dropped)\n",
        "",
        OPERATORS),
    'restarts-counted-once': (
        'several restarts in a run count as one',
        "            self.restarts += 1\n",
        "            self.restarts = 1\n",
        OPERATORS),
    'dry-exit-ignores-errors': (
        'a dry run exits 0 for a file that would not load',
        "            settings.dry and load.loaded(settings.max_error_rate))",
        "            settings.dry or load.loaded(settings.max_error_rate))",
        LOAD),
    'dry-renames': (
        'under --dry, files are checked and renamed: RenameInOrder ignores'
        ' its dry flag',
        ("        if self.renaming and not self.dry \\\n",
         "    check = None if settings.dry else InstanceCheck(settings,"
         " engine.servers)\n"),
        ("        if self.renaming \\\n",
         "    check = InstanceCheck(settings, engine.servers)\n"),
        ['tests/test_load.py::'
         'test_dry_run_connects_to_nothing_renames_nothing_logs_records']),
    'metrics-counters-not-carried-over': (
        'the metrics\' counters start again from 0 at each run',
        "            total = previous.get(('gmemcload_%s_total' % name,"
        " labels),\n"
        "                                 0) + count\n",
        "            total = count\n",
        ['tests/test_operators.py::'
         'test_good_failed_and_locked_runs_each_leave_their_metrics']),
    'only-reasons-seen-in-the-metrics': (
        'a reason with no kept file is missing from the metrics',
        "    for reason in Reason:  # every one, so that none goes missing\n",
        "    for reason in kept:\n",
        OPERATORS),
    'renamed-files-counted-as-parsed': (
        'renamed files are counted as parsed too',
        "    verdicts = [load.kept(result.settings.max_error_rate) for load"
        " in loads\n"
        "                if not (load.renamed or load.reloaded)]\n",
        "    verdicts = [load.kept(result.settings.max_error_rate) for load"
        " in loads]\n",
        OPERATORS),
    'reason-labels-from-the-names': (
        'the reason labels are not the README\'s',
        "        files.labels(result='kept', reason=reason.value)"
        ".set(kept[reason])",
        "        files.labels(result='kept', reason=reason.name.lower())"
        ".set(kept[reason])",
        OPERATORS),
    'kept-files-without-their-reason': (
        'the metrics count kept files, but not by their reason',
        "reason=reason.value).set(kept[reason])",
        "reason=reason.value).set(0)",
        PROMISE),
    'restarts-not-counted': (
        'restarts seen are not counted in the metrics',
        "            self.restarts += 1\n",
        "            pass\n",
        OPERATORS),
    'a-full-log-disk-fails-the-run': (
        'a log file that cannot be written turns a good run into a crash',
        "        try:\n"
        "            handler.close()  # flushes: a full disk says so here\n"
        "        except OSError as exc:\n",
        "        handler.close()\n"
        "        try:\n"
        "            pass\n"
        "        except OSError as exc:\n",
        OPERATORS),
    'a-dry-run-is-a-success': (
        'a dry run, which stores nothing, refreshes the last success',
        "    last_success = ended if status == EXIT_OK and not dry else",
        "    last_success = ended if status == EXIT_OK else",
        OPERATORS),
    'lanes-unbounded': (
        'a run of more lanes than the compiled encoder can number starts,'
        ' and fails every file, instead of being bad usage',
        "        if len(servers) * self.uploaders > MAX_LANES:",
        "        if False:",
        ['tests/test_operators.py::'
         'test_lanes_are_bounded_by_what_the_encoder_can_number']),
    'lane-bound-above-the-encoders': (
        'the run\'s lane bound is raised past what the compiled encoder'
        ' can number',
        "MAX_LANES = 1 << 16",
        "MAX_LANES = 1 << 17",
        ['tests/test_native.py::'
         'test_the_runs_lane_bound_is_what_the_encoder_can_number']),
    'workers-unbounded': (
        '--workers takes any number',
        "    return _at_most_workers(text)\n",
        "    return int(text)\n",
        OPERATORS),
    'one-lock-per-pattern': (
        'runs whose patterns overlap load the same files at once',
        "            take_lock(locks, os.path.join(directory,"
        " LOCK_FILE_NAME))\n",
        "            pass\n",
        ['tests/test_faults.py::'
         'test_runs_whose_patterns_overlap_share_a_lock']),
    # -- what is read, in what order (issue: the rename promise, round 3)
    'fifo-opened-blocking': (
        'a FIFO swapped in after listing is opened blocking, and waits',
        "    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK |"
        " os.O_CLOEXEC)",
        "    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)",
        FILES),
    'any-file-type-read': (
        'a FIFO or a device is read as if it were a log file',
        "        if not stat.S_ISREG(status.st_mode):",
        "        if False:",
        FILES),
    'open-in-the-event-loop': (
        'a hung open holds the event loop: no stop can end it',
        "        opened = await_in_thread(open_regular, (load.path,),"
        " self.stopping,\n"
        "                                 _close_opened)",
        "        opened = open_regular(load.path)",
        FILES),
    'read-wait-ignores-a-stop': (
        'a stop waits for a read (or open) that never returns',
        "    gevent.wait([result, stopping], count=1)\n"
        "    if not result.ready():\n"
        "        raise Interrupted()\n",
        "",
        FILES),
    'a-stopped-read-is-unreadable': (
        'a read ended by a stop is blamed on the file',
        "        except (MemoryError, Interrupted):",
        "        except MemoryError:",
        FILES),
    'late-by-name-only': (
        'the same minute in a later directory is late',
        "        elif last is None or load_order(load.path) >"
        " load_order(last[0]):",
        "        elif last is None or os.path.basename(load.path) >"
        " os.path.basename(last[0]):",
        PROMISE),
    'processed-non-minutes-judge-lateness': (
        'a processed backfill.tsv.gz makes every later minute late',
        "    minutes = [paths for paths in processed_files(pattern)\n"
        "               if is_minute_name(os.path.basename(paths[0]))]",
        "    minutes = processed_files(pattern)",
        PROMISE),
    'pending-non-minutes-judged-late': (
        'a file that is not a minute, sorting before a processed one, is'
        ' late',
        "        elif not is_minute_name(name):",
        "        elif False:",
        PROMISE),
    'processed-files-out-of-order': (
        'the processed files are listed newest first, so lateness is judged'
        ' against the oldest',
        "    return sorted(found, key=lambda paths: load_order(paths[0]))",
        "    return sorted(found, key=lambda paths: load_order(paths[0]),"
        " reverse=True)",
        PROMISE),
    'reload-in-load-order': (
        '--reload-processed reloads by name, so a backfill processed first'
        ' goes last, over newer values',
        "        return [dotted for _, dotted in unknown + known]",
        "        return [dotted for _, dotted in processed]",
        FILES + ACROSS),
    'non-files-skipped': (
        'a matched FIFO or directory is skipped, and the run exits 0',
        "        paths.append(path)\n"
        "    return sorted(paths, key=load_order)",
        "        if os.path.isfile(path):\n"
        "            paths.append(path)\n"
        "    return sorted(paths, key=load_order)",
        LOAD),
    'c1-controls-logged': (
        'a C1 control or a line separator in a file name is logged raw',
        "_CONTROL = re.compile('[\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200e"
        "\\u200f'\n"
        "                      '\\u2028-\\u202e\\u2066-\\u2069]')",
        "_CONTROL = re.compile('[\\x00-\\x1f\\x7f'\n"
        "                      '\\u061c\\u200e\\u200f\\u202a-\\u202e"
        "\\u2066-\\u2069]')",
        OPERATORS),
    'an-unopened-log-leaves-no-metrics': (
        'a run whose log cannot be opened writes no metrics',
        "        if args.metrics_file:\n"
        "            write_metrics(args.metrics_file, status, started, None)\n"
        "        return status",
        "        return status",
        OPERATORS),
    'a-full-log-traceback-per-record': (
        'a log on a full disk prints a traceback for every record',
        "class LogFile(logging.FileHandler):",
        "class LogFile(logging.FileHandler):\n"
        "    pass\n\n\nclass Unused(logging.FileHandler):",
        OPERATORS),
    'reload-after-the-new-files': (
        'processed files are reloaded over the newer values of new files',
        "        to_load = reloads + (set_aside_late(\n"
        "            loads, settings.pattern, settings.load_late) if loads"
        " else [])",
        "        to_load = (set_aside_late(\n"
        "            loads, settings.pattern, settings.load_late) if loads"
        " else []) + reloads",
        FILES),
    'a-reload-is-a-failure': (
        'a run that reloaded every processed file exits 1',
        "    if all(load.renamed or load.reloaded or (",
        "    if all(load.renamed or (",
        FILES),
    # -- the end of a run
    'handlers-cancelled-at-the-end': (
        'a signal as the run ends kills the process by its default action',
        "        STOP_SIGNALS.disarm()",
        "        for handler in STOP_SIGNALS.handlers:\n"
        "            handler.cancel()\n"
        "        STOP_SIGNALS.handlers = None",
        ['tests/test_operators.py::'
         'test_a_signal_as_the_run_ends_leaves_its_outcome_and_metrics']),
    'signals-not-ignored-at-exit': (
        'a SIGTERM while the interpreter shuts down kills a run that'
        ' succeeded',
        "    STOP_SIGNALS.ignore()\n"
        "    return status",
        "    return status",
        ['tests/test_operators.py::'
         'test_a_signal_while_the_interpreter_ends_leaves_the_outcome']),
    'control-characters-logged': (
        'a newline in a file name forges a log line',
        "        each.addFilter(escape_controls)\n",
        "        pass\n",
        OPERATORS),
    'unsent-not-said': (
        'after a stop, the totals do not add up',
        "    unsent = lines - stored - errors",
        "    unsent = 0",
        OPERATORS),
    'a-full-disk-is-bad-usage': (
        'a lock file on a full disk exits 2, as a bad option',
        "        if exc.errno in DISK_FAILURES:",
        "        if False:",
        OPERATORS),
    'a-stop-marks-a-server-down': (
        'a stop during a retry marks the server down',
        "        if not self.stopping.is_set():\n"
        "            self.server.down = ",
        "        if True:\n"
        "            self.server.down = ",
        OPERATORS),
    'a-down-servers-batches-are-tried': (
        'every batch for a down server is tried again',
        "        if self.server.down:\n"
        "            batch.load.batch_done(0, 0, count, self.server.down)\n"
        "            return\n"
        "        policy = self.settings.retry\n",
        "        policy = self.settings.retry\n",
        OPERATORS),
    'a-dead-kept-check-connection-is-a-try': (
        'a kept rename-time connection that died counts as a failed try',
        "                    sock.close()  # it may have died with a"
        " restart\n",
        "                    sock.close()  # it may have died with a"
        " restart\n"
        "                    raise\n",
        WIRE),
    # -- accept-evictions, the eviction baseline, lateness over directories,
    # minute names, what is not sent, a stop in a blocked read, corrupt
    # reloads, bidirectional controls
    'accept-evictions-waives-restarts': (
        'under --accept-evictions, a server that restarted after a file was'
        ' written is not held against it',
        "                                                     now.dropped)\n",
        "                                                     now.dropped)\n"
        "            if self.accept_evictions:\n"
        "                continue\n",
        [PROMISE[0] + '::test_accept_evictions_never_renames_a_file_whose'
         '_server_restarted']),
    'accept-evictions-waives-the-connection-count': (
        'under --accept-evictions, a restart that keeps pid and start time'
        ' is not noticed',
        "                    or None not in (then.connections,"
        " now.connections) \\\n",
        "                    or not self.accept_evictions \\\n"
        "                    and None not in (then.connections,"
        " now.connections) \\\n",
        [PROMISE[0] + '::test_accept_evictions_never_renames_a_file_whose'
         '_server_restarted']),
    'accept-evictions-skips-the-check-after-the-rename': (
        'under --accept-evictions, a restart between the check and the'
        ' rename is missed',
        "            verdict = self._confirm(load)  # every server again,"
        " just after\n",
        "            verdict = None if self.check.accept_evictions else \\\n"
        "                self._confirm(load)\n",
        [PROMISE[0] + '::test_accept_evictions_never_renames_a_file_whose'
         '_server_restarted']),
    'accept-evictions-tracks-no-writes': (
        'under --accept-evictions, the servers a file wrote to are not'
        ' noted, so none is asked before its rename',
        "            batch.load.wrote_to(address, identity)\n",
        "            if not self.settings.accept_evictions:\n"
        "                batch.load.wrote_to(address, identity)\n",
        [PROMISE[0] + '::test_accept_evictions_never_renames_a_file_whose'
         '_server_restarted']),
    'evictions-from-the-last-write': (
        'evictions are counted from a file\'s last write, not its first',
        "            dropped = Dropped(*map(min, dropped, seen.dropped))",
        "            dropped = Dropped(*map(max, dropped, seen.dropped))",
        [PROMISE[0] + '::test_evictions_are_counted_from_just_before_a'
         '_files_first_write']),
    'evictions-from-the-newest-connection': (
        'evictions are counted from what the newest batch\'s connection'
        ' knew, not from the file\'s first write',
        "        if None not in (dropped, seen.dropped):\n"
        "            dropped = Dropped(*map(min, dropped, seen.dropped))\n",
        "",
        [PROMISE[0] + '::test_evictions_are_counted_from_just_before_a'
         '_files_first_write']),
    'evictions-from-the-check': (
        'evictions are counted from the server\'s count known at the check,'
        ' not from the file\'s first write',
        "            self.last_seen[address] = now\n",
        "            self.last_seen[address] = now\n"
        "            then = then._replace(dropped=self.servers[address]"
        ".dropped)\n",
        [PROMISE[0] + '::test_evictions_are_counted_from_just_before_a'
         '_files_first_write']),
    'late-judged-by-the-last-copy-listed': (
        'of the copies of one minute in several directories, lateness is'
        ' judged against the last listed, not the last in load order',
        "    return sorted(found, key=lambda paths: load_order(paths[0]))",
        "    return sorted(found, key=lambda paths:"
        " os.path.basename(paths[0]))",
        [PROMISE[0] + '::test_lateness_is_judged_against_the_newest_copy'
         '_in_load_order']),
    'late-judged-by-the-last-directory': (
        'lateness is judged against the last processed file of the last'
        ' directory, not the newest in load order',
        "    return sorted(found, key=lambda paths: load_order(paths[0]))",
        "    return sorted(found, key=lambda paths: paths[0])",
        [PROMISE[0] + '::test_lateness_is_judged_against_the_newest_copy'
         '_in_load_order']),
    'late-judged-by-the-first-copy-of-the-newest-name': (
        'lateness is judged against the first copy of the newest minute,'
        ' not the last in load order',
        "    return minutes[-1] if minutes else None",
        "    return max(minutes, key=lambda paths:"
        " os.path.basename(paths[0])) if minutes else None",
        [PROMISE[0] + '::test_lateness_is_judged_against_the_newest_copy'
         '_in_load_order']),
    'minute-anywhere-in-the-name': (
        'a name that holds 14 digits anywhere (x2017...) is a minute',
        "    return MINUTE_NAME.match(name) is not None",
        "    return MINUTE_NAME.search(name) is not None",
        [PROMISE[0] + '::test_a_minute_name_begins_with_exactly_fourteen'
         '_ascii_digits',
         PROMISE[0] + '::test_names_that_only_hold_a_minute_are_not'
         '_minutes']),
    'fifteen-digits-a-minute': (
        'a name that begins with 15 digits is a minute',
        "MINUTE_NAME = re.compile(r'[0-9]{14}(?![0-9])')",
        "MINUTE_NAME = re.compile(r'[0-9]{14}')",
        [PROMISE[0] + '::test_a_minute_name_begins_with_exactly_fourteen'
         '_ascii_digits',
         PROMISE[0] + '::test_names_that_only_hold_a_minute_are_not'
         '_minutes']),
    'unicode-digits-a-minute': (
        'a name that begins with 14 digits other than ASCII ones is a'
        ' minute',
        "MINUTE_NAME = re.compile(r'[0-9]{14}(?![0-9])')",
        "MINUTE_NAME = re.compile(r'\\d{14}(?!\\d)')",
        [PROMISE[0] + '::test_a_minute_name_begins_with_exactly_fourteen'
         '_ascii_digits',
         PROMISE[0] + '::test_names_that_only_hold_a_minute_are_not'
         '_minutes']),
    'unacknowledged-counted-as-not-sent': (
        'records sent and never acknowledged are counted as not sent, not'
        ' as errors',
        "        self.errors += refused + unacknowledged\n",
        "        self.errors += refused\n",
        [OPERATORS[0] + '::test_refused_and_unacknowledged_records_are'
         '_errors_never_unsent']),
    'refusals-counted-as-not-sent': (
        'records memcached refused are counted as not sent, not as errors',
        "        self.errors += refused + unacknowledged\n",
        "        self.errors += unacknowledged\n",
        [OPERATORS[0] + '::test_refused_and_unacknowledged_records_are'
         '_errors_never_unsent']),
    'not-sent-is-what-bad-lines-leave': (
        'the summary counts refused and unacknowledged records as not sent',
        "    unsent = lines - stored - errors",
        "    unsent = lines - stored - sum(load.bad_lines.seen for load in"
        " loads)",
        [OPERATORS[0] + '::test_refused_and_unacknowledged_records_are'
         '_errors_never_unsent']),
    'stopped-read-closed-at-once': (
        'a stop closes a stream whose read is blocked, and so waits for'
        ' that read in the event loop',
        "        if self.pending is None or self.pending.ready():\n"
        "            self._close()\n",
        "        if True:\n"
        "            self._close()\n",
        [FILES[0] + '::test_a_stop_ends_a_run_whose_read_blocks_holding'
         '_its_stream']),
    'stopped-read-woken-by-closing-its-file': (
        'a stop closes the file under a blocked read to wake it, and so'
        ' waits for that read in the event loop',
        "            self.pending.rawlink(self._close)\n",
        "            self.raw.close()\n"
        "            self.pending.rawlink(self._close)\n",
        [FILES[0] + '::test_a_stop_ends_a_run_whose_read_blocks_holding'
         '_its_stream']),
    'stopped-read-awaited': (
        'a stop waits for a blocked read to return before the file ends',
        "            self.pending.rawlink(self._close)\n",
        "            self.pending.wait()\n"
        "            self._close()\n",
        [FILES[0] + '::test_a_stop_ends_a_run_whose_read_blocks_holding'
         '_its_stream']),
    'a-corrupt-reload-not-said': (
        'a corrupt processed file is not said to be corrupt, nor what to do'
        ' with it',
        "            if reason is Reason.UNREADABLE:\n",
        "            if False:\n",
        [FILES[0] + '::test_a_processed_file_that_cannot_be_reloaded_fails'
         '_the_run']),
    'a-corrupt-reload-waits-for-memcached': (
        'a corrupt processed file is said to need memcached up, which never'
        ' helps',
        "        if set(reasons.values()) - {Reason.UNREADABLE,\n"
        "                                    Reason.AFTER_A_FILE_NOT_LOADED}:",
        "        if reasons:",
        [FILES[0] + '::test_a_processed_file_that_cannot_be_reloaded_fails'
         '_the_run']),
    'a-sound-reload-called-corrupt': (
        'a processed file kept because memcached is down is called corrupt',
        "            if reason is Reason.UNREADABLE:\n",
        "            if reason is not Reason.AFTER_A_FILE_NOT_LOADED:\n",
        [FILES[0] + '::test_a_processed_file_not_reloaded_for_memcached'
         '_says_to_try_again']),
    'bidi-controls-logged': (
        'a right-to-left override or another bidirectional control in a file'
        ' name is logged raw',
        "_CONTROL = re.compile('[\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200e"
        "\\u200f'\n"
        "                      '\\u2028-\\u202e\\u2066-\\u2069]')",
        "_CONTROL = re.compile('[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]')",
        [OPERATORS[0] + '::test_a_file_name_cannot_reorder_a_log_line']),
    'bidi-isolates-logged': (
        'a bidirectional isolate (U+2066-U+2069) in a file name is logged'
        ' raw',
        "                      '\\u2028-\\u202e\\u2066-\\u2069]')",
        "                      '\\u2028-\\u202e]')",
        [OPERATORS[0] + '::test_a_file_name_cannot_reorder_a_log_line']),
    # -- the compiled encoder (native_encoder.pyx)
    'native-wrong-varint': (
        'the compiled encoder writes varints of 6 bits a byte',
        "        value >>= 7\n"
        "        written += 1\n",
        "        value >>= 6\n"
        "        written += 1\n",
        NATIVE),
    'native-a-line-lost': (
        'the compiled encoder takes a chunk\'s second line for blank',
        "                        if end > start:\n",
        "                        if end > start and lines != 1:\n",
        NATIVE),
    'native-slow-lines-out-of-order': (
        'a line handed to the Python contract goes before the earlier'
        ' lines of its lane',
        ("from libc.string cimport memcpy, memcmp, memchr\n",
         "                memcpy(outs[lane].data + outs[lane].size,\n"
         "                       PyBytes_AS_STRING(command), length)\n"),
        ("from libc.string cimport memcpy, memcmp, memchr, memmove\n",
         "                memmove(outs[lane].data + length, outs[lane].data,\n"
         "                        outs[lane].size)\n"
         "                memcpy(outs[lane].data,\n"
         "                       PyBytes_AS_STRING(command), length)\n"),
        NATIVE),
    'native-lat-for-lon': (
        'the compiled encoder writes lon where lat goes',
        "    memcpy(&lat_bits, &lat, 8)",
        "    memcpy(&lat_bits, &lon, 8)",
        NATIVE),
    'native-app-over-uint32': (
        'an app id of 2**32 is kept (as 0), not dropped',
        "            if digits == 0 or value > max_app_id:",
        "            if digits == 0 or value > max_app_id + 1:",
        NATIVE),
    'native-key-too-long': (
        'a key of 251 bytes is encoded, not refused',
        "    if key_length > max_key:",
        "    if key_length > max_key + 1:",
        NATIVE),
    'native-four-byte-types': (
        'the compiled encoder takes every device type for 4 bytes long',
        "    key_length = dev_type.length + 1 + dev_id_length",
        "    key_length = 5 + dev_id_length",
        NATIVE),
    'native-type-of-another-route': (
        'a device type is found by its length alone',
        "        if types[index].fast and types[index].length == length \\\n"
        "                and memcmp(types[index].name, text, length) == 0:",
        "        if types[index].fast and types[index].length == length:",
        NATIVE),
    'native-space-in-an-id': (
        'a space in a dev_id is encoded, not refused',
        "        if dev_id[at] <= 0x20 or dev_id[at] >= 0x7f:",
        "        if dev_id[at] < 0x20 or dev_id[at] >= 0x7f:",
        NATIVE),
    # -- the compiled encoder's fast path, at each of its boundaries
    'native-float-trailing-bytes': (
        'a lat or lon with bytes after its digits ("1.5x", "1.5.2",'
        ' "1.5e") is stored as the number they follow',
        "    return digits > 0 and at == length\n",
        "    return digits > 0\n",
        FAST_PATH),
    'native-float-as-strtod-reads-it': (
        'every lat or lon C\'s strtod reads whole is a plain decimal: hex'
        ' floats and nan payloads stored, not refused',
        "    cdef size_t digits = 0\n"
        "    if length == 0 or length > MAX_FLOAT_BYTES:\n"
        "        return False\n",
        "    cdef size_t digits = 0\n"
        "    cdef char buffer[MAX_FLOAT_BYTES + 1]\n"
        "    cdef char *end\n"
        "    if length == 0 or length > MAX_FLOAT_BYTES:\n"
        "        return False\n"
        "    memcpy(buffer, text, length)\n"
        "    buffer[length] = 0\n"
        "    strtod_l(buffer, &end, C_LOCALE)\n"
        "    return end == buffer + length\n",
        FAST_PATH),
    'native-lone-sign-is-zero': (
        'a lat or lon of a sign alone ("-") is stored as 0.0',
        "    if digits == 0:\n"
        "        return False\n"
        "    if at == length:\n",
        "    if at == length:\n",
        FAST_PATH),
    'native-any-decimal-point': (
        'any byte after a number\'s digits is taken for its point ("1x5"'
        ' stored as 1.0)',
        "    if text[at] != b'.':\n"
        "        return False\n",
        "",
        FAST_PATH),
    'native-app-digits-wrap': (
        'an app item of more than 10 digits wraps in 64 bits'
        ' (18446744073709551621 stored as app 5)',
        "                if digits == MAX_APP_DIGITS:\n"
        "                    return 1\n",
        "",
        FAST_PATH),
    'native-app-of-20-digits': (
        'app items of up to 20 digits are read in 64 bits, so 2^64 + 5'
        ' wraps to 5',
        "    MAX_APP_DIGITS = 10\n",
        "    MAX_APP_DIGITS = 20\n",
        FAST_PATH),
    'native-empty-app-item-is-zero': (
        'an empty app item ("1,,2", "1,") is stored as app 0, not dropped',
        "            if digits == 0 or value > max_app_id:",
        "            if value > max_app_id:",
        FAST_PATH),
    'native-any-app-separator': (
        'any byte between app ids separates them ("1x2" stored as 1 and 2)',
        "            if field[at] != b',':\n"
        "                return 1\n",
        "",
        FAST_PATH),
    'native-type-by-its-prefix': (
        'a device type is matched by its prefix ("idfax", "idfa " stored as'
        ' idfa:ID)',
        "        if types[index].fast and types[index].length == length \\\n"
        "                and memcmp(types[index].name, text, length) == 0:",
        "        if types[index].fast and types[index].length <= length \\\n"
        "                and memcmp(types[index].name, text,\n"
        "                           types[index].length) == 0:",
        FAST_PATH),
    'native-type-a-prefix-of-the-real-one': (
        'a line\'s type that is a prefix of a real one ("idf") is taken for'
        ' it',
        "        if types[index].fast and types[index].length == length \\\n",
        "        if types[index].fast and types[index].length >= length \\\n",
        FAST_PATH),
    'native-empty-id': (
        'an empty dev_id is stored under the key "idfa:"',
        "    if dev_id_length == 0:\n"
        "        return 1\n",
        "",
        FAST_PATH),
    'native-del-in-an-id': (
        'a dev_id with DEL (0x7f) in it is stored, not refused',
        "        if dev_id[at] <= 0x20 or dev_id[at] >= 0x7f:",
        "        if dev_id[at] <= 0x20 or dev_id[at] > 0x7f:",
        FAST_PATH),
    # The fast path's own edges, inclusive: a weaker one only hands clean
    # lines to Python (the same records, slower).
    'native-largest-app-slow': (
        'a line with the app 2^32-1 is left to Python',
        "            if digits == 0 or value > max_app_id:",
        "            if digits == 0 or value >= max_app_id:",
        FAST_PATH),
    'native-ten-digit-app-slow': (
        'a line with an app item of 10 digits is left to Python',
        "                if digits == MAX_APP_DIGITS:\n",
        "                if digits == MAX_APP_DIGITS - 1:\n",
        FAST_PATH),
    'native-31-byte-float-slow': (
        'a line with a lat or lon of 31 bytes is left to Python',
        "    if length == 0 or length > MAX_FLOAT_BYTES:",
        "    if length == 0 or length >= MAX_FLOAT_BYTES:",
        FAST_PATH),
    'native-250-byte-key-slow': (
        'a line with a key of 250 bytes is left to Python',
        "    if key_length > max_key:",
        "    if key_length >= max_key:",
        FAST_PATH),
    'native-negative-numbers-slow': (
        'a line with a negative lat or lon is left to Python',
        "    if text[0] == b'-':\n"
        "        at = 1\n",
        "",
        FAST_PATH),
    # -- the process: gevent's patches
    'patched-at-import': (
        'importing gmemcload monkey-patches the importer\'s process',
        "from proto import appsinstalled_pb2  # noqa: E402\n",
        "from proto import appsinstalled_pb2  # noqa: E402\n"
        "\n"
        "gevent.monkey.patch_all()\n",
        ['tests/test_parse.py::'
         'test_importing_changes_nothing_in_the_importers_process']),
    'main-not-cooperative': (
        'main() runs without gevent\'s patches, unless its caller made them',
        "    cooperative()\n"
        "    args = build_parser().parse_args(argv)\n",
        "    args = build_parser().parse_args(argv)\n",
        ['tests/test_parse.py::'
         'test_main_makes_the_process_cooperative_first']),
    # -- the encoder threads
    'chunks-taken-as-they-finish': (
        'the writer takes chunks in the order they are encoded, not read',
        "                    self.ordered.put(ChunkInFlight(\n"
        "                        load, self.encoder.submit(chunk.pieces),\n"
        "                        chunk.oversized, size))",
        "                    gevent.spawn(\n"
        "                        lambda result=self.encoder.submit("
        "chunk.pieces),\n"
        "                        load=load, oversized=chunk.oversized,\n"
        "                        size=size: (\n"
        "                            result.wait(),\n"
        "                            self.ordered.put(ChunkInFlight(\n"
        "                                load, result, oversized, size))))",
        ENCODERS),
    'an-encoder-out-of-memory-is-a-bug': (
        'an encoder out of memory is an internal error, not the file\'s'
        ' failure',
        "        except MemoryError:\n"
        "            load.fail(Verdict(Reason.NOT_READ_TO_END,",
        "        except ZeroDivisionError:\n"
        "            load.fail(Verdict(Reason.NOT_READ_TO_END,",
        ENCODERS),
    # -- memory
    'batches-not-cut-by-bytes': (
        'a lane\'s batch grows past BATCH_BYTES before it is cut',
        "                    if self.pending_count[number] and \\\n"
        "                            self.pending_bytes[number]"
        " + len(commands) \\\n"
        "                            > BATCH_BYTES:\n",
        "                    if False:\n",
        MEMORY_BATCHES),
    'lane-batches-not-cut': (
        'a chunk\'s commands for a lane are one piece, however big',
        "    if len(commands) <= limit:\n"
        "        yield count, commands\n",
        "    if True:\n"
        "        yield count, commands\n",
        MEMORY_BATCHES),
    'no-pending-byte-bound': (
        'the pending batches of all lanes together grow without a bound in'
        ' bytes',
        "            while self.pending_total > PENDING_BYTES:\n",
        "            while False:\n",
        ['tests/test_memory.py::'
         'test_pending_batches_of_many_lanes_are_bounded_in_bytes']),
    'no-lane-byte-budget': (
        'the writer hands batches to the lanes whatever bytes they hold',
        "        self.lane_bytes.take(len(batch.payload))\n",
        "",
        MEMORY_PAUSED),
    'no-chunk-byte-budget': (
        'chunks in flight are bounded by --workers only, not in bytes',
        "                    self.chunk_bytes.take(size)\n",
        "",
        MEMORY_BLANK + MEMORY_7_MB),
    'native-a-table-per-line': (
        'the compiled encoder fills a table of 32 bytes a line, blank lines'
        ' included',
        ("        cdef int *order = <int *>calloc(lanes, sizeof(int))\n",
         "                        start = end + 1\n"),
        ("        cdef int *order = <int *>calloc(lanes + 8 * size + 8,"
         " sizeof(int))\n",
         "                        order[lanes + 8 * start] = 1\n"
         "                        start = end + 1\n"),
        MEMORY_BLANK),
    'pending-left-for-the-next-file': (
        'a file that fails while writing leaves its pending records to be'
        ' sent with the next file\'s',
        "                self._drop_pending(load, words)\n",
        "",
        MEMORY_RUNNING_OUT),
    'out-of-memory-while-writing-is-a-bug': (
        'memory running out in the writer is logged as an internal error',
        "                if isinstance(exc, MemoryError):\n"
        "                    log.error('%s: out of memory while writing',"
        " load.name)\n",
        "                if False:\n"
        "                    log.error('%s: out of memory while writing',"
        " load.name)\n",
        MEMORY_RUNNING_OUT),
    'lost-records-not-counted': (
        'records a failure drops are counted nowhere, so the total says'
        ' they were stopped',
        "        if count:\n"
        "            load.acks.enqueued()\n",
        "        if False:\n"
        "            load.acks.enqueued()\n",
        MEMORY_RUNNING_OUT),
    'out-of-memory-while-reading-is-a-bug': (
        'memory running out in the reader is logged as an internal error',
        "            except MemoryError:  # the file's failure, not a bug\n",
        "            except ZeroDivisionError:\n",
        MEMORY_RUNNING_OUT),
    'out-of-memory-while-sending-is-a-bug': (
        'memory running out in a lane is logged as an internal error',
        "                except MemoryError:  # the batch's failure, not a"
        " bug\n",
        "                except ZeroDivisionError:\n",
        MEMORY_RUNNING_OUT),
    'in-process-encoder-fails-the-reader': (
        'with --workers 1 the encoder\'s failure is raised in the reader,'
        ' not given to the writer as the chunk\'s result',
        "        try:\n"
        "            result.set(self.encode(b''.join(pieces)))\n"
        "        except Exception as exc:\n"
        "            result.set_exception(exc)\n",
        "        result.set(self.encode(b''.join(pieces)))\n",
        MEMORY_RUNNING_OUT),
    'auto-counts-the-host': (
        '--workers auto counts the host\'s CPUs, not the ones the process'
        ' may use',
        "            usable = len(os.sched_getaffinity(0))\n",
        "            usable = os.cpu_count()\n",
        ['tests/test_memory.py::'
         'test_workers_auto_takes_the_cpus_the_process_may_use']),
}


class StaleMutant(Exception):
    """A mutant that cannot be made: its file is missing, or one of its
    codes is not found exactly once in it."""


class Outcome(enum.Enum):
    CAUGHT = 'caught'
    SURVIVED = 'SURVIVED'
    BROKEN = 'BROKEN'


class Run(NamedTuple):
    """A copy's build (if any) and tests.  ``step``: 'build' or 'pytest',
    the last one started; ``status``: its exit status, None if it ran
    past the timeout; ``seconds``: both together; ``output``: the tail of
    what they printed."""
    step: str
    status: Optional[int]
    seconds: float
    output: str


class Verdict(NamedTuple):
    """A mutant's outcome, why (see describe()), its run's seconds and
    output tail."""
    outcome: Outcome
    reason: str
    seconds: float
    output: str


def mutant_of(entry):
    """``entry`` (a Mutant, or a tuple of its fields) as a Mutant."""
    return entry if isinstance(entry, Mutant) else Mutant(*entry)


def target(name, mutant):
    """The file ``mutant`` changes, relative to the project: its path, or
    native_encoder.pyx for a name starting ``native-``, else gmemcload.py.
    """
    if mutant.path:
        return mutant.path
    return 'native_encoder.pyx' if name.startswith('native-') \
        else 'gmemcload.py'


def needs_build(path):
    """Whether a change to ``path`` (relative) rebuilds the extension."""
    path = os.path.normpath(path)
    return path.endswith(('.pyx', '.pxd')) or path == 'setup.py'


def mutated(name, mutant, root=ROOT):
    """The text of ``mutant``'s file under ``root`` with its replacements
    made; StaleMutant unless the file is inside ``root`` and each code is
    found in it exactly once (the one before it made)."""
    path = target(name, mutant)
    if os.path.isabs(path) or \
            os.path.normpath(path).split(os.sep)[0] == os.pardir:
        raise StaleMutant('mutant %s: %s is not a path inside the project'
                          % (name, path))
    try:
        with open(os.path.join(root, path)) as source:
            code = source.read()
    except OSError as exc:
        raise StaleMutant('mutant %s: %s' % (name, exc))
    old, new = mutant.old, mutant.new
    if isinstance(old, str):
        old, new = (old,), (new,)
    if len(old) != len(new):
        raise StaleMutant('mutant %s: %d codes, %d broken forms'
                          % (name, len(old), len(new)))
    for one_old, one_new in zip(old, new):
        found = code.count(one_old) if one_old else 0
        if found != 1:
            raise StaleMutant('mutant %s: its code is found %d times in'
                              ' %s, not once; update tests/mutants.py'
                              % (name, found, path))
        code = code.replace(one_old, one_new)
    return code


def project_files(root=ROOT):
    """The files a copy of ``root`` holds, relative to it, sorted: those
    git lists (tracked, and untracked ones it does not ignore) that
    exist, plus the built native_encoder*.so.  Without git (or outside a
    repository): every file but those of SKIPPED_ANYWHERE and, at the
    top, SKIPPED_AT_THE_TOP, compiled Python and native_encoder.c."""
    try:
        listed = subprocess.run(
            [GIT, 'ls-files', '-z', '--cached', '--others',
             '--exclude-standard'], cwd=root, check=True,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
        files = [os.fsdecode(name) for name in listed.split(b'\0') if name]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for directory, subdirectories, names in os.walk(root):
            subdirectories[:] = [
                name for name in subdirectories
                if name not in SKIPPED_ANYWHERE and not (
                    directory == root and name in SKIPPED_AT_THE_TOP)]
            files += [os.path.relpath(os.path.join(directory, name), root)
                      for name in names if not name.endswith('.pyc')]
        files = [name for name in files if name != 'native_encoder.c']
    files = [name for name in files
             if os.path.isfile(os.path.join(root, name))]
    files += [name for name in os.listdir(root)
              if name.startswith('native_encoder.') and name.endswith('.so')]
    return sorted(set(files))


def make_copy(copy, root=ROOT):
    """Copy project_files(root) into the directory ``copy``."""
    for name in project_files(root):
        destination = os.path.join(copy, name)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copy2(os.path.join(root, name), destination)


def _run(argv, cwd, timeout, log):
    """Run ``argv`` in a session of its own, its output to the file
    ``log``; its exit status, or None if it ran past ``timeout`` seconds:
    then its whole process group is killed (as on any exception)."""
    process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        return process.wait(timeout=timeout)
    except BaseException as exc:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            return None
        raise


def run_copy(copy, tests, build, timeout):
    """Build the extension in ``copy`` if ``build``, then run pytest on
    ``tests`` there (-x); both within ``timeout`` seconds.  A Run."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as log:
        step, status = 'build', 0
        if build:
            status = _run(BUILD, copy, timeout, log)
        if status == 0:
            step = 'pytest'
            status = _run(PYTEST + list(tests), copy,
                          max(1.0, started + timeout - time.monotonic()),
                          log)
        log.seek(0)
        lines = log.read().decode(errors='replace').splitlines()
    return Run(step, status, time.monotonic() - started,
               '\n'.join(lines[-TAIL_LINES:]))


def describe(run):
    """Why ``run`` ended as it did, in words, its exit status included."""
    if run.status is None:
        return '%s ran past the timeout (%.0f s); its processes were' \
            ' killed' % (run.step, run.seconds)
    if run.status < 0:
        return '%s was killed by %s' % (run.step,
                                        signal.Signals(-run.status).name)
    if run.step == 'build':
        return 'the build of the extension exited %d' % run.status
    return 'pytest exit %d: %s' % (
        run.status, PYTEST_EXITS.get(run.status, 'unknown'))


def judge(run):
    """A mutant's Verdict from its Run: caught only if pytest exited 1,
    SURVIVED if it exited 0, BROKEN otherwise."""
    outcome = Outcome.BROKEN
    if run.step == 'pytest' and run.status == 1:
        outcome = Outcome.CAUGHT
    elif run.step == 'pytest' and run.status == 0:
        outcome = Outcome.SURVIVED
    return Verdict(outcome, describe(run), run.seconds, run.output)


def run_mutant(name, mutant=None, timeout=MUTANT_TIMEOUT, root=ROOT):
    """Run ``mutant`` (by default MUTANTS[name]; a Mutant or a tuple) on
    a copy of ``root``: its Verdict.  StaleMutant if it cannot be made."""
    mutant = mutant_of(MUTANTS[name] if mutant is None else mutant)
    with tempfile.TemporaryDirectory(prefix='mutant-') as copy:
        make_copy(copy, root)
        code = mutated(name, mutant, copy)
        path = target(name, mutant)
        with open(os.path.join(copy, path), 'w') as out:
            out.write(code)
        return judge(run_copy(copy, mutant.tests, needs_build(path),
                              timeout))


def run_baseline(tests, build=False, timeout=BASELINE_TIMEOUT, root=ROOT):
    """Run ``tests`` on an unmutated copy of ``root``, built first if
    ``build``: a Run; it passed if its step is 'pytest' and status 0."""
    with tempfile.TemporaryDirectory(prefix='mutant-baseline-') as copy:
        make_copy(copy, root)
        return run_copy(copy, tests, build, timeout)


def passed(run):
    """Whether a baseline Run passed: pytest ran and exited 0."""
    return run.step == 'pytest' and run.status == 0


def baseline_tests(mutants):
    """The union of the tests ``mutants`` name, in order, each once; a
    test of a file named whole is left to that file."""
    tests = []
    for mutant in mutants:
        tests += [test for test in mutant.tests if test not in tests]
    whole = {test for test in tests if '::' not in test}
    return [test for test in tests
            if '::' not in test or test.split('::')[0] not in whole]


def cell(text):
    """``text`` for a markdown table cell."""
    return text.replace('|', '\\|')


def main(names, mutants=None, timeout=MUTANT_TIMEOUT,
         baseline_timeout=BASELINE_TIMEOUT):
    """Run the baseline, then the mutants ``names`` (all if empty) of
    ``mutants`` (by default MUTANTS), printing a markdown table; the exit
    status the module's docstring gives."""
    mutants = MUTANTS if mutants is None else mutants
    names = names or list(mutants)
    unknown = [name for name in names if name not in mutants]
    if unknown:
        print('unknown mutants: %s' % ', '.join(unknown), file=sys.stderr)
        return 2
    chosen = {name: mutant_of(mutants[name]) for name in names}
    stale = []
    for name, mutant in chosen.items():
        try:
            mutated(name, mutant)
        except StaleMutant as exc:
            stale.append(str(exc))
    if stale:
        print('\n'.join(stale), file=sys.stderr)
        return 2
    baseline = run_baseline(
        baseline_tests(chosen.values()),
        any(needs_build(target(name, mutant))
            for name, mutant in chosen.items()), baseline_timeout)
    if not passed(baseline):
        print('the baseline is broken: %s; no mutant ran\n%s'
              % (describe(baseline), baseline.output), flush=True)
        return 2
    print('baseline passed, unmutated (%.0f s)\n' % baseline.seconds)
    print('| mutant | what it breaks | tests | result |')
    print('|---|---|---|---|', flush=True)
    verdicts = {}
    for name, mutant in chosen.items():
        verdict = verdicts[name] = run_mutant(name, mutant, timeout)
        result = verdict.outcome.value
        if verdict.outcome is Outcome.BROKEN:
            result += ': ' + verdict.reason
        print('| %s | %s | %s | %s (%.0f s) |' % (
            name, cell(mutant.breaks), cell(' '.join(mutant.tests)),
            cell(result), verdict.seconds), flush=True)
    survived = [name for name in names
                if verdicts[name].outcome is Outcome.SURVIVED]
    broken = [name for name in names
              if verdicts[name].outcome is Outcome.BROKEN]
    if survived:
        print('%d of %d mutants SURVIVED: %s' % (
            len(survived), len(names), ', '.join(survived)))
    if broken:
        print('%d of %d mutants BROKEN, without a verdict: %s' % (
            len(broken), len(names), ', '.join(broken)))
        for name in broken:
            verdict = verdicts[name]
            print('\n-- %s: %s\n%s' % (name, verdict.reason,
                                       verdict.output))
    if survived or broken:
        return 1
    print('all %d mutants caught' % len(names))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
