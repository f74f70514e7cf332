"""``OwnerSlots``: the per-owner cap on open streams and waiting long polls in one web process."""

from __future__ import annotations

from web.problems import ProblemError, problem

STREAM_CAP_RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of the 429 over the stream cap: long enough for one of the owner's streams to end."""


class OwnerSlots:
    """How many streams and waiting long polls each owner holds in this process, capped.

    A dict of counters, touched once when a stream or long poll starts and once when it
    ends (no Redis round trip); an owner at zero is forgotten. ``cap`` 0 counts nothing
    and refuses nothing.
    """

    __slots__ = ("_held", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._held: dict[str, int] = {}

    def take(self, owner: str) -> None:
        """Count one more for ``owner``; 429 (a :class:`ProblemError`) if it is at the cap."""
        if self.cap:
            held = self._held.get(owner, 0)
            if held >= self.cap:
                detail = f"at most {self.cap} open event streams and long polls per owner; close one first"
                raise ProblemError(
                    problem(429, "too-many-streams", detail),
                    {"Retry-After": str(STREAM_CAP_RETRY_AFTER_SECONDS)},
                )
            self._held[owner] = held + 1

    def give_back(self, owner: str) -> None:
        """One stream or long poll of ``owner`` ended."""
        held = self._held.get(owner)
        if held is None:
            return
        if held > 1:
            self._held[owner] = held - 1
        else:
            del self._held[owner]
