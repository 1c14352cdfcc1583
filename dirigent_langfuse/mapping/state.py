"""What the mapping remembers between events, per scroll (session): bounded and thread-safe.

Per scroll: the message in progress and the text streamed for it, the tool calls seen (their
parents), whether the session's start and first input went out, and its latest answer. At most
`max_scrolls` scrolls, each forgotten at its end or after `ttl` seconds without an event; the
streamed text bounded per message and over all scrolls.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["MappingState"]

_NO_TEXT: Dict[str, str] = {}  # never changed

class _Scroll:
    __slots__ = ("message", "tools", "seen", "text", "chars", "first", "began", "has_input", "held_input", "output",
                 "early")

    def __init__(self, seen: float) -> None:
        # The session's start was mapped with this state: only then is its first message known to
        # be the session's first (not the first after a restart, or of a replay of its tail).
        self.began = False
        self.has_input = False  # the trace's input (the first message's) went out
        # The first message's input while the start is not mapped yet: the session's, if its start
        # comes next (two host threads raced); a restart's or a replay's, if it never does.
        self.held_input: Any = None
        self.message: Optional[str] = None
        self.early: Tuple[str, ...] = ()  # messages whose completion came before their start (raced)
        self.tools: Dict[str, Optional[str]] = {}
        self.seen = seen
        self.text: Optional[Dict[str, List[str]]] = None  # the message in progress's chunks, by field
        self.chars = 0
        self.first: Optional[str] = None  # when its first chunk came: the completion's start
        self.output: Any = None  # the latest message's output: the trace's, at SessionEnded


_CUT = "\n[dirigent_langfuse: later chunks were not kept: the mapping's text buffer was full]"


class MappingState:
    """What the mapping remembers between events, per scroll; thread-safe and bounded.

    At most `max_scrolls` scrolls and `max_tools` tool calls per scroll are remembered; a scroll
    untouched for `ttl` seconds, or ended, is forgotten. Forgetting only costs parent links:
    a later tool call hangs off the trace instead of its message.

    The text streamed for the message in progress (ACP `agent_message_chunk` and
    `agent_thought_chunk`) is kept until the message completes: at most `max_message_chars` per
    message and `max_text_chars` over all scrolls; beyond, later chunks are not kept and the text
    says so.
    """

    def __init__(
        self,
        max_scrolls: int = 10_000,
        max_tools: int = 10_000,
        ttl: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        max_message_chars: int = 1_000_000,
        max_text_chars: int = 16_000_000,
    ) -> None:
        self.max_scrolls = max_scrolls
        self.max_tools = max_tools
        self.max_message_chars = max_message_chars
        self.max_text_chars = max_text_chars
        self.text_chars = 0
        self.ttl = ttl
        self._clock = clock
        self._scrolls: "OrderedDict[str, _Scroll]" = OrderedDict()
        self._next_expiry = float("-inf")  # TTLs are checked at most once a second (or ttl)
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._scrolls)

    def scroll(self, scroll_id: str) -> _Scroll:
        now = self._clock()
        scrolls = self._scrolls
        entry = scrolls.get(scroll_id)
        if entry is None:
            entry = scrolls[scroll_id] = _Scroll(now)
        else:
            entry.seen = now
            scrolls.move_to_end(scroll_id)
        if len(scrolls) > self.max_scrolls or now >= self._next_expiry:
            self._next_expiry = now + min(1.0, self.ttl)
            self._expire(now)
        return entry

    def forget(self, scroll_id: str) -> None:
        entry = self._scrolls.pop(scroll_id, None)
        if entry is not None:
            self.take_text(entry)

    def _expire(self, now: float) -> None:
        scrolls = self._scrolls
        while scrolls:
            oldest_id, oldest = next(iter(scrolls.items()))
            if len(scrolls) > self.max_scrolls or now - oldest.seen > self.ttl:
                del scrolls[oldest_id]
                self.take_text(oldest)
            else:
                break

    def add_text(self, entry: _Scroll, field: str, text: str) -> None:
        """Keep a chunk of the message in progress's `field` ("output" or "thought"), within bounds."""
        if entry.text is None:
            entry.text = {}
        parts = entry.text.setdefault(field, [])
        if parts and parts[-1] is _CUT:
            return
        room = min(self.max_message_chars - entry.chars, self.max_text_chars - self.text_chars)
        if len(text) > room:
            text = text[:max(0, room)]
            if text:
                parts.append(text)
            parts.append(_CUT)
        else:
            parts.append(text)
        entry.chars += len(text)
        self.text_chars += len(text)

    def take_text(self, entry: _Scroll) -> Dict[str, str]:
        """What was streamed for the message in progress (its text by field, and `first`: when the
        first chunk came), and forget it. The answer is read-only."""
        text, first = entry.text, entry.first
        if text is None and first is None:
            return _NO_TEXT
        entry.text = entry.first = None
        self.text_chars -= entry.chars
        entry.chars = 0
        out = {field: "".join(parts) for field, parts in (text or {}).items()}
        if first is not None:
            out["first"] = first
        return out

    def get(self, scroll_id: str) -> Optional[_Scroll]:
        """The scroll's entry, without touching it (no expiry, no move)."""
        return self._scrolls.get(scroll_id)

    def in_message(self, scroll_id: str) -> bool:
        entry = self._scrolls.get(scroll_id)
        return entry is not None and entry.message is not None

    def _reset_after_fork(self) -> None:
        self.lock = threading.RLock()
