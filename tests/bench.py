#!/usr/bin/env python3
"""make bench: gmemcload against the original algorithm and the ceiling.

All rows are measured in one run, on this machine, against four memcached
daemons that the bench starts on free loopback ports and stops afterwards:

* reference: the original memc_load.py algorithm (one process, a new client
  and one ``set`` per line) on a slice of the first file;
* ceiling: the same gzip reading, parsing and protobuf serialization as
  gmemcload, in one process, with no network at all;
* decompress only: gzip reading and cutting into chunks at line ends, the
  reader's share of the parent's work;
* the previous loader (the commit before the encoder pipeline, taken from
  git) with --workers 1, so that today's --workers 1 is compared with it in
  the same run;
* main before the compiled encoder (taken from git too, so it runs the
  pure-Python encoder) with --workers 1 and with its defaults;
* gmemcload with --workers 1, 2 and 4 and with its defaults, then a sweep of
  --batch-size and --uploaders on the first file;
* the encoders alone, compiled and pure Python, in the bench's process.

From the rows come the figures the compiled encoder is judged by: the
encoder alone per line, the CPU per line and the lines/s of the defaults,
and --workers 1 and the defaults against main before the compiled encoder.

The rows the targets compare run in turn, round after round, and each
keeps its fastest of ROUNDS runs: on a shared machine a slow spell then
hits them alike instead of skewing a ratio.  The daemons get one thread
each: the machine's cores are shared by the loader and four daemons.

Each run is a separate process; wall and CPU seconds and peak RSS come from
``os.wait4``.  After every loader run a sample of keys is read back from
memcached and compared with an independent encoding of the newest source
line for that key: a fast but wrong run is reported as FAIL, and the bench
then exits 1.  Results go to stdout as a Markdown table and to
``.bench/results.json``.
"""
import argparse
import functools
import gzip
import json
import os
import platform
import re
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

import memcache  # noqa: E402

import generate  # noqa: E402
import gmemcload  # noqa: E402
from daemons import MemcachedDaemon  # noqa: E402

BENCH_DIR = os.path.join(ROOT, '.bench')
GMEMCLOAD = os.path.join(ROOT, 'gmemcload.py')
DEVICE_TYPES = ('idfa', 'gaid', 'adid', 'dvid')
SAMPLE_ONE_IN = 256  # keys whose crc32 is 0 mod this are checked
REFERENCE_LINES = 20000
SWEEP_BATCH_SIZES = (100, 250, 500, 1000, 2000, 4000)
SWEEP_UPLOADERS = (1, 2, 4, 8)
# The last commit before the encoder pipeline: --workers 1 is compared
# with it.
PREVIOUS = 'e22443b'
# Main before the compiled encoder: its --workers 1 and its defaults are
# the rows the compiled encoder is judged against.
BEFORE_NATIVE = '4692634'
ENCODER_LINES = 200000  # lines the encoders alone are timed on
WORKERS = ('1', '2', '4')
ROUNDS = 3  # the compared rows are each the fastest of this many runs


# -- the two baselines, each run in a process of its own ----------------------

def run_reference(paths, addresses, limit):
    """The original memc_load.py algorithm: a client and a set per line."""
    from proto import appsinstalled_pb2
    done = 0
    for path in paths:
        with gzip.open(path, 'rt') as lines:
            for line in lines:
                if done >= limit:
                    return done
                line = line.strip()
                if not line:
                    continue
                parts = line.split('\t')
                if len(parts) < 5:
                    continue
                dev_type, dev_id, lat, lon, raw_apps = parts
                apps = [int(a.strip()) for a in raw_apps.split(',')]
                user_apps = appsinstalled_pb2.UserApps()
                user_apps.lat = float(lat)
                user_apps.lon = float(lon)
                user_apps.apps.extend(apps)
                client = memcache.Client([addresses[dev_type]])
                client.set('%s:%s' % (dev_type, dev_id),
                           user_apps.SerializeToString())
                done += 1
    return done


def run_decompress(paths):
    """Only read and cut into chunks, as the loader's reader does; returns
    the number of pieces."""
    import gmemcload
    from isal import igzip
    done = 0
    for path in paths:
        with open(path, 'rb') as raw, igzip.IGzipFile(fileobj=raw) as stream:
            for pieces, _ in gmemcload.read_chunks(stream.read):
                done += len(pieces)
    return done


