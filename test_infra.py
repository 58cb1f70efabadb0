"""Tests of the test infrastructure itself: faultproxy.py and rabbitnode.RabbitCluster."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

import rabbitnode
from faultproxy import FaultProxy, wait_until

SILENCE = 0.3  # how long "nothing arrives" is watched for


# ---------------------------------------------------------------- an echo server to proxy to

class EchoServer:
    """Echoes every connection on 127.0.0.1; counts what it received; ends a stream on EOF."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.accepted = 0
        self.eofs = 0
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    self.eofs += 1
                    conn.shutdown(socket.SHUT_WR)
                    return
                self.received += len(data)
                conn.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux), which close() does not
        except OSError:
            pass
        self.sock.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        for thread in [self._accepter, *self._threads]:
            thread.join(5)


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo):
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        yield proxy


def connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"end of stream after {len(data)} of {size} bytes")
        data += chunk
    return data


def assert_silent(sock: socket.socket, seconds: float = SILENCE) -> None:
    """Nothing arrives on sock for `seconds` (a bounded wait for an absence)."""
    sock.settimeout(seconds)
    with pytest.raises(socket.timeout):
        sock.recv(1)
    sock.settimeout(5.0)


# ---------------------------------------------------------------- FaultProxy

def test_proxy_pass_forwards_both_ways_and_counts(proxy, echo):
    with connect(proxy) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        payload = os.urandom(300_000)  # more than one chunk, and more than a socket buffer
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join(5)
    assert proxy.connections_accepted == 1
    assert proxy.bytes_to_target == proxy.bytes_from_target == 300_005
    assert echo.received == 300_005


def test_proxy_passes_end_of_stream_on(proxy, echo):
    with connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert recv_exactly(sock, 10) == b"last words"
        assert sock.recv(1) == b""  # the echo server's FIN came back through
    assert echo.eofs == 1
    wait_until(lambda: proxy.active_connections == 0, what="the link closed")


def test_proxy_url_for_swaps_host_and_port_only(proxy):
    assert (proxy.url_for("amqp://guest:secret@127.0.0.1:5672/v%2Fh?heartbeat=5")
            == f"amqp://guest:secret@127.0.0.1:{proxy.port}/v%2Fh?heartbeat=5")
    assert proxy.url_for("amqp://localhost/") == f"amqp://127.0.0.1:{proxy.port}/"


def test_proxy_blackhole_silences_open_connections_then_delivers_what_waited(proxy, echo):
    with connect(proxy) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        proxy.set_mode("blackhole")
        sock.sendall(b"lost?")
        assert_silent(sock)
        assert echo.received == 4 and proxy.bytes_to_target == 4
        proxy.set_mode("pass")  # like TCP retransmissions after the link comes back
        assert recv_exactly(sock, 5) == b"lost?"


def test_proxy_blackhole_accepts_new_connections_but_never_reaches_the_target(proxy, echo):
    proxy.set_mode("blackhole")
    with connect(proxy) as sock:  # the connect itself succeeds
        wait_until(lambda: proxy.connections_accepted == 1, what="the connection accepted")
        sock.sendall(b"anyone?")
        assert_silent(sock)
        assert echo.accepted == 0 and proxy.bytes_to_target == 0
        proxy.set_mode("pass")
        assert recv_exactly(sock, 7) == b"anyone?"
    assert echo.accepted == 1


def test_proxy_refuse_resets_new_connections_and_keeps_open_ones(proxy, echo):
    with connect(proxy) as old:
        old.sendall(b"a")
        assert recv_exactly(old, 1) == b"a"
        proxy.set_mode("refuse")
        with pytest.raises((ConnectionResetError, EOFError, BrokenPipeError)):
            with connect(proxy) as new:  # the reset may come before connect() returns
                new.sendall(b"b")
                recv_exactly(new, 1)
        old.sendall(b"c")
        assert recv_exactly(old, 1) == b"c"
    assert proxy.connections_accepted == 2
    assert echo.accepted == 1


def test_proxy_reset_resets_open_connections(proxy):
    with connect(proxy) as sock:
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    with connect(proxy) as sock:  # new connections still work
        sock.sendall(b"b")
        assert recv_exactly(sock, 1) == b"b"


def test_proxy_latency_delays_each_direction_and_keeps_order(proxy):
    with connect(proxy) as sock:
        sock.sendall(b"warm")
        assert recv_exactly(sock, 4) == b"warm"
        proxy.set_mode("latency", 0.2)
        assert proxy.latency == 0.2
        started = time.monotonic()
        for i in range(5):
            sock.sendall(b"%d" % i)
        assert recv_exactly(sock, 5) == b"01234"
        rtt = time.monotonic() - started
        assert 0.4 <= rtt < 2.0
        proxy.set_mode("pass")
        started = time.monotonic()
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        assert time.monotonic() - started < 0.3


