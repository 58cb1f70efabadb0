"""AMQP protocol: a state machine with no I/O; bytes in, events and bytes out."""

from __future__ import annotations

import collections
import itertools
import math
import struct

from .errors import LocalProtocolError, RemoteProtocolError
from .amqp_wire import (
    BASIC_CLASS, DEFAULT_CHANNEL_MAX, DEFAULT_FRAME_MAX, FRAME_HEADER, FRAME_HEARTBEAT,
    FRAME_METHOD, FRAME_MIN_SIZE, FrameDecoder, HEARTBEAT_FRAME, PROTOCOL_HEADER, _FROM_BROKER,
    _METHOD_ARGUMENTS, _METHOD_IDS, _METHOD_NAMES, _Reader, _content_head, _longlong, _short,
    _properties_at, decode_properties, encode_frame, encode_message, encode_method,
)


class Method:
    """An event: a method the broker sent, with the content it carried if any."""

    __slots__ = ("channel", "name", "args", "properties", "body_size")

    def __init__(self, channel, name, args, properties=None, body_size=0):
        self.channel, self.name, self.args = channel, name, args
        self.properties, self.body_size = properties, body_size

    def __repr__(self):
        return f"Method({self.channel}, {self.name!r}, {self.args!r})"


class ConnectionLost:
    """An event: the byte stream ended (receive_data(b""))."""

    def __repr__(self):
        return "ConnectionLost()"


class Acked:
    """An event: the broker took responsibility for a message published in confirm mode."""

    __slots__ = ("channel", "message_id", "delivery_tag")

    def __init__(self, channel, message_id, delivery_tag):
        self.channel, self.message_id, self.delivery_tag = channel, message_id, delivery_tag

    def __repr__(self):
        return f"{type(self).__name__}({self.channel}, {self.message_id!r}, {self.delivery_tag})"


class Nacked(Acked):
    """An event: the broker refused a message published in confirm mode (Basic.Nack)."""

    __slots__ = ()


class Returned(Acked):
    """An event: nobody took a mandatory message (Basic.Return). In confirm mode it
    comes when the broker's Ack does, in place of Acked; delivery_tag is then set."""

    __slots__ = ("reply_code", "reply_text", "exchange", "routing_key")

    def __init__(self, channel, message_id, args):
        super().__init__(channel, message_id, None)
        self.reply_code, self.reply_text = args["reply_code"], args["reply_text"]
        self.exchange, self.routing_key = args["exchange"], args["routing_key"]


class Delivery:
    """An event: a message the broker delivered to one of our consumers (Basic.Deliver
    with its content). `body` is None when the message was larger than the consumer's
    max_body_size: it was counted, not kept; `body_size` says how large it was."""

    __slots__ = ("channel", "consumer_tag", "delivery_tag", "redelivered", "exchange",
                 "routing_key", "properties", "body", "body_size")

    def __init__(self, channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key,
                 properties, body, body_size):
        self.channel, self.consumer_tag = channel, consumer_tag
        self.delivery_tag, self.redelivered = delivery_tag, redelivered
        self.exchange, self.routing_key = exchange, routing_key
        self.properties, self.body, self.body_size = properties, body, body_size

    def __repr__(self):
        return (f"Delivery({self.channel}, {self.consumer_tag!r}, {self.delivery_tag}, "
                f"{self.body_size} bytes)")


class _Channel:
    __slots__ = ("state", "expecting", "confirming", "next_tag", "unconfirmed", "returned",
                 "consumers", "consuming", "last_delivery", "unacked")

    def __init__(self):
        self.state = "opening"  # opening -> open -> closing (by the client) -> gone
        self.expecting = "Channel.Open-Ok"  # the reply to the synchronous method sent last
        self.confirming = False
        self.next_tag = 1  # delivery tags count publishes from Confirm.Select on
        self.unconfirmed = {}  # delivery tag -> message id, oldest first
        self.returned = {}  # message id -> Returned, until the broker's Ack for it
        self.consumers = {}  # consumer tag -> (no_ack, max_body_size), from Consume-Ok on
        self.consuming = None  # (no_ack, max_body_size) of the Basic.Consume awaiting its Ok
        self.last_delivery = 0  # the broker numbers its deliveries from 1 on each channel
        self.unacked = set()  # delivery tags not acknowledged yet


