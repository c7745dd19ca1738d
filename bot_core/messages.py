"""The nouns plugins work with: inbound messages, replies, delivery statuses, conversations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Media:
    """One MMS attachment as Telnyx describes it."""

    url: str
    content_type: str | None = None
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class InboundMessage:
    """A message a customer sent to one of our numbers.

    ``id`` is Telnyx's message id (stable across webhook retries); ``mdr_id`` is our MDR row.
    ``profile`` is the name of the Messaging Profile that owns ``to_number``.
    ``other_recipients`` are everyone else a group message went to (V2 ``to`` and ``cc``,
    E.164), besides ``to_number``, our number; a reply goes to ``from_number`` only.
    """

    id: str
    text: str
    from_number: str
    to_number: str
    profile: str | None
    media: tuple[Media, ...] = ()
    mdr_id: int | None = None
    received_at: str | None = None
    other_recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeliveryStatus:
    """A delivery status update for a message we sent, from a V1 or V2 webhook.

    ``status`` is Telnyx's word (``queued``, ``sending``, ``sent``, ``delivered``,
    ``delivery_failed``, ...); ``failed`` says whether it is a failure.
    """

    telnyx_id: str
    status: str
    from_number: str | None = None
    to_number: str | None = None
    error: str | None = None
    mdr_id: int | None = None

    @property
    def failed(self) -> bool:
        return self.status not in ("queued", "sending", "sent", "delivered", "webhook_delivered")


@dataclass
class Reply:
    """A message to send back.

    ``ignore_optout`` lets compliance answers (the STOP confirmation, HELP) reach a recipient
    who has opted out; nothing else should set it.
    """

    text: str
    ignore_optout: bool = False


@dataclass
class Conversation:
    """One (our number, their number) pair and the plugin state kept for it.

    ``state`` is a JSON-serialisable dict; changes made by plugins are committed together with
    the replies when the message is handled, and discarded if a plugin fails.
    """

    id: int
    profile: str | None
    our_number: str
    their_number: str
    state: dict[str, Any] = field(default_factory=dict)
