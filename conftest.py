"""pytest fixtures: a real RabbitMQ broker and an independent client (pika).

By default the session starts its own private RabbitMQ node (rabbitnode.py,
Debian's rabbitmq-server package). With PIHACE_TEST_AMQP_URL set, the tests
use that broker instead; tests that must control the broker (stop, kill,
rabbitmqctl) are then skipped: mark them ``@pytest.mark.rabbit_control``.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

import rabbitnode

EXTERNAL_URL_VAR = "PIHACE_TEST_AMQP_URL"

# A shell's background job (`cmd &` in a script) starts with SIGINT ignored, and Python keeps it
# so (it puts its KeyboardInterrupt handler only over the default): the tests that send a
# Ctrl-C, to this process or to the commands it starts (which would inherit the ignoring),
# need it back, or they hang until their timeout.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "rabbit_control: needs to stop, kill or rabbitmqctl the broker "
        f"(skipped when {EXTERNAL_URL_VAR} points to an external broker)",
    )
    config.addinivalue_line(
        "markers",
        "slow: takes several seconds (broker restarts, kills, failover, idle windows, the "
        "wheel build); skip locally with -m 'not slow', CI runs every test",
    )


class ExternalBroker:
    """A broker this test run does not own: only its URL is known."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _cannot(self, *args, **kwargs):
        pytest.skip(f"needs a private RabbitMQ node, but {EXTERNAL_URL_VAR} is set")

    ctl = start = stop = kill = _cannot


def _require_server() -> None:
    if not os.access(rabbitnode.SERVER, os.X_OK):
        pytest.fail(
            f"{rabbitnode.SERVER} is missing, so the tests cannot start RabbitMQ. "
            "Install it with `bash .ci/setup` (as root) or "
            "`apt-get install --no-install-recommends rabbitmq-server`, "
            f"or set {EXTERNAL_URL_VAR}=amqp://user:password@host:port/ to use a running broker.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def rabbit():
    """The session's broker: a RabbitNode, or an ExternalBroker."""
    url = os.environ.get(EXTERNAL_URL_VAR)
    if url:
        yield ExternalBroker(url)
        return
    _require_server()
    node = rabbitnode.RabbitNode()
    try:
        node.start()
        yield node
    finally:
        node.close()


@pytest.fixture(autouse=True)
def _rabbit_control(request):
    """Skip tests marked rabbit_control when the broker is external."""
    # The variable, not the `rabbit` fixture: a cluster test must not start a single node too.
    if request.node.get_closest_marker("rabbit_control") is not None:
        if os.environ.get(EXTERNAL_URL_VAR):
            pytest.skip(f"needs a private RabbitMQ node, but {EXTERNAL_URL_VAR} is set")


@pytest.fixture(scope="session")
def rabbit_cluster():
    """The session's 3-node RabbitMQ cluster (rabbitnode.RabbitCluster), started on first use.

    Tests that kill or stop a node should use ``cluster`` instead, which brings every node
    back before the test. Skipped when PIHACE_TEST_AMQP_URL names an external broker.
    """
    if os.environ.get(EXTERNAL_URL_VAR):
        pytest.skip(f"needs private RabbitMQ nodes, but {EXTERNAL_URL_VAR} is set")
    _require_server()
    cluster = rabbitnode.RabbitCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(rabbit_cluster):
    """The session's cluster with all three nodes running in it when the test starts.

    A node an earlier test killed or stopped is started again (about 4 s) and waited for
    until the cluster lists it as running.
    """
    rabbit_cluster.ensure_running()
    return rabbit_cluster


@pytest.fixture
def make_rabbit():
    """Factory of extra private nodes (failover tests), closed after the test.

    ``make_rabbit(**kwargs)`` takes RabbitNode's keyword arguments and returns
    a started node; pass ``start=False`` to get it stopped.
    """
    _require_server()
    nodes = []

    def make(start: bool = True, **kwargs) -> rabbitnode.RabbitNode:
        node = rabbitnode.RabbitNode(**kwargs)
        nodes.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def amqp_url(rabbit) -> str:
    return rabbit.url


@pytest.fixture
def fault_proxy(rabbit):
    """A started faultproxy.FaultProxy in front of the session's broker, closed after the test.

    Connect through ``fault_proxy.url_for(amqp_url)``; switch faults with
    ``fault_proxy.set_mode("blackhole" | "refuse" | "pass")`` or ``set_mode("latency", s)``.
    """
    import urllib.parse

    from faultproxy import FaultProxy

    parts = urllib.parse.urlsplit(rabbit.url)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    with FaultProxy(parts.hostname or "localhost", parts.port or default_port) as proxy:
        yield proxy


@pytest.fixture
def pika_channel(amqp_url):
    """A channel of an independent client (pika) on the test broker."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


@pytest.fixture
def get_message(pika_channel):
    """``get_message(queue, timeout=5.0) -> (method, properties, body)``.

    Polls Basic.Get (auto-ack) until a message arrives; fails the test after
    the timeout instead of hanging.
    """

    def get(queue: str, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while True:
            method, properties, body = pika_channel.basic_get(queue, auto_ack=True)
            if method is not None:
                return method, properties, body
            if time.monotonic() > deadline:
                pytest.fail(f"no message in queue {queue!r} within {timeout} s")
            time.sleep(0.02)

    return get


@pytest.fixture
def unique_queue(rabbit):
    """A fresh queue name (not declared); the queue is deleted after the test."""
    name = f"test.{uuid.uuid4().hex}"
    yield name
    try:
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
        try:
            connection.channel().queue_delete(name)
        finally:
            connection.close()
    except Exception:  # best effort: the broker may be down after the test
        pass


# Private database servers (issue 15), from Debian's packages like RabbitMQ: a missing one
# fails the tests that need it, never skips them.

@pytest.fixture(scope="session")
def mariadb():
    """A private MariaDB: user app/s3cret-pw on database testdb (mysql_native_password),
    user ed, who logs in with the ed25519 plugin, and root/root from 127.0.0.1 (pihace
    1.0.0's examples log in so)."""
    import dbservers

    server = dbservers.MariaDB()
    try:
        server.sql("CREATE DATABASE testdb;"
                   "CREATE USER 'app'@'%' IDENTIFIED BY 's3cret-pw';"
                   "GRANT ALL ON testdb.* TO 'app'@'%';"
                   "INSTALL SONAME 'auth_ed25519';"
                   "CREATE USER 'ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('ed-pw');"
                   "CREATE USER 'root'@'127.0.0.1' IDENTIFIED BY 'root';"
                   "GRANT ALL ON *.* TO 'root'@'127.0.0.1';")
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def influxdb():
    import dbservers

    server = dbservers.InfluxDB()
    try:
        yield server
    finally:
        server.close()
