"""Schemathesis against the app, in process: no input answers 500 or strays from /openapi.json.

One run of schemathesis' engine, as ``schemathesis run`` does it, on the
``client`` fixture's app (ASGI, no network), so on every database backend:

- every phase: the document's examples, coverage (boundaries and each
  constraint broken in turn), fuzzing (valid and invalid data), and stateful
  sequences that follow the document's links (create an endpoint, then read,
  replace, patch and delete it; ingest events, then read one);
- every check: a server error, a status, header or content type the document
  does not list, a body that does not match its schema, a schema-valid request
  refused, an invalid one accepted, an operation that ignores a missing or bad
  key, a deleted resource still served.

A bounded number of examples per operation and a fixed seed: each run sends
the same requests (but for ids the app itself draws at random), about 950 of
them, in about 10 s of a loaded 2-core machine per backend.
"""

from __future__ import annotations

from collections import Counter

import schemathesis
from fastapi.testclient import TestClient
from schemathesis import engine
from schemathesis.engine import Status, events
from schemathesis.engine.run import PhaseName
from schemathesis.python import asgi

MAX_EXAMPLES = 40
SEED = 20261104
PHASES = {PhaseName.EXAMPLES, PhaseName.COVERAGE, PhaseName.FUZZING, PhaseName.STATEFUL_TESTING}


def test_no_generated_request_strays_from_the_document(client: TestClient, api_key: str) -> None:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "workers": 1,
            # Nothing here may depend on the machine being fast.
            "suppress-health-check": ["too_slow"],
            "request-timeout": 60,
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "auth": {"openapi": {"APIKeyHeader": {"api_key": api_key}}},
            "operations": [
                {
                    # Its window (until within 14 days after since, since before until)
                    # relates two fields, which JSON Schema cannot state: a schema-valid
                    # body may get the 422 that names the field.
                    "include-operation-id": "recover_endpoint",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "401", "404", "409", "422"]
                        }
                    },
                }
            ],
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app, config=config)
    problems: list[str] = []
    scenarios: Counter[PhaseName] = Counter()
    tested: set[str] = set()
    try:
        run = list(engine.from_schema(schema).execute())
    finally:
        asgi.shutdown_lifespans()  # the app's, which schemathesis started for its own calls
    for event in run:
        if isinstance(event, events.ScenarioFinished):
            scenarios[event.phase] += 1
            tested.update(case.value.operation.label for case in event.recorder.cases.values())
            for checks in event.recorder.checks.values():
                problems.extend(
                    f"{event.phase} {event.label}: {check.failure_info.failure.title}\n"
                    f"{check.failure_info.failure.message}\n{check.failure_info.code_sample}"
                    for check in checks
                    if check.status == Status.FAILURE and check.failure_info is not None
                )
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.phase} {event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            problems.append(f"the run stopped: {event.exception!r}")
    assert not problems, "\n\n".join(problems)
    # A run that tested nothing would pass too.
    assert {phase for phase, n in scenarios.items() if n} >= PHASES, scenarios
    paths = client.get("/openapi.json").json()["paths"]
    assert tested == {f"{m.upper()} {path}" for path, ops in paths.items() for m in ops}, tested