def run_ceiling(paths):
    """Read and encode as gmemcload does, in one process; send nothing."""
    import gmemcload
    from isal import igzip
    encode = gmemcload.encode_chunk
    routes = gmemcload.build_routes(
        {t: ['127.0.0.1:1'] for t in DEVICE_TYPES}, 2).by_type
    done = 0
    for path in paths:
        with open(path, 'rb') as raw, igzip.IGzipFile(fileobj=raw) as stream:
            for pieces, _ in gmemcload.read_chunks(stream.read):
                done += encode(b''.join(pieces), routes).lines
    return done


# -- measuring -------------------------------------------------------------

def measure(argv):
    """Run ``argv``; return (exit status, wall s, CPU s, peak RSS MB,
    parent CPU s).  CPU s counts the process and its children (encoders);
    peak RSS is the largest of them; parent CPU s is what a loader logs of
    its own process, or None."""
    log_path = argv[argv.index('--log') + 1] if '--log' in argv else None
    if log_path and os.path.exists(log_path):
        os.remove(log_path)
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    # Peak RSS is the child's own high-water mark (VmHWM), read until it
    # exits: ru_maxrss carries over the bench's own peak through fork
    # and exec.
    peak_kb = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak_kb = max(peak_kb, vm_hwm_kb(process.pid))
        time.sleep(0.01)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return (process.returncode, wall, usage.ru_utime + usage.ru_stime,
            peak_kb / 1024, own_cpu(log_path))


def vm_hwm_kb(pid):
    """The VmHWM of ``pid`` in kB, 0 if it cannot be read."""
    try:
        with open('/proc/%d/status' % pid) as status:
            for line in status:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def own_cpu(log_path):
    """The loader's own CPU seconds, from its last 'CPU: X s in this
    process' line."""
    if not log_path or not os.path.exists(log_path):
        return None
    with open(log_path) as text:
        found = re.findall(r'CPU: ([0-9.]+) s in this process', text.read())
    return float(found[-1]) if found else None


def previous_loader(commit):
    """The loader as it was at ``commit``, checked out under .bench/, or
    None without git."""
    directory = os.path.join(BENCH_DIR, 'previous-%s' % commit)
    script = os.path.join(directory, 'gmemcload.py')
    if not os.path.exists(script):
        os.makedirs(os.path.join(directory, 'proto'), exist_ok=True)
        for name in ('gmemcload.py', 'proto/appsinstalled_pb2.py',
                     'proto/__init__.py'):
            shown = subprocess.run(['git', 'show', '%s:%s' % (commit, name)],
                                   cwd=ROOT, capture_output=True)
            if shown.returncode:
                return None
            with open(os.path.join(directory, name), 'wb') as out:
                out.write(shown.stdout)
    return script


def prepare_data(files, lines):
    """Generated files, cached in .bench/ across runs; undo old renames."""
    directory = os.path.join(BENCH_DIR, 'data-%dx%d' % (files, lines))
    marker = os.path.join(directory, 'complete')
    if not os.path.exists(marker):
        started = time.monotonic()
        generate.generate(directory, files=files, lines=lines, repeat=0.1,
                          seed=1)
        open(marker, 'w').close()
        print('generated %d x %d lines in %.1fs' % (
            files, lines, time.monotonic() - started), file=sys.stderr)
    restore_names(directory)
    return directory, [os.path.join(directory, name)
                       for name in generate.file_names(files)]


def restore_names(directory):
    """The spool as generated: the original names, and no journal (each
    run starts on an empty memcached, which a journal would rightly call
    a loss)."""
    for name in os.listdir(directory):
        if name.startswith('.') and name.endswith('.tsv.gz'):
            os.rename(os.path.join(directory, name),
                      os.path.join(directory, name[1:]))
        elif name.startswith(gmemcload.JOURNAL_FILE_NAME):
            os.unlink(os.path.join(directory, name))


