"""DataGateway workloads: the read-only S3 gateway (``cnet-gateway-data``) over stored data.

``base_path`` defaults to this node's data path; there the gateway lists from the agent's SQLite
index (``--index-db``), so objects uploaded as ``data`` workloads appear at once. Any other
directory is scanned by the gateway itself. The record's ``endpoint`` is an S3 endpoint (the
gateway serves S3 at its root), given again as ``s3_endpoint``.

With ``access_key`` and ``secret_key`` (or ``secret_key_file``, a file on the node that runs it)
every S3 request must be SigV4-signed. An inline secret never enters the workload record (its
config says ``"secret_key": "***"``), a log or the gateway's command line: validation hands it
to the start of the same submission in memory, and the start writes it to an owner-only file in
the agent's state directory that the gateway reads (``--secret-key-file``), kept while the
workload can run (restarts, agent restarts) and removed with it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import BadRequest, Unavailable
from ..workload import Workload
from .base import ExecutorHost, require_str
from .launcher import LaunchSpec, ServiceStartFailed, launch
from .ports import PortBook
from .proc import ProcessHandle
from .service import ServiceExecutor
from .supervisor import Service

__all__ = ["REDACTED", "DataGatewayExecutor", "check_bucket_name"]

DEFAULT_BUCKET = "cnet"
DEFAULT_REGION = "us-east-1"
REDACTED = "***"
# Under the state directory; a ".cnet" path segment is never served by the gateway, whatever
# its base path.
SECRETS_DIR = ".cnet-secrets"
HANDOFF_TTL = 300.0           # seconds an inline secret waits for its start
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3")
# What SigV4 can carry in a credential scope ("<key>/<date>/<region>/s3/aws4_request").
_ACCESS_KEY_RE = re.compile(r"^[A-Za-z0-9._~+=@-]{1,128}$")
_REGION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_SECRET_CHARS = 1024
MAX_OWNER_CHARS = 256


def check_bucket_name(name: str | None) -> str:
    """S3's bucket naming rules (general purpose buckets); raise BadRequest naming the rule."""
    where = "config.bucket"
    if not isinstance(name, str):
        raise BadRequest(f"{where}: must be a bucket name (a string)", code="invalid_field")
    if not _BUCKET_RE.match(name):
        raise BadRequest(f"{where}: {name!r} is not a valid S3 bucket name (3-63 characters: "
                         "lowercase letters, digits, '.' and '-', starting and ending with a "
                         "letter or digit)", code="invalid_field")
    if ".." in name:
        raise BadRequest(f"{where}: {name!r} must not contain two adjacent periods",
                         code="invalid_field")
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        raise BadRequest(f"{where}: {name!r} must not look like an IP address", code="invalid_field")
    if name.startswith(_BUCKET_RESERVED_PREFIXES) or name.endswith(_BUCKET_RESERVED_SUFFIXES):
        raise BadRequest(f"{where}: {name!r} uses a prefix or suffix S3 reserves",
                         code="invalid_field")
    return name


def _optional(config: dict, key: str) -> str | None:
    """A string field that may be left out, but not given as null."""
    if key in config and config[key] is None:
        raise BadRequest(f"config.{key}: must be a non-empty string (leave it out for the "
                         "default)", code="invalid_field")
    return require_str(config, key, required=False)


def _text(config: dict, key: str, pattern: re.Pattern, rule: str) -> str | None:
    value = _optional(config, key)
    if value is not None and not pattern.match(value):
        raise BadRequest(f"config.{key}: {rule}", code="invalid_field")
    return value


def _path(config: dict, key: str) -> str | None:
    raw = _optional(config, key)
    if raw is None:
        return None
    if "\x00" in raw:
        raise BadRequest(f"config.{key}: must not contain NUL characters", code="invalid_field")
    return os.path.abspath(os.path.expanduser(raw))


