"""Run a function over blocks of work on a small thread pool."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

# numpy releases the GIL inside array operations, so two threads keep both cores of the
# reference machine busy on independent blocks of cars (each block writes its own rows).
THREADS = min(2, os.cpu_count() or 1)


def _map_blocks(fn, blocks) -> None:
    """Call ``fn`` on every block, on :data:`THREADS` threads when there is more than one block."""
    if THREADS > 1 and len(blocks) > 1:
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            list(pool.map(fn, blocks))
    else:
        for b in blocks:
            fn(b)
