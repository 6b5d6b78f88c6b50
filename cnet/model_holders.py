"""Before a service whose model is named as data is placed: is the model in the tree, and where.

The node placing an ``mlmodel`` or ``opencv`` workload whose config names its model as data
(``model`` or ``model_url``) locates it first (:func:`cnet.data_locator.find`, the ``locate``
operation through the tree). A model stored nowhere reachable is a 404 ``model_not_found``
there, before anything is reserved. Otherwise the answer names the nodes that hold it -- the
node storing the file, and nodes whose model cache has a copy with the same sha256 -- which the
scheduler prefers (a soft preference, :func:`cnet.scheduler.schedule`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .data_locator import find, model_source
from .errors import CnetError, NotFound

if TYPE_CHECKING:
    from .manager import Manager
    from .model_cache import ModelCache
    from .remote import NeighbourPort
    from .workload import Submission

__all__ = ["MODEL_TYPES", "model_holders"]

MODEL_TYPES = ("mlmodel", "opencv")


async def model_holders(manager: "Manager", port: "NeighbourPort", models: "ModelCache | None",
                        sub: "Submission", *, survey: bool = True) -> frozenset[str]:
    """The nodes holding the model ``sub`` (validated) names as data; empty when it names
    none. NotFound (``model_not_found``) when no reachable node stores it. Without ``survey``
    (only whether it exists) the search stops at the first holder."""
    source = model_source(sub.config) if sub.type in MODEL_TYPES else None
    if source is None:
        return frozenset()
    try:
        found = await find(manager, port, source, hops=0, visited=(), survey=survey,
                           copies=models.copy_of if models is not None else None)
    except CnetError as exc:
        if exc.code not in ("data_not_found", "bucket_not_found"):
            raise
        field = "model_url" if "model_url" in sub.config else "model"
        raise NotFound(f"config.{field}: model {source.key} not found: {exc.message}",
                       code="model_not_found") from None
    sha256 = found.get("sha256")
    return frozenset([*found.get("holders", ()),
                      *(node for node, copy in found.get("copies", {}).items() if copy == sha256)])
