"""Work handles that torch.distributed hands back for shardcore operations."""

from __future__ import annotations

import concurrent.futures
import threading
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
from torch.futures import Future


class CompletedWork(dist._Work):
    """A handle for an operation that finished before the call returned.

    Collectives run synchronously on the calling thread (the core releases the GIL while it
    waits), so their handles are already complete; ``result()`` and ``get_future()`` give the
    output tensors, as DDP communication hooks expect.
    """

    def __init__(self, outputs: list[torch.Tensor]):
        super().__init__()
        self._outputs = outputs

    def wait(self, timeout: timedelta | None = None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True

    def exception(self):
        return None

    def result(self) -> list[torch.Tensor]:
        return self._outputs

    def synchronize(self) -> None:
        pass

    def get_future(self) -> Future:
        fut: Future = Future()
        fut.set_result(self._outputs)
        return fut


# Returned for a blocking call (opts.asyncOp is False): torch only calls wait() on it, and
# sharing one object saves a pybind11 allocation per operation.
DONE = CompletedWork([])


class ThreadWork(dist._Work):
    """A handle for an operation running on a process group's point-to-point thread."""

    def __init__(self, future: concurrent.futures.Future, outputs: list[torch.Tensor]):
        super().__init__()
        self._future = future
        self._outputs = outputs

    def wait(self, timeout: timedelta | None = None) -> bool:
        seconds = None
        if timeout is not None and timeout > timedelta(0):
            seconds = timeout.total_seconds()
        try:
            self._future.result(seconds)  # re-raises the operation's exception
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"shardcore work did not complete within {timeout}") from None
        return True

    def is_completed(self) -> bool:
        return self._future.done()

    def is_success(self) -> bool:
        return self._future.done() and self._future.exception() is None

    def exception(self):
        return self._future.exception() if self._future.done() else None

    def result(self) -> list[torch.Tensor]:
        self.wait()
        return self._outputs

    def synchronize(self) -> None:
        self.wait()

    def get_future(self) -> Future:
        fut: Future = Future()
        outputs = self._outputs

        def _done(f: concurrent.futures.Future) -> None:
            exc = f.exception()
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(outputs)

        self._future.add_done_callback(_done)
        return fut


class Lane:
    """One daemon thread that runs submitted operations in order (started on first use)."""

    def __init__(self, name: str):
        self._name = name
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None], outputs: list[torch.Tensor]) -> ThreadWork:
        """Queue ``fn`` behind earlier submissions; the handle completes when it has run."""
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=self._name)
            return ThreadWork(self._executor.submit(fn), outputs)

    def shutdown(self) -> None:
        """Wait for queued operations, then stop the thread."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