def test_proxy_resets_the_client_when_the_target_is_down():
    port = rabbitnode.free_port()  # nothing listens there
    with FaultProxy("127.0.0.1", port) as proxy:
        with pytest.raises((ConnectionResetError, EOFError)):
            with connect(proxy) as sock:  # the reset may come before connect() returns
                recv_exactly(sock, 1)
        assert proxy.connections_accepted == 1


def test_proxy_set_mode_checks_its_arguments(proxy):
    with pytest.raises(ValueError):
        proxy.set_mode("slow")
    with pytest.raises(ValueError):
        proxy.set_mode("latency")
    with pytest.raises(ValueError):
        proxy.set_mode("pass", 0.5)
    assert proxy.mode == "pass"


def test_proxy_close_ends_its_thread_and_resets_clients(echo):
    proxy = FaultProxy("127.0.0.1", echo.port).start()
    sock = connect(proxy)
    sock.sendall(b"a")
    assert recv_exactly(sock, 1) == b"a"
    proxy.close()
    assert not any(t.name == f"FaultProxy:{proxy.port}" for t in threading.enumerate())
    with pytest.raises((ConnectionResetError, EOFError)):
        recv_exactly(sock, 1)
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
    proxy.close()  # twice is fine


def test_proxy_carries_amqp_to_a_real_broker_with_latency(fault_proxy, rabbit):
    import pika

    with fault_proxy as proxy:  # the fixture closes it too; twice is fine
        proxy.set_mode("latency", 0.05)
        started = time.monotonic()
        connection = pika.BlockingConnection(pika.URLParameters(proxy.url_for(rabbit.url)))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.basic_publish("", queue, b"through the proxy")  # raises unless acked
            took = time.monotonic() - started
        finally:
            connection.close()
        # handshake, channel, confirm, declare, publish: at least 5 round trips of 0.1 s
        assert took >= 0.5
        assert proxy.connections_accepted == 1
        assert proxy.bytes_to_target > 8 and proxy.bytes_from_target > 0


# ---------------------------------------------------------------- RabbitCluster

def test_cluster_nodes_have_their_own_names_ports_folders_and_one_cookie():
    cluster = rabbitnode.RabbitCluster()  # not started
    try:
        nodes = cluster.nodes
        assert len(nodes) == 3
        assert len({n.nodename for n in nodes}) == 3
        assert len({p for n in nodes for p in (n.port, n.dist_port)}) == 6
        assert len({n.dir for n in nodes}) == 3
        cookies = set()
        for node in nodes:
            with open(os.path.join(node.home, ".erlang.cookie")) as f:
                cookies.add(f.read())
        assert len(cookies) == 1
        assert cluster.urls == [f"amqp://guest:guest@127.0.0.1:{n.port}/" for n in nodes]
        base = cluster._base
    finally:
        cluster.close()
    assert not os.path.exists(base)


@pytest.mark.slow
@pytest.mark.rabbit_control
def test_cluster_kill_restart_leader_and_connections(cluster):
    import pika

    first, second, third = cluster.nodes
    assert cluster.running_nodes() == {n.nodename for n in cluster.nodes}
    queue = f"test.infra.{os.getpid()}.{time.monotonic_ns()}"
    connection = pika.BlockingConnection(pika.URLParameters(second.url))
    try:
        connection.channel().queue_declare(queue, durable=True,
                                           arguments={"x-queue-type": "quorum"})
        counts = cluster.connections_per_node()
        assert counts == {first: 0, second: 1, third: 0}
    finally:
        connection.close()
    leader = wait_until(lambda: cluster.quorum_leader(queue), timeout=30, what="a leader")
    assert leader in cluster.nodes

    cluster.kill(leader)
    assert not leader.running
    new_leader = wait_until(
        lambda: (lambda n: n if n not in (None, leader) else None)(cluster.quorum_leader(queue)),
        timeout=30, what="a new leader")
    assert new_leader.running

    cluster.restart(leader)
    assert cluster.running_nodes() == {n.nodename for n in cluster.nodes}

    cluster.stop(third)  # gracefully; the `cluster` fixture of the next test does this:
    assert cluster.ensure_running() == [third]
    assert cluster.running_nodes() == {n.nodename for n in cluster.nodes}
    assert cluster.ensure_running() == []
    for node in cluster.nodes:  # guest works on every node
        connection = pika.BlockingConnection(pika.URLParameters(node.url))
        connection.close()
    cluster.ctl("delete_queue", queue)
