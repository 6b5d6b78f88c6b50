"""How large anything on the bus may be: one frame, a header, a delegation's hops, free-form
nesting, the records of one answer. The framing (``bus.protocol``) and the payload schemas
(``bus.payloads``) are both bounded by them."""

from __future__ import annotations

__all__ = ["MAX_DEPTH", "MAX_FRAME_SIZE", "MAX_HEADER_SIZE", "MAX_HOPS", "MAX_RECORDS"]

MAX_FRAME_SIZE = 4 * 1024 * 1024       # largest BODY accepted or sent
MAX_HEADER_SIZE = 255                  # VERSION, TYPE and TOPIC frames
MAX_HOPS = 32                          # a request's delegation hops
MAX_DEPTH = 32                         # nesting of free-form data (a workload's config)
MAX_RECORDS = 10_000                   # workload records in one answer
