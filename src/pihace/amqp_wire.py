"""AMQP wire format: the constants, field types and frames of AMQP 0-9-1 with RabbitMQ's extensions; no I/O."""

from __future__ import annotations

import functools
import struct

from .errors import RemoteProtocolError
from .helpers import _text


PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
FRAME_MIN_SIZE = 4096
FRAME_OVERHEAD = 8  # type, channel, size and frame-end around every payload
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
DEFAULT_FRAME_MAX = 131072  # used until Tune, and when the broker sets no limit
DEFAULT_CHANNEL_MAX = 2047
BASIC_CLASS = 60
DELIVER_METHOD = b"\x00\x3c\x00\x3c"  # the start of a Basic.Deliver payload: class 60, method 60

# The methods pihace sends (>), accepts (<) or both: class id, method id, name, then the
# arguments as name:type; consecutive bits share an octet (least significant first): a,b:bits.
_METHOD_TABLE = [
    "10 10 < Connection.Start version_major:octet version_minor:octet server_properties:table "
    "mechanisms:longstr locales:longstr",
    "10 11 > Connection.Start-Ok client_properties:table mechanism:shortstr response:longstr "
    "locale:shortstr",
    "10 20 < Connection.Secure challenge:longstr",
    "10 30 < Connection.Tune channel_max:short frame_max:long heartbeat:short",
    "10 31 > Connection.Tune-Ok channel_max:short frame_max:long heartbeat:short",
    "10 40 > Connection.Open virtual_host:shortstr capabilities:shortstr insist:bits",
    "10 41 < Connection.Open-Ok known_hosts:shortstr",
    "10 50 <> Connection.Close reply_code:short reply_text:shortstr class_id:short method_id:short",
    "10 51 <> Connection.Close-Ok",
    "10 60 < Connection.Blocked reason:shortstr",
    "10 61 < Connection.Unblocked",
    "20 10 > Channel.Open out_of_band:shortstr",
    "20 11 < Channel.Open-Ok channel_id:longstr",
    "20 20 < Channel.Flow active:bits",
    "20 21 > Channel.Flow-Ok active:bits",
    "20 40 <> Channel.Close reply_code:short reply_text:shortstr class_id:short method_id:short",
    "20 41 <> Channel.Close-Ok",
    "40 10 > Exchange.Declare ticket:short exchange:shortstr type:shortstr "
    "passive,durable,auto_delete,internal,nowait:bits arguments:table",
    "40 11 < Exchange.Declare-Ok",
    "50 10 > Queue.Declare ticket:short queue:shortstr "
    "passive,durable,exclusive,auto_delete,nowait:bits arguments:table",
    "50 11 < Queue.Declare-Ok queue:shortstr message_count:long consumer_count:long",
    "50 20 > Queue.Bind ticket:short queue:shortstr exchange:shortstr routing_key:shortstr "
    "nowait:bits arguments:table",
    "50 21 < Queue.Bind-Ok",
    "50 30 > Queue.Purge ticket:short queue:shortstr nowait:bits",
    "50 31 < Queue.Purge-Ok message_count:long",
    "50 40 > Queue.Delete ticket:short queue:shortstr if_unused,if_empty,nowait:bits",
    "50 41 < Queue.Delete-Ok message_count:long",
    "60 10 > Basic.Qos prefetch_size:long prefetch_count:short global:bits",
    "60 11 < Basic.Qos-Ok",
    "60 20 > Basic.Consume ticket:short queue:shortstr consumer_tag:shortstr "
    "no_local,no_ack,exclusive,nowait:bits arguments:table",
    "60 21 < Basic.Consume-Ok consumer_tag:shortstr",
    "60 30 <> Basic.Cancel consumer_tag:shortstr nowait:bits",
    "60 31 <> Basic.Cancel-Ok consumer_tag:shortstr",
    "60 40 > Basic.Publish ticket:short exchange:shortstr routing_key:shortstr "
    "mandatory,immediate:bits",
    "60 50 < Basic.Return reply_code:short reply_text:shortstr exchange:shortstr "
    "routing_key:shortstr",
    "60 60 < Basic.Deliver consumer_tag:shortstr delivery_tag:longlong redelivered:bits "
    "exchange:shortstr routing_key:shortstr",
    "60 80 <> Basic.Ack delivery_tag:longlong multiple:bits",
    "60 120 < Basic.Nack delivery_tag:longlong multiple,requeue:bits",
    "85 10 > Confirm.Select nowait:bits",
    "85 11 < Confirm.Select-Ok",
]
_METHODS = [line.split() for line in _METHOD_TABLE]
_METHOD_NAMES = {(int(c), int(m)): name for c, m, _, name, *_ in _METHODS}
_METHOD_IDS = {name: key for key, name in _METHOD_NAMES.items()}
_METHOD_ARGUMENTS = {name: [(argument.split(",") if kind == "bits" else argument, kind)
                            for argument, kind in (item.split(":") for item in signature)]
                     for _, _, _, name, *signature in _METHODS}
