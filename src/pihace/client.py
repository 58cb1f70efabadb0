"""AMQP client base: what the pusher and the watcher share. The nodes to try, the names they
declare, connecting with failover, declaring exchanges and queues, stop()."""

from __future__ import annotations

from .errors import PihaceError
from .helpers import _number, _seconds
from .amqp_wire import encode_table
from .transport import AMQPParameters, failover_order, open_connection


def _check_name(what, value):
    """An exchange, queue or routing key name as AMQP carries it (a short string): a
    TypeError or ValueError that names the option `what`."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > 255:
        raise ValueError(f"{what} is {size} bytes long; AMQP allows at most 255")
    return value


class _AMQPClient:
    """One connection to one node of a cluster at a time, for AMQPPusher and Watcher.

    `amqp_url` is a URL or a list of URLs (the nodes of one cluster); `names` maps each
    option that becomes an AMQP name (queue, exchange, routing key) to its value, checked
    here. Connecting tries the nodes in a random order, the one lost last tried last;
    stop() ends the caller's loop and interrupts any wait for the broker.
    """

    _channel = 1  # the one channel each client uses
    default_heartbeat = 60  # seconds, when neither the caller nor the URL says

    def __init__(self, amqp_url, names, *, exchange, exchange_type, queue_arguments, heartbeat,
                 timeout, connection_name, ssl_context, socket_factory):
        urls = [amqp_url] if isinstance(amqp_url, str) else list(amqp_url or ())
        if not urls:
            raise ValueError("amqp_url must be a URL or a non-empty list of URLs")
        self.endpoints = [AMQPParameters(url) for url in urls]
        self.parameters = self.endpoints[0]  # the endpoint in use, or tried last
        for what, value in dict(names, exchange=exchange or "",
                                exchange_type=exchange_type or "").items():
            _check_name(what, value)
        self.exchange, self.exchange_type = exchange or "", exchange_type
        encode_table(queue_arguments)  # a ValueError now rather than at the first connection
        self.queue_arguments = dict(queue_arguments or {})
        if heartbeat is not None:
            _number("heartbeat", heartbeat, lambda v: 0 <= v <= 65535,
                    "whole seconds from 0 (off) to 65535", int)
        self.heartbeat = heartbeat  # None: each URL's ?heartbeat=, else the transport's default
        self.timeout = _seconds("timeout", timeout)
        self.connection_name = connection_name
        self.ssl_context, self.socket_factory = ssl_context, socket_factory
        self.connections_opened = 0
        self._connection = None
        self._rebalancing = False  # replacing a connection on purpose: any node may come next
        self._stop_requested = False  # by stop(); kept until the caller's loop ends
        self._wakeup = None  # while the caller's loop runs: how stop() wakes it
        self._interrupt = None  # while it waits for the broker: how stop() ends that wait

    @property
    def _last_node(self):
        """The node to try last: the one in use or tried last, unless it is time to spread
        (the first connection, or one replaced on purpose)."""
        if self.connections_opened == 0 or self._rebalancing:
            return None
        return self.parameters

    def _open_connection(self, deadline, timeout, clock):
        """An open connection to a node that answers, kept as the one in use."""
        order = failover_order(self.endpoints, self._last_node)
        try:
            connection = open_connection(
                order, deadline, timeout=timeout, heartbeat=self.heartbeat,
                connection_name=self.connection_name, ssl_context=self.ssl_context,
                socket_factory=self.socket_factory, clock=clock, interrupt=self._interrupt,
                default_heartbeat=self.default_heartbeat)
        except (PihaceError, OSError):
            self.parameters = order[-1]  # what the error is about
            raise
        self.parameters, self._connection = connection.parameters, connection
        self.connections_opened += 1
        self._rebalancing = False
        return connection

    def _declare_exchange(self, connection, deadline):
        """The exchange, durable, when it is named with a type (else it must exist)."""
        if self.exchange and self.exchange_type:
            connection.call(self._channel, "Exchange.Declare", deadline, exchange=self.exchange,
                            type=self.exchange_type, durable=True)

    def _declare_queue(self, connection, deadline, queue):
        """Declare `queue` (durable, with queue_arguments), or with an empty name a queue of
        the client's own that the server names and deletes with the connection; its name."""
        own = not queue
        reply = connection.call(self._channel, "Queue.Declare", deadline, queue=queue,
                                durable=not own, exclusive=own, auto_delete=own,
                                arguments=self.queue_arguments)
        return reply.args["queue"]

    def stop(self):
        """End the running loop at once; from any thread, or a signal handler."""
        self._stop_requested = True
        for waiter in (self._interrupt, self._wakeup):
            if waiter is not None:
                waiter.wake()

    def _stopped(self, stop_event):
        return self._stop_requested or (stop_event is not None and stop_event.is_set())