def expected_sample(paths):
    """key -> value for a sample of keys, newest line winning."""
    from proto import appsinstalled_pb2
    sample = {}
    for path in paths:
        with gzip.open(path, 'rb') as lines:
            for line in lines:
                dev_type, dev_id, lat, lon, raw_apps = line.split(b'\t')
                key = dev_type + b':' + dev_id
                if zlib.crc32(key) % SAMPLE_ONE_IN:
                    continue
                message = appsinstalled_pb2.UserApps()
                message.lat, message.lon = float(lat), float(lon)
                message.apps.extend(int(a) for a in raw_apps.split(b','))
                sample[key] = message.SerializeToString()
    return sample


def check_sample(daemons, sample):
    """The number of sampled keys whose stored value is wrong or missing."""
    wrong = 0
    for dev_type in DEVICE_TYPES:
        keys = [k for k in sample if k.startswith(dev_type.encode() + b':')]
        client = memcache.Client([daemons[dev_type].address])
        got = {}
        for start in range(0, len(keys), 500):
            got.update(client.get_multi(keys[start:start + 500]))
        wrong += sum(got.get(key) != sample[key] for key in keys)
    return wrong


def flush(daemons):
    for daemon in daemons.values():
        memcache.Client([daemon.address]).flush_all()


class Bench:
    """Runs and records the rows of the table."""

    def __init__(self, daemons, directory, paths):
        self.daemons = daemons
        self.directory = directory
        self.paths = paths
        self.rows = []
        self.failed = False

    def baseline(self, mode, *extra):
        """A variant's command for one of this script's baseline modes."""
        return [sys.executable, __file__, '--mode', mode] + list(extra) + \
            self.paths

    def loader(self, paths_glob, *options, script=GMEMCLOAD):
        """A variant's command for gmemcload on this bench's daemons."""
        argv = [sys.executable, script, '--pattern', paths_glob,
                '--log', os.path.join(BENCH_DIR, 'run.log')]
        for dev_type in DEVICE_TYPES:
            argv += ['--' + dev_type, self.daemons[dev_type].address]
        return argv + list(options)

    def compare(self, variants, rounds=1):
        """Run each (name, lines, argv, sample) variant once per round, in
        turn, so that a slow spell of the machine hits them alike; keep
        each one's fastest run.  A variant with a sample is a loader run,
        and every run's sample of keys must check out.  Every run starts
        from the original file names and an empty memcached.  Returns the
        rows."""
        runs = {name: [] for name, _, _, _ in variants}
        wrong = dict.fromkeys(runs, 0)
        for _ in range(rounds):
            for name, _, argv, sample in variants:
                restore_names(self.directory)
                flush(self.daemons)
                runs[name].append(measure(argv))
                if sample is not None:
                    wrong[name] = max(wrong[name],
                                      check_sample(self.daemons, sample))
        rows = []
        for name, lines, _, sample in variants:
            status, wall, cpu, rss, own = _fastest(runs[name])
            status = max([status] + [run[0] for run in runs[name]])
            if sample is None:
                check = 'n/a'
            elif wrong[name]:
                check = 'FAIL (%d of %d keys wrong)' % (wrong[name],
                                                        len(sample))
            else:
                check = 'ok (%d keys)' % len(sample)
            rows.append(self._add(name, lines, status, wall, cpu, rss,
                                  check, own))
        return rows

    def _add(self, name, lines, status, wall, cpu, rss, check, own=None):
        row = {'name': name, 'lines': lines, 'wall_s': round(wall, 2),
               'cpu_s': round(cpu, 2), 'lines_per_s': round(lines / wall),
               'peak_rss_mb': round(rss, 1), 'check': check,
               'parent_cpu_s': own}
        if status != 0:
            row['check'] = 'FAIL (exit %d)' % status
        if row['check'].startswith('FAIL'):
            self.failed = True
        self.rows.append(row)
        print('%-34s %9d lines/s  %s' % (name, row['lines_per_s'],
                                         row['check']), file=sys.stderr)
        return row


def _fastest(runs):
    """The run with the shortest wall time: on a shared machine the others
    measure the neighbours as much as the code."""
    return min(runs, key=lambda run: run[1])


def count_lines(paths):
    total = 0
    for path in paths:
        with gzip.open(path, 'rb') as lines:
            total += sum(1 for _ in lines)
    return total


def machine():
    model = '?'
    with open('/proc/cpuinfo') as info:
        for line in info:
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    version = subprocess.run([MemcachedDaemon.binary(), '-V'],
                             capture_output=True, text=True).stdout.strip()
    return '%s, %d cores, Python %s, %s' % (
        model, os.cpu_count(), platform.python_version(), version)