def _secret(config: dict) -> str | None:
    """The inline secret, checked; never quoted in an error."""
    if "secret_key" not in config:
        return None
    value = config["secret_key"]
    if not isinstance(value, str) or not value or len(value) > MAX_SECRET_CHARS \
            or _CONTROL_RE.search(value):
        raise BadRequest(f"config.secret_key: must be a string of 1..{MAX_SECRET_CHARS} "
                         "characters without control characters", code="invalid_field")
    if value == REDACTED:
        raise BadRequest(f"config.secret_key: {REDACTED!r} stands for a secret in workload "
                         "records; give the secret itself", code="invalid_field")
    return value


def _inside(path: str, base: str) -> bool:
    """Whether the gateway over ``base`` could serve ``path`` (no ``.cnet`` segment on the way)."""
    real, base_real = os.path.realpath(path), os.path.realpath(base)
    if os.path.commonpath((real, base_real)) != base_real:
        return False
    return not any(part.startswith(".cnet") for part in os.path.relpath(real, base_real).split("/"))


class SecretHandoff:
    """Inline secrets between a submission's validation and its start, in memory only.

    Keyed by the validated (redacted) config, which is what the start sees again; an entry
    whose start never comes (a workload delegated elsewhere, a refused one) is dropped after
    ``ttl`` seconds.
    """

    def __init__(self, ttl: float = HANDOFF_TTL,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._waiting: dict[str, list[tuple[float, str]]] = {}

    @staticmethod
    def _key(config: dict) -> str:
        return json.dumps(config, sort_keys=True, separators=(",", ":"))

    def put(self, config: dict, secret: str) -> None:
        self._expire()
        self._waiting.setdefault(self._key(config), []).append((self.clock() + self.ttl, secret))

    def take(self, config: dict) -> str | None:
        self._expire()
        entries = self._waiting.get(self._key(config))
        if not entries:
            return None
        _deadline, secret = entries.pop(0)      # starts come in the order of their validations
        if not entries:
            del self._waiting[self._key(config)]
        return secret

    def _expire(self) -> None:
        now = self.clock()
        for key in list(self._waiting):
            kept = [entry for entry in self._waiting[key] if entry[0] > now]
            if kept:
                self._waiting[key] = kept
            else:
                del self._waiting[key]


class DataGatewayExecutor(ServiceExecutor):
    type = "datagateway"
    options = frozenset({"base_path", "bucket", "access_key", "secret_key", "secret_key_file",
                         "region", "owner_id", "owner_name"})

    def __init__(self, host: ExecutorHost, *, ports: PortBook):
        super().__init__(host, ports=ports)
        self.handoff = SecretHandoff()

    # -- validation ----------------------------------------------------------------------

    def validate(self, config: dict) -> dict:
        out = super().validate(config)
        if out.get("secret_key") == REDACTED:
            self.handoff.put(out, config["secret_key"])
        return out

    def validate_options(self, config: dict) -> dict:
        bucket = check_bucket_name(require_str(config, "bucket", required=False,
                                               default=DEFAULT_BUCKET))
        out = {"base_path": _path(config, "base_path") or os.path.abspath(
                   os.path.expanduser(str(self.host.config.data_path))),
               "bucket": bucket,
               "region": _text(config, "region", _REGION_RE,
                               "letters, digits, '-' and '_', at most 64") or DEFAULT_REGION}
        for key in ("owner_id", "owner_name"):
            value = _optional(config, key)
            if value is not None:
                if len(value) > MAX_OWNER_CHARS or _CONTROL_RE.search(value):
                    raise BadRequest(f"config.{key}: at most {MAX_OWNER_CHARS} characters, no "
                                     "control characters", code="invalid_field")
                out[key] = value
        out.update(self._validate_keys(config))
        return out

    def _validate_keys(self, config: dict) -> dict:
        access_key = _text(config, "access_key", _ACCESS_KEY_RE,
                           "1..128 letters, digits or ._~+=@- characters")
        secret = _secret(config)
        secret_file = _path(config, "secret_key_file")
        if secret is not None and secret_file is not None:
            raise BadRequest("config: give secret_key or secret_key_file, not both",
                             code="invalid_field")
        if access_key is None:
            if secret is not None or secret_file is not None:
                raise BadRequest("config.access_key: required with secret_key or "
                                 "secret_key_file", code="invalid_field")
            return {}
        if secret is None and secret_file is None:
            raise BadRequest("config.secret_key: required with access_key (or secret_key_file)",
                             code="invalid_field")
        if secret_file is not None:
            return {"access_key": access_key, "secret_key_file": secret_file}
        return {"access_key": access_key, "secret_key": REDACTED}

    def check_options_here(self, config: dict) -> None:
        base = config["base_path"]
        if not os.path.isdir(base):
            raise BadRequest(f"config.base_path: {base} is not a directory", code="invalid_field")
        if not os.access(base, os.R_OK | os.X_OK):
            raise BadRequest(f"config.base_path: {base}: no permission to read it",
                             code="invalid_field")
        secret_file = config.get("secret_key_file")
        if secret_file is not None:
            if not os.path.isfile(secret_file) or not os.access(secret_file, os.R_OK):
                raise BadRequest(f"config.secret_key_file: {secret_file} is not a readable file",
                                 code="invalid_field")
            if _inside(secret_file, base):
                raise BadRequest(f"config.secret_key_file: {secret_file} lies in the served "
                                 "base_path", code="invalid_field")

    # -- starting ------------------------------------------------------------------------

    def launch_spec(self, config: dict) -> LaunchSpec:
        args = ["--base-path", config["base_path"], "--bucket", config["bucket"],
                "--region", config.get("region", DEFAULT_REGION)]
        if self._is_data_path(config["base_path"]):
            args += ["--index-db", str(self.host.config.db_path)]
        for key in ("owner_id", "owner_name"):
            if key in config:
                args += [f"--{key.replace('_', '-')}", config[key]]
        if "access_key" in config:
            args += ["--access-key", config["access_key"]]
        if "secret_key_file" in config:
            args += ["--secret-key-file", config["secret_key_file"]]
        return LaunchSpec("cnet-gateway-data", args, "gateway")

    def _is_data_path(self, base_path: str) -> bool:
        return os.path.realpath(base_path) == os.path.realpath(self.host.config.data_path)

    def secret_path(self, workload_id: str) -> Path:
        return self.host.config.state_dir / SECRETS_DIR / f"gateway-{workload_id}.key"

    def _write_secret(self, workload: Workload) -> None:
        secret = self.handoff.take(workload.config)
        if secret is None:
            raise Unavailable(f"{workload.id}: its secret_key did not reach this node's start "
                              "(submit it again)", code="secret_unavailable")
        path = self.secret_path(workload.id)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        staging = path.with_name(path.name + ".tmp")
        staging.unlink(missing_ok=True)
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secret)
        os.replace(staging, path)

    def _forget_secret(self, workload_id: str) -> None:
        self.secret_path(workload_id).unlink(missing_ok=True)

    async def start(self, workload: Workload) -> dict:
        inline = workload.config.get("secret_key") == REDACTED
        if inline:
            self._write_secret(workload)
        try:
            runtime = await super().start(workload)
        except BaseException:
            if inline:
                self._forget_secret(workload.id)
            raise
        runtime["s3_endpoint"] = runtime["endpoint"]
        return runtime

    async def _launch(self, svc: Service) -> ProcessHandle:
        spec = self.launch_spec(svc.config)
        if svc.config.get("secret_key") == REDACTED:
            path = self.secret_path(svc.workload_id)
            if not path.is_file():
                raise ServiceStartFailed(f"the secret key file {path} is gone", svc.log_path, "")
            spec = LaunchSpec(spec.program, [*spec.args, "--secret-key-file", str(path)],
                              spec.log_prefix)
        return await launch(spec, svc, self.host.config.services)

    # -- ending --------------------------------------------------------------------------

    async def stop(self, workload: Workload, grace: float) -> None:
        await super().stop(workload, grace)
        self._forget_secret(workload.id)

    async def remove(self, workload: Workload) -> None:
        await super().remove(workload)
        self._forget_secret(workload.id)