_FROM_BROKER = {name for _, _, way, name, *_ in _METHODS if "<" in way}

# Basic content properties in flag order: bit 15 (content_type) downwards.
BASIC_PROPERTIES = (
    ("content_type", "shortstr"), ("content_encoding", "shortstr"), ("headers", "table"),
    ("delivery_mode", "octet"), ("priority", "octet"), ("correlation_id", "shortstr"),
    ("reply_to", "shortstr"), ("expiration", "shortstr"), ("message_id", "shortstr"),
    ("timestamp", "timestamp"), ("type", "shortstr"), ("user_id", "shortstr"),
    ("app_id", "shortstr"), ("cluster_id", "shortstr"),
)


# ---------------------------------------------------------------------------
# AMQP wire types
# ---------------------------------------------------------------------------

_octet, _short, _long, _longlong = (struct.Struct(f">{c}") for c in "BHIQ")
_INTEGERS = {"octet": _octet, "short": _short, "long": _long, "longlong": _longlong,
             "timestamp": _longlong}
# RabbitMQ's field types (its "s" is a signed 16-bit integer, unlike the 0-9-1 text)
_FIELD_STRUCTS = {tag.encode(): struct.Struct(">" + code) for tag, code in (
    ("b", "b"), ("B", "B"), ("s", "h"), ("u", "H"), ("I", "i"), ("i", "I"), ("l", "q"),
    ("L", "Q"), ("T", "Q"), ("f", "f"), ("d", "d"), ("t", "?"))}
_MAX_TABLE_DEPTH = 16


def encode_shortstr(value):
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(data) > 255:
        raise ValueError(f"{_text(value)[:40]!r}... is {len(data)} bytes long; "
                         "AMQP short strings hold at most 255")
    return bytes((len(data),)) + data


def encode_longstr(value):
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return _long.pack(len(data)) + data


def _encode_field_value(key, value):
    # Only the types every broker reads: t I l S F V. bool before int: bool is an int.
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if -2 ** 31 <= value < 2 ** 31:
            return b"I" + _FIELD_STRUCTS[b"I"].pack(value)
        if -2 ** 63 <= value < 2 ** 63:
            return b"l" + _FIELD_STRUCTS[b"l"].pack(value)
        raise ValueError(f"table value of {key!r} does not fit in 64 bits: {value}")
    if isinstance(value, (str, bytes)):
        return b"S" + encode_longstr(value)
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    raise ValueError(f"table value of {key!r} is a {type(value).__name__}; "
                     "AMQP tables here hold bool, int, str, bytes, dict or None")


def encode_table(table):
    payload = b"".join(encode_shortstr(str(key)) + _encode_field_value(key, value)
                       for key, value in (table or {}).items())
    return _long.pack(len(payload)) + payload


_ENCODERS = dict({kind: packer.pack for kind, packer in _INTEGERS.items()},
                 shortstr=encode_shortstr, longstr=encode_longstr, table=encode_table)
