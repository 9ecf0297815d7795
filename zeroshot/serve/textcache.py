"""The text side per request, kept warm: a bounded LRU of built values (text classifiers, multi-label
rules) over the library's on-disk cache, with single-flight builds.

Invariants: at most ``size`` values are held; a key is built at most once at a time however many
requests ask for it meanwhile (they all wait for that one build, which goes on even if the request
that started it is given up); a failed build is not kept, so the next request tries again and
hears the same error. Used from the event loop only (no lock): builds run in its executor.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class TextCache:
    """See the module's text. ``metrics`` (optional) hears each lookup (a hit: the value was held)
    and each build started."""

    def __init__(self, size: int, metrics: Any = None) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.metrics = metrics
        self.builds = 0
        self._held: OrderedDict[Hashable, Any] = OrderedDict()
        self._building: dict[Hashable, asyncio.Task[Any]] = {}

    def __len__(self) -> int:
        return len(self._held)

    async def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value for ``key``: held, or being built (waited for), or built now by ``build``
        (blocking, run in the executor)."""
        if key in self._held:
            self._held.move_to_end(key)
            self._count(hit=True)
            return self._held[key]
        self._count(hit=False)
        task = self._building.get(key)
        if task is None:
            task = asyncio.ensure_future(self._build(key, build))
            self._building[key] = task
        # shield: a request given up stops waiting, the build goes on for the others
        return await asyncio.shield(task)

    async def _build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        self.builds += 1
        if self.metrics is not None:
            self.metrics.text_build()
        try:
            value = await asyncio.get_running_loop().run_in_executor(None, build)
        finally:
            del self._building[key]
        self._held[key] = value
        while len(self._held) > self.size:
            self._held.popitem(last=False)
        return value

    def _count(self, hit: bool) -> None:
        if self.metrics is not None:
            self.metrics.text_cache(hit)
