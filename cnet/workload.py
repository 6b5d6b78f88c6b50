"""The workload record and the validation of a submitted workload's common fields."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field

from .errors import BadRequest
from .resources import Resources

PENDING, RUNNING, STOPPING = "pending", "running", "stopping"
STOPPED, COMPLETED, FAILED, LOST = "stopped", "completed", "failed", "lost"
# An ended workload whose delete has begun (persisted first; a restart finishes it).
DELETING = "deleting"
LIVE = frozenset({PENDING, RUNNING, STOPPING})
ENDED = frozenset({STOPPED, COMPLETED, FAILED})
STATUSES = (PENDING, RUNNING, STOPPING, STOPPED, COMPLETED, FAILED, LOST, DELETING)
# The runtime key naming the neighbour that delegated a workload to this node (private: "_").
FROM = "_from"
# The seed's workload types, each run by the executor of that name.
TYPES = ("process", "container", "mlmodel", "opencv", "data", "datagateway")
SET_LABEL = "cnet.set"       # on a replica set's every member: its set's id (cnet.replica_set)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")   # \Z: "$" would let a final "\n" in
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SPEC_FIELDS = frozenset({"id", "name", "type", "config", "requirements", "placement", "labels"})


@dataclass
class Workload:
    id: str
    name: str
    type: str
    config: dict
    requirements: Resources
    node_id: str
    origin: str
    placement: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    status: str = PENDING
    runtime: dict = field(default_factory=dict)
    exit_code: int | None = None
    message: str | None = None
    restart_count: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    version: int = 0              # set by the node that runs it: +1 on every change

    @property
    def live(self) -> bool:
        return self.status in LIVE

    def to_dict(self) -> dict:
        """The public JSON shape (the seed's field names, plus runtime facts)."""
        out = {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "status": self.status,
            "node_id": self.node_id,
            "origin": self.origin,
            "process_pid": self.runtime.get("pid"),
            "endpoint": self.runtime.get("endpoint"),
            "exit_code": self.exit_code,
            "message": self.message,
            "restart_count": self.restart_count,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "config": self.config,
            "requirements": self.requirements.to_dict(),
            "placement": self.placement,
            "labels": self.labels,
            "version": self.version,
        }
        # Executor facts meant for users (container_id, data_key, files, ...); keys starting
        # with "_" are the executor's private bookkeeping.
        for key, value in self.runtime.items():
            if not key.startswith("_") and key not in ("pid", "endpoint"):
                out.setdefault(key, value)
        return out

    def spec(self) -> dict:
        return {"config": self.config, "requirements": self.requirements.to_dict(),
                "placement": self.placement, "labels": self.labels}

    def to_row(self) -> dict:
        return {"id": self.id, "name": self.name, "type": self.type, "status": self.status,
                "node_id": self.node_id, "origin": self.origin, "spec": self.spec(),
                "runtime": self.runtime, "exit_code": self.exit_code, "message": self.message,
                "restart_count": self.restart_count, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "version": self.version}

    @classmethod
    def from_row(cls, row: dict) -> "Workload":
        spec = row["spec"] or {}
        return cls(id=row["id"], name=row["name"], type=row["type"], status=row["status"],
                   node_id=row["node_id"], origin=row["origin"], config=spec.get("config", {}),
                   requirements=Resources.from_dict(spec.get("requirements")),
                   placement=spec.get("placement") or {}, labels=spec.get("labels") or {},
                   runtime=row["runtime"] or {}, exit_code=row["exit_code"],
                   message=row["message"], restart_count=row["restart_count"],
                   created_at=row["created_at"], started_at=row["started_at"],
                   finished_at=row["finished_at"], version=row.get("version") or 0)


@dataclass(frozen=True)
class Submission:
    """A validated request: common fields checked, config still the executor's to check."""

    id: str
    name: str
    type: str
    config: dict
    requirements: Resources
    placement: dict
    labels: dict

    @property
    def names_a_model(self) -> bool:
        """Whether its config names its model as data (``model`` or ``model_url``), which is
        located in the tree before it is placed (:mod:`cnet.model_holders`)."""
        return self.type in MODEL_TYPES and ("model" in self.config or "model_url" in self.config)


MODEL_TYPES = ("mlmodel", "opencv")   # the services whose config may name their model as data


def parse_submission(body, known_types) -> Submission:
    """Check the fields every workload has; raise BadRequest naming the first bad one."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_body")
    unknown = sorted(set(body) - SPEC_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}", code="invalid_field")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("name: required, a non-empty string", code="invalid_field")
    if len(name) > 256 or _CONTROL.search(name):
        raise BadRequest("name: at most 256 characters, no control characters", code="invalid_field")
    wtype = body.get("type")
    if not isinstance(wtype, str) or not wtype:
        raise BadRequest("type: required, one of " + ", ".join(sorted(known_types)),
                         code="invalid_field")
    if wtype not in known_types:
        raise BadRequest(f"type: unknown workload type {wtype!r}; expected one of "
                         + ", ".join(sorted(known_types)), code="unknown_type")
    config = body.get("config", {})
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise BadRequest("config: must be an object", code="invalid_field")
    placement = body.get("placement") or {}
    if not isinstance(placement, dict):
        raise BadRequest("placement: must be an object", code="invalid_field")
    labels = body.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in labels.items()):
        raise BadRequest("labels: must be an object of strings", code="invalid_field")
    wid = body.get("id")
    if wid is None:
        wid = new_id()
    elif not isinstance(wid, str) or not ID_RE.match(wid):
        raise BadRequest("id: letters, digits, '_' and '-' only, at most 64", code="invalid_field")
    return Submission(id=wid, name=name, type=wtype, config=config,
                      requirements=Resources.parse(body.get("requirements")),
                      placement=placement, labels=labels)


def new_id() -> str:
    return uuid.uuid4().hex[:16]