_EMPTY = {"shortstr": b"", "longstr": b"", "table": None}  # what a missing argument sends


def encode_method(name, **values):
    """A method frame's payload: class id, method id, then the arguments."""
    class_id, method_id = _METHOD_IDS[name]
    parts = [_short.pack(class_id), _short.pack(method_id)]
    for argument, kind in _METHOD_ARGUMENTS[name]:
        if kind == "bits":  # consecutive bits share one octet, least significant first
            octet = sum(1 << i for i, bit in enumerate(argument) if values.get(bit))
            parts.append(bytes((octet,)))
        else:
            parts.append(_ENCODERS[kind](values.get(argument) or _EMPTY.get(kind, 0)))
    return b"".join(parts)


class _Reader:
    """Reads spec types from a payload (bytes: its short strings are decoded with
    bytes.decode); any shortfall is a RemoteProtocolError."""

    __slots__ = ("data", "offset")

    def __init__(self, data, offset=0):
        self.data, self.offset = data, offset

    def take(self, size):
        end = self.offset + size
        if end > len(self.data):
            raise RemoteProtocolError(f"truncated frame: needed {size} more bytes at offset "
                                      f"{self.offset} of {len(self.data)}")
        chunk = self.data[self.offset:end]
        self.offset = end
        return bytes(chunk)

    def unpack(self, packer):
        offset = self.offset
        end = offset + packer.size
        if end > len(self.data):
            self.take(packer.size)  # raises: truncated
        self.offset = end
        return packer.unpack_from(self.data, offset)[0]

    def shortstr(self):
        return self.take(self.unpack(_octet)).decode("utf-8", "replace")

    def longstr(self):
        return self.take(self.unpack(_long))

    def read(self, kind):
        """A value of a spec type other than bit, e.g. "short" or "table"."""
        packer = _INTEGERS.get(kind)
        return self.unpack(packer) if packer else getattr(self, kind)()

    def _items(self, read):
        """read(reader) for each item in a longstr (a table's or an array's), in order."""
        reader, items = _Reader(self.longstr()), []
        while reader.offset < len(reader.data):
            items.append(read(reader))
        return items

    def table(self, depth=0):
        return dict(self._items(lambda reader: (reader.shortstr(), reader.field_value(depth))))

    def field_value(self, depth):
        if depth > _MAX_TABLE_DEPTH:  # tables and arrays nested in each other
            raise RemoteProtocolError("field table nested too deeply")
        tag = self.take(1)
        if tag in _FIELD_STRUCTS:
            return self.unpack(_FIELD_STRUCTS[tag])
        if tag == b"S":
            return self.longstr().decode("utf-8", "replace")
        if tag == b"x":
            return self.longstr()
        if tag == b"F":
            return self.table(depth + 1)
        if tag == b"A":
            return self._items(lambda reader: reader.field_value(depth + 1))
        if tag == b"D":
            scale, value = self.unpack(_octet), self.unpack(_FIELD_STRUCTS[b"I"])
            return value / 10 ** scale
        if tag == b"V":
            return None
        raise RemoteProtocolError(f"unknown field table tag {tag!r}")

    def arguments(self, arguments):
        values = {}
        for name, kind in arguments:
            if kind == "bits":
                octet = self.unpack(_octet)
                values.update((bit, bool(octet >> i & 1)) for i, bit in enumerate(name))
            else:
                values[name] = self.read(kind)
        return values


