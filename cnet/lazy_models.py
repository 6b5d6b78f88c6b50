"""The model cache as the rest of the agent sees it, built on first use.

A node that never runs a service whose model is named as data never loads the cache and the
locating of models (:mod:`cnet.model_cache`, :mod:`cnet.model_sink`, :mod:`cnet.model_holders`):
until a workload acquires a model, this answers as an empty cache would (no copy of anything,
no workload using an entry). A cache directory a previous run left entries in builds the cache
at once, so its entries are adopted (their storage reserved) as the agent starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .data_locator import Source
    from .manager import Manager
    from .model_cache import Entry, ModelCache
    from .register import Register
    from .remote import NeighbourPort
    from .workload import Submission

__all__ = ["LazyModels"]


class LazyModels:
    """A :class:`~cnet.model_cache.ModelCache` in ``root``, made when it is first needed."""

    def __init__(self, root: Path, register: "Register", port: "NeighbourPort",
                 manager: "Manager"):
        self.root = root
        self._args = (root, register, port, manager)
        self._cache: ModelCache | None = None
        if root.is_dir() and any(root.iterdir()):
            self.cache  # noqa: B018 -- built for the entries a previous run left

    @property
    def built(self) -> bool:
        return self._cache is not None

    @property
    def cache(self) -> "ModelCache":
        if self._cache is None:
            from .model_cache import ModelCache

            self._cache = ModelCache(*self._args)
        return self._cache

    async def holders(self, sub: "Submission", *, survey: bool = True) -> frozenset[str]:
        """The nodes holding the model ``sub`` names as data (:func:`cnet.model_holders`);
        none, without loading the locating of models, for a workload that names none."""
        if not sub.names_a_model:
            return frozenset()
        from .model_holders import model_holders

        _, _, port, manager = self._args
        return await model_holders(manager, port, self, sub, survey=survey)

    # -- what an empty cache answers without being built ---------------------------------

    def copy_of(self, source: "Source") -> str | None:
        return self._cache.copy_of(source) if self._cache is not None else None

    def adopt(self, workload_id: str, sha256: str) -> "Entry | None":
        return self._cache.adopt(workload_id, sha256) if self._cache is not None else None

    def release(self, workload_id: str) -> None:
        if self._cache is not None:
            self._cache.release(workload_id)

    def path_for(self, workload_id: str) -> Path | None:
        return self._cache.path_for(workload_id) if self._cache is not None else None

    # -- the rest: the cache itself --------------------------------------------------------

    async def acquire(self, workload_id: str, source: "Source") -> "Entry":
        return await self.cache.acquire(workload_id, source)

    def stats(self) -> dict[str, int]:
        return self.cache.stats()
