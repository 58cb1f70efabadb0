"""errors: the whole exception hierarchy, under PihaceError."""

from __future__ import annotations


class PihaceError(Exception):
    """Root of every error pihace raises on purpose."""


class AMQPError(PihaceError):
    """Something went wrong speaking AMQP."""


class ProtocolError(AMQPError):
    """The rules of AMQP 0-9-1 were broken."""


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol does not allow now."""


class RemoteProtocolError(ProtocolError):
    """The broker (or whatever answered) sent bytes that break the protocol."""


class _ClosedByBroker(AMQPError):
    """The broker closed a connection or channel, and said why."""

    what = "connection"
    hints = {}  # reply code -> what to check, said with the URL

    def __init__(self, reply_code=0, reply_text="", class_id=0, method_id=0, cause=None):
        self.reply_code, self.reply_text = reply_code, reply_text
        self.class_id, self.method_id = class_id, method_id
        super().__init__(f"broker closed the {self.what}: {reply_text or 'no reason given'} "
                         f"(reply code {reply_code}" + (f", in reply to {cause})" if cause else ")"))


class ConnectionClosed(_ClosedByBroker):
    """The broker closed the connection (Connection.Close)."""

    hints = {403: "check the user name and password", 530: "check the vhost"}


class ChannelClosed(_ClosedByBroker):
    """The broker closed the channel (Channel.Close); the connection lives on."""

    what = "channel"


class ConsumerCancelled(AMQPError):
    """The broker cancelled our consumer: its queue was deleted, or its node went away."""


class PublishError(AMQPError):
    """A message the broker nacked, returned as unroutable, or did not confirm in time."""


class Interrupted(PihaceError):
    """stop() ended a wait for the broker before its deadline."""
