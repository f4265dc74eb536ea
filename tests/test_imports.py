"""Which code each module loads: the boundaries between the API, the dispatcher and the database.

Each module is imported in a fresh interpreter, and ``sys.modules`` shows
everything it brought along.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MACHINERY = ["dispatcher.worker", "dispatcher.lane", "dispatcher.scheduler", "dispatcher.transport"]


def loaded_by(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module``."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(json.loads(out.stdout))


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("dispatcher.worker", ["sqlalchemy", "sqlmodel", "ray"]),
        ("dispatcher.lane", ["sqlalchemy", "sqlmodel", "ray"]),
        ("dispatcher.capacity", ["sqlalchemy", "sqlmodel", "ray"]),
        ("models.jobs", ["sqlalchemy", "sqlmodel", "ray"]),
        ("dispatcher.settings", [*MACHINERY, "ray", "sqlalchemy"]),
        ("api.app", [*MACHINERY, "ray"]),
        ("models.tables", ["dispatcher", "ray"]),
    ],
    ids=[
        "a delivery worker loads no database code",
        "a lane loads no database code",
        "the capacity ledger loads no database code",
        "jobs and results load no database code",
        "settings load none of the dispatcher's machinery",
        "the API loads none of the dispatcher's machinery",
        "the models load nothing of the dispatcher",
    ],
)
def test_a_module_loads_only_what_it_needs(module: str, forbidden: list[str]) -> None:
    loaded = loaded_by(module)
    assert module in loaded
    assert sorted(m for m in loaded for f in forbidden if m == f or m.startswith(f"{f}.")) == []
