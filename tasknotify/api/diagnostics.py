"""A memory diagnostic for tracking a leak: GET /debug/memory, served only with MEMORY_DIAGNOSTICS=1.

It answers what the process holds after a garbage collection of the objects
that are not frozen (heap.py freezes the survivors every few seconds, and
only its hourly full collection walks them again), so a reference cycle left
behind and then frozen counts as held, as it is in production:

    {"traced_bytes": 81234567, "allocated_blocks": 615000, "gc_objects": 154000, "collected": 12,
     "gc_collected_total": 5300}

- traced_bytes: what Python has allocated and not freed, by tracemalloc, when
  it traces (`PYTHONTRACEMALLOC=1` in the server's environment; it costs some
  CPU and about 20 bytes per allocation), else null;
- allocated_blocks: the interpreter's allocated memory blocks
  (sys.getallocatedblocks), whatever their size;
- gc_objects: the objects the garbage collector tracks, frozen ones included;
- collected: the unreachable objects this call's collection freed;
- gc_collected_total: the objects the garbage collector has freed since the
  process started (in reference cycles, which reference counting alone
  cannot free): what grows with it is work for the collector, and what it
  missed before heap.py froze it stays for an hour.

Unlike the process's resident size, these do not move with the allocator's
arenas and fragmentation. An admin token is needed (when auth is on). Each
call runs a collection, which pauses the server for a few milliseconds.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from typing import Any

from flask import Blueprint, Flask

from tasknotify.api.auth import requires

bp = Blueprint("diagnostics", __name__)


def memory() -> dict[str, Any]:
    """What the process holds after collecting the unreachable objects that are not frozen."""
    collected = gc.collect()  # never walks the frozen objects: what is frozen stays, as in production
    return {
        "traced_bytes": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
        "allocated_blocks": sys.getallocatedblocks(),
        "gc_objects": len(gc.get_objects()) + gc.get_freeze_count(),
        "collected": collected,
        "gc_collected_total": sum(generation["collected"] for generation in gc.get_stats()),
    }


@bp.get("/debug/memory")
@requires("admin")
def memory_view() -> dict[str, Any]:
    return memory()


def init_app(app: Flask) -> None:
    """Serve the diagnostic when MEMORY_DIAGNOSTICS is on."""
    if app.config["MEMORY_DIAGNOSTICS"]:
        app.register_blueprint(bp)
