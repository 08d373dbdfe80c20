#!/usr/bin/env python3
"""Write seeded, reproducible files shaped like the tracker's logs.

Each file is ``YYYYmmddHHMMSS.tsv.gz``, one minute apart, with the four
device types in equal shares, 32-hex-character device ids, lat and lon
uniform in [-180, 180] with 10 significant digits, and 1 to 110 app ids
(mean about 55) drawn from 1..9999.  ``--repeat`` is the share of lines
whose device id comes from a pool shared by every file, so those keys
recur across files and within a file (newest wins).

Speed comes from drawing app lists from a pre-generated pool.
"""
import argparse
import datetime
import os
import random
import sys

from isal import igzip

DEVICE_TYPES = ('idfa', 'gaid', 'adid', 'dvid')
FIRST_MINUTE = datetime.datetime(2017, 9, 29)
APP_LIST_POOL = 4096
SHARED_ID_POOL = 10000


def file_names(count, first=FIRST_MINUTE):
    """The names of ``count`` consecutive minute files from ``first``."""
    return ['%s.tsv.gz' % (first + datetime.timedelta(minutes=i))
            .strftime('%Y%m%d%H%M%S') for i in range(count)]


def after_processed(directory):
    """The minute after the newest file already processed (``.<name>``)
    in ``directory``, so that new files are not late; FIRST_MINUTE if
    there is none."""
    newest = FIRST_MINUTE - datetime.timedelta(minutes=1)
    if os.path.isdir(directory):
        for entry in os.listdir(directory):
            if entry.startswith('.') and entry.endswith('.tsv.gz'):
                try:
                    minute = datetime.datetime.strptime(
                        entry[1:-len('.tsv.gz')], '%Y%m%d%H%M%S')
                except ValueError:
                    continue
                newest = max(newest, minute)
    return newest + datetime.timedelta(minutes=1)


def generate_lines(rng, count, repeat, shared_ids, app_lists):
    """Yield ``count`` log lines (str, with '\\n')."""
    choice = rng.choice
    rand = rng.random
    getrandbits = rng.getrandbits
    uniform = rng.uniform
    for i in range(count):
        if rand() < repeat:
            dev_type, dev_id = choice(shared_ids)
        else:
            dev_type, dev_id = DEVICE_TYPES[i & 3], '%032x' % getrandbits(128)
        yield '%s\t%s\t%.10g\t%.10g\t%s\n' % (
            dev_type, dev_id, uniform(-180, 180), uniform(-180, 180),
            choice(app_lists))


def generate(directory, files=3, lines=1000, repeat=0.1, seed=1,
             first=FIRST_MINUTE):
    """Write the files into ``directory``; return their paths in order."""
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(seed)
    shared_ids = [(DEVICE_TYPES[i & 3], '%032x' % rng.getrandbits(128))
                  for i in range(SHARED_ID_POOL)]
    app_lists = [','.join(str(rng.randint(1, 9999))
                          for _ in range(rng.randint(1, 110)))
                 for _ in range(APP_LIST_POOL)]
    paths = []
    for name in file_names(files, first):
        path = os.path.join(directory, name)
        with igzip.open(path + '.part', 'wt', compresslevel=1) as out:
            batch = []
            for line in generate_lines(rng, lines, repeat, shared_ids,
                                       app_lists):
                batch.append(line)
                if len(batch) == 10000:
                    out.write(''.join(batch))
                    batch = []
            out.write(''.join(batch))
        os.rename(path + '.part', path)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('directory')
    parser.add_argument('--files', type=int, default=3,
                        help='number of files (default: %(default)s)')
    parser.add_argument('--lines', type=int, default=1000,
                        help='lines per file (default: %(default)s)')
    parser.add_argument('--repeat', type=float, default=0.1,
                        help='share of lines with a device id shared across'
                             ' files (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=1,
                        help='random seed (default: %(default)s)')
    parser.add_argument('--after-processed', action='store_true',
                        help='name the files from the minute after the'
                             ' newest processed file of the directory, so'
                             ' that they are not late (default: from %s)'
                             % FIRST_MINUTE.strftime('%Y%m%d%H%M%S'))
    args = parser.parse_args(argv)
    first = after_processed(args.directory) if args.after_processed \
        else FIRST_MINUTE
    for path in generate(args.directory, args.files, args.lines, args.repeat,
                         args.seed, first):
        print(path, file=sys.stderr)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
