"""The resource vector (cpu cores, memory bytes, gpu count, storage bytes) and its checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import BadRequest

KINDS = ("cpu", "memory", "gpu", "storage")

# Anything above these is a typo or an attack, not a real request.
_ABSURD = {"cpu": 1e6, "memory": 2**60, "gpu": 1e5, "storage": 2**62}


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: float = 0.0
    memory: int = 0
    gpu: int = 0
    storage: int = 0

    def __add__(self, other: "Resources") -> "Resources":
        return Resources(self.cpu + other.cpu, self.memory + other.memory,
                         self.gpu + other.gpu, self.storage + other.storage)

    def __sub__(self, other: "Resources") -> "Resources":
        return Resources(self.cpu - other.cpu, self.memory - other.memory,
                         self.gpu - other.gpu, self.storage - other.storage)

    def fits_in(self, free: "Resources") -> bool:
        # A small epsilon so that 0.1 + 0.2 cores fit in 0.3 free.
        return (self.cpu <= free.cpu + 1e-9 and self.memory <= free.memory
                and self.gpu <= free.gpu and self.storage <= free.storage)

    def shortfalls(self, free: "Resources") -> list[str]:
        """Human reasons why this request does not fit in ``free`` ("cpu 1.5 free < 2 requested")."""
        out = []
        for kind in KINDS:
            want, have = getattr(self, kind), getattr(free, kind)
            if want > have + (1e-9 if kind == "cpu" else 0):
                out.append(f"{kind} {_fmt(kind, have)} free < {_fmt(kind, want)} requested")
        return out

    def is_zero(self) -> bool:
        return not (self.cpu or self.memory or self.gpu or self.storage)

    def to_dict(self) -> dict:
        return {"cpu": round(self.cpu, 6), "memory": self.memory, "gpu": self.gpu,
                "storage": self.storage}

    @classmethod
    def from_dict(cls, data: dict | None) -> "Resources":
        """Trusted data (our own store or a neighbour's snapshot); see ``parse`` for user input."""
        data = data or {}
        return cls(float(data.get("cpu", 0) or 0), int(data.get("memory", 0) or 0),
                   int(data.get("gpu", 0) or 0), int(data.get("storage", 0) or 0))

    @classmethod
    def parse(cls, data, where: str = "requirements") -> "Resources":
        """Validate user-declared requirements; raise BadRequest naming the bad field."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise BadRequest(f"{where} must be an object", code="invalid_field")
        unknown = sorted(set(data) - set(KINDS))
        if unknown:
            raise BadRequest(f"{where}: unknown field(s) {', '.join(unknown)}; "
                             f"expected {', '.join(KINDS)}", code="invalid_field")
        values = {}
        for kind in KINDS:
            value = data.get(kind, 0)
            if value is None:
                value = 0
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadRequest(f"{where}.{kind} must be a number", code="invalid_field")
            if math.isnan(value) or math.isinf(value):
                raise BadRequest(f"{where}.{kind} must be finite", code="invalid_field")
            if value < 0:
                raise BadRequest(f"{where}.{kind} must not be negative", code="invalid_field")
            if value > _ABSURD[kind]:
                raise BadRequest(f"{where}.{kind} = {value} is absurdly large", code="invalid_field")
            if kind != "cpu" and value != int(value):
                raise BadRequest(f"{where}.{kind} must be a whole number", code="invalid_field")
            values[kind] = float(value) if kind == "cpu" else int(value)
        return cls(**values)


def _fmt(kind: str, value: float) -> str:
    if kind == "cpu":
        return f"{value:g}"
    if kind in ("memory", "storage"):
        return _bytes(value)
    return str(int(value))


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
