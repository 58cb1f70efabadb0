"""Tests of the seams reshaped by issue 10 (to be folded into test_pihace.py's sections)."""

import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import pihace
from test_pihace import (CHANNEL_OPEN_OK, SELECT_OK, closed_port, counting_check, feed,  # noqa
                         frame, method_payload, opened_protocol, queue_depth, sstr, wait_until)


# ---------------------------------------------------------------------------
# errors and small helpers
# ---------------------------------------------------------------------------

def test_error_hierarchy_and_what_broker_closes_carry():
    for error in (pihace.ProtocolError, pihace.PublishError, pihace.ConnectionClosed,
                  pihace.ChannelClosed):
        assert issubclass(error, pihace.AMQPError) and issubclass(error, pihace.PihaceError)
    assert issubclass(pihace.LocalProtocolError, pihace.ProtocolError)
    assert issubclass(pihace.RemoteProtocolError, pihace.ProtocolError)
    closed = pihace.ChannelClosed(404, "NOT_FOUND - no exchange 'x'", 60, 40, cause="Basic.Publish")
    assert (closed.reply_code, closed.reply_text, closed.class_id, closed.method_id) == (
        404, "NOT_FOUND - no exchange 'x'", 60, 40)
    assert str(closed) == ("broker closed the channel: NOT_FOUND - no exchange 'x' "
                           "(reply code 404, in reply to Basic.Publish)")


WHERE = "amqp://edge:***@broker:5672/"


@pytest.mark.parametrize("error, where, expected", [
    (ConnectionRefusedError(111, "Connection refused"), None, "connection refused"),
    (FileNotFoundError(2, "No such file or directory", "/etc/app.conf"), None,
     "no such file or directory: '/etc/app.conf'"),
    (socket.gaierror(-2, "Name or service not known"), None,
     "cannot resolve the host name: Name or service not known"),
    (socket.timeout("timed out"), WHERE, f"timed out ({WHERE})"),
    (TimeoutError("timed out waiting for Queue.Declare-Ok"), WHERE,
     f"timed out waiting for Queue.Declare-Ok ({WHERE})"),
    (ValueError("boom"), None, "ValueError: boom"),
    (KeyError(), None, "KeyError"),
    (pihace.ConnectionClosed(403, "ACCESS_REFUSED - Login was refused"), WHERE,
     "broker closed the connection: ACCESS_REFUSED - Login was refused (reply code 403); "
     f"check the user name and password of {WHERE}"),
    (pihace.ConnectionClosed(530, "NOT_ALLOWED - vhost v not found"), WHERE,
     "broker closed the connection: NOT_ALLOWED - vhost v not found (reply code 530); "
     f"check the vhost of {WHERE}"),
    (pihace.ConnectionClosed(320, "CONNECTION_FORCED"), WHERE,
     "broker closed the connection: CONNECTION_FORCED (reply code 320)"),
    (pihace.PublishError("the broker refused the message (Basic.Nack)"), WHERE,
     "the broker refused the message (Basic.Nack)"),
])
def test_describe_error_says_what_went_wrong_in_one_line(error, where, expected):
    assert pihace.describe_error(error, where) == expected


def test_describe_error_escapes_control_characters_from_outside():
    hostile = pihace.ConnectionClosed(320, "\x1b[2J\x1b[32mStatus: Available\nforged\x85\x7f")
    reason = pihace.describe_error(hostile)
    assert reason == ("broker closed the connection: \\x1b[2J\\x1b[32mStatus: Available\\nforged"
                      "\\x85\\x7f (reply code 320)")
    assert reason.isprintable()


@pytest.mark.parametrize("value", [True, "5", None, 0, -1, float("nan"), 1e6, float("inf")])
def test_seconds_is_the_one_rule_for_durations(value):
    with pytest.raises(ValueError) as raised:
        pihace._seconds("interval", value)
    assert str(raised.value) == ("interval must be a positive number of seconds, below a million, "
                                 f"got {value!r}")