# The synchronous methods a client sends on a channel, and the reply each waits for.
_REPLIES = {name: name + "-Ok" for name in _METHOD_IDS
            if name + "-Ok" in _FROM_BROKER and _METHOD_IDS[name][0] != 10}
_REPLY_NAMES = set(_REPLIES.values())
_ACK_HEAD = _short.pack(BASIC_CLASS) + _short.pack(80)  # Basic.Ack, sent once per batch
_deliver_tag = struct.Struct(">QB")
_DELIVER_FIELDS = ("consumer_tag", "delivery_tag", "redelivered", "exchange", "routing_key")


def _deliver_fields(payload):
    """The arguments of a Basic.Deliver payload (bytes), in the order of _DELIVER_FIELDS (what
    _Reader.arguments would give, faster): consumer_tag shortstr, delivery_tag longlong,
    redelivered bit, exchange and routing_key shortstr."""
    try:
        end = 5 + payload[4]
        consumer = payload[5:end]
        tag, bits = _deliver_tag.unpack_from(payload, end)
        start = end + 10
        end = start + payload[start - 1]
        exchange = payload[start:end]
        start = end + 1
        end = start + payload[end]
    except (IndexError, struct.error):
        end = len(payload) + 1
    if end != len(payload):
        raise RemoteProtocolError(f"truncated frame: Basic.Deliver of {len(payload)} bytes"
                                  if end > len(payload) else
                                  f"Basic.Deliver has {len(payload) - end} bytes too many")
    # (bytes.decode, not str(bytes, "utf-8", ...), which costs 1.7 times as much: a call of a
    # type parses its arguments; _properties_at() does the same)
    return (consumer.decode("utf-8", "replace"), tag, bool(bits & 1),
            exchange.decode("utf-8", "replace"), payload[start:end].decode("utf-8", "replace"))


