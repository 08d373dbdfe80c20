"""The wire: replies counted and classified, connections in doubt settled
before anything newer is sent, and before the run exits."""
import socket

import pytest

import gmemcload
from conftest import (assert_all_in_fake, lines_for, listing, run,
                      same_server, wait_for, write_gz)
from gmemcload import ProtocolError, read_replies

FIRST, SECOND = '20170929000000.tsv.gz', '20170929000100.tsv.gz'
ONE_LANE = ('--workers', '1', '--uploaders', '1')


@pytest.mark.parametrize('part_seconds', [0.0, 0.1])
def test_a_stale_batch_never_lands_after_a_newer_one(
        tmp_path, fake_memcached, part_seconds):
    # memcached stalls on the first connection's first set, then runs all
    # it holds, after what a newer connection sent meanwhile.  With
    # ``part_seconds`` it runs the stale sets one at a time, that far
    # apart: the first reply does not settle the connection, only its end
    # does, and anything newer sent before that end would be overwritten.
    fake_memcached.stall_sets = 1
    fake_memcached.stall_seconds = 1.0
    fake_memcached.stall_part_seconds = part_seconds
    older = lines_for('idfa', 50)
    newer = lines_for('idfa', 50, version=9)
    write_gz(tmp_path / FIRST, older)
    write_gz(tmp_path / SECOND, newer)
    status, text = run(tmp_path, same_server(fake_memcached), *ONE_LANE,
                       '--timeout', '0.3', '--retries', '10',
                       '--batch-size', '25')
    assert status == 0, text
    assert 'retry 1/10' in text
    wait_for(lambda: fake_memcached.serving() == 0, 10)
    assert_all_in_fake(fake_memcached, newer)


def test_the_run_settles_an_abandoned_connection_before_it_exits(
        tmp_path, fake_memcached):
    # The set times out at 1 s and is answered at 1.5 s: within the one
    # more timeout the run gives its abandoned connections before it ends.
    fake_memcached.stall_sets = 1
    fake_memcached.stall_seconds = 1.5
    write_gz(tmp_path / FIRST, ['idfa\tk\t1\t1\t1'])
    status, text = run(tmp_path, same_server(fake_memcached), *ONE_LANE,
                       '--timeout', '1', '--retries', '0')
    assert status == 1, text
    assert 'kept: 1 records not acknowledged' in text
    # Its write landed before the run ended, not during the next one.
    assert b'idfa:k' in fake_memcached.data
    assert 'still unanswered' not in text


@pytest.mark.parametrize('fault, logged', [
    ('garbage_replies', "unexpected reply b'ERROR'; retry 1/5"),
    ('extra_replies', 'more replies than commands; retry 1/5'),
])
def test_replies_out_of_step_resend_the_batch_on_a_fresh_connection(
        tmp_path, fake_memcached, fault, logged):
    # A reply a set cannot get, or one reply too many: the connection is
    # out of step, so no reply on it proves anything.  Nothing is counted
    # as refused, and the batch goes again.
    setattr(fake_memcached, fault, 1)
    lines = lines_for('adid', 200)
    write_gz(tmp_path / FIRST, lines)
    status, text = run(tmp_path, same_server(fake_memcached), *ONE_LANE,
                       '--batch-size', '50')
    assert status == 0, text
    assert logged in text
    assert 'total: 1 files, 200 lines, 200 stored, 0 errors' in text
    assert_all_in_fake(fake_memcached, lines)
    assert listing(tmp_path) == ['.' + FIRST]


# -- read_replies, with canned replies --

def canned(*chunks):
    """A recv() that hands out ``chunks``, then the end of the stream; it
    takes a size as a socket's recv does."""
    pending = list(chunks)

    def recv(size):
        assert isinstance(size, int) and size >= 4096, size
        return pending.pop(0) if pending else b''

    return recv


def test_replies_split_anywhere_across_reads_are_counted():
    replies = b'STORED\r\n' * 3
    for cut in range(1, len(replies)):
        assert read_replies(canned(replies[:cut], replies[cut:]), 3) == []


def test_a_refusal_in_the_middle_is_that_record_alone():
    refused = read_replies(canned(
        b'STORED\r\nSERVER_ERROR object too large for cache\r\n',
        b'NOT_STORED\r\nSTORED\r\n'), 4)
    assert refused == [(1, b'SERVER_ERROR object too large for cache'),
                       (2, b'NOT_STORED')]


def test_one_more_reply_than_commands_is_a_protocol_error():
    with pytest.raises(ProtocolError, match='more replies than commands'):
        read_replies(canned(b'STORED\r\nSTORED\r\nSTORED\r\n'), 2)


def test_a_reply_a_set_cannot_get_is_a_protocol_error():
    for garbage in (b'ERROR\r\n', b'VALUE k 0 1\r\n', b'\x00\xff\r\n'):
        with pytest.raises(ProtocolError, match='unexpected reply'):
            read_replies(canned(b'STORED\r\n', garbage), 2)


def test_a_stream_that_ends_early_is_a_connection_error():
    with pytest.raises(ConnectionError, match='after 1 of 3 replies'):
        read_replies(canned(b'STORED\r\nSTO'), 3)


def test_a_kept_check_connection_that_died_is_not_a_failed_try(
        memcached_set):
    # The rename-time check keeps its connection for the next file; one
    # that died meanwhile (memcached closed it) is replaced at once, even
    # with --retries 0: only the fresh connection's answer counts.
    server = memcached_set['idfa']
    settings = type('Settings', (), {'timeout': 2.0, 'accept_evictions':
                                     False,
                                     'retry': gmemcload.RetryPolicy(0)})
    check = gmemcload.InstanceCheck(settings, {})
    kept, peer = socket.socketpair()
    peer.close()  # the server's end is gone
    check.connections[server.address] = kept
    try:
        answer, error = check._ask(server.address)
        assert error is None
        (instance, connections, dropped), found = answer
        assert found == {}
        assert instance is not None and connections >= 1
        assert dropped == (0, 0, 0)
        assert check.connections[server.address] is not kept
    finally:
        check.close()


# -- the records read back at a rename --

def test_the_last_commands_of_a_batch_are_found_whatever_its_values_hold():
    # A value may hold anything, a command's own header included: each
    # boundary found from the end is proven by parsing to the exact end.
    tricky = [b'\r\nset fake 0 0 3\r\nabc\r\n', b'set a 0 0 1\r\n', b'\r\n',
              b'x\r\nset ', b'', b'\r\nset b 0 0 999\r\n']
    records = [(b'k%d' % number, value)
               for number, value in enumerate(tricky * 3)]
    payload = b''.join(gmemcload.set_command(key, value)
                       for key, value in records)
    for most in (1, 3, 8, len(records), len(records) + 5):
        assert gmemcload.last_commands(payload, most) == \
            records[-most:], most
    assert gmemcload.last_commands(b'', 8) == []


def test_read_back_gives_the_values_held_and_skips_the_missing(
        memcached_set):
    server = memcached_set['idfa']
    big = bytes(range(256)) * 4000  # about 1 MB, every byte value
    server.client().set('there', b'\r\nEND\r\n')
    server.client().set('big', big)
    with socket.create_connection(('127.0.0.1', server.port)) as sock:
        assert gmemcload.read_back(sock, [b'there', b'gone', b'big']) == {
            b'there': gmemcload.value_digest(b'\r\nEND\r\n'),
            b'big': gmemcload.value_digest(big)}
        assert gmemcload.read_back(sock, [b'gone']) == {}
