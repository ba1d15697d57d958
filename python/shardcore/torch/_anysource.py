"""Receiving from any source (``recv`` with ``src=None``) over communicators that only receive
from a named rank and have no probe. Opt-in: with ``SHARDCORE_TORCH_ANY_SOURCE=1`` set on every
rank when a group is created, that group serves it.

Every send of such a group announces itself before its data goes out: ``"<source> <tag>"`` is
pushed onto the receiver's queue in the group's rendezvous store (a push does not wait for a
reply, a few microseconds). The receiver's inbox thread drains that queue as announcements
arrive, so the store only holds what the receiver has not seen yet. A receive from any source
takes the oldest announced message with its tag whose sender has nothing older still
unreceived, then receives it from that rank through the communicator as usual.

Messages from one rank arrive in the order they were sent (a FIFO per pair of ranks, and one
send thread per group), so the k-th announcement from a rank is its k-th message: a receive
from a named rank cancels the oldest pending announcement from that rank or, when that has not
arrived yet, the next one to arrive. No step waits on a clock except the overall deadline.

Why opt-in: every message also wakes the store's server thread and the receiver's inbox
thread, which on a machine whose cores are busy with the ranks costs more than the message (an
8-byte ping-pong on the shared 2-core VM took about twice as long per round trip), and few
programs receive from any source. Needs a store with queues (TCPStore: torchrun, env://, tcp://); a FileStore (file://)
has none.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from datetime import timedelta
from typing import Any

from shardcore.errors import CommTimeoutError

ENV = "SHARDCORE_TORCH_ANY_SOURCE"
_STOP = b"stop"
# The inbox thread's own connection waits as long as it takes; receives have their deadline.
_INBOX_WAIT = timedelta(days=365)


class AnySource:
    """The announcements of one rank of one group (create it on every rank of the group)."""

    def __init__(self, store: Any, rank: int, size: int, timeout_s: float):
        """Call on every rank before the group's ranks first meet (its flag is then visible to
        every peer by the time any of them receives)."""
        self._store = store
        self._rank = rank
        self._size = size
        self._timeout_s = timeout_s
        # A group re-created over the same store gets fresh queues (every rank of a group
        # creates it the same number of times, so the per-rank counters agree).
        generation = store.add(f"shardcore/anysource/generation/{rank}", 1)
        self._prefix = f"shardcore/anysource/{generation}/"
        try:
            store.queue_len(self._prefix + "probe")
            self.supported = True
        except (NotImplementedError, RuntimeError):
            self.supported = False
        if self.supported:
            store.add(f"{self._prefix}on/{rank}", 1)
        self._peers_checked = False
        self._push_store: Any = None  # own connections: a blocking wait on the group's
        self._inbox: threading.Thread | None = None  # store must not hold a push back
        self._arrivals: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[int, collections.deque] = collections.defaultdict(collections.deque)
        self._debt: dict[int, int] = collections.defaultdict(int)
        self._count = 0  # arrival order of announcements
        self._failure: BaseException | None = None  # the inbox thread's, once it stopped
        self._lock = threading.Lock()

    def _key(self, rank: int) -> str:
        return f"{self._prefix}{rank}"

    # ---- the send thread ---------------------------------------------------------------------

    def announce(self, dst: int, tag: int) -> None:
        """Tell ``dst`` that this rank's next message to it has ``tag`` (before sending it)."""
        if not self.supported:
            return
        if self._push_store is None:
            with self._lock:
                if self._push_store is None:
                    self._push_store = self._store.clone()
        self._push_store.queue_push(self._key(dst), f"{self._rank} {int(tag)}")

    # ---- the recv thread ---------------------------------------------------------------------

    def received(self, src: int) -> None:
        """Account for a message just received from the named rank ``src``."""
        if not self.supported:
            return
        self._start_inbox()
        self._take_arrived()
        pending = self._pending.get(src)
        if pending:
            pending.popleft()
        else:
            self._debt[src] += 1  # its announcement is still on the way

    def unready(self) -> str | None:
        """Why a receive from any source cannot work in this group, or None."""
        if not self.supported:
            return (
                "recv from any source (src=None) needs a rendezvous store with queues "
                "(TCPStore: torchrun, env:// or tcp://); this group was created over a store "
                "without them (file://)"
            )
        if not self._peers_checked:
            peers = [r for r in range(self._size) if r != self._rank]
            if not self._store.check([f"{self._prefix}on/{r}" for r in peers]):
                return (
                    f"recv from any source (src=None) needs {ENV}=1 on every rank of the "
                    "group when it is created (the peers' sends must announce themselves); "
                    f"rank {self._rank} has it, some peer has not"
                )
            self._peers_checked = True
        return None

    def next_source(self, tag: int) -> int:
        """The rank whose message with ``tag`` to receive next; waits for one to be announced."""
        self._start_inbox()
        deadline = time.monotonic() + self._timeout_s
        self._take_arrived()
        while True:
            src = self._oldest(int(tag))
            if src is not None:
                self._pending[src].popleft()
                return src
            if self._failure is not None:
                raise self._failure
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                item = self._arrivals.get(timeout=remaining)
            except queue.Empty:
                raise CommTimeoutError(
                    f"rank {self._rank}: recv from any source with tag {tag}: no message "
                    f"was sent to this rank within {self._timeout_s:g} s"
                ) from None
            self._note(item)

    def _oldest(self, tag: int) -> int | None:
        best, best_order = None, None
        for src, pending in self._pending.items():
            if (
                pending
                and pending[0][1] == tag
                and (best_order is None or pending[0][0] < best_order)
            ):
                best, best_order = src, pending[0][0]
        return best

    def _take_arrived(self) -> None:
        while True:
            try:
                item = self._arrivals.get_nowait()
            except queue.Empty:
                return
            self._note(item)

    def _note(self, item: Any) -> None:
        if isinstance(item, BaseException):
            self._failure = item
            return
        src, tag = (int(v) for v in item.split())
        if self._debt[src]:
            self._debt[src] -= 1  # received from the named rank before this arrived
        else:
            self._count += 1
            self._pending[src].append((self._count, tag))

    # ---- the inbox thread ----------------------------------------------------------------------

    def _start_inbox(self) -> None:
        if self._inbox is None:
            store = self._store.clone()
            store.set_timeout(_INBOX_WAIT)
            self._inbox = threading.Thread(
                target=self._drain, args=(store,), name="shardcore-inbox", daemon=True
            )
            self._inbox.start()

    def _drain(self, store: Any) -> None:
        key = self._key(self._rank)
        while True:
            try:
                item = store.queue_pop(key)
            except Exception as exc:  # noqa: BLE001  the store went away: tell the receiver
                self._arrivals.put(
                    CommTimeoutError(f"rank {self._rank}: the rendezvous store failed: {exc}")
                )
                return
            if item == _STOP:
                return
            self._arrivals.put(item.decode())

    def close(self) -> None:
        """Stop the inbox thread (messages announced but never received are dropped)."""
        thread, self._inbox = self._inbox, None
        if thread is None:
            return
        try:
            pusher = self._push_store or self._store.clone()
            pusher.queue_push(self._key(self._rank), _STOP)
        except Exception:  # noqa: BLE001  the store is gone, and with it the thread's wait
            return
        thread.join()
