"""The upload window (`schedule.upload_window`): a daily span of local time in which pushes may
start; one running when it closes finishes."""

from __future__ import annotations

import dataclasses
import datetime as dt


@dataclasses.dataclass(frozen=True)
class UploadWindow:
    """A daily span of local time in which pushes may start; `None` bounds mean always."""

    start: dt.time | None
    end: dt.time | None

    @classmethod
    def parse(cls, text: str) -> UploadWindow:
        """Parse "always" or "HH:MM-HH:MM" (already validated by the config)."""
        if text.strip().lower() == "always":
            return cls(None, None)
        start, end = (part.strip() for part in text.split("-"))
        return cls(_clock_time(start), _clock_time(end))

    def contains(self, moment: dt.datetime) -> bool:
        if self.start is None or self.end is None or self.start == self.end:
            return True
        now = moment.time()
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end  # wraps midnight, e.g. 20:00-06:00

    def __str__(self) -> str:
        if self.start is None or self.end is None:
            return "always"
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _clock_time(text: str) -> dt.time:
    hours, minutes = (int(p) for p in text.split(":"))
    return dt.time(0, 0) if hours == 24 else dt.time(hours, minutes)
