"""Issue 14: a schemathesis pass over the served OpenAPI schema (/api/v1/openapi.json) of the
REST API, in-process through the WSGI app: a bounded number of generated requests per
operation, each checked for a server error (no 5xx at all), a status code the schema does not
document, and a response body that does not match the documented schema."""

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

EXAMPLES_PER_OPERATION = 10


@pytest.fixture
def fuzz_token(db, admin_user, knowledge_base):
    from django.core import signals
    from django.db import close_old_connections

    from knowledge.services.tokens import SCOPES, api_token_create

    _, token = api_token_create(user=admin_user, name="fuzz", knowledge_bases=[knowledge_base], scopes=list(SCOPES))
    # The WSGI app runs in this process, inside the test's transaction: like Django's test
    # client, do not let a request's start and end close the test's connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield token
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def _served_schema():
    # The schema document as the app serves it (the view reads no database).
    from config.wsgi import application

    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application)


schema = _served_schema()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_answers_generated_requests_as_its_schema_says(case, fuzz_token):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {fuzz_token}"},
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )
