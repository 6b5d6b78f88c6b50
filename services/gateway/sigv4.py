"""AWS Signature Version 4 verification for S3 requests: the Authorization header form and the
presigned-URL (query) form, as botocore signs them.

Canonical request (S3 flavour: the path is URI-encoded once and never normalised)::

    METHOD \\n CanonicalURI \\n CanonicalQuery \\n CanonicalHeaders \\n SignedHeaders \\n PayloadHash

String to sign: ``AWS4-HMAC-SHA256 \\n <amz-date> \\n <date>/<region>/s3/aws4_request \\n
hex(sha256(canonical request))``; the key is HMAC-chained from ``"AWS4" + secret`` over date,
region, service and ``aws4_request``.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = ["ALGORITHM", "Credentials", "SignatureError", "is_presigned", "is_sigv2",
           "verify_request"]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_CLOCK_SKEW = 15 * 60           # seconds, as S3 allows
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
SIGV2_REFUSED = ("Signature Version 2 is not supported by this gateway; sign requests with "
                 f"Signature Version 4 ({ALGORITHM}).")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    service: str = "s3"


class SignatureError(Exception):
    """The request is unsigned, or its signature or scope does not verify."""


def is_presigned(query: Sequence[tuple[str, str]]) -> bool:
    return any(name == "X-Amz-Signature" for name, _ in query)


def is_sigv2(query: Sequence[tuple[str, str]], headers: Mapping[str, list[str]]) -> bool:
    """A SigV2 request: ``Authorization: AWS key:signature``, or a query-signed URL
    (``AWSAccessKeyId``/``Signature``/``Expires``, as aws-cli v1 presigns and s3cmd signurl)."""
    authorization = headers.get("authorization")
    if authorization and authorization[0].strip().startswith("AWS "):
        return True
    names = {name for name, _ in query}
    return "AWSAccessKeyId" in names or ("Signature" in names and "Expires" in names)


def verify_request(creds: Credentials, *, method: str, raw_path: str,
                   query: Sequence[tuple[str, str]], headers: Mapping[str, list[str]],
                   body: bytes = b"", now: float | None = None) -> None:
    """Raise SignatureError unless the request is signed with ``creds``.

    ``query`` is the decoded query string in order; ``headers`` maps lower-case header names to
    every value sent under that name.
    """
    now = time.time() if now is None else now
    if is_sigv2(query, headers):
        raise SignatureError(SIGV2_REFUSED)
    if is_presigned(query):
        _verify_presigned(creds, method, raw_path, query, headers, now)
        return
    authorization = headers.get("authorization")
    if not authorization:
        raise SignatureError("Anonymous access is not allowed; sign the request with SigV4.")
    _verify_header(creds, method, raw_path, query, headers, body, authorization[0], now)


def _verify_header(creds: Credentials, method: str, raw_path: str,
                   query: Sequence[tuple[str, str]], headers: Mapping[str, list[str]],
                   body: bytes, authorization: str, now: float) -> None:
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError(f"Unsupported authorization type; use {ALGORITHM}.")
    fields = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value
    try:
        credential, signed, signature = (fields["Credential"], fields["SignedHeaders"],
                                         fields["Signature"])
    except KeyError:
        raise SignatureError("The authorization header is malformed.") from None
    amz_date = _first(headers, "x-amz-date")
    if amz_date is None:
        raise SignatureError("The request has no x-amz-date header.")
    signed_at = _parse_amz_date(amz_date)
    if abs(now - signed_at) > MAX_CLOCK_SKEW:
        raise SignatureError("The request time is too far from the server time.")
    scope = _check_scope(creds, credential, amz_date)
    payload_hash = _first(headers, "x-amz-content-sha256")
    body_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
    if payload_hash is None:
        payload_hash = body_hash
    elif payload_hash != UNSIGNED_PAYLOAD and payload_hash != body_hash:
        raise SignatureError("The x-amz-content-sha256 header does not match the body.")
    canonical = canonical_request(method, raw_path, query, headers, signed, payload_hash)
    _compare(creds, amz_date, scope, canonical, signature)


def _verify_presigned(creds: Credentials, method: str, raw_path: str,
                      query: Sequence[tuple[str, str]], headers: Mapping[str, list[str]],
                      now: float) -> None:
    params = dict(query)
    try:
        algorithm = params["X-Amz-Algorithm"]
        credential = params["X-Amz-Credential"]
        amz_date = params["X-Amz-Date"]
        expires = int(params["X-Amz-Expires"])
        signed = params["X-Amz-SignedHeaders"]
        signature = params["X-Amz-Signature"]
    except (KeyError, ValueError):
        raise SignatureError("The presigned URL is missing or has malformed X-Amz-* parameters.") \
            from None
    if algorithm != ALGORITHM:
        raise SignatureError(f"Unsupported signing algorithm; use {ALGORITHM}.")
    if not 0 < expires <= MAX_PRESIGN_EXPIRES:
        raise SignatureError("X-Amz-Expires must be between 1 and 604800 seconds.")
    signed_at = _parse_amz_date(amz_date)
    if now < signed_at - MAX_CLOCK_SKEW:
        raise SignatureError("The presigned URL is not valid yet.")
    if now > signed_at + expires:
        raise SignatureError("The presigned URL has expired.")
    scope = _check_scope(creds, credential, amz_date)
    payload_hash = params.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
    unsigned_query = [(name, value) for name, value in query if name != "X-Amz-Signature"]
    canonical = canonical_request(method, raw_path, unsigned_query, headers, signed, payload_hash)
    _compare(creds, amz_date, scope, canonical, signature)


def canonical_request(method: str, raw_path: str, query: Sequence[tuple[str, str]],
                      headers: Mapping[str, list[str]], signed_headers: str,
                      payload_hash: str) -> str:
    names = signed_headers.split(";")
    if "host" not in names or names != sorted(names):
        raise SignatureError("SignedHeaders must be sorted and include host.")
    lines = []
    for name in names:
        values = headers.get(name)
        if values is None:
            raise SignatureError(f"The signed header {name!r} is missing from the request.")
        lines.append(f"{name}:{','.join(' '.join(value.split()) for value in values)}\n")
    return "\n".join([method, _canonical_uri(raw_path), _canonical_query(query), "".join(lines),
                      signed_headers, payload_hash])


def _canonical_uri(raw_path: str) -> str:
    # Re-encode once with AWS's unreserved set, so %7E and ~ (or a client's spare escapes)
    # compare equal; botocore sends exactly this form.
    return quote(unquote(raw_path), safe="/~") or "/"


def _canonical_query(query: Sequence[tuple[str, str]]) -> str:
    encoded = sorted((quote(name, safe="-_.~"), quote(value, safe="-_.~")) for name, value in query)
    return "&".join(f"{name}={value}" for name, value in encoded)


def _check_scope(creds: Credentials, credential: str, amz_date: str) -> str:
    parts = credential.split("/")
    if len(parts) != 5:
        raise SignatureError("The credential is malformed.")
    access_key, date, region, service, terminator = parts
    if not hmac.compare_digest(access_key.encode(), creds.access_key.encode()):
        raise SignatureError("The access key is not known to this gateway.")
    if date != amz_date[:8]:
        raise SignatureError("The credential date does not match the request date.")
    if region != creds.region:
        raise SignatureError(f"The credential region must be {creds.region!r}.")
    if service != creds.service or terminator != "aws4_request":
        raise SignatureError("The credential scope is not for s3/aws4_request.")
    return "/".join(parts[1:])


def _compare(creds: Credentials, amz_date: str, scope: str, canonical: str,
             signature: str) -> None:
    string_to_sign = "\n".join([ALGORITHM, amz_date, scope,
                                hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    date, region, service, terminator = scope.split("/")
    key = ("AWS4" + creds.secret_key).encode("utf-8")
    for part in (date, region, service, terminator):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise SignatureError("The request signature does not match; check the secret key.")


def _first(headers: Mapping[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0].strip() if values else None


def _parse_amz_date(value: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise SignatureError("The request date is not in ISO 8601 basic format.") from None