class PropertiesTemplate:
    """Encodes content properties, the ones that never change only once.

    `fixed` maps property names to values; `varying` names the properties
    given to encode() for each message (a None value leaves one out).
    """

    def __init__(self, fixed=None, varying=()):
        fixed = fixed or {}
        self.flags, self.head = 0, b""  # the fixed properties before the first varying one
        self.varying = []  # [name, encoder, flag, the fixed properties after it]
        for index, (name, kind) in enumerate(BASIC_PROPERTIES):
            flag = 1 << (15 - index)
            if name in varying:
                self.varying.append([name, _ENCODERS[kind], flag, b""])
            elif fixed.get(name) is not None:
                self.flags |= flag
                if self.varying:
                    self.varying[-1][3] += _ENCODERS[kind](fixed[name])
                else:
                    self.head += _ENCODERS[kind](fixed[name])
        # with every varying property given (encode_all): the flags and head packed once
        self._head_all = _short.pack(
            self.flags | sum(flag for _, _, flag, _ in self.varying)) + self.head
        self._pairs = tuple((encode, fixed) for _, encode, _, fixed in self.varying)

    def encode_all(self, *values):
        """encode() given a value (not None) for each varying property, in flag order (the
        order of BASIC_PROPERTIES): the same bytes, made faster."""
        if len(values) == 2 == len(self._pairs):  # a pusher's message id and timestamp
            (first, after_first), (second, after_second) = self._pairs
            return b"".join((self._head_all, first(values[0]), after_first, second(values[1]),
                             after_second))
        parts = [self._head_all]
        for (encode, fixed), value in zip(self._pairs, values):
            parts += encode(value), fixed
        return b"".join(parts)

    def encode(self, **values):
        flags, parts = self.flags, [self.head]
        for name, encode, flag, fixed in self.varying:
            value = values.get(name)
            if value is not None:
                flags |= flag
                parts.append(encode(value))
            parts.append(fixed)
        return _short.pack(flags) + b"".join(parts)


def encode_properties(properties):
    """The property flags and values of a content header, from a dict."""
    return PropertiesTemplate(varying=properties).encode(**properties)


_PROPERTY_FLAGS = [(1 << (15 - index), name, _INTEGERS.get(kind, kind))
                   for index, (name, kind) in enumerate(BASIC_PROPERTIES)]
_HEADERS_SEEN = {}  # the bytes of a headers table of plain values -> its decoded dict


def _headers(reader):
    """A headers table; those of plain values (say {"status": "Available"}), which come
    again and again, are decoded once."""
    data, offset = reader.data, reader.offset
    end = offset + 4 + (_long.unpack_from(data, offset)[0] if offset + 4 <= len(data) else 0)
    raw = data[offset:end] if end <= len(data) else None
    table = _HEADERS_SEEN.get(raw)
    if table is None:
        table = reader.table()
        if raw is not None and len(raw) <= 256 and not any(
                isinstance(value, (dict, list)) for value in table.values()):
            if len(_HEADERS_SEEN) >= 256:
                _HEADERS_SEEN.clear()
            _HEADERS_SEEN[raw] = dict(table)
        return table
    reader.offset = end
    return dict(table)


@functools.lru_cache(maxsize=64)
def _properties_present(flags):
    """[(name, kind)] of the properties that property flags say are there, in order."""
    return [(name, kind) for flag, name, kind in _PROPERTY_FLAGS if flags & flag]


def decode_properties(reader):
    """The properties of a content header (its flags, then the properties they name), read
    from the reader's offset on."""
    properties, reader.offset = _properties_at(reader.data, reader.offset)
    return properties


def _properties_at(data, offset):
    """(properties, the offset after them) of the property flags and list at `offset` of
    `data` (bytes, as FrameDecoder cuts them). Every delivery has them: all kinds but the
    headers table (short strings, the octets of delivery mode and priority, the timestamp)
    are read inline."""
    try:
        flags = _short.unpack_from(data, offset)[0]
        if flags & 1:
            raise RemoteProtocolError("content header with continued property flags")
        properties, offset, size = {}, offset + 2, len(data)
        for name, kind in _properties_present(flags):
            if kind == "shortstr":
                end = offset + 1 + data[offset]
                if end > size:
                    break
                properties[name] = data[offset + 1:end].decode("utf-8", "replace")
                offset = end
            elif kind is _octet:
                properties[name] = data[offset]
                offset += 1
            elif kind is _longlong:
                properties[name] = _longlong.unpack_from(data, offset)[0]
                offset += 8
            else:  # the headers table
                reader = _Reader(data, offset)
                properties[name] = _headers(reader)
                offset = reader.offset
        else:
            return properties, offset
    except (IndexError, struct.error):
        pass
    raise RemoteProtocolError(f"truncated frame: content properties of {len(data)} bytes")


