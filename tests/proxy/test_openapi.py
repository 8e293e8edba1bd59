"""The OpenAPI document lists the error statuses the API really returns (issue 12, item 14)."""

from __future__ import annotations

from proxy.main import create_app
from proxy.setting_groups import PersonaSettings
from tests.conftest import make_settings

ALWAYS = {"400", "401", "404", "413", "429", "500", "503"}  # any route, once keys exist


def test_every_operation_documents_its_openai_errors_and_no_422() -> None:
    schema = create_app(make_settings(personas=PersonaSettings(examples=False))).openapi()
    checked = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method} {path} documents FastAPI's 422"
            if path == "/health":
                assert "503" in responses
                continue
            if path.startswith("/health/") or path in ("/metrics", "/ui", "/ui/"):
                continue  # probes, metrics and the dashboard's page: no key, no body, no OpenAI errors
            assert set(responses) >= ALWAYS, f"{method} {path} lacks {ALWAYS - set(responses)}"
            body = responses["400"]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/ErrorBody"}
            checked += 1
    assert checked > 20
    assert "HTTPValidationError" not in schema["components"]["schemas"]
