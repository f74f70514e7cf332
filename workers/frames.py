"""The frame a worker's ``listen`` yields per delivery: ``stream NUL entry-id NUL payload``.

The frame carries the stream and entry id beside the job's message, so whoever runs it
knows exactly which delivery it runs, with no shared lookup table. Taskiq's own receiver
gets one frame per message and reads it through :class:`JobFormatter`; ``JobReceiver``
gets a batch of frames per message (:func:`make_batch`), everything one read returned.
"""

from __future__ import annotations

import msgspec
from taskiq.abc.formatter import TaskiqFormatter
from taskiq.message import BrokerMessage, TaskiqMessage

from broker.message import decode_message

_SEP = b"\x00"


def make_frame(stream: str, entry_id: str, payload: bytes) -> bytes:
    """One delivery as the bytes ``listen`` yields."""
    return stream.encode() + _SEP + entry_id.encode() + _SEP + payload


def split_frame(frame: bytes) -> tuple[str, str, bytes]:
    """``(stream, entry id, payload)`` of a frame made by :func:`make_frame`."""
    stream, entry_id, payload = frame.split(_SEP, 2)
    return stream.decode(), entry_id.decode(), payload


_batch_encode = msgspec.msgpack.Encoder().encode
_batch_decode = msgspec.msgpack.Decoder(list[bytes]).decode


def make_batch(frames: list[bytes]) -> bytes:
    """Several frames as one delivery to ``JobReceiver`` (what one read from Redis returned)."""
    return _batch_encode(frames)


def split_batch(batch: bytes) -> list[bytes]:
    """The frames of a batch made by :func:`make_batch`."""
    return _batch_decode(batch)


class JobFormatter(TaskiqFormatter):
    """Reads frames into Taskiq messages for the job entry point (Taskiq's own receiver)."""

    def dumps(self, message: TaskiqMessage) -> BrokerMessage:
        """Encode a message for ``kick`` (plain Taskiq use of the broker)."""
        return BrokerMessage(
            task_id=message.task_id,
            task_name=message.task_name,
            message=msgspec.json.encode(message.model_dump()),
            labels=message.labels,
        )

    def loads(self, message: bytes) -> TaskiqMessage:
        """Parse a frame into a message whose arguments name the delivery."""
        stream, entry_id, payload = split_frame(message)
        parsed = decode_message(payload)
        return TaskiqMessage.model_construct(
            task_id=parsed.task_id,
            task_name=parsed.task_name,
            labels={},
            labels_types=None,
            args=[parsed.task_id, stream, entry_id, parsed.labels.dispatch],
            kwargs={},
        )
