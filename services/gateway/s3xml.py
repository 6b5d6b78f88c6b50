"""The S3 XML documents the gateway sends: errors, ListBuckets, ListObjects (v1 and v2),
GetBucketLocation, GetBucketAcl/GetObjectAcl. Built as text: a page of 1,000 keys renders in a
few milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote
from xml.sax.saxutils import escape

from services.gateway.listing import ListingPage

__all__ = [
    "Owner",
    "acl_document",
    "error_document",
    "iso8601",
    "list_buckets_document",
    "list_objects_v1_document",
    "list_objects_v2_document",
    "location_document",
]

_HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'
_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
_TRUTH = {True: "true", False: "false"}
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
MAX_RESOURCE_ECHO = 2048       # an error names at most this much of a (hostile, huge) path


@dataclass(frozen=True)
class Owner:
    """The one owner of the bucket and every object, as listings and ACLs name it."""

    id: str = "cnet"
    display_name: str = "cnet"

    def xml(self) -> str:
        return _element("ID", self.id) + _element("DisplayName", self.display_name)


def iso8601(timestamp: float) -> str:
    """S3's timestamp format: 2009-10-12T17:50:30.000Z."""
    millis = round((timestamp - int(timestamp)) * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(timestamp))) + f".{millis:03d}Z"


def _element(name: str, text: str) -> str:
    return f"<{name}>{escape(text)}</{name}>"


def _url_encoder(encoding_type: str | None) -> Callable[[str], str]:
    if encoding_type == "url":
        return lambda value: quote(value, safe="/")
    return lambda value: value


def error_document(code: str, message: str, resource: str, request_id: str) -> bytes:
    body = (_element("Code", code) + _element("Message", message)
            + _element("Resource", resource[:MAX_RESOURCE_ECHO])
            + _element("RequestId", request_id))
    return f"{_HEADER}<Error>{body}</Error>".encode()


def list_buckets_document(bucket: str, created: float, owner: Owner) -> bytes:
    bucket_xml = _element("Name", bucket) + _element("CreationDate", iso8601(created))
    return (f'{_HEADER}<ListAllMyBucketsResult xmlns="{_NAMESPACE}"><Owner>{owner.xml()}</Owner>'
            f"<Buckets><Bucket>{bucket_xml}</Bucket></Buckets></ListAllMyBucketsResult>").encode()


def acl_document(owner: Owner, *, public: bool) -> bytes:
    """The canned read-only ACL: the owner may READ, and everyone too when no keys are set."""
    grants = [f'<Grant><Grantee xmlns:xsi="{_XSI}" xsi:type="CanonicalUser">{owner.xml()}'
              "</Grantee><Permission>READ</Permission></Grant>"]
    if public:
        grants.append(f'<Grant><Grantee xmlns:xsi="{_XSI}" xsi:type="Group">'
                      f"{_element('URI', ALL_USERS)}</Grantee><Permission>READ</Permission></Grant>")
    return (f'{_HEADER}<AccessControlPolicy xmlns="{_NAMESPACE}"><Owner>{owner.xml()}</Owner>'
            f'<AccessControlList>{"".join(grants)}</AccessControlList>'
            "</AccessControlPolicy>").encode()


def location_document(region: str) -> bytes:
    # us-east-1 is reported as an empty constraint, as S3 does.
    text = "" if region == "us-east-1" else escape(region)
    return f'{_HEADER}<LocationConstraint xmlns="{_NAMESPACE}">{text}</LocationConstraint>'.encode()


def _entries(page: ListingPage, encode: Callable[[str], str], owner: Owner | None) -> list[str]:
    parts = []
    owner_xml = f"<Owner>{owner.xml()}</Owner>" if owner is not None else ""
    for entry in page.contents:
        parts.append(
            "<Contents>" + _element("Key", encode(entry.key))
            + _element("LastModified", iso8601(entry.last_modified))
            + _element("ETag", f'"{entry.etag or ""}"')
            + f"<Size>{entry.size}</Size>{owner_xml}<StorageClass>STANDARD</StorageClass>"
            "</Contents>")
    for common in page.common_prefixes:
        parts.append(f"<CommonPrefixes>{_element('Prefix', encode(common))}</CommonPrefixes>")
    return parts


def list_objects_v2_document(page: ListingPage, *, bucket: str, prefix: str,
                             delimiter: str | None, max_keys: int, encoding_type: str | None,
                             start_after: str | None, continuation_token: str | None,
                             next_continuation_token: str | None,
                             owner: Owner | None) -> bytes:
    """ListObjectsV2; ``owner`` is shown in each entry only when given (``fetch-owner=true``)."""
    encode = _url_encoder(encoding_type)
    parts = [f'{_HEADER}<ListBucketResult xmlns="{_NAMESPACE}">', _element("Name", bucket),
             _element("Prefix", encode(prefix))]
    if start_after is not None:
        parts.append(_element("StartAfter", encode(start_after)))
    if continuation_token is not None:
        parts.append(_element("ContinuationToken", continuation_token))
    parts.append(f"<KeyCount>{len(page.contents) + len(page.common_prefixes)}</KeyCount>")
    parts.append(f"<MaxKeys>{max_keys}</MaxKeys>")
    if delimiter:
        parts.append(_element("Delimiter", encode(delimiter)))
    if encoding_type:
        parts.append(_element("EncodingType", encoding_type))
    parts.append(f"<IsTruncated>{_TRUTH[page.is_truncated]}</IsTruncated>")
    if next_continuation_token is not None:
        parts.append(_element("NextContinuationToken", next_continuation_token))
    parts.extend(_entries(page, encode, owner))
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def list_objects_v1_document(page: ListingPage, *, bucket: str, prefix: str,
                             delimiter: str | None, max_keys: int, encoding_type: str | None,
                             marker: str, owner: Owner) -> bytes:
    """ListObjects (v1), whose entries always name their owner, as S3's do."""
    encode = _url_encoder(encoding_type)
    parts = [f'{_HEADER}<ListBucketResult xmlns="{_NAMESPACE}">', _element("Name", bucket),
             _element("Prefix", encode(prefix)), _element("Marker", encode(marker)),
             f"<MaxKeys>{max_keys}</MaxKeys>"]
    if delimiter:
        parts.append(_element("Delimiter", encode(delimiter)))
    if encoding_type:
        parts.append(_element("EncodingType", encoding_type))
    parts.append(f"<IsTruncated>{_TRUTH[page.is_truncated]}</IsTruncated>")
    if page.next_marker is not None:
        parts.append(_element("NextMarker", encode(page.next_marker)))
    parts.extend(_entries(page, encode, owner))
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()
