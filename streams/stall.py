"""Is a stream we expect silent? A consumer that stops receiving while a session is live says so.

Why: a decoder cut off from its rig (a ZeroMQ protocol error, a dead link, a publisher gone) can stay up,
repeat its status line and decode nothing while the rig keeps showing stimuli to a mouse nobody decodes
(without a reconnect, four 256 MiB messages gave 25 s of silence and no warning). A stream is *expected* from a
session header until that session's `end`; while it is, a silence longer than `stall_after_s` (no valid frame) is a
stall: one warning when it starts, one line every `repeat_s` while it lasts, one when frames come back. Pure Python
(a clock is passed in), so it is tested without sockets; streams.transport.Subscriber owns one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

#: A rig at 30 Hz sends 60 frames in 2 s; a cut-off subscriber has frames again 133 ms after four 256 MiB messages
#: (`neurocine bench fuzz --cutoffs 4`) and a restarted publisher is heard within 1 s (tests/test_stall.py), so 2 s
#: of silence inside a session is not normal.
STALL_AFTER_S = 2.0
#: While a stall lasts, it is logged again this often (the status line repeats too, so the log says why).
STALL_REPEAT_S = 10.0


@dataclasses.dataclass(frozen=True)
class StallConfig:
    """When a consumer calls a live stream stalled (every verb's --stall-after reads its default here)."""

    stall_after_s: float = STALL_AFTER_S
    repeat_s: float = STALL_REPEAT_S

    def __post_init__(self) -> None:
        if not self.stall_after_s > 0 or not self.repeat_s > 0:
            raise ValueError(f"stall_after_s and repeat_s must be > 0, got {self}")


#: The defaults, as one object (a default argument that is not built per call).
DEFAULT_STALL = StallConfig()


def add_stall_option(p: argparse.ArgumentParser, warns: str, note: str = "") -> None:
    """--stall-after, for every verb that watches a live stream: `warns` says what is warned of ("when ... for S
    seconds"), `note` where else the verb reports it."""
    default = f"default {DEFAULT_STALL.stall_after_s:g}" + (f"; {note}" if note else "")
    p.add_argument("--stall-after", type=float, default=DEFAULT_STALL.stall_after_s, metavar="S",
                   help=f"warn {warns} for S seconds ({default})")


def stall_config(args: argparse.Namespace) -> StallConfig:
    """The StallConfig of add_stall_option's --stall-after."""
    return dataclasses.replace(DEFAULT_STALL, stall_after_s=args.stall_after)


class StallWatch:
    """Fed what a subscriber delivers (`session`, `frame`, `ended`) and asked `check(now)` while nothing arrives.

    Counters: `stalls` (episodes), `stalled_s` (their total length, the current one included), `longest_s`."""

    def __init__(self, config: StallConfig = DEFAULT_STALL, log: logging.Logger | None = None,
                 where: str = "") -> None:
        self.config = config
        self.log = log or logging.getLogger("neurocine.transport")
        self.where = where
        self.session_id: str | None = None
        self.expecting = False
        self.last_seq: int | None = None
        self._last_valid = 0.0
        self._stalled_at: float | None = None
        self._logged_at = 0.0
        self.stalls = 0
        self._closed_s = 0.0  # length of the stalls that are over
        self.longest_s = 0.0
        self._now = 0.0

    # ------------------------------------------------------------------ what arrived
    def session(self, session_id: str, now: float) -> None:
        """A (new) session header: a stream is expected from now on."""
        self._resume(now, f"session {session_id} started")
        self.session_id, self.expecting, self.last_seq = session_id, True, None
        self._last_valid = self._now = now

    def frame(self, seq: int, now: float) -> None:
        """A valid frame of the current session."""
        self._resume(now, f"frame {seq} arrived")
        self.last_seq = seq
        self._last_valid = self._now = now
        if self.session_id is not None:
            self.expecting = True  # frames after an `end` (a rig resuming): expected again

    def ended(self, now: float) -> None:
        """The session's `end`: silence is normal from now on."""
        self._resume(now, "the session ended")
        self.expecting = False
        self._now = now

    # ------------------------------------------------------------------ silence
    def check(self, now: float, hint: str = "") -> None:
        """Nothing is waiting to be read at `now`: log the start of a stall, or its continuation every repeat_s."""
        self._now = max(self._now, now)
        if not self.expecting:
            return
        silent = now - self._last_valid
        if self._stalled_at is None:
            if silent < self.config.stall_after_s:
                return
            self._stalled_at = self._last_valid
            self.stalls += 1
            self._logged_at = now
            self.log.warning(f"STALLED: no valid frame for {silent:.1f} s{self._from()} while the session is live "
                             f"(last seq {self.last_seq}){'; ' + hint if hint else ''}", extra={"key": "stall"})
        elif now - self._logged_at >= self.config.repeat_s:
            self._logged_at = now
            self.log.warning(f"STALLED: still no valid frame after {silent:.1f} s{self._from()} (last seq "
                             f"{self.last_seq}){'; ' + hint if hint else ''}", extra={"key": "stall"})

    def _from(self) -> str:
        return f" from {self.where}" if self.where else ""

    def _resume(self, now: float, why: str) -> None:
        if self._stalled_at is None:
            return
        length = now - self._stalled_at
        self._closed_s += length
        self.longest_s = max(self.longest_s, length)
        self._stalled_at = None
        self.log.warning(f"stream back after {length:.1f} s without a valid frame{self._from()}: {why}",
                         extra={"key": "stall-end"})

    # ------------------------------------------------------------------ state
    @property
    def stalled(self) -> bool:
        return self._stalled_at is not None

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds the current stall has lasted (0 when the stream is not stalled)."""
        return 0.0 if self._stalled_at is None else max(0.0, (self._now if now is None else now) - self._stalled_at)

    def stalled_s(self, now: float | None = None) -> float:
        return self._closed_s + self.stalled_for(now)

    def as_dict(self, now: float | None = None) -> dict[str, float | int | bool]:
        return {"stalled": self.stalled, "stalled_for_s": round(self.stalled_for(now), 2), "stalls": self.stalls,
                "stalled_s": round(self.stalled_s(now), 2), "longest_stall_s": round(max(self.longest_s,
                                                                                         self.stalled_for(now)), 2)}
