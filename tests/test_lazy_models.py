"""The model cache as an agent holds it (cnet/lazy_models.py): built by its first use, or at
once when a previous run left entries (so their storage is reserved as the agent starts)."""

from __future__ import annotations

import hashlib

from cnet.config import from_dict
from cnet.data_locator import ModelRef
from cnet.events import EventHub
from cnet.lazy_models import LazyModels
from cnet.manager import Manager
from cnet.model_cache import CACHE_ALLOCATION
from cnet.register import Register
from cnet.remote import NeighbourPort
from cnet.resources import Resources
from cnet.store import Store


def _parts(tmp_path):
    cfg = from_dict({"agent": {"node_id": "n1", "state_dir": str(tmp_path / "state")}})
    register = Register("n1", Resources(cpu=1.0, storage=10**9))
    store = Store(cfg.db_path)
    return cfg, register, store, Manager(cfg, store, register, EventHub())


def test_an_empty_cache_answers_without_being_built_and_is_built_by_its_first_use(tmp_path):
    cfg, register, store, manager = _parts(tmp_path)
    models = LazyModels(tmp_path / "models", register, NeighbourPort(cfg), manager)
    assert not models.built
    assert models.copy_of(ModelRef("models", "a.onnx")) is None
    assert models.adopt("w1", "0" * 64) is None and models.path_for("w1") is None
    models.release("w1")
    assert not models.built and not (tmp_path / "models").exists()
    assert models.stats() == {"entries": 0, "bytes": 0, "fetches": 0, "hits": 0}
    assert models.built and (tmp_path / "models").is_dir()
    store.close()


def test_entries_left_by_a_previous_run_build_the_cache_at_once_and_reserve_their_storage(
        tmp_path):
    cfg, register, store, manager = _parts(tmp_path)
    root = tmp_path / "models"
    root.mkdir()
    blob = b"a model" * 100
    sha = hashlib.sha256(blob).hexdigest()
    (root / sha).write_bytes(blob)
    models = LazyModels(root, register, NeighbourPort(cfg), manager)
    assert models.built
    assert register._allocations[CACHE_ALLOCATION].storage == len(blob)
    entry = models.adopt("w1", sha)
    assert entry is not None and entry.size == len(blob) and models.path_for("w1") == root / sha
    store.close()

