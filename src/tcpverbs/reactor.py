"""A reactor thread: one epoll loop with timers, woken early by an eventfd.

The Python engine runs one per context for its progress (:mod:`tcpverbs.engine.py`), and
the out-of-band connection service one of its own (:mod:`tcpverbs.oob`), so that
neither reaches into the other.  Handlers take whatever locks they need themselves.
An exception escaping a handler is a bug; it is not allowed to kill the thread (every
other handler would hang): the handler's ``on_crash`` pays for it instead.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Handler", "Reactor", "Timer"]


class Handler(Protocol):
    def on_events(self, events: int) -> None: ...

    def on_crash(self, exc: BaseException) -> None: ...

    def on_reactor_close(self) -> None: ...


class Timer:
    __slots__ = ("callback", "cancelled", "deadline", "owner")

    def __init__(self, deadline: float, callback: Callable[[], None], owner: Handler) -> None:
        self.deadline = deadline
        self.callback = callback
        self.owner = owner  # pays for an exception in the callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    """Runs handlers when their sockets are ready and timers when they are due."""

    def __init__(self, name: str) -> None:
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        self._handlers: dict[int, Handler] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self.wakeups = 0  # epoll_wait calls that returned
        self.timers_run = 0
        self.epoll_ctl_calls = 0
        self.wake_writes = 0  # eventfd writes that woke the loop early
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- registration (any thread) ------------------------------------------------
    def fileno(self) -> int:
        """The epoll instance's descriptor."""
        return self._epoll.fileno()

    def register(self, fd: int, handler: Handler, events: int) -> None:
        with self._lock:
            self._handlers[fd] = handler
            self._epoll.register(fd, events)
            self.epoll_ctl_calls += 1

    def modify(self, fd: int, events: int) -> None:
        with self._lock:
            if fd in self._handlers:
                self._epoll.modify(fd, events)
                self.epoll_ctl_calls += 1

    def unregister(self, fd: int) -> None:
        with self._lock:
            if self._handlers.pop(fd, None) is not None:
                self.epoll_ctl_calls += 1
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass

    def call_later(self, delay: float, callback: Callable[[], None], owner: Handler) -> Timer:
        timer = Timer(time.monotonic() + delay, callback, owner)
        with self._lock:
            heapq.heappush(self._timers, (timer.deadline, next(self._seq), timer))
            first = self._timers[0][2] is timer
        if first:
            self._wake()
        return timer

    def on_reactor_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _wake(self) -> None:
        self.wake_writes += 1
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:  # closed during shutdown
            pass

    # -- the loop ---------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            timeout = self._next_timeout()
            try:
                events = self._epoll.poll(timeout)
            except OSError:  # epoll closed under us: shutting down
                return
            self.wakeups += 1
            for fd, mask in events:
                if fd == self._wake_fd:
                    try:
                        os.eventfd_read(self._wake_fd)
                    except BlockingIOError:
                        pass
                    continue
                handler = self._handlers.get(fd)
                if handler is not None:
                    try:
                        handler.on_events(mask)
                    except Exception as exc:  # see the module docstring
                        handler.on_crash(exc)
            self._run_timers()

    def _next_timeout(self) -> float:
        with self._lock:
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            if not self._timers:
                return -1
            return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        due: list[Timer] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                timer = heapq.heappop(self._timers)[2]
                if not timer.cancelled:
                    due.append(timer)
        self.timers_run += len(due)
        for timer in due:
            try:
                timer.callback()
            except Exception as exc:  # the timer's owner pays, not the whole engine
                timer.owner.on_crash(exc)

    def statistics(self) -> dict[str, int]:
        """Counters of the thread (see :meth:`tcpverbs.Context.statistics`)."""
        return {
            "engine_wakeups": self.wakeups,
            "engine_timers_run": self.timers_run,
            "epoll_ctl_calls": self.epoll_ctl_calls,
            "engine_wake_writes": self.wake_writes,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        if not self.on_reactor_thread():
            self._thread.join(timeout=5)
        with self._lock:
            leftovers = list(self._handlers.values())
            self._handlers.clear()
            self._timers.clear()
        for handler in leftovers:
            handler.on_reactor_close()
        self._epoll.close()
        os.close(self._wake_fd)
