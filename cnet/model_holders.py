"""Before a service whose model is named as data is placed: is the model in the tree, and where.

The node placing an ``mlmodel`` or ``opencv`` workload whose config names its model as data
(``model`` or ``model_url``) locates it first (:func:`cnet.data_locator.find`, the ``locate``
operation through the tree), as its fetch will: the search stops at the first node storing it.
A model stored nowhere reachable is a 404 ``model_not_found`` there, before anything is
reserved. Where a preference is wanted (``survey``), a second search at the same time goes on
past the holders and lists every node holding the model -- nodes storing the file, and nodes
whose model cache has a copy with the same sha256 -- which the scheduler prefers (a soft
preference, :func:`cnet.scheduler.schedule`). That one is only a hint: waited for at most
``SURVEY_WAIT`` seconds once the model is found (a slow node on its way must not hold up the
placement) and its failures ignored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .data_locator import find, model_source
from .errors import CnetError, NotFound

if TYPE_CHECKING:
    from .manager import Manager
    from .model_cache import ModelCache
    from .remote import NeighbourPort
    from .workload import Submission

__all__ = ["SURVEY_WAIT", "model_holders"]

log = logging.getLogger(__name__)

SURVEY_WAIT = 1.0


async def model_holders(manager: "Manager", port: "NeighbourPort", models: "ModelCache | None",
                        sub: "Submission", *, survey: bool = True) -> frozenset[str]:
    """The nodes holding the model ``sub`` (validated) names as data; empty when it names
    none. NotFound (``model_not_found``) when no reachable node stores it."""
    source = model_source(sub.config) if sub.names_a_model else None
    if source is None:
        return frozenset()
    copies = models.copy_of if models is not None else None
    surveyed = asyncio.ensure_future(find(manager, port, source, hops=0, visited=(),
                                          copies=copies, survey=True)) if survey else None
    try:
        found = await find(manager, port, source, hops=0, visited=(), copies=copies)
    except CnetError as exc:
        if surveyed is not None:
            surveyed.cancel()
        if exc.code not in ("data_not_found", "bucket_not_found"):
            raise
        field = "model_url" if "model_url" in sub.config else "model"
        raise NotFound(f"config.{field}: model {source.key} not found: {exc.message}",
                       code="model_not_found") from None
    holders = _holders(found)
    if surveyed is not None:
        try:
            holders |= _holders(await asyncio.wait_for(surveyed, SURVEY_WAIT), found["sha256"])
        except (CnetError, TimeoutError) as exc:
            log.info("locating %s: where copies are is not known (%s)", source.key, exc)
    return frozenset(holders)


def _holders(found: dict[str, Any], sha256: str | None = None) -> set[str]:
    """The nodes storing it and the copies of the same file that ``found`` lists."""
    sha256 = sha256 or found.get("sha256")
    if found.get("sha256") != sha256:
        return set()              # another file by now: none of its holders count
    return {*found.get("holders", ()),
            *(node for node, copy in found.get("copies", {}).items() if copy == sha256)}
