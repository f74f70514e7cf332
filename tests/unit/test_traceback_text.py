"""What a failed attempt records (workers/failures.py) and who is shown its traceback (web/tracebacks.py)."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime

import msgspec
import pytest

from broker import TaskError
from broker.models import Job, JobError, JobStatus, without_traceback
from broker.settings import load_settings
from devtools.dev_stack import dev_environment
from web.auth import User
from web.tracebacks import shown_to
from workers.failures import (
    DETAILS_LIMIT,
    TRACEBACK_LIMIT,
    failure_of,
    retryable,
    shorten_traceback,
    task_details,
    traceback_text,
)


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # the test wants it with its traceback
        return caught


def _ping(depth: int) -> None:
    if depth <= 0:
        raise KeyError("innermost")
    _pong(depth - 1)


def _pong(depth: int) -> None:
    _ping(depth - 1)


def _deep_error(depth: int) -> BaseException:
    try:
        _ping(depth)
    except KeyError as caught:
        return caught
    raise AssertionError("no error")


def test_a_short_traceback_is_kept_whole() -> None:
    exc = _raised(ValueError("bad input"))
    text = traceback_text(exc)
    assert text.startswith("Traceback (most recent call last):\n")
    assert "in _raised" in text
    assert text.endswith("ValueError: bad input\n")
    assert "shortened" not in text


def test_a_long_traceback_keeps_its_innermost_frames_and_the_exception() -> None:
    full = "".join(traceback.format_exception(_deep_error(300)))
    assert len(full) > 2 * TRACEBACK_LIMIT
    text = traceback_text(_deep_error(300))
    assert len(text) <= TRACEBACK_LIMIT
    lines = text.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1] == f"  [... shortened from {len(full)} characters ...]"
    assert lines[-1] == "KeyError: 'innermost'"
    assert "in _ping\n    raise KeyError" in text  # the frame that raised
    assert full.endswith(text.split("\n", 2)[2])  # the rest is the end of the original, whole lines


def test_a_huge_exception_line_keeps_its_beginning_and_the_frames_above() -> None:
    exc = _raised(ValueError("x" * 50_000))
    text = traceback_text(exc)
    assert len(text) <= TRACEBACK_LIMIT
    assert "in _raised" in text
    assert "\nValueError: xxx" in text
    assert text.endswith(" [...]\n")


def test_a_single_huge_line_is_cut_to_the_limit() -> None:
    text = shorten_traceback("y" * 10_000, 400)
    assert len(text) <= 400
    assert text.startswith("  [... shortened from 10000 characters ...]\n")
    assert text.endswith("y [...]\n")


def test_a_value_error_records_its_type_message_and_traceback() -> None:
    error = failure_of(_raised(ValueError("bad input")))
    assert (error.type, error.message) == ("ValueError", "bad input")
    assert set(error.details) == {"traceback"}
    assert error.details["traceback"].endswith("ValueError: bad input\n")


def test_an_exception_without_a_message_records_its_repr() -> None:
    assert failure_of(_raised(ValueError())).message == "ValueError()"


class _Encrypted(TaskError):
    pass


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


def test_a_task_error_records_its_class_name_and_its_details_beside_the_traceback() -> None:
    when = datetime(2024, 5, 1, tzinfo=UTC)
    exc = _raised(_Encrypted("PDF is encrypted", details={"page": 3, "at": when, "traceback": "mine"}))
    error = failure_of(exc)
    assert (error.type, error.message) == ("_Encrypted", "PDF is encrypted")
    assert error.details["page"] == 3
    assert error.details["at"] == "2024-05-01T00:00:00Z"
    assert error.details["traceback"].endswith("_Encrypted: PDF is encrypted\n")  # the worker's wins
    assert msgspec.json.decode(msgspec.json.encode(error), type=JobError) == error


def test_details_json_cannot_hold_fall_back_to_repr_and_never_raise() -> None:
    assert task_details({"number": complex(1, 2)}) == {"number": "(1+2j)"}
    assert task_details({"bad": _Unprintable()}) == {"bad": "<_Unprintable that cannot be shown>"}
    assert task_details({1: {2}}) == {"1": [2]}
    looped: dict[str, object] = {}
    looped["self"] = looped
    assert task_details(looped) == {"repr": "{'self': {...}}"}
    assert task_details([1, 2]) == {"value": [1, 2]}
    assert set(task_details({"big": "x" * DETAILS_LIMIT})) == {"omitted"}


def test_only_a_task_error_with_retry_false_stops_the_retries() -> None:
    assert retryable(ValueError("x"))
    assert retryable(None)
    assert retryable(TaskError("x"))
    assert not retryable(TaskError("x", retry=False))


def _job(error: JobError | None) -> Job:
    now = datetime.now(UTC)
    return Job(
        id="j",
        type="t",
        status=JobStatus.FAILURE,
        input=msgspec.Raw(b"{}"),
        result=msgspec.Raw(b"null"),
        error=error,
        owner="alice",
        queue="default",
        created_at=now,
        updated_at=now,
        version=3,
    )


def test_without_traceback_copies_only_a_job_that_has_one() -> None:
    bare = _job(None)
    assert without_traceback(bare) is bare
    plain = _job(JobError("Timeout", "too slow"))
    assert without_traceback(plain) is plain
    full = _job(JobError("PdfEncrypted", "PDF is encrypted", {"page": 3, "traceback": "Traceback..."}))
    hidden = without_traceback(full)
    assert hidden.error == JobError("PdfEncrypted", "PDF is encrypted", {"page": 3})
    assert full.error is not None and "traceback" in full.error.details  # the original is untouched
    assert hidden.version == full.version
    only = without_traceback(_job(JobError("ValueError", "x", {"traceback": "Traceback..."})))
    assert only.error == JobError("ValueError", "x")


@pytest.mark.parametrize(
    ("caller", "expose", "sees"),
    [
        (User("admin", admin=True), False, True),
        (User("alice"), False, False),
        (User("svc", service=True), False, False),
        (User("alice"), True, True),
        (User("svc", service=True), True, True),
    ],
)
def test_who_is_shown_the_traceback(caller: User, expose: bool, sees: bool) -> None:
    job = _job(JobError("ValueError", "x", {"traceback": "Traceback..."}))
    shown = shown_to(job, caller, load_settings({}, expose_tracebacks=expose))
    assert (shown is job) is sees
    assert shown.error is not None
    assert ("traceback" in (shown.error.details or {})) is sees


@pytest.mark.parametrize(
    ("given", "expected"), [({}, "true"), ({"JOBSTREAM_EXPOSE_TRACEBACKS": "false"}, "false")]
)
def test_jobstream_dev_shows_tracebacks_unless_told_not_to(given: dict[str, str], expected: str) -> None:
    assert dev_environment(given)["JOBSTREAM_EXPOSE_TRACEBACKS"] == expected