class AMQPProtocol:
    """The client side of one AMQP 0-9-1 connection, with no I/O.

    Feed the broker's bytes to receive_data(), take events from next_event(),
    and send what data_to_send() returns. Replies the protocol requires
    (Start-Ok, Tune-Ok, Open, Close-Ok, heartbeats) are queued on their own.
    Time is passed in as `now` (seconds, any monotonic clock).

    It owns the connection's state: channels, the replies each one awaits, and
    publisher confirms (delivery tags are mapped back to message ids: Acked,
    Nacked and Returned events name the message). After a RemoteProtocolError
    it is in the "error" state and refuses further use.
    """

    def __init__(self, username="guest", password="guest", vhost="/", *, heartbeat=60,
                 frame_max=DEFAULT_FRAME_MAX, channel_max=DEFAULT_CHANNEL_MAX,
                 client_properties=None, mechanisms=("PLAIN",), locale="en_US"):
        self.username, self._password, self.vhost = username, password, vhost
        self.heartbeat, self.frame_max, self.channel_max = heartbeat, frame_max, channel_max
        self.client_properties = client_properties or {}
        self.mechanisms = mechanisms  # in order of preference: PLAIN and/or EXTERNAL
        self.mechanism = None  # the one chosen
        self.locale = locale
        # start -> tune -> opening -> open -> closing -> closed, or error from anywhere
        self.state = "start"
        self.error = None  # the RemoteProtocolError that put it in the error state
        self.server_properties = {}
        self.blocked = None  # the reason, while the broker blocks publishing
        self.channels = {}
        self._decoder = FrameDecoder(DEFAULT_FRAME_MAX)
        self._outbox = [PROTOCOL_HEADER]
        self._events = collections.deque()  # events made ahead: one Ack can confirm many
        self._publish_frames = {}
        self._content = None  # [Method, expected body size, received] while content arrives
        self._ended = False
        self._last_received = self._last_sent = None

    def __repr__(self):
        return f"<AMQPProtocol {self.username}@{self.vhost} {self.state}>"

    @property
    def is_open(self):
        return self.state == "open"

    def channel_is_open(self, channel):
        state = self.channels.get(channel)
        return state is not None and state.state == "open"

    def _refuse_if_broken(self, what):
        if self.state == "error":
            raise LocalProtocolError(f"cannot {what}: the connection broke the protocol "
                                     f"earlier ({self.error})")

    # -- bytes in, bytes out ------------------------------------------------

    def receive_data(self, data, now=0.0):
        """Bytes from the broker; b"" means the stream ended."""
        self._refuse_if_broken("receive data")
        if not data:
            self._ended = True
            return
        if self.state == "closed":
            return  # nothing more is read: keep memory bounded
        self._decoder.feed(data)
        self._last_received = now

    def data_to_send(self, now=0.0):
        data = b"".join(self._outbox)
        self._outbox.clear()
        if data:
            self._last_sent = now
        return data

    def tick(self, now):
        """Queue a heartbeat if one is due; the seconds until the next is due.

        A heartbeat goes out when the broker has heard nothing from us for three
        quarters of the heartbeat period, or, once it has heard nothing for a
        quarter, in answer to bytes from the broker. RabbitMQ sends its own every
        half period, so an idle connection answers those and wakes once per half
        period for both directions; RabbitMQ drops a peer only after two missed
        heartbeats. Raises TimeoutError when the broker has been silent for more
        than two heartbeat periods: the connection is dead even if the socket is
        not.
        """
        heartbeat = self.heartbeat  # (called before every publish: locals, not attributes)
        if not heartbeat or self.state not in ("open", "closing"):
            return None
        received, sent = self._last_received, self._last_sent
        if received is None:
            received = self._last_received = now
        if sent is None:
            sent = self._last_sent = now
        if now - received > 2 * heartbeat:
            raise TimeoutError(f"the broker sent nothing for {now - received:.0f}s "
                               f"(heartbeat {heartbeat}s): connection presumed dead")
        quiet = now - sent
        if quiet >= 0.75 * heartbeat or (quiet >= 0.25 * heartbeat and received > sent):
            self._outbox.append(HEARTBEAT_FRAME)
            sent = self._last_sent = now
        return max(0.0, min(sent + 0.75 * heartbeat, received + 2 * heartbeat) - now)

    def _send(self, channel, name, **values):
        self._outbox.append(encode_frame(FRAME_METHOD, channel, encode_method(name, **values)))

    # -- events ---------------------------------------------------------------

    def next_event(self):
        """The next event (Method, Acked, Nacked, Returned or ConnectionLost), or None
        while more bytes are needed."""
        if self.state == "error":
            self._refuse_if_broken("read events")
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self.state, self.error = "error", exc
            raise

    def _next_event(self):
        # (what one read brought is cut into frames and handled here, in one loop)
        events, next_frame = self._events, self._decoder.next_frame
        while not events:
            if self._content is None and self.state == "open":
                message = self._decoder.next_delivery()
                if message is not None:  # the usual frames of a consumer: one whole message
                    event = self._whole_delivery(*message)
                    if event is not None:
                        return event
                    continue
            frame = next_frame() if self.state != "closed" else None
            if frame is None:
                if self._ended:
                    self._ended = False
                    if self.state != "closed" and (self._decoder.pending or self._content):
                        # (once closed, what followed the Close is ignored, whole or cut)
                        raise RemoteProtocolError("the connection ended in the middle of a frame")
                    self.state = "closed"
                    return ConnectionLost()
                return None
            if self.state == "start" and frame[0] != FRAME_METHOD:
                raise RemoteProtocolError("expected Connection.Start, got a frame of type "
                                          f"{frame[0]}")
            if self._content is not None and frame[0] != FRAME_HEARTBEAT:
                event = self._handle_content(*frame)  # a message's header and body frames
            else:
                event = self._handle_frame(*frame)
            if event is not None:
                events.append(event)
        return events.popleft()

    def _handle_frame(self, frame_type, channel, payload):
        if frame_type == FRAME_HEARTBEAT:
            if channel != 0:
                raise RemoteProtocolError(f"heartbeat frame on channel {channel}")
            return None
        if self._content is not None:
            return self._handle_content(frame_type, channel, payload)
        if frame_type != FRAME_METHOD:
            raise RemoteProtocolError(f"unexpected content frame (type {frame_type}) on "
                                      f"channel {channel}")
        reader = _Reader(payload)
        key = (reader.unpack(_short), reader.unpack(_short))
        name = _METHOD_NAMES.get(key)
        if name not in _FROM_BROKER:
            raise RemoteProtocolError(f"unexpected method {name or '%d.%d' % key} from the broker")
        args = reader.arguments(_METHOD_ARGUMENTS[name])
        method = Method(channel, name, args)
        if reader.offset != len(payload):
            raise RemoteProtocolError(f"{name} has {len(payload) - reader.offset} bytes too many")
        if name == "Basic.Return":
            self._check_channel(channel, name, ("open", "closing"))
            self._content = [method, None, 0, None]
            return None
        if name == "Basic.Deliver":  # its content is still to come (or is amiss)
            kept = self._on_deliver(channel, args["consumer_tag"], args["delivery_tag"])
            self._content = [method, None, 0, None if kept is None else []]
            return None
        return self._handle_method(method)

    def _on_deliver(self, number, consumer_tag, tag):
        """Count a Basic.Deliver on channel `number`: its consumer's (no_ack, max_body_size),
        or None when the channel is closing (the message is dropped with the rest of its
        traffic). What makes no sense (no such channel or consumer, a delivery tag out of
        order) is a RemoteProtocolError."""
        channel = self._check_channel(number, "Basic.Deliver", ("open", "closing"))
        if tag <= channel.last_delivery:
            raise RemoteProtocolError(f"Basic.Deliver with delivery tag {tag} on channel "
                                      f"{number}, after {channel.last_delivery}")
        consumer = channel.consumers.get(consumer_tag)
        if consumer is None:
            if channel.state == "closing":
                return None
            raise RemoteProtocolError(f"Basic.Deliver to consumer {consumer_tag!r} on channel "
                                      f"{number}, which has no such consumer")
        channel.last_delivery = tag
        if not consumer[0]:  # no_ack unset: it awaits an acknowledgement
            channel.unacked.add(tag)
        return None if channel.state == "closing" else consumer

    def _whole_delivery(self, number, payload, properties, body):
        """The Delivery of a message whose frames came whole (FrameDecoder.next_delivery),
        in one pass; None when it is dropped."""
        fields = _deliver_fields(payload)
        consumer = self._on_deliver(number, fields[0], fields[1])
        if consumer is None:
            return None
        size, max_body_size = len(body), consumer[1]
        return Delivery(number, *fields, _properties_at(properties, 0)[0],
                        body if max_body_size is None or size <= max_body_size else None, size)

    def _handle_content(self, frame_type, channel, payload):
        content = self._content  # [method, body size (None until the header), received, parts]
        method, size, received, parts = content
        if channel != method.channel or frame_type == FRAME_METHOD or (
                (frame_type == FRAME_HEADER) != (size is None)):
            raise RemoteProtocolError(f"expected the content of {method.name} on channel "
                                      f"{method.channel}, got a frame of type {frame_type} "
                                      f"on channel {channel}")
        if frame_type == FRAME_HEADER:
            if len(payload) < _content_head.size:
                raise RemoteProtocolError(f"truncated frame: a content header of "
                                          f"{len(payload)} bytes")
            class_id, _weight, size = _content_head.unpack_from(payload)
            if class_id != BASIC_CLASS:
                raise RemoteProtocolError(f"content header of class {class_id}")
            method.properties = decode_properties(_Reader(payload, _content_head.size))
            if parts is not None and size > self._max_body(method):
                parts = content[3] = None  # too large: counted, not kept
            content[1] = size
        else:
            received += len(payload)  # the body of a returned message is not kept
            if received > size:
                raise RemoteProtocolError(f"content body longer than its declared {size} bytes")
            if parts is not None and payload:  # an empty frame adds nothing: keep nothing
                parts.append(payload)
            content[2] = received
        if received != size:
            return None
        self._content = None
        method.body_size = size
        if method.name == "Basic.Deliver":
            return self._delivered(method, parts)
        return self._on_return(method)

    def _max_body(self, method):
        channel = self.channels.get(method.channel)
        consumer = channel and channel.consumers.get(method.args["consumer_tag"])
        return math.inf if consumer is None or consumer[1] is None else consumer[1]

    def _delivered(self, method, parts):
        channel = self.channels.get(method.channel)
        if channel is None or channel.state == "closing" or (
                method.args["consumer_tag"] not in channel.consumers):
            return None  # the channel closed, or the consumer was cancelled, meanwhile
        body = None if parts is None else parts[0] if len(parts) == 1 else b"".join(parts)
        return Delivery(method.channel, *map(method.args.get, _DELIVER_FIELDS),
                        method.properties, body, method.body_size)

    def _check_channel(self, number, name, states):
        """Channel `number`, on which the broker sent method `name`, if it is in one of
        `states`; else a RemoteProtocolError."""
        channel = self.channels.get(number)
        if number == 0 or channel is None or channel.state not in states:
            raise RemoteProtocolError(f"{name} on channel {number}, which is "
                                      f"{'not open' if channel is None else channel.state}")
        return channel

    def _expect(self, method, *states):
        if self.state not in states or method.channel != 0:
            raise RemoteProtocolError(f"unexpected {method.name} on channel {method.channel} "
                                      f"while the connection is {self.state}")

    def _handle_method(self, method):
        name, args = method.name, method.args
        if self.state == "closing" and name not in ("Connection.Close", "Connection.Close-Ok"):
            return None  # after our Connection.Close, everything else is dropped
        if name.startswith("Connection."):
            return self._on_connection_method(method)
        channel = self._check_channel(method.channel, method.name, ("opening", "open", "closing"))
        if channel.state == "closing" and name not in ("Channel.Close", "Channel.Close-Ok"):
            return None  # after our Channel.Close, the rest of the channel's traffic is dropped
        if name == "Channel.Close":  # the broker's: the channel is gone once we answer
            self._send(method.channel, "Channel.Close-Ok")
            if channel.state != "closing":  # else our own Close crossed it: its Close-Ok comes
                del self.channels[method.channel]
        elif name in ("Basic.Ack", "Basic.Nack"):
            self._on_confirm(method, channel)
            return None  # the events are queued, one per message
        elif name == "Channel.Flow":
            self._send(method.channel, "Channel.Flow-Ok", active=args["active"])
        elif name == "Basic.Cancel":  # the broker's: the queue was deleted, or a node failed
            if channel.consumers.pop(args["consumer_tag"], None) is None:
                return None  # crossed our own Cancel: its Cancel-Ok follows
            if not args["nowait"]:
                self._send(method.channel, "Basic.Cancel-Ok", consumer_tag=args["consumer_tag"])
        elif name == channel.expecting:  # Open-Ok, Close-Ok, Declare-Ok, Select-Ok, ...
            channel.expecting = None
            if name == "Channel.Open-Ok":
                channel.state = "open"
            elif name == "Channel.Close-Ok":
                del self.channels[method.channel]
            elif name == "Basic.Consume-Ok":
                channel.consumers[args["consumer_tag"]], channel.consuming = \
                    channel.consuming, None
            elif name == "Basic.Cancel-Ok":
                channel.consumers.pop(args["consumer_tag"], None)
        else:
            raise RemoteProtocolError(f"unexpected {name} on channel {method.channel}: "
                                      f"{'nothing' if channel.expecting is None else channel.expecting}"
                                      " was awaited")
        return method

    def _on_connection_method(self, method):
        name = method.name
        if name == "Connection.Start":
            self._expect(method, "start")
            self._on_start(method.args)
            return None
        if name == "Connection.Secure":
            self._expect(method, "tune")
            raise RemoteProtocolError("the broker asked for a Connection.Secure challenge, "
                                      f"which the {self.mechanism} login does not use")
        if name == "Connection.Tune":
            self._expect(method, "tune")
            self._on_tune(method.args)
            return None
        if name == "Connection.Open-Ok":
            self._expect(method, "opening")
            self.state = "open"
        elif name == "Connection.Close":
            self._expect(method, "tune", "opening", "open", "closing")
            self._send(0, "Connection.Close-Ok")
            self.state = "closed"
        elif name == "Connection.Close-Ok":
            self._expect(method, "closing")
            self.state = "closed"
        else:  # Blocked, Unblocked
            self._expect(method, "open")
            self.blocked = method.args.get("reason")  # Unblocked has none
        return method

    def _on_confirm(self, method, channel):
        tag, multiple = method.args["delivery_tag"], method.args["multiple"]
        if not channel.confirming or tag >= channel.next_tag or (
                not multiple and tag not in channel.unconfirmed):
            raise RemoteProtocolError(f"{method.name} for delivery tag {tag} on channel "
                                      f"{method.channel}, which awaits no such confirm")
        last = channel.next_tag if multiple and tag == 0 else tag  # 0 and multiple: all of them
        tags = list(itertools.takewhile(lambda t: t <= last, channel.unconfirmed)) if multiple \
            else [tag]
        for confirmed in tags:
            message_id = channel.unconfirmed.pop(confirmed)
            returned = channel.returned.pop(message_id, None)
            if method.name == "Basic.Nack":
                self._events.append(Nacked(method.channel, message_id, confirmed))
            elif returned is not None:
                returned.delivery_tag = confirmed
                self._events.append(returned)
            else:
                self._events.append(Acked(method.channel, message_id, confirmed))

    def _on_return(self, method):
        channel = self.channels.get(method.channel)
        if channel is None or channel.state == "closing":
            return None  # the channel closed while the content came
        returned = Returned(method.channel, method.properties.get("message_id"), method.args)
        if not channel.confirming:
            return returned
        if returned.message_id not in channel.unconfirmed.values():
            raise RemoteProtocolError(f"Basic.Return of message {returned.message_id!r}, which "
                                      "awaits no confirm")
        channel.returned[returned.message_id] = returned  # the Ack that follows settles it
        return None

    def _on_start(self, args):
        if (args["version_major"], args["version_minor"]) != (0, 9):
            raise RemoteProtocolError(f"the broker speaks AMQP {args['version_major']}-"
                                      f"{args['version_minor']}, not 0-9-1")
        self.server_properties = args["server_properties"]
        offered = str(args["mechanisms"], "utf-8", "replace").split()  # "AMQPLAIN PLAIN"
        mechanism = next((m for m in self.mechanisms if m in offered), None)
        if mechanism is None:
            raise RemoteProtocolError(f"the broker does not offer the {' or '.join(self.mechanisms)}"
                                      f" login (it offers: {' '.join(offered) or 'nothing'})")
        self.mechanism = mechanism
        response = b""  # EXTERNAL: the TLS client certificate is the login
        if mechanism == "PLAIN":
            response = b"\x00%s\x00%s" % (self.username.encode(), self._password.encode())
        self._send(0, "Connection.Start-Ok", client_properties=self.client_properties,
                   mechanism=mechanism, response=response, locale=self.locale)
        self.state = "tune"

    def _on_tune(self, args):
        # Take the broker's limits; 0 means it sets none. Never ask for more.
        self.channel_max = min(self.channel_max, args["channel_max"] or self.channel_max)
        self.frame_max = min(self.frame_max, args["frame_max"] or self.frame_max)
        if self.frame_max < FRAME_MIN_SIZE:
            raise RemoteProtocolError(f"the broker's frame_max of {args['frame_max']} is below "
                                      f"the minimum of {FRAME_MIN_SIZE}")
        self._decoder.frame_max = self.frame_max
        self._send(0, "Connection.Tune-Ok", channel_max=self.channel_max,
                   frame_max=self.frame_max, heartbeat=self.heartbeat)
        self._send(0, "Connection.Open", virtual_host=self.vhost)
        self.state = "opening"

    # -- what the client does -------------------------------------------------

    def _require_open(self, what, channel=None):
        """The _Channel of `channel` if given, once the connection (and it) are open."""
        if self.state != "open":
            self._refuse_if_broken(what)
            raise LocalProtocolError(f"cannot {what}: the connection is {self.state}")
        if channel is None:
            return None
        state = self.channels.get(channel)
        if state is None or state.state != "open":
            raise LocalProtocolError(f"cannot {what}: channel {channel} is not open")
        return state

    def open_channel(self, channel):
        """Send Channel.Open; Channel.Open-Ok opens it (channel_is_open)."""
        self._require_open("open a channel")
        if not 0 < channel <= self.channel_max or channel in self.channels:
            raise LocalProtocolError(f"channel {channel} is in use or out of range")
        self.channels[channel] = _Channel()
        self._send(channel, "Channel.Open")

    def close_channel(self, channel, reply_code=200, reply_text="bye"):
        """Send Channel.Close; the broker's Channel.Close-Ok frees the channel number.
        Confirms still awaited on it will not come."""
        state = self._require_open("close a channel", channel)
        state.state, state.expecting = "closing", "Channel.Close-Ok"
        self._send(channel, "Channel.Close", reply_code=reply_code, reply_text=reply_text)

    def send_method(self, channel, name, **values):
        """Send a method on an open channel, e.g. Queue.Declare or Confirm.Select; its
        reply (Queue.Declare-Ok ...) comes as a Method event."""
        state = self._require_open(f"send {name}", channel)
        reply = None if values.get("nowait") else _REPLIES.get(name)
        if reply is not None and state.expecting is not None:
            raise LocalProtocolError(f"cannot send {name} on channel {channel}: it still "
                                     f"awaits {state.expecting}")
        if name == "Confirm.Select":
            state.confirming = True
        state.expecting = reply
        self._send(channel, name, **values)

    def consume(self, channel, queue, consumer_tag="", *, no_ack=False, exclusive=False,
                arguments=None, max_body_size=None):
        """Send Basic.Consume; deliveries come as Delivery events once Basic.Consume-Ok
        (a Method event naming the consumer tag, the broker's if `consumer_tag` is "")
        has come. A body larger than `max_body_size` bytes is counted, not kept."""
        state = self._require_open("consume", channel)
        self.send_method(channel, "Basic.Consume", queue=queue, consumer_tag=consumer_tag,
                         no_ack=no_ack, exclusive=exclusive, arguments=arguments)
        state.consuming = (no_ack, max_body_size)

    def cancel(self, channel, consumer_tag):
        """Send Basic.Cancel; deliveries may still come until its Basic.Cancel-Ok."""
        state = self._require_open("cancel a consumer", channel)
        if consumer_tag not in state.consumers:
            raise LocalProtocolError(f"cannot cancel consumer {consumer_tag!r}: channel "
                                     f"{channel} has no such consumer")
        self.send_method(channel, "Basic.Cancel", consumer_tag=consumer_tag)

    def ack(self, channel, delivery_tag, multiple=False):
        """Acknowledge a delivery, or with `multiple` every one up to it (0: all)."""
        state = self._require_open("acknowledge a delivery", channel)
        unacked = state.unacked
        if not (multiple and delivery_tag == 0) and delivery_tag not in unacked:
            raise LocalProtocolError(f"cannot acknowledge delivery tag {delivery_tag} on "
                                     f"channel {channel}: it awaits no acknowledgement")
        if multiple:
            last = delivery_tag or state.last_delivery
            state.unacked = {tag for tag in unacked if tag > last} if len(unacked) > 1 else set()
        else:
            unacked.discard(delivery_tag)
        self._outbox.append(encode_frame(FRAME_METHOD, channel, _ACK_HEAD + _longlong.pack(
            delivery_tag) + (b"\x01" if multiple else b"\x00")))

    def publish(self, channel, exchange, routing_key, body, properties, mandatory=False,
                message_id=None):
        """Queue a message; its delivery tag in confirm mode, else None.

        `properties` are encoded property bytes (see encode_properties), so a
        publisher can encode the ones that never change once. In confirm mode
        the broker's answer comes as an Acked, Nacked or Returned event naming
        `message_id`.
        """
        state = self.channels.get(channel)
        if self.state != "open" or state is None or state.state != "open":
            self._require_open("publish", channel)  # raises: says what is not open
        key = (channel, exchange, routing_key, mandatory)
        method = self._publish_frames.get(key)
        if method is None:  # the same few destinations over and over: encode each once
            if len(self._publish_frames) > 64:
                self._publish_frames.clear()
            method = self._publish_frames[key] = encode_frame(FRAME_METHOD, channel, encode_method(
                "Basic.Publish", exchange=exchange, routing_key=routing_key, mandatory=mandatory))
        # one string for the three frames (and one item for data_to_send() to join)
        self._outbox.append(encode_message(method, channel, properties, body, self.frame_max))
        if not state.confirming:
            return None
        tag, state.next_tag = state.next_tag, state.next_tag + 1
        state.unconfirmed[tag] = message_id
        return tag

    def close(self, reply_code=200, reply_text="bye"):
        """Start closing the connection; Connection.Close-Ok ends it."""
        self._refuse_if_broken("close the connection")
        if self.state in ("opening", "open"):
            self._send(0, "Connection.Close", reply_code=reply_code, reply_text=reply_text)
            self.state = "closing"
        elif self.state != "closing":
            self.state = "closed"
