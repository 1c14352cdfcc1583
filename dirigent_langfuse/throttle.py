"""`Throttled`: a recurring condition logged once, then at most once per `every` seconds with a
count, so that an outage or a broken hook never floods the host's logs."""

from __future__ import annotations

import logging
import time
from typing import Any, Dict

__all__ = ["Throttled"]


class Throttled:
    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
        self.logger = logger
        self.every = every
        self._last: Dict[str, float] = {}
        self._count: Dict[str, int] = {}

    def __call__(self, key: str, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        count = self._count.get(key, 0) + 1
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._count[key] = count
            return
        self._last[key] = now
        self._count[key] = 0
        if count > 1:
            msg += " (%d times since the last report)"
            args = args + (count,)
        self.logger.log(level, msg, *args)
