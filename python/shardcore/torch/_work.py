"""Work handles that torch.distributed hands back for shardcore operations."""

from __future__ import annotations

import queue
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
    """A handle for an operation queued on a process group's send or recv thread.

    ``fn`` may return the rank a message came from (a receive from any source); torch reads it
    through ``_source_rank()``.
    """

    def __init__(self, fn: Callable[[], int | None], outputs: list[torch.Tensor]):
        super().__init__()
        self._fn = fn
        self._outputs = outputs
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._source: int | None = None

    def _run(self) -> None:
        try:
            self._source = self._fn()
        except BaseException as exc:  # noqa: BLE001  handed to whoever waits
            self._error = exc
        finally:
            self._fn = None  # type: ignore[assignment]  # drop the closure once run
            self._done.set()

    def wait(self, timeout: timedelta | None = None) -> bool:
        seconds = None
        if timeout is not None and timeout > timedelta(0):
            seconds = timeout.total_seconds()
        if not self._done.wait(seconds):
            raise TimeoutError(f"shardcore send/recv did not complete within {timeout}")
        if self._error is not None:
            raise self._error
        return True

    def wait_for(self, seconds: float) -> bool:
        """Whether it completed within ``seconds`` (raises its error if it failed)."""
        if not self._done.wait(seconds):
            return False
        if self._error is not None:
            raise self._error
        return True

    def is_completed(self) -> bool:
        return self._done.is_set()

    def is_success(self) -> bool:
        return self._done.is_set() and self._error is None

    def exception(self):
        return self._error

    def result(self) -> list[torch.Tensor]:
        self.wait()
        return self._outputs

    def synchronize(self) -> None:
        self.wait()

    def _source_rank(self) -> int:
        """The group rank the received message came from (``recv`` with ``src=None``)."""
        self.wait()
        if self._source is None:
            raise ValueError("shardcore: this handle is not a receive from any source")
        return self._source

    source_rank = _source_rank

    def get_future(self) -> Future:
        # Completed by a helper thread so that callbacks never run on the send/recv thread.
        fut: Future = Future()

        def _complete() -> None:
            self._done.wait()
            if self._error is not None:
                fut.set_exception(self._error)
            else:
                fut.set_result(self._outputs)

        threading.Thread(target=_complete, daemon=True).start()
        return fut


class Lane:
    """One daemon thread that runs queued operations in order (started on first use).

    A daemon thread, so that a receive nobody sends to cannot keep the interpreter from exiting.
    """

    def __init__(self, name: str):
        self._name = name
        self._queue: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last: ThreadWork | None = None

    def submit(self, fn: Callable[[], int | None], outputs: list[torch.Tensor]) -> ThreadWork:
        """Queue ``fn`` behind earlier submissions; the handle completes when it has run."""
        work = ThreadWork(fn, outputs)
        with self._lock:
            if self._thread is None:
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._loop, args=(self._queue,), name=self._name, daemon=True
                )
                self._thread.start()
            self._last = work
            self._queue.put(work)
        return work

    @property
    def busy(self) -> bool:
        """Whether an operation is queued or running."""
        last = self._last
        return last is not None and not last.is_completed()

    @staticmethod
    def _loop(q: queue.SimpleQueue) -> None:
        while True:
            work = q.get()
            if work is None:
                return
            work._run()

    def shutdown(self) -> None:
        """Let queued operations finish, then stop the thread."""
        with self._lock:
            thread, q = self._thread, self._queue
            self._thread = self._queue = None
        if thread is not None:
            q.put(None)
            thread.join()