def encoder_figures(paths):
    """Microseconds per line of the reference encode_chunk and of the
    compiled encoder, alone, on the first ENCODER_LINES lines of the first
    file (best of ROUNDS each, interleaved), with the loader's routes."""
    import gmemcload
    with gzip.open(paths[0], 'rb') as source:
        data = b''.join(line for _, line in zip(range(ENCODER_LINES),
                                                source))
    routes = gmemcload.build_routes(
        {t: ['127.0.0.1:%d' % (33013 + n)]
         for n, t in enumerate(gmemcload.DEVICE_TYPES)}, 2).by_type
    compiled = gmemcload.choose_encoder().new(routes)
    lines = data.count(b'\n')
    best = {'python': float('inf'), 'compiled': float('inf')}
    for _ in range(ROUNDS):
        for name, encode in (('python', functools.partial(
                gmemcload.encode_chunk, routes=routes)),
                             ('compiled', compiled)):
            started = time.process_time()
            encode(data)
            best[name] = min(best[name], time.process_time() - started)
    return {name: 1e6 * seconds / lines for name, seconds in best.items()}


def previous_figures(rows):
    """--workers 1 against the previous loader, as (name, value, target)."""
    one = rows['gmemcload --workers 1']
    previous = [row for name, row in rows.items()
                if name.startswith('previous loader')]
    if not previous:
        return []
    return [('--workers 1 against the previous loader',
             '%.2fx' % (one['lines_per_s'] / previous[0]['lines_per_s']),
             '>= 1.00x')]


def native_figures(rows, lines, encoders):
    """The compiled encoder's figures (issue: a native encoder), each
    (name, value, target)."""
    defaults = next(row for name, row in rows.items()
                    if name.startswith('gmemcload (defaults'))
    one = rows['gmemcload --workers 1']
    figures = [
        ('the encoder alone, compiled (pure Python: %.2f us)'
         % encoders['python'], '%.2f us/line' % encoders['compiled'],
         '<= 1.0 us/line'),
        ('CPU per line, all processes, the defaults',
         '%.2f us' % (1e6 * defaults['cpu_s'] / lines), '<= 3 us'),
        ('lines/s, the defaults', '%d' % defaults['lines_per_s'],
         '>= 300000'),
    ]
    before = {name.rsplit(' ', 1)[-1]: row for name, row in rows.items()
              if name.startswith('main before the compiled encoder')}
    if before:
        figures += [
            ('--workers 1 against main before the compiled encoder',
             '%.2fx' % (one['lines_per_s'] / before['1']['lines_per_s']),
             '>= 3.5x'),
            ('the defaults against main before the compiled encoder',
             '%.2fx' % (defaults['lines_per_s']
                        / before['defaults']['lines_per_s']), '>= 2x'),
        ]
    return figures


def figures_markdown(figures):
    return '\n'.join(['| figure | measured | target |', '|---|---:|---|']
                     + ['| %s | %s | %s |' % figure for figure in figures])


