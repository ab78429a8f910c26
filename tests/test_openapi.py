"""``GET /openapi.json``: the API's contract, generated from the route table and its types, and
held to by a live daemon under schemathesis."""

import time
import urllib.error

import pytest
from hypothesis import HealthCheck, given, settings

from pakit_stream.serving.api import ROUTES

TOKEN = "t" * 32


@pytest.fixture
def hint_port():
    from pakit_stream.broker import free_port

    return free_port()


@pytest.fixture
def daemon(daemon_factory, hint_port):
    return daemon_factory(PAKIT_STREAM_ADMIN_TOKEN=TOKEN, PAKIT_STREAM_HINT_PORT=hint_port,
                          PAKIT_STREAM_HINT_REFRESH_S=0.5)


def test_the_served_document_is_valid_openapi_and_lists_every_route(daemon):
    from openapi_spec_validator import validate

    doc = daemon.get("/openapi.json")
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    operations = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert operations == {(r.path, r.method) for r in ROUTES}
    for route in ROUTES:
        op = doc["paths"][route.path][route.method]
        assert ("security" in op) == route.admin
        assert {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"} == {
            name for name in route.path.replace("}", "{").split("{")[1::2]}
    assert doc["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    # Faust's own endpoints, no part of the API, are not served
    for path in ("/router/", "/table/"):
        with pytest.raises(urllib.error.HTTPError) as err:
            daemon.get(path)
        assert err.value.code == 404
        err.value.close()


def test_every_request_schemathesis_makes_is_answered_as_documented(daemon, hint_port):
    """On the API port, and for the hints and the codec policy on the replicas' port too."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import (content_type_conformance, negative_data_rejection,
                                     not_a_server_error, response_schema_conformance,
                                     status_code_conformance)

    schema = schemathesis.openapi.from_url(f"{daemon.url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    routes = {(r.path, r.method): r for r in ROUTES}
    replicas = f"http://127.0.0.1:{hint_port}"
    deadline = time.monotonic() + 30
    while "hint_replica_refreshes_total{outcome=\"ok\"}" not in daemon.get("/metrics"):
        assert time.monotonic() < deadline, "no hint replica serving"
        time.sleep(0.1)
    for result in schema.get_all_operations():
        operation = result.ok()
        route = routes[operation.path, operation.method.lower()]
        # a real retrain runs a training subprocess (seconds): two of those are enough
        examples = 2 if route.name == "admin_retrain" else 15
        # with neither parameters nor a body there is nothing to make malformed
        modes = list(GenerationMode) if route.body or route.params else [GenerationMode.POSITIVE]
        for mode in modes:
            extra = [negative_data_rejection] if mode is GenerationMode.NEGATIVE else []

            @given(operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def conforms(case):
                case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                                       checks=checks + extra, timeout=30)
                if route.name.startswith(("hint_", "policy_")):
                    case.call_and_validate(base_url=replicas, checks=checks + extra, timeout=30)

            conforms()
