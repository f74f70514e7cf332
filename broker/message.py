"""The Taskiq message a job travels as on its queue stream.

It carries only the job id (as the task's one argument) and the dispatch number; the
input lives in the job record, so it is stored once and the stream stays small.
"""

from __future__ import annotations

import msgspec


class DispatchLabels(msgspec.Struct):
    """Labels jobstream puts on a message: which dispatch of the job it is."""

    dispatch: int = 1


class TaskMessage(msgspec.Struct):
    """The wire form of ``taskiq.message.TaskiqMessage`` for a jobstream job."""

    task_id: str
    task_name: str
    labels: DispatchLabels
    args: list[str]
    kwargs: dict[str, str] = {}
    labels_types: None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TaskMessage)


def encode_message(job_id: str, task_name: str, dispatch: int) -> bytes:
    """The message that asks a worker to run dispatch ``dispatch`` of job ``job_id``."""
    return _encoder.encode(TaskMessage(job_id, task_name, DispatchLabels(dispatch), [job_id]))


def decode_message(data: bytes) -> TaskMessage:
    """Parse a message taken from a stream (raises ``msgspec.DecodeError`` if it is not ours)."""
    return _decoder.decode(data)
