"""The harness does not fool itself.  tests/mutants.py judges a mutant by
pytest's exit status: caught only when the tests ran and some failed,
SURVIVED when they passed, BROKEN for any other end (no such test, a
module that does not import, a failed build, a hang); a baseline that
does not pass stops the run.  start_patched_loader refuses a patch that
would add a name to gmemcload instead of replacing one."""
import os
import subprocess
import time

import pytest

import conftest
import mutants
from mutants import Mutant, Outcome

HERE = 'tests/test_mutants.py'
PROBE = HERE + '::test_probe'
# What the probe checks.  The mutants below change this line in a copy;
# their code strings hold "\n" escaped, so it is found there only once.
PROBE_TOTAL = 20 + 22

OFF_BY_ONE = Mutant('the probe total is off by one', '= 20 + 22\n',
                    '= 20 + 23\n', [PROBE], HERE)
SAME_TOTAL = Mutant('the probe total is summed the other way round',
                    '= 20 + 22\n', '= 22 + 20\n', [PROBE], HERE)


def test_probe():
    """The mutants' target: passes unmutated."""
    assert PROBE_TOTAL == 42


def unique_line(path):
    """The first line of ``path`` (relative to the project) found there
    once: a code any mutant can replace, whatever else the file says."""
    with open(os.path.join(mutants.ROOT, path)) as source:
        text = source.read()
    return next(line + '\n' for line in text.splitlines()
                if line.strip() and text.count(line + '\n') == 1)


def gone(pid):
    """Whether process ``pid`` has ended (or is a zombie)."""
    try:
        with open('/proc/%d/stat' % pid) as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] in 'ZX'
    except FileNotFoundError:
        return True


def test_a_mutant_whose_test_fails_is_caught():
    verdict = mutants.run_mutant('off-by-one', OFF_BY_ONE)
    assert verdict.outcome is Outcome.CAUGHT, verdict
    assert verdict.reason.startswith('pytest exit 1:')


def test_a_mutant_whose_test_passes_survives():
    verdict = mutants.run_mutant('same-total', SAME_TOTAL)
    assert verdict.outcome is Outcome.SURVIVED, verdict


def test_a_mutant_whose_tests_do_not_exist_is_broken_not_caught():
    verdict = mutants.run_mutant('off-by-one', OFF_BY_ONE._replace(
        tests=[HERE + '::test_no_such_probe']))
    assert verdict.outcome is Outcome.BROKEN, verdict
    assert verdict.reason.startswith('pytest exit 4:')


def test_a_syntax_error_in_gmemcload_is_broken_not_caught():
    """conftest cannot import gmemcload: no test runs."""
    line = unique_line('gmemcload.py')
    verdict = mutants.run_mutant('syntax-error', Mutant(
        'gmemcload.py does not compile', line, line + ')\n', [PROBE]))
    assert verdict.outcome is Outcome.BROKEN, verdict
    assert verdict.reason.startswith('pytest exit 4:')
    assert 'SyntaxError' in verdict.output


def test_a_pyx_that_does_not_build_is_broken():
    line = unique_line('native_encoder.pyx')
    verdict = mutants.run_mutant('native-syntax-error', Mutant(
        'native_encoder.pyx does not compile', line, line + 'def (\n',
        [PROBE]))
    assert verdict.outcome is Outcome.BROKEN, verdict
    assert verdict.reason == 'the build of the extension exited 1'


def test_a_hang_is_broken_and_its_processes_are_killed(tmp_path):
    pid_file = tmp_path / 'child.pid'
    hang = ('= 20 + 22\nimport subprocess\n'
            'with open(%r, "w") as out:\n'
            '    out.write(str(subprocess.Popen(["sleep", "60"]).pid))\n'
            'subprocess.call(["sleep", "60"])\n' % str(pid_file))
    verdict = mutants.run_mutant('hang', OFF_BY_ONE._replace(new=hang),
                                 timeout=5)
    assert verdict.outcome is Outcome.BROKEN, verdict
    assert 'ran past the timeout' in verdict.reason
    assert verdict.seconds < 10
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not gone(child):
        assert time.monotonic() < deadline, 'the hung test left a process'
        time.sleep(0.05)


def test_a_code_not_found_once_stops_the_mutant():
    with pytest.raises(mutants.StaleMutant, match='found 0 times in'
                       ' gmemcload.py, not once'):
        mutants.run_mutant('stale', Mutant('', 'no such code', '', []))


