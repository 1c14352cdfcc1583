"""`Forks`: fork hooks for every living object of a kind, registered once with
`os.register_at_fork`.

Promises:
- One set of hooks per kind, not per object: hooks cannot be unregistered, and a host that makes
  streams and drops them would pile them up (all run at every fork) for its whole life.
- Objects are held weakly; a hook that raises never stops the others, and never logs (a log line
  around a fork may leave a handler's lock held in the child: see delivery/worker.py).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["Forks"]


class Forks:
    """Calls the named method (`before`, `after_in_parent`, `after_in_child`) of every member. The
    set's lock is held through the fork, so the child never finds it caught mid-change."""

    def __init__(self, before: str = "", after_in_parent: str = "", after_in_child: str = "") -> None:
        self._methods = (before, after_in_parent, after_in_child)
        self._members: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._lock = threading.RLock()  # re-entrant: a signal handler may make a stream inside add()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=self._before, after_in_parent=self._parent, after_in_child=self._child)

    def add(self, member: Any) -> None:
        with self._lock:
            self._members.add(member)

    def _call(self, which: int) -> None:
        name = self._methods[which]
        if not name:
            return
        for member in list(self._members):
            try:
                getattr(member, name)()
            except Exception:  # never log around a fork (see the module docstring); the others go on
                pass

    def _before(self) -> None:
        self._lock.acquire()
        self._call(0)

    def _parent(self) -> None:
        try:
            self._call(1)
        finally:
            self._lock.release()

    def _child(self) -> None:
        self._lock = threading.RLock()
        self._call(2)
