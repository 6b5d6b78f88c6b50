"""The replica-set book as the rest of the agent sees it, built on first use.

A node that is the origin of no replica set never loads the set machinery
(:mod:`cnet.replica_sets`, :mod:`cnet.svc_router`): until its store holds a set, or a submission
has ``"replicas"``, this answers as an empty book would -- no set, no set of a workload, nothing
to list, nothing at ``/svc/<id>/`` -- and everything else builds the real
:class:`~cnet.replica_sets.SetBook` and hands over to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .config import Config
    from .events import EventHub
    from .placement import Placer
    from .remote import NeighbourPort
    from .replica_set import ReplicaSet
    from .replica_sets import MemberOp, SetBook
    from .store import Store
    from .svc_router import ServiceSet
    from .workload import Workload

__all__ = ["LazySets"]


class LazySets:
    """A :class:`~cnet.replica_sets.SetBook` (and the router's ``ReplicaSource``) made when a
    set first exists here."""

    def __init__(self, config: "Config", store: "Store", hub: "EventHub",
                 spawn: Callable[[Any], None]):
        self._args = (config, store, hub, spawn)
        self._attach: tuple | None = None
        self._book: SetBook | None = None
        self._watchers: list[Callable[[str], None]] = []   # the router's (see watch)

    @property
    def built(self) -> bool:
        return self._book is not None

    @property
    def book(self) -> "SetBook":
        if self._book is None:
            from .replica_sets import SetBook

            book = SetBook(*self._args)
            if self._attach is not None:
                book.attach(*self._attach)
            book.watch(self._changed)
            self._book = book
        return self._book

    def attach(self, placer: "Placer", port: "NeighbourPort", member_op: "MemberOp") -> None:
        """Take what places and reaches the members; a store holding sets builds the book now
        (it resumes watching them)."""
        self._attach = (placer, port, member_op)
        if self._book is not None:
            self._book.attach(placer, port, member_op)
        elif self._args[1].load_sets():
            self.book  # noqa: B018 -- built for the sets stored

    # -- what an empty book answers without being built ----------------------------------

    def __contains__(self, set_id: object) -> bool:
        """Whether a set has this id (no other workload may take it)."""
        return self._book is not None and set_id in self._book.sets

    def get(self, set_id: str) -> "ReplicaSet | None":
        return self._book.get(set_id) if self._book is not None else None

    def set_of(self, wl: "Workload") -> "ReplicaSet | None":
        return self._book.set_of(wl) if self._book is not None else None

    def views(self, status: str | None = None, wtype: str | None = None) -> list[dict]:
        return self._book.views(status, wtype) if self._book is not None else []

    def service_set(self, set_id: str) -> "ServiceSet | None":
        return self._book.service_set(set_id) if self._book is not None else None

    def watch(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """The router's hook (``SetBook.watch``): the book, once built, tells this, and this
        tells each watcher; returns what stops it."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def _changed(self, set_id: str) -> None:
        for callback in list(self._watchers):
            callback(set_id)   # the book logs a watcher's failure

    # -- the rest: the book itself --------------------------------------------------------

    def view(self, rs: "ReplicaSet") -> dict:
        return self.book.view(rs)

    async def create(self, body: dict) -> tuple[dict, bool]:
        return await self.book.create(body)

    async def scale(self, set_id: str, replicas: int) -> dict:
        return await self.book.scale(set_id, replicas)

    async def stop(self, set_id: str) -> dict:
        return await self.book.stop(set_id)

    async def delete(self, set_id: str) -> None:
        await self.book.delete(set_id)
