"""The inference shim's OpenAPI document (services/inference/openapi.json, served at
/openapi.json): valid OpenAPI 3.1, naming every route the shim serves, and true of a live Haar
service, which schemathesis drives from it."""
from __future__ import annotations

import base64

import pytest
import requests

from services.inference.handlers import OPENAPI, build_app
from tests.test_openapi import documented_routes, error_code, fuzz, not_error_shaped, served_routes

OPENCV = "services.inference.opencv_service"
EXAMPLES = {"POST /predict": (150, 100)}
FEW = (5, 5)
# Server errors the document promises for load, not for input (a busy or dead pool).
EXPECTED_5XX = {"overloaded", "unavailable", "model_not_loaded", "timeout"}


@pytest.fixture(scope="module")
def service(start_module_service):
    return start_module_service(OPENCV, "--cascade", "face", "--max-body-mb", "5")


def test_the_document_is_valid_openapi_3_1():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(OPENAPI)
    assert OPENAPI["openapi"].startswith("3.1.")


def test_every_route_and_method_is_documented():
    assert documented_routes(OPENAPI) == served_routes(build_app(None, None, None), {})


def test_every_error_response_is_the_error_shape():
    # An unhealthy service still answers /health with its state, for the supervisor to read.
    assert not_error_shaped(OPENAPI) == [("get", "/health", "503")]


def test_the_shim_serves_its_document(service):
    resp = requests.get(f"{service.url}/openapi.json", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    served = resp.json()
    assert served["servers"] == [{"url": service.url}]
    assert {k: v for k, v in served.items() if k != "servers"} == \
        {k: v for k, v in OPENAPI.items() if k != "servers"}


def test_a_live_shim_keeps_to_its_document(service, photos):
    """No server error but the documented load errors, every response as documented (a real
    photo in each form of body too), and the service still answers after."""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    checks = [getattr(schemathesis.checks, name) for name in (
        "status_code_conformance", "content_type_conformance", "response_schema_conformance",
        "response_headers_conformance", "negative_data_rejection")]
    failures: list[str] = []

    def send(case):
        resp = case.call(base_url=service.url, timeout=60)
        try:
            case.validate_response(resp, checks=checks, transport_kwargs={"base_url": service.url})
        except (AssertionError, BaseExceptionGroup) as exc:   # schemathesis' FailureGroup
            failures.append(f"{case.operation.label}: {exc}")
        if resp.status_code >= 500 and error_code(resp) not in EXPECTED_5XX:
            failures.append(f"{case.operation.label}: {resp.status_code} {resp.text[:300]}\n"
                            f"{case.as_curl_command()}")
        return resp

    predict = schema["/predict"]["POST"]
    image = photos["astronaut"]
    for body, media_type, query in (
            ({"image": base64.b64encode(image).decode(), "confidence": 0.5}, "application/json", {}),
            (image, "image/png", {"max_det": 5}),
            ({"image": image, "iou": "0.4"}, "multipart/form-data", {})):
        resp = send(predict.Case(body=body, media_type=media_type, query=query))
        assert resp.status_code == 200 and resp.json()["count"] == 1, resp.text
    for result in schema.get_all_operations():
        operation = result.ok()
        positive, negative = EXAMPLES.get(operation.label, FEW)
        fuzz(send, operation, GenerationMode.POSITIVE, positive)
        fuzz(send, operation, GenerationMode.NEGATIVE, negative)
    assert not failures, "\n\n".join(failures[:20])
    assert service.health()["status"] == "healthy"
