"""When the worker's next request may go, and how many records it may carry.

Promises:
- After a failed request the next one waits a capped exponential backoff with jitter (from
  `flush_interval` doubling to `retry_backoff_max`), at least what a 429 or 503 asked for; the
  first success sends what waited at once (unless Langfuse is rate-limiting us).
- From the first failure until a success, and while health is not HEALTHY, one request at a time.
- A 413 halves the batch; successes double it back. A 429 doubles it (up to 32 × `batch_size`,
  within `max_request_bytes`) so that fewer, fuller requests follow, and it comes back down a
  minute (or the asked wait) after the last 429.
- Not thread-safe: the worker calls it holding its lock.
"""

from __future__ import annotations

from typing import Callable, Optional

from ..config import LangfuseConfig
from ..contracts import Health, HealthTracker

__all__ = ["Pace"]


class Pace:
    def __init__(self, config: LangfuseConfig, health: HealthTracker, random: Callable[[], float]) -> None:
        self.config = config
        self.health = health
        self._random = random
        self.due = 0.0  # no request before this time (backoff, rate limit)
        self.prepare_due = 0.0  # while "auto" has not chosen: no new attempt before this time
        self.failures_in_row = 0
        self.batch_limit = config.batch_size
        self._calm_at = 0.0

    def allowed(self) -> int:
        """Requests in flight at once: `max_inflight` while healthy, one (a probe) otherwise."""
        if self.failures_in_row or self.health.state() is not Health.HEALTHY:
            return 1
        return self.config.max_inflight

    def backoff(self, retry_after: Optional[float]) -> float:
        failures = min(max(1, self.failures_in_row), 32)
        base = min(self.config.retry_backoff_max, self.config.flush_interval * (2 ** (failures - 1)))
        delay: float = base * (0.5 + 0.5 * self._random())
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def split(self, records: int) -> None:
        """A 413 for a batch of `records`: half as many next."""
        self.batch_limit = max(1, records // 2)

    def succeeded(self, now: float, rate_limited: bool) -> None:
        """A request Langfuse answered (`rate_limited`: the last error was a 429)."""
        self.failures_in_row = 0
        self.health.success()
        if not rate_limited:
            self.due = now  # Langfuse is back: what waited out a backoff goes now
        if self.batch_limit < self.config.batch_size:  # after a 413 split
            self.batch_limit = min(self.config.batch_size, self.batch_limit * 2)

    def retry(self, now: float, retry_after: Optional[float], answered: bool) -> None:
        """Records go back to wait (`answered`: a 207 refused some of them for now)."""
        if answered:
            self.failures_in_row = max(self.failures_in_row, 1)
        self.due = now + self.backoff(retry_after)

    def rate_limited(self, now: float, retry_after: Optional[float]) -> None:
        """A 429: fewer, fuller requests for a while."""
        self.batch_limit = min(self.batch_limit * 2, self.config.batch_size * 32)
        self._calm_at = now + max(60.0, retry_after or 0.0)

    def calm(self, now: float) -> None:
        """A success, long enough after the last 429: the batch comes back down a step."""
        if self.batch_limit > self.config.batch_size and now >= self._calm_at:
            self.batch_limit = max(self.config.batch_size, self.batch_limit // 2)
