"""The bounded inference pool: a few threads run the model; a bounded number of requests wait.

A request is *admitted* only once its whole body has arrived (so a slow or stalled sender never
holds a place) and holds its place until its inference has finished (even if the client hung up
meanwhile), so at most ``threads + waiting`` images are decoded or waiting at once; the bodies
still arriving are bounded by the app's request limit (``ServeConfig.max_requests``). A request
that finds the pool full is refused at once with :class:`Busy` (HTTP 503 with Retry-After).

At shutdown the work still waiting is cancelled (its requests get 503); the inferences running
finish, since a thread cannot be interrupted, so stopping takes at most one inference longer.

The counters are only touched on the event loop's thread (done callbacks are handed back to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Busy(Exception):
    """Every inference thread is busy and the waiting line is full."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy ({retry_after} s); retry later")
        self.retry_after = retry_after


class Job:
    """An admitted request's handle: run its one piece of blocking work on the pool."""

    def __init__(self, pool: InferencePool) -> None:
        self._pool = pool
        self.future: Future | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        if self.future is not None:
            raise RuntimeError("a job runs once")
        self.future = self._pool.executor.submit(self._pool._timed, fn)
        result = await asyncio.wrap_future(self.future)
        self._pool.served += 1
        return result


class InferencePool:
    def __init__(self, threads: int, waiting: int) -> None:
        if threads < 1 or waiting < 0:
            raise ValueError("threads >= 1 and waiting >= 0")
        self.threads, self.waiting = threads, waiting
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="fcnseg-infer")
        self.admitted = 0  # running + waiting
        self.served = 0
        self.refused = 0
        self._mean_s = 0.5  # running mean of one inference, for Retry-After

    @property
    def capacity(self) -> int:
        return self.threads + self.waiting

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[Job]:
        """Hold a place for one request (raises :class:`Busy` when there is none)."""
        if self.admitted >= self.capacity:
            self.refused += 1
            raise Busy(self.retry_after())
        self.admitted += 1
        job = Job(self)
        try:
            yield job
        finally:
            if job.future is None:
                self._release()
            else:  # keep the place until the thread is really done, even if the client has gone
                loop = asyncio.get_running_loop()

                def release(_) -> None:
                    if not loop.is_closed():  # else the server has stopped: nothing left to count
                        loop.call_soon_threadsafe(self._release)

                job.future.add_done_callback(release)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the work ahead shared among the threads."""
        return max(1, math.ceil(self._mean_s * self.capacity / self.threads))

    def stats(self) -> dict:
        return {
            "threads": self.threads,
            "waiting_limit": self.waiting,
            "in_flight": self.admitted,
            "served": self.served,
            "refused": self.refused,
        }

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _release(self) -> None:
        self.admitted -= 1

    def _timed(self, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.perf_counter() - start)