# ---------------------------------------------------------------------------
# AMQP frames
# ---------------------------------------------------------------------------

_frame_head = struct.Struct(">BHI")
_content_head = struct.Struct(">HHQ")
# a content header frame's head and its payload's fixed part: type, channel, size, class,
# weight, body size
_header_frame_head = struct.Struct(">BHIHHQ")
# the end of the frame before, and a body frame's head: frame end, type, channel, size
_body_frame_head = struct.Struct(">BBHI")


def encode_frame(frame_type, channel, payload):
    return _frame_head.pack(frame_type, channel, len(payload)) + payload + b"\xce"


def encode_content(channel, properties, body, frame_max):
    """The content header frame and body frames of one message.

    `properties` is encoded property bytes (see encode_properties). Body frames
    hold at most frame_max - 8 bytes; an empty body sends none.
    """
    return encode_message(b"", channel, properties, body, frame_max)


def encode_message(method, channel, properties, body, frame_max):
    """A published message's frames as one string of bytes: `method` (its Basic.Publish
    method frame, already encoded: it is the same for every message to one destination),
    then the content header frame and the body frames, as encode_content() makes them.

    A body that fits in one frame (the common case) is joined in one go, without
    encoding each frame on its own.
    """
    size = len(body)
    head = _header_frame_head.pack(FRAME_HEADER, channel, 12 + len(properties), BASIC_CLASS, 0,
                                   size)
    step = frame_max - FRAME_OVERHEAD
    if size <= step:
        if not size:
            return b"".join((method, head, properties, b"\xce"))
        return b"".join((method, head, properties,
                         _body_frame_head.pack(FRAME_END, FRAME_BODY, channel, size), body,
                         b"\xce"))
    parts = [method, head, properties]
    for start in range(0, size, step):
        chunk = body[start:start + step]
        parts += _body_frame_head.pack(FRAME_END, FRAME_BODY, channel, len(chunk)), chunk
    parts.append(b"\xce")
    return b"".join(parts)


class FrameDecoder:
    """Cuts frames out of a byte stream; next_frame() is None until one is whole.

    What one read brings is cut in place, frame after frame, by an offset into it: each
    payload is one slice of the bytes received, whatever the number of frames in them.
    Bytes fed while a frame is incomplete wait in a list, joined once when the frame they
    complete is whole (a frame trickling in a byte at a time is not copied again per byte).
    """

    def __init__(self, frame_max=DEFAULT_FRAME_MAX):
        self.frame_max = frame_max
        self._data, self._offset = b"", 0  # the bytes being cut, and where the next frame starts
        self._more, self._more_size = [], 0  # bytes fed after them, not joined yet

    def feed(self, data):
        if self._offset == len(self._data) and not self._more:  # all cut: take them as they are
            self._data, self._offset = bytes(data), 0
        else:
            self._more.append(bytes(data))
            self._more_size += len(data)

    @property
    def pending(self):
        return len(self._data) - self._offset + self._more_size

    def _gather(self, size):
        """Are `size` bytes from the offset on there? Joins what waits in the list once
        they are."""
        data, offset = self._data, self._offset
        if len(data) - offset + self._more_size < size:
            return False
        self._more.insert(0, memoryview(data)[offset:])
        self._data, self._offset = b"".join(self._more), 0
        self._more.clear()
        self._more_size = 0
        return True

    def next_frame(self):
        """(type, channel, payload bytes) of the next whole frame, or None."""
        data, start = self._data, self._offset
        if len(data) - start < 7:
            if not self._gather(7):
                return None
            data, start = self._data, 0
        frame_type, channel, size = _frame_head.unpack_from(data, start)
        if frame_type not in (FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT):
            self._refuse(data, start)
            return None  # the start of a protocol header: its last byte is still to come
        if size + FRAME_OVERHEAD > self.frame_max:
            raise RemoteProtocolError(f"frame of {size + FRAME_OVERHEAD} bytes is larger than "
                                      f"the frame_max of {self.frame_max}")
        end = start + 7 + size
        if len(data) <= end:
            if not self._gather(size + FRAME_OVERHEAD):
                return None
            data, start, end = self._data, 0, 7 + size
        if data[end] != FRAME_END:
            raise RemoteProtocolError(f"frame does not end with 0xCE but {data[end]:#04x}")
        self._cut_after(end)
        return frame_type, channel, data[start + 7:end]

    def next_delivery(self):
        """(channel, Basic.Deliver payload, properties bytes, body) of a delivered message
        whose frames are the next ones, whole: its method frame, its content header frame
        and its single body frame (none for an empty body), on one channel. Cut in one pass
        (a consumer's backlog comes as whole messages, many to a read); None, with nothing
        taken, for anything else (a body in several frames, not all there yet, or anything
        amiss, which next_frame() then reports)."""
        data, start = self._data, self._offset
        if len(data) - start < 11:
            return None
        frame_type, channel, size = _frame_head.unpack_from(data, start)
        method_end = start + 7 + size
        if frame_type != FRAME_METHOD or data[start + 7:start + 11] != DELIVER_METHOD or (
                method_end >= len(data) or size + FRAME_OVERHEAD > self.frame_max
                or data[method_end] != FRAME_END):
            return None
        content = self._content_at(method_end + 1, channel)
        if content is None:
            return None
        properties, body, last = content
        self._cut_after(last)
        return channel, data[start + 7:method_end], properties, body

    def _content_at(self, start, channel):
        """(properties, body, offset of its last frame end) of the content whose header and
        single body frame on `channel` start at `start`, whole; else None."""
        data = self._data
        end = len(data)
        if end - start < 7 + _content_head.size + 3:
            return None
        frame_type, on, size = _frame_head.unpack_from(data, start)
        header_end = start + 7 + size
        if frame_type != FRAME_HEADER or on != channel or size < _content_head.size + 2 or (
                header_end >= end or size + FRAME_OVERHEAD > self.frame_max
                or data[header_end] != FRAME_END):
            return None
        class_id, _weight, body_size = _content_head.unpack_from(data, start + 7)
        if class_id != BASIC_CLASS:
            return None
        properties = data[start + 7 + _content_head.size:header_end]
        if not body_size:
            return properties, b"", header_end
        if header_end + 8 > end:
            return None
        frame_type, on, size = _frame_head.unpack_from(data, header_end + 1)
        body_end = header_end + 8 + size
        if frame_type != FRAME_BODY or on != channel or size != body_size or (
                body_end >= end or size + FRAME_OVERHEAD > self.frame_max
                or data[body_end] != FRAME_END):
            return None
        return properties, data[header_end + 8:body_end], body_end

    def _cut_after(self, last):
        """What was taken ends at `last` (a frame end)."""
        if last + 1 == len(self._data):  # all cut: nothing of them is kept
            self._data, self._offset = b"", 0
        else:
            self._offset = last + 1

    def _refuse(self, data, start):
        """Raise RemoteProtocolError for bytes that do not start a frame, saying what they
        look like; return while they may still turn out to be a protocol header."""
        head = bytes(data[start:start + 16])
        if head[:4] == b"AMQP":  # a protocol header: the server wants another version
            if len(head) < 8:
                if not self._gather(8):
                    return
                head = bytes(self._data[:16])
            raise RemoteProtocolError(f"the server only speaks AMQP {head[5]}.{head[6]}."
                                      f"{head[7]} (protocol id {head[4]}), not AMQP 0-9-1")
        if head[0] in (0x15, 0x16) and head[1] == 3:  # a TLS record: alert, handshake
            raise RemoteProtocolError("the server speaks TLS on this port: use amqps://")
        raise RemoteProtocolError(f"unknown frame type {head[0]} "
                                  f"(bytes {head!r}): not an AMQP 0-9-1 broker?")