def markdown(rows, reference, ceiling):
    out = ['| run | lines | wall s | CPU s | parent CPU s | lines/s |'
           ' x reference | of ceiling | peak RSS MB | check |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    for row in rows:
        own = row.get('parent_cpu_s')
        out.append('| %s | %d | %.2f | %.2f | %s | %d | %.1fx | %.0f%% |'
                   ' %.0f | %s |' % (
                       row['name'], row['lines'], row['wall_s'],
                       row['cpu_s'], '%.2f' % own if own else '',
                       row['lines_per_s'], row['lines_per_s'] / reference,
                       100.0 * row['lines_per_s'] / ceiling,
                       row['peak_rss_mb'], row['check']))
    return '\n'.join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--files', type=int, default=3)
    parser.add_argument('--lines', type=int, default=500000)
    parser.add_argument('--real-size', type=int, default=0, metavar='LINES',
                        help='add a row: one file of LINES lines (3420000'
                             ' is a real minute file), with the defaults')
    parser.add_argument('--no-sweep', action='store_true',
                        help='skip the --batch-size and --uploaders sweep')
    parser.add_argument('--mode', choices=('reference', 'ceiling',
                                           'decompress'),
                        help=argparse.SUPPRESS)
    parser.add_argument('--addresses', help=argparse.SUPPRESS)
    parser.add_argument('--limit', type=int, help=argparse.SUPPRESS)
    parser.add_argument('paths', nargs='*', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode == 'reference':
        run_reference(args.paths, json.loads(args.addresses), args.limit)
        return 0
    if args.mode == 'ceiling':
        run_ceiling(args.paths)
        return 0
    if args.mode == 'decompress':
        run_decompress(args.paths)
        return 0

    os.makedirs(BENCH_DIR, exist_ok=True)
    directory, paths = prepare_data(args.files, args.lines)
    total = count_lines(paths)
    sample = expected_sample(paths)
    first_sample = expected_sample(paths[:1])
    daemons = {t: MemcachedDaemon(memory_mb=1024, threads=1)
               for t in DEVICE_TYPES}
    try:
        bench = Bench(daemons, directory, paths)
        addresses = json.dumps({t: d.address for t, d in daemons.items()})
        limit = min(REFERENCE_LINES, total)
        every_file = os.path.join(directory, '*.tsv.gz')
        previous = previous_loader(PREVIOUS)
        variants = [
            ('reference (original algorithm)', limit,
             bench.baseline('reference', '--addresses', addresses,
                            '--limit', str(limit)), None),
            ('ceiling (no network)', total, bench.baseline('ceiling'), None),
            ('decompress only', total, bench.baseline('decompress'), None),
        ]
        if previous:
            variants.append(('previous loader (%s) --workers 1' % PREVIOUS,
                             total, bench.loader(every_file, '--workers',
                                                 '1', script=previous),
                             sample))
        before = previous_loader(BEFORE_NATIVE)
        if before:
            variants += [
                ('main before the compiled encoder (%s) --workers 1'
                 % BEFORE_NATIVE, total,
                 bench.loader(every_file, '--workers', '1', script=before),
                 sample),
                ('main before the compiled encoder (%s) defaults'
                 % BEFORE_NATIVE, total,
                 bench.loader(every_file, script=before), sample)]
        variants += [('gmemcload --workers %s' % workers, total,
                      bench.loader(every_file, '--workers', workers), sample)
                     for workers in WORKERS]
        variants.append(('gmemcload (defaults: --workers auto = %d)'
                         % len(os.sched_getaffinity(0)), total,
                         bench.loader(every_file), sample))
        rows = bench.compare(variants, rounds=ROUNDS)
        reference, ceiling = rows[:2]
        named = {row['name']: row for row in rows}
        restore_names(directory)
        figures = previous_figures(named) + native_figures(
            named, total, encoder_figures(paths))
        if args.real_size:
            big_directory, big = prepare_data(1, args.real_size)
            big_sample = expected_sample(big)
            bench.compare([('real-size file (%d lines, %.0f MB), the defaults'
                            % (args.real_size,
                               os.path.getsize(big[0]) / 1e6),
                            args.real_size,
                            bench.loader(big[0]), big_sample)])
            restore_names(big_directory)
        if not args.no_sweep:
            first, lines = paths[0], total // len(paths)
            bench.compare(
                [('sweep: first file, --batch-size %d' % size, lines,
                  bench.loader(first, '--batch-size', str(size)),
                  first_sample) for size in SWEEP_BATCH_SIZES]
                + [('sweep: first file, --uploaders %d' % uploaders, lines,
                    bench.loader(first, '--uploaders', str(uploaders)),
                    first_sample) for uploaders in SWEEP_UPLOADERS])
    finally:
        for daemon in daemons.values():
            daemon.stop()
        restore_names(directory)
    table = markdown(bench.rows, reference['lines_per_s'],
                     ceiling['lines_per_s'])
    about = 'Machine: %s. Data: %d files x %d lines.' % (
        machine(), args.files, args.lines)
    print(about + '\n\n' + table + '\n\n' + figures_markdown(figures))
    with open(os.path.join(BENCH_DIR, 'results.json'), 'w') as out:
        json.dump({'machine': about, 'rows': bench.rows,
                   'figures': figures}, out, indent=1)
    return 1 if bench.failed else 0


if __name__ == '__main__':
    raise SystemExit(main())
