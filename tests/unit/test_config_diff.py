from __future__ import annotations

import dataclasses

from common.config import Config, ResourceConfig, Selectors
from supervisor.config_diff import diff_configs

A = ResourceConfig("a", "rdma", 100, Selectors(vendors=("15b3",)))
B = ResourceConfig("b", "rdma", 100, Selectors(if_names=("ib0",)))
C = ResourceConfig("c", "example.com", 5, Selectors())


def test_first_load_adds_everything() -> None:
    d = diff_configs(None, Config(60, (A, B)))
    assert d.added == (A, B) and not d.removed and not d.changed


def test_added_removed_changed_unchanged() -> None:
    a2 = dataclasses.replace(A, rdma_hca_max=200)
    d = diff_configs(Config(60, (A, B)), Config(60, (a2, C)))
    assert d.added == (C,)
    assert d.removed == (B,)
    assert d.changed == ((A, a2),)
    assert d.unchanged == ()
    assert not d.interval_changed


def test_prefix_change_is_a_new_resource() -> None:
    moved = dataclasses.replace(A, resource_prefix="example.com")
    d = diff_configs(Config(60, (A,)), Config(60, (moved,)))
    assert d.added == (moved,) and d.removed == (A,) and not d.changed


def test_identical_config_is_empty() -> None:
    d = diff_configs(Config(60, (A, B)), Config(60, (A, B)))
    assert d.empty and d.unchanged == (A, B)


def test_interval_change_alone_is_not_empty() -> None:
    d = diff_configs(Config(60, (A,)), Config(0, (A,)))
    assert d.interval_changed and not d.empty