def test_the_logger_prints_nothing_when_the_application_configured_no_logging(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    code = (f"import pihace\n"
            f"hc = pihace.HealthCheck()\n"
            f"pusher = pihace.AMQPPusher(hc, 'amqp://127.0.0.1:{port}/', buffer_size=1)\n"
            f"pusher.push(); pusher.push()\n"  # the second drops the first: a warning
            f"assert pusher.dropped == 1\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(pihace.__file__), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_logger_still_reaches_configured_handlers(caplog):
    with caplog.at_level(logging.WARNING, logger="pihace"):
        pihace.log.warning("hello %s", "there")
    assert caplog.records[-1].getMessage() == "hello there"
    assert caplog.records[-1].name == "pihace"


# ---------------------------------------------------------------------------
# AMQP protocol: what it owns
# ---------------------------------------------------------------------------

def confirming_protocol():
    protocol = opened_protocol()
    protocol.open_channel(1)
    feed(protocol, CHANNEL_OPEN_OK, "whole")
    protocol.send_method(1, "Confirm.Select")
    feed(protocol, SELECT_OK, "whole")
    protocol.data_to_send()
    return protocol


def ack(tag, multiple=False, nack=False):
    return frame(1, 1, method_payload(60, 120 if nack else 80,
                                      tag.to_bytes(8, "big") + bytes([multiple])))


RETURN = frame(1, 1, method_payload(60, 50, b"\x01\x38" + sstr("NO_ROUTE") + sstr("")
                                    + sstr("nowhere")))


def returned_content(message_id):
    return (frame(2, 1, b"\x00\x3c\x00\x00" + (2).to_bytes(8, "big") + b"\x00\x80"
                  + sstr(message_id)) + frame(3, 1, b"{}"))


@pytest.mark.parametrize("how", ["whole", "bytewise", "halves"])
def test_confirms_name_the_message_and_a_return_settles_with_its_ack(how):
    protocol = confirming_protocol()
    for message_id in ("a", "b", "c", "d"):
        protocol.publish(1, "", "q", b"{}", b"\x00\x00", mandatory=True, message_id=message_id)
    events = feed(protocol, ack(1) + RETURN + returned_content("b") + ack(3, multiple=True)
                  + ack(4, nack=True) + b"\x08\x00", how)  # plus the start of a heartbeat
    assert [(type(e).__name__, e.message_id, e.delivery_tag) for e in events] == [
        ("Acked", "a", 1), ("Returned", "b", 2), ("Acked", "c", 3), ("Nacked", "d", 4)]
    assert (events[1].reply_code, events[1].routing_key) == (312, "nowhere")


@pytest.mark.parametrize("data, words", [
    (ack(1), "awaits no such confirm"),                   # nothing was published
    (ack(5, multiple=True), "awaits no such confirm"),    # a tag never used
    (RETURN + returned_content("nobody"), "awaits no confirm"),
    (frame(1, 1, method_payload(50, 11, sstr("q") + b"\x00" * 8)), "nothing was awaited"),
    (SELECT_OK, "nothing was awaited"),                   # a second Select-Ok
])
def test_what_the_client_did_not_ask_for_is_a_protocol_error(data, words):
    protocol = confirming_protocol()
    with pytest.raises(pihace.RemoteProtocolError) as raised:
        feed(protocol, data, "whole")
    assert words in str(raised.value)


def test_an_ack_of_an_already_confirmed_tag_is_a_protocol_error_but_multiple_is_fine():
    protocol = confirming_protocol()
    protocol.publish(1, "", "q", b"", b"\x00\x00", message_id="a")
    protocol.publish(1, "", "q", b"", b"\x00\x00", message_id="b")
    assert [e.message_id for e in feed(protocol, ack(1), "whole")] == ["a"]
    assert [e.message_id for e in feed(protocol, ack(2, multiple=True), "whole")] == ["b"]
    assert feed(protocol, ack(2, multiple=True), "whole") == []  # nothing left: harmless
    with pytest.raises(pihace.RemoteProtocolError):
        feed(protocol, ack(2), "whole")


def test_after_a_protocol_error_the_protocol_refuses_further_use():
    protocol = confirming_protocol()
    with pytest.raises(pihace.RemoteProtocolError):
        feed(protocol, b"\x09" + b"\x00" * 7, "whole")  # an unknown frame type
    assert protocol.state == "error"
    for use in (protocol.next_event, lambda: protocol.receive_data(b"\x08"),
                lambda: protocol.publish(1, "", "q", b"", b"\x00\x00"),
                lambda: protocol.send_method(1, "Queue.Declare", queue="q"),
                protocol.close):
        with pytest.raises(pihace.LocalProtocolError) as raised:
            use()
        assert "broke the protocol earlier (unknown frame type 9" in str(raised.value)


CHANNEL_CLOSE_OK = frame(1, 1, method_payload(20, 41))


@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_the_client_closes_a_channel_and_may_open_it_again(how):
    protocol = confirming_protocol()
    protocol.publish(1, "", "q", b"", b"\x00\x00", message_id="a")
    protocol.data_to_send()
    protocol.close_channel(1)
    # Channel.Close on channel 1: reply code 200, "bye", class 0, method 0
    assert protocol.data_to_send() == (b"\x01\x00\x01\x00\x00\x00\x0e\x00\x14\x00\x28\x00\xc8"
                                       b"\x03bye\x00\x00\x00\x00\xce")
    assert not protocol.channel_is_open(1)
    with pytest.raises(pihace.LocalProtocolError):
        protocol.publish(1, "", "q", b"", b"\x00\x00")
    # until Close-Ok, what else comes on the channel is dropped (its Ack included)
    assert feed(protocol, ack(1) + RETURN + returned_content("a"), how) == []
    events = feed(protocol, CHANNEL_CLOSE_OK, how)
    assert [e.name for e in events] == ["Channel.Close-Ok"]
    assert 1 not in protocol.channels
    protocol.open_channel(1)
    assert protocol.data_to_send() == b"\x01\x00\x01\x00\x00\x00\x05\x00\x14\x00\x0a\x00\xce"


def test_an_ack_of_tag_0_with_multiple_confirms_everything_outstanding():
    protocol = confirming_protocol()
    for message_id in ("a", "b", "c"):
        protocol.publish(1, "", "q", b"", b"\x00\x00", message_id=message_id)
    events = feed(protocol, ack(0, multiple=True), "whole")
    assert [(e.message_id, e.delivery_tag) for e in events] == [("a", 1), ("b", 2), ("c", 3)]


CHANNEL_CLOSE_404 = frame(1, 1, method_payload(20, 40, b"\x01\x94" + sstr("NOT_FOUND")
                                               + b"\x00\x3c\x00\x28"))


@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_a_close_from_the_broker_crossing_ours_waits_for_its_close_ok(how):
    protocol = confirming_protocol()
    protocol.close_channel(1)
    protocol.data_to_send()
    events = feed(protocol, CHANNEL_CLOSE_404, how)
    assert [(e.name, e.args["reply_code"]) for e in events] == [("Channel.Close", 404)]
    assert protocol.data_to_send() == frame(1, 1, method_payload(20, 41))  # answered
    assert 1 in protocol.channels  # the broker still answers our Close
    assert [e.name for e in feed(protocol, CHANNEL_CLOSE_OK, how)] == ["Channel.Close-Ok"]
    assert 1 not in protocol.channels and protocol.state == "open"


def test_a_nowait_method_awaits_no_reply():
    protocol = opened_protocol()
    protocol.open_channel(1)
    feed(protocol, CHANNEL_OPEN_OK, "whole")
    protocol.send_method(1, "Queue.Declare", queue="q", nowait=True)
    protocol.send_method(1, "Queue.Declare", queue="r")  # allowed: nothing was awaited


def test_one_synchronous_method_at_a_time_on_a_channel():
    protocol = opened_protocol()
    protocol.open_channel(1)
    feed(protocol, CHANNEL_OPEN_OK, "whole")
    protocol.send_method(1, "Queue.Declare", queue="q")
    with pytest.raises(pihace.LocalProtocolError) as raised:
        protocol.send_method(1, "Queue.Declare", queue="r")
    assert "still awaits Queue.Declare-Ok" in str(raised.value)
    declare_ok = frame(1, 1, method_payload(50, 11, sstr("q") + b"\x00" * 8))
    assert [e.name for e in feed(protocol, declare_ok, "bytewise")] == ["Queue.Declare-Ok"]
    protocol.send_method(1, "Queue.Declare", queue="r")  # the reply came: allowed again


# ---------------------------------------------------------------------------
# transport: BlockingConnection and open_connection, against a real RabbitMQ
# ---------------------------------------------------------------------------

def open_to(url, **kwargs):
    return pihace.open_connection([pihace.AMQPParameters(url)], time.monotonic() + 10,
                                  **kwargs)


def message(body, message_id, routing_key, exchange=""):
    return pihace._Message(body, pihace.encode_properties({"message_id": message_id}),
                           message_id, exchange, routing_key)


def test_blocking_connection_declares_publishes_and_collects_outcomes(rabbit, unique_queue,
                                                                      get_message):
    connection = open_to(rabbit.url)
    try:
        assert connection.is_open and not connection.channel_is_open(1)
        deadline = time.monotonic() + 10
        connection.open_channel(1, deadline, confirm=True)
        assert connection.channel_is_open(1)
        reply = connection.call(1, "Queue.Declare", deadline, queue=unique_queue, durable=True)
        assert reply.name == "Queue.Declare-Ok" and reply.args["queue"] == unique_queue
        outcomes = connection.publish(1, [message(b"one", "m1", unique_queue),
                                          message(b"lost", "m2", "no-such-queue"),
                                          message(b"two", "m3", unique_queue)],
                                      deadline, mandatory=True)
        assert outcomes == {
            "m1": (True, None),
            "m2": (True, "the broker could not route the message: NO_ROUTE (exchange '', "
                         "routing key 'no-such-queue')"),
            "m3": (True, None)}
        assert [get_message(unique_queue)[2] for _ in range(2)] == [b"one", b"two"]
        connection.close_channel(1, deadline)
        assert not connection.channel_is_open(1)
        connection.open_channel(1, deadline, confirm=False)  # the number is free again
        assert connection.publish(1, [message(b"three", "m4", unique_queue)], deadline) == {
            "m4": (True, None)}
        assert get_message(unique_queue)[2] == b"three"
    finally:
        connection.close(time.monotonic() + 5)
    assert not connection.is_open


def test_closing_a_channel_the_broker_closes_at_the_same_time(rabbit):
    connection = open_to(rabbit.url)
    try:
        deadline = time.monotonic() + 10
        connection.open_channel(1, deadline, confirm=False)
        # published and closed in one write: the broker's Close (404) crosses ours
        connection.protocol.publish(1, "no-such-exchange", "q", b"{}", b"\x00\x00")
        connection.close_channel(1, deadline)
        assert not connection.channel_is_open(1) and connection.is_open
        connection.open_channel(1, deadline, confirm=False)
        assert connection.channel_is_open(1)
    finally:
        connection.close(time.monotonic() + 5)


def test_keep_alive_says_when_the_next_heartbeat_is_due(rabbit):
    connection = open_to(rabbit.url, heartbeat=4)
    try:
        due = connection.keep_alive(time.monotonic() + 5)
        assert 0 < due <= 3.0  # at the latest after three quarters of the period
    finally:
        connection.close(time.monotonic() + 5)
    off = open_to(rabbit.url + "?heartbeat=0")
    try:
        assert off.keep_alive(time.monotonic() + 5) is None
    finally:
        off.close(time.monotonic() + 5)


def test_wait_for_names_what_did_not_come(rabbit):
    connection = open_to(rabbit.url)
    try:
        with pytest.raises(TimeoutError) as raised:
            connection.wait_for(lambda: False, time.monotonic() + 0.2, "for Godot")
        assert str(raised.value) == "timed out waiting for Godot"
        assert connection.is_open  # a wait that timed out leaves the connection usable
    finally:
        connection.close(time.monotonic() + 5)


def test_open_connection_fails_over_and_chooses_the_heartbeat(rabbit, closed_port):
    dead = pihace.AMQPParameters(f"amqp://127.0.0.1:{closed_port}/?heartbeat=5")
    alive = pihace.AMQPParameters(rabbit.url + "?heartbeat=7")
    connection = pihace.open_connection([dead, alive], time.monotonic() + 10)
    try:
        assert connection.parameters is alive and connection.is_open
        assert connection.protocol.heartbeat == 7  # the URL's, when none is given
    finally:
        connection.close(time.monotonic() + 5)
    explicit = pihace.open_connection([alive], time.monotonic() + 10, heartbeat=0)
    try:
        assert explicit.protocol.heartbeat == 0
    finally:
        explicit.close(time.monotonic() + 5)
    with pytest.raises(ConnectionRefusedError) as raised:
        pihace.open_connection([dead], time.monotonic() + 10)
    assert f"127.0.0.1:{closed_port}" in str(raised.value)


def test_a_wakeup_ends_a_long_wait_from_another_thread():
    wakeup = pihace.Wakeup()
    try:
        woken = threading.Event()

        def wait():
            wakeup.wait(60)
            woken.set()

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        wakeup.wake()
        assert woken.wait(10)
        thread.join(10)
        wakeup.wake()
        wakeup.wake()  # several wakes: the next wait returns at once, and drains them
        wakeup.wait(60)
    finally:
        wakeup.close()


# ---------------------------------------------------------------------------
# pusher: idle pushers sleep
# ---------------------------------------------------------------------------

def test_an_idle_loop_sleeps_until_the_next_heartbeat_not_in_slices(rabbit, unique_queue,
                                                                    monkeypatch):
    waits = []
    real_wait_io = pihace._wait_io

    def recording_wait_io(socks, writing, timeout):
        if len(socks) == 2:  # the loop's idle wait: the wakeup and the broker's socket
            waits.append(timeout)
        return real_wait_io(socks, writing, timeout)

    monkeypatch.setattr(pihace, "_wait_io", recording_wait_io)
    pusher = pihace.AMQPPusher(counting_check(), rabbit.url, unique_queue, heartbeat=60)
    thread = threading.Thread(target=pusher.push_forever_in_loop, args=(60,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: waits, 20, "the loop to wait after its first report")
    finally:
        stopped_at = time.monotonic()
        pusher.stop()
        thread.join(10)
    assert not thread.is_alive() and time.monotonic() - stopped_at < 5
    assert queue_depth(rabbit.url, unique_queue) == 1
    # one wait until the next heartbeat is due (45 s, or the broker's at 30 s), not every 0.25 s
    assert waits[0] > 20


def test_a_stop_before_the_loop_is_kept_and_a_later_loop_runs_again(rabbit, unique_queue):
    pusher = pihace.AMQPPusher(counting_check(), rabbit.url, unique_queue)
    pusher.stop()
    pusher.push_forever_in_loop(60)  # returns at once: stopped before it began
    assert queue_depth(rabbit.url, unique_queue) == 0
    thread = threading.Thread(target=pusher.push_forever_in_loop, args=(60,), daemon=True)
    thread.start()
    wait_until(lambda: queue_depth(rabbit.url, unique_queue) == 1, 20, "a first report")
    pusher.stop()
    thread.join(10)
    assert not thread.is_alive()


def connection_names(rabbit):
    return rabbit.ctl("list_connections", "client_properties")


@pytest.mark.rabbit_control
def test_the_idle_loop_keeps_alive_a_connection_another_thread_opened(rabbit, unique_queue):
    pusher = pihace.AMQPPusher(counting_check(), rabbit.url + "?heartbeat=1", unique_queue,
                               connection_name="idle-adopts")
    thread = threading.Thread(target=pusher.push_forever_in_loop, args=(60,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: queue_depth(rabbit.url, unique_queue) == 1, 20, "a first report")
        pusher.close()  # from this thread, while the loop sleeps ...
        assert pusher.publish(b"{}") is True  # ... and a new connection, opened here
        time.sleep(4)  # idle for four heartbeat periods: the time itself is under test
        assert pusher.publish(b"{}") is True
        assert pusher.connections_opened == 2  # the second one lived: its heartbeats went out
    finally:
        pusher.stop()
        thread.join(10)


@pytest.mark.rabbit_control
def test_a_channel_closed_while_idle_leaves_the_connection_alive(rabbit):
    pusher = pihace.AMQPPusher(counting_check(), rabbit.url + "?heartbeat=1", "q",
                               exchange="no-such-exchange", confirm=False,
                               connection_name="idle-channel-closed")
    thread = threading.Thread(target=pusher.push_forever_in_loop, args=(60,), daemon=True)
    thread.start()
    try:
        # the broker closes the channel (404) after the first report: noticed while idle
        wait_until(lambda: pusher.connections_opened == 1 and not pusher._declared, 20,
                   "the broker to close the channel")
        time.sleep(4)  # idle for four heartbeat periods: the time itself is under test
        assert "idle-channel-closed" in connection_names(rabbit)
        assert pusher.connections_opened == 1
    finally:
        pusher.stop()
        thread.join(10)
