"""ray_cluster.yaml is a configuration that `ray up` accepts, and does what a user relies on.

Validated offline with the cluster launcher's own code, the two steps `ray up`
runs before it talks to AWS: ``prepare_config`` (merges Ray's AWS defaults,
read from a file Ray ships) and ``validate_config`` (Ray's JSON schema,
``ray/autoscaler/ray-schema.json``, plus its cross-field checks). No network,
no boto3, no AWS credentials.
"""

from __future__ import annotations

import copy
import fnmatch
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import ray
import yaml  # type: ignore[import-untyped]
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PATH = ROOT / "ray_cluster.yaml"
REMOTE_PROJECT = "~/sentinmail"


def load_config() -> dict[str, Any]:
    config = yaml.safe_load(CONFIG_PATH.read_text())
    assert isinstance(config, dict)
    return config


def ray_up_checks(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to the file before the provider's AWS calls; raises if Ray refuses it."""
    prepared: dict[str, Any] = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_config()


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    return ray_up_checks(raw)


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    types: dict[str, dict[str, Any]] = config["available_node_types"]
    return {name: spec for name, spec in types.items() if name != config["head_node_type"]}


def test_ray_accepts_the_config(prepared: dict[str, Any]) -> None:
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"]
    assert prepared["provider"]["availability_zone"]
    assert prepared["auth"]["ssh_user"] == "ubuntu"
    assert "head_node" not in prepared
    assert "worker_nodes" not in prepared


def test_a_head_type_without_cpus_and_an_autoscaling_worker_type(
    prepared: dict[str, Any],
) -> None:
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["node_config"]["InstanceType"]
    assert head["resources"] == {"CPU": 0}
    assert head["max_workers"] == 0

    workers = worker_types(prepared)
    assert len(workers) == 1
    (worker,) = workers.values()
    assert worker["node_config"]["InstanceType"]
    assert 1 <= worker["min_workers"] < worker["max_workers"] <= prepared["max_workers"]


def test_every_node_installs_the_project_with_the_tested_ray(prepared: dict[str, Any]) -> None:
    # prepare_config prepends the common setup_commands to each node kind's list.
    for kind in ("head_setup_commands", "worker_setup_commands"):
        installs = [c for c in prepared[kind] if "pip install" in c and REMOTE_PROJECT in c]
        assert installs, kind
        assert any(f'"ray[default]=={ray.__version__}"' in c for c in installs), kind
    assert any("boto3" in c for c in prepared["head_setup_commands"])


def test_file_mounts_carry_every_package_pyproject_builds(prepared: dict[str, Any]) -> None:
    mounts: dict[str, str] = prepared["file_mounts"]
    for remote, local in mounts.items():
        assert remote.startswith(f"{REMOTE_PROJECT}/"), remote
        assert remote.removeprefix(f"{REMOTE_PROJECT}/") == local.removeprefix("./")
        assert (ROOT / local).exists(), local

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in include)
    }
    assert packages
    mounted = {Path(local).name for local in mounts.values()}
    assert packages | {"pyproject.toml", project["project"]["readme"]} <= mounted


def test_start_commands(prepared: dict[str, Any]) -> None:
    head = prepared["head_start_ray_commands"]
    assert head[0] == "ray stop"
    (start,) = [c for c in head if "ray start" in c]
    for flag in (
        "--head",
        "--port=6379",
        "--autoscaling-config=~/ray_bootstrap_config.yaml",
        "--dashboard-host=0.0.0.0",
    ):
        assert flag in start

    worker = prepared["worker_start_ray_commands"]
    assert worker[0] == "ray stop"
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in worker)


def test_database_url_and_ray_token_reach_every_node(prepared: dict[str, Any]) -> None:
    for kind in ("head_setup_commands", "worker_setup_commands"):
        commands = "\n".join(prepared[kind])
        assert 'SENTINMAIL_DATABASE_URL="postgresql+psycopg://' in commands, kind
        assert "RAY_AUTH_MODE=token" in commands, kind
    assert any("ray get-auth-token --generate" in c for c in prepared["head_setup_commands"])
    assert "~/.ray/auth_token" in prepared["cluster_synced_files"]


def test_comments_show_how_to_start_the_service() -> None:
    text = CONFIG_PATH.read_text()
    assert "sentinmail dispatcher --ray-address auto" in text
    assert "sentinmail serve --ray-address auto --no-dispatcher" in text
    assert "SENTINMAIL_DATABASE_URL=postgresql+psycopg://" in text


def _legacy_head_node(c: dict[str, Any]) -> None:
    c["head_node"] = {"InstanceType": "m6i.large"}


def _misspelled_top_level_key(c: dict[str, Any]) -> None:
    c["setup_comands"] = c.pop("setup_commands")


def _misspelled_node_type_key(c: dict[str, Any]) -> None:
    (worker,) = worker_types(c).values()
    worker["min_worker"] = worker.pop("min_workers")


def _unknown_head_node_type(c: dict[str, Any]) -> None:
    c["head_node_type"] = "ray.head.missing"


def _min_workers_above_the_cluster_maximum(c: dict[str, Any]) -> None:
    (worker,) = worker_types(c).values()
    worker["min_workers"] = c["max_workers"] + 1


@pytest.mark.parametrize(
    ("break_it", "error", "message"),
    [
        (_legacy_head_node, jsonschema.ValidationError, "'head_node' was unexpected"),
        (_misspelled_top_level_key, jsonschema.ValidationError, "'setup_comands' was unexpected"),
        (_misspelled_node_type_key, jsonschema.ValidationError, "'min_worker' was unexpected"),
        (_unknown_head_node_type, ValueError, "must be one of `available_node_types`"),
        (_min_workers_above_the_cluster_maximum, ValueError, "sum of `min_workers`"),
    ],
)
def test_ray_refuses_a_broken_copy(
    raw: dict[str, Any],
    break_it: Callable[[dict[str, Any]], None],
    error: type[Exception],
    message: str,
) -> None:
    broken = copy.deepcopy(raw)
    break_it(broken)
    with pytest.raises(error, match=message):
        ray_up_checks(broken)
