"""The collector's settings once a process serves (node_protocol.collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from node_protocol.collector import YOUNG_THRESHOLD, settle_for_serving


@pytest.fixture
def collector_restored() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.usefixtures("collector_restored")
def test_serving_freezes_start_up_and_raises_only_the_young_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    settle_for_serving()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("collector_restored")
def test_a_request_worth_of_objects_in_flight_triggers_no_young_collection() -> None:
    """What made the default threshold cost: objects made before a collection and freed after
    it do not count down, so in-flight work alone kept passing 700."""
    settle_for_serving()
    gc.collect()
    collections = gc.get_stats()[0]["collections"]
    in_flight: list[list[int]] = []
    for _ in range(50):  # like 32 connections, each holding some hundreds of objects
        in_flight.extend([i] for i in range(100))
        del in_flight[:60]
    assert gc.get_stats()[0]["collections"] == collections
