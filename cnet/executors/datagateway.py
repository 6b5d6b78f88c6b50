"""DataGateway workloads: the read-only S3 gateway (``cnet-gateway-data``) over stored data.

``base_path`` defaults to this node's data path; there the gateway lists from the agent's SQLite
index (``--index-db``), so objects uploaded as ``data`` workloads appear at once. Any other
directory is scanned by the gateway itself.
"""

from __future__ import annotations

import ipaddress
import os
import re

from ..errors import BadRequest
from .base import require_str
from .launcher import LaunchSpec
from .service import ServiceExecutor

__all__ = ["DataGatewayExecutor", "check_bucket_name"]

DEFAULT_BUCKET = "cnet"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3")


def check_bucket_name(name: str) -> str:
    """S3's bucket naming rules (general purpose buckets); raise BadRequest naming the rule."""
    where = "config.bucket"
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


class DataGatewayExecutor(ServiceExecutor):
    type = "datagateway"
    options = frozenset({"base_path", "bucket"})

    def validate_options(self, config: dict) -> dict:
        bucket = check_bucket_name(require_str(config, "bucket", required=False,
                                               default=DEFAULT_BUCKET))
        raw = require_str(config, "base_path", required=False,
                          default=str(self.host.config.data_path))
        if "\x00" in raw:
            raise BadRequest("config.base_path: must not contain NUL characters",
                             code="invalid_field")
        return {"base_path": os.path.abspath(os.path.expanduser(raw)), "bucket": bucket}

    def check_options_here(self, config: dict) -> None:
        base = config["base_path"]
        if not os.path.isdir(base):
            raise BadRequest(f"config.base_path: {base} is not a directory", code="invalid_field")
        if not os.access(base, os.R_OK | os.X_OK):
            raise BadRequest(f"config.base_path: {base}: no permission to read it",
                             code="invalid_field")

    def launch_spec(self, config: dict) -> LaunchSpec:
        args = ["--base-path", config["base_path"], "--bucket", config["bucket"]]
        if self._is_data_path(config["base_path"]):
            args += ["--index-db", str(self.host.config.db_path)]
        return LaunchSpec("cnet-gateway-data", args, "gateway")

    def _is_data_path(self, base_path: str) -> bool:
        return os.path.realpath(base_path) == os.path.realpath(self.host.config.data_path)