def test_the_target_is_the_explicit_path_or_follows_the_name():
    mutant = Mutant('', '', '', [])
    assert mutants.target('native-x', mutant) == 'native_encoder.pyx'
    assert mutants.target('x', mutant) == 'gmemcload.py'
    assert mutants.target('native-x', mutant._replace(
        path='tests/conftest.py')) == 'tests/conftest.py'
    assert mutants.mutant_of(('b', 'o', 'n', ['t'], 'setup.py')).path \
        == 'setup.py'
    assert [mutants.needs_build(path) for path in (
        'native_encoder.pyx', 'x.pxd', 'setup.py', 'gmemcload.py')] \
        == [True, True, True, False]


def test_the_baseline_runs_each_named_test_once():
    assert mutants.baseline_tests([
        Mutant('', '', '', ['tests/a.py', 'tests/b.py::t']),
        Mutant('', '', '', ['tests/a.py::t', 'tests/b.py::t', 'tests/c.py']),
    ]) == ['tests/a.py', 'tests/b.py::t', 'tests/c.py']


@pytest.mark.parametrize('git', [mutants.GIT, '/nonexistent/git'])
def test_a_copy_holds_the_project_files_with_or_without_git(
        monkeypatch, git):
    monkeypatch.setattr(mutants, 'GIT', git)
    files = mutants.project_files()
    assert {'gmemcload.py', 'native_encoder.pyx', 'setup.py', 'setup.cfg',
            'proto/appsinstalled_pb2.py', 'tests/conftest.py',
            HERE} <= set(files)
    assert {name for name in os.listdir(mutants.ROOT)
            if name.startswith('native_encoder.') and name.endswith('.so')
            } <= set(files)
    assert not [name for name in files if name.startswith(
        ('.git/', '.venv/', 'build/')) or '__pycache__' in name]


def test_a_broken_baseline_stops_the_run(capsys):
    status = mutants.main(['off-by-one'], {'off-by-one': OFF_BY_ONE._replace(
        tests=[HERE + '::test_no_such_probe'])})
    out = capsys.readouterr().out
    assert status == 2
    assert 'the baseline is broken: pytest exit 4:' in out
    assert '| off-by-one |' not in out


def test_a_run_fails_for_a_survivor_or_a_broken_mutant(capsys):
    line = unique_line('gmemcload.py')
    status = mutants.main([], {
        'off-by-one': OFF_BY_ONE, 'same-total': SAME_TOTAL,
        'syntax-error': Mutant('', line, line + ')\n', [PROBE])})
    out = capsys.readouterr().out
    assert status == 1
    assert '| off-by-one |' in out and '| caught (' in out
    assert '1 of 3 mutants SURVIVED: same-total' in out
    assert '1 of 3 mutants BROKEN, without a verdict: syntax-error' in out


def test_a_patch_of_a_missing_name_starts_nothing(tmp_path, monkeypatch):
    def spawn(*args, **kwargs):
        raise AssertionError('a process was started')

    monkeypatch.setattr(subprocess, 'Popen', spawn)
    for patch, name in [
            ('gmemcload.no_such_name = 1', 'gmemcload.no_such_name'),
            ('def f():\n    pass\n\n\ngmemcload.igzip.IGzipFile.no_such'
             ' = f', 'gmemcload.igzip.IGzipFile.no_such'),
            ('gmemcload.MAX_WORKERS, gmemcload.no_such = 1, 2',
             'gmemcload.no_such')]:
        with pytest.raises(AssertionError, match='the patch replaces %s,'
                           ' which does not exist' % name.replace('.', r'\.')):
            conftest.start_patched_loader(tmp_path, None, patch)


def test_the_names_a_patch_assigns_are_found_wherever_it_assigns_them():
    assert sorted(conftest.patched_names(
        'import os\n'
        'gmemcload.a = 1\n'
        'x = gmemcload.b = 2\n'
        'gmemcload.c.d += 3\n'
        'gmemcload.e: int = 4\n'
        '(gmemcload.f, [*gmemcload.g]) = 5, [6]\n'
        'def h():\n'
        '    gmemcload.i = 7\n'
        'other.j = gmemcload.k = 8\n'
        'gmemcload.l[0] = gmemcload.m\n'
        'gmemcload.n.o = gmemcload.p()\n')) == [
            'gmemcload.a', 'gmemcload.b', 'gmemcload.c.d', 'gmemcload.e',
            'gmemcload.f', 'gmemcload.g', 'gmemcload.i', 'gmemcload.k',
            'gmemcload.n.o']
    conftest.assert_patch_replaces('gmemcload.find_files = len\n'
                                   'gmemcload.igzip.IGzipFile.read = len')
