"""The reload plan: from a config diff and the records' states to actions, without processes."""

from __future__ import annotations

import json

import pytest

from common.config import Config, ResourceConfig, load_config_bytes
from supervisor.config_diff import diff_configs
from supervisor.reload import Add, RecordView, Remove, Replace, Then, Update, plan
from supervisor.worker_table import WorkerState
from tests.factories import config_bytes

S = WorkerState


def _config(*entries: tuple[str, str, int]) -> Config:
    config = json.loads(config_bytes([]))
    config["configList"] = [
        {
            "resourceName": name,
            "resourcePrefix": prefix,
            "rdmaHcaMax": count,
            "selectors": {"vendors": ["15b3"]},
        }
        for name, prefix, count in entries
    ]
    return load_config_bytes(json.dumps(config).encode())


def _view(
    state: WorkerState,
    process: bool = True,
    configured: bool = True,
    served: ResourceConfig | None = None,
) -> RecordView:
    return RecordView(state, process, configured, served)


OLD = _config(("a", "example.com", 2), ("b", "example.com", 2))


def test_an_unchanged_config_plans_nothing() -> None:
    assert plan(diff_configs(OLD, OLD), {"a": _view(S.RUNNING), "b": _view(S.RUNNING)}) == []


def test_added_and_removed_resources() -> None:
    new = _config(("a", "example.com", 2), ("c", "example.com", 2))
    actions = plan(diff_configs(OLD, new), {"a": _view(S.RUNNING), "b": _view(S.RUNNING)})
    assert actions == [Remove("b"), Add(new.resources[1])]


def test_a_removed_resource_without_a_record_is_not_planned() -> None:
    new = _config(("a", "example.com", 2))
    assert plan(diff_configs(OLD, new), {"a": _view(S.RUNNING)}) == []


def test_a_renamed_prefix_replaces_the_record_and_restarts_a_running_worker() -> None:
    new = _config(("a", "other.example.com", 2), ("b", "example.com", 2))
    views = {"a": _view(S.RUNNING, served=OLD.resources[0]), "b": _view(S.RUNNING)}
    # The removal of example.com/a and the addition of other.example.com/a: one record.
    assert plan(diff_configs(OLD, new), views) == [Replace(new.resources[0], True, None)]


def test_a_renamed_resource_without_a_process_cleans_up_what_it_served_and_starts() -> None:
    new = _config(("a", "other.example.com", 2), ("b", "example.com", 2))
    views = {
        "a": _view(S.BACKOFF, process=False, served=OLD.resources[0]),
        "b": _view(S.RUNNING),
    }
    assert plan(diff_configs(OLD, new), views) == [
        Replace(new.resources[0], False, OLD.resources[0])
    ]


@pytest.mark.parametrize(
    ("view", "then"),
    [
        (_view(S.RUNNING), Then.CONFIGURE),
        (_view(S.RUNNING, configured=False), Then.KEEP),
        (_view(S.STARTING, configured=False), Then.KEEP),
        (_view(S.STOPPING), Then.KEEP),
        (_view(S.BACKOFF, process=False), Then.RETRY),
        (_view(S.FATAL, process=False), Then.SPAWN),
    ],
)
def test_a_changed_resource_follows_its_state(view: RecordView, then: Then) -> None:
    new = _config(("a", "example.com", 5), ("b", "example.com", 2))
    actions = plan(diff_configs(OLD, new), {"a": view, "b": _view(S.RUNNING)})
    assert actions == [Update(new.resources[0], then)]
