"""The broker's memory: Python's cycle collector, and giving the memory of large
request bodies back to the operating system.

The cycle collector is tuned once the broker is up (``tune_garbage_collector``).

After a burst of large requests the broker used to stay hundreds of MiB larger
than before, for two reasons:

- Some requests' objects (a failure's traceback, say) form reference cycles, so
  the body and its decoded copies live until Python's cycle collector runs; it
  counts allocations, not bytes, so a few hundred large bodies can wait a long
  time. ``Reclaimer`` collects soon after large bodies are let go, and only then
  gives their bytes back to the memory budget.
- glibc serves blocks over its mmap threshold with mmap and unmaps them on free,
  but raises the threshold each time such a block is freed (up to 32 MiB), so
  later bodies come from the heap, which keeps freed pages. The threshold is fixed
  at startup (glibc only) and ``malloc_trim`` returns what the heap still holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

from twisted.logger import Logger

log = Logger(namespace="restmq.memory")

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's <malloc.h>
#: blocks at least this large are mmapped, so freeing one gives it back at once
MMAP_THRESHOLD = 1024 * 1024


def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None  # not glibc (musl, macOS): their allocators behave differently
    return libc


_LIBC = _libc()


#: net allocations between two collections of the youngest generation (Python's default: 700)
YOUNG_GENERATION_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Make the cycle collector cheap for a server: call once everything is built.

    A request's objects are freed by reference counting when it ends (a served
    request leaves no cycle behind: see ``cyclone_fixes.without_ui_modules``). With
    Python's default threshold a young collection ran every 700 allocations, found
    the objects of the requests in flight still alive and promoted them, which
    made full collections of the whole heap frequent: about 13% of the broker's CPU
    under a 50-connection load. A higher threshold lets most of them die young, and
    ``gc.freeze`` keeps full collections from walking the start-up objects (modules,
    classes, routes). A frozen object is never collected: one that becomes garbage
    in a cycle later (the first Redis connections, after an outage) stays, once.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)


def keep_large_blocks_on_mmap() -> bool:
    """Fix glibc's mmap threshold (turning off its upward drift); False if not glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim() -> bool:
    """Return the heap's free pages to the system; False when nothing was released."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


class Reclaimer:
    """Gives the memory of large request bodies back, and says when it is really free.

    A request that failed leaves its body in a reference cycle (the exception's
    traceback holds the handler's frames, which hold the body), freed only when the
    cycle collector runs. Released at once, the body's bytes would be handed to the
    next request while they are still held. So a large body's reservation is given
    back only after a collection (``release_after_collection``), which runs soon:
    once a burst of releases is in, and at most every ``collect_every`` seconds.
    The heap is trimmed once, ``delay`` after a burst.
    """

    delay = 1.0  # seconds: lets the handlers drop their copies; at most one trim a second
    collect_every = 0.05  # seconds between two collections that give reservations back

    def __init__(self, clock) -> None:
        self.clock = clock
        self._pending = None  # the next trim
        self._collecting = None  # the next collection that gives reservations back
        self._last_collection = float("-inf")
        self._after_collection: list[Callable[[], None]] = []

    def release_after_collection(self, release: Callable[[], None]) -> None:
        """Call ``release`` (which gives a large body's reservation back) once the
        cycle collector has run, so that what a failure still held is freed first."""
        self._after_collection.append(release)
        if self._collecting is None:
            wait = max(0.0, self._last_collection + self.collect_every - self.clock.seconds())
            self._collecting = self.clock.callLater(wait, self._collect)
        self.large_block_freed()

    def large_block_freed(self) -> None:
        if self._pending is not None:
            return
        self._pending = self.clock.callLater(self.delay, self._run)

    def _collect(self) -> None:
        self._collecting = None
        self._last_collection = self.clock.seconds()
        gc.collect()
        self._give_back()

    def _give_back(self) -> None:
        releases, self._after_collection = self._after_collection, []
        for release in releases:
            release()

    def _run(self) -> None:
        self._pending = None
        collected = gc.collect()
        trimmed = trim()
        log.debug("reclaimed memory: {n} objects collected, heap trimmed: {t}",
                  n=collected, t=trimmed)  # fmt: skip

    def cancel(self) -> None:
        for call in (self._pending, self._collecting):
            if call is not None and call.active():
                call.cancel()
        self._pending = self._collecting = None
        self._give_back()
