"""Sending from sync code: views, transactions, bad input, back-pressure."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import transaction

import layerq
from layerq.jobs import JobStatus
from tests.app.events import Add


def test_sync_send_returns_a_job_with_its_id_and_record(sync_layer: Any) -> None:
    """send() from sync code stores the job and returns its id at once."""
    job = Add(a=1, b=2).send()
    assert len(job.id) == 32
    assert job.status() is JobStatus.QUEUED
    assert job.record().type == "math.add"


def test_sync_send_creates_no_event_loop(sync_layer: Any) -> None:
    """Hundreds of sends from a plain thread start no event loop threads."""
    before = threading.active_count()
    for index in range(200):
        Add(a=index, b=0).send()
    assert threading.active_count() == before


def test_invalid_field_value_names_the_field(sync_layer: Any) -> None:
    """A wrong field type raises InvalidEvent naming the field."""
    with pytest.raises(layerq.InvalidEvent, match=r"\$\.b"):
        Add(a=1, b="two").send()  # type: ignore[arg-type]


def test_dict_event_for_a_known_type_is_validated(sync_layer: Any) -> None:
    """An untyped dict whose type is a registered Event is validated as that Event."""
    with pytest.raises(layerq.InvalidEvent, match="Add"):
        layerq.send("math", {"type": "math.add", "a": 1})


@pytest.mark.parametrize(
    ("event", "match"),
    [
        ({"a": 1}, "needs a 'type'"),
        ({"type": "x.y", "layerq": {}}, "reserved"),
        ({"type": "x.y", "bad": {1: "int key"}}, "not a string"),
        ({"type": "x.y", "bad": object()}, "cannot be sent"),
    ],
)
def test_bad_dict_events_are_refused(sync_layer: Any, event: Any, match: str) -> None:
    """Dicts without a type, with the reserved key or unsendable values are refused."""
    with pytest.raises(layerq.InvalidEvent, match=match):
        layerq.send("math", event)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"delay": -1}, "delay"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout": 0}, "timeout"),
        ({"notify": "bad group!"}, "notify"),
    ],
)
def test_bad_options_are_refused(sync_layer: Any, options: Any, match: str) -> None:
    """Out-of-range options raise InvalidEvent before anything is stored."""
    with pytest.raises(layerq.InvalidEvent, match=match):
        Add(a=1, b=1).send(**options)


def test_bad_channel_names_are_refused(sync_layer: Any) -> None:
    """A channel name the layer would refuse raises InvalidEvent."""
    with pytest.raises(layerq.InvalidEvent, match="channel"):
        Add(a=1, b=1).send(channel="no spaces")
    with pytest.raises(layerq.InvalidEvent, match="process-specific"):
        Add(a=1, b=1).send(channel="specific.abc!def")


def test_full_channel_raises_queue_full(sync_layer: Any) -> None:
    """send() at capacity raises QueueFull and stores nothing."""
    sync_layer.capacity = 2
    Add(a=1, b=1).send()
    Add(a=1, b=1).send()
    with pytest.raises(layerq.QueueFull):
        Add(a=1, b=1).send()


@pytest.mark.django_db(transaction=True)
def test_on_commit_sends_only_when_the_transaction_commits(sync_layer: Any) -> None:
    """on_commit=True sends after commit, and not at all after a rollback."""
    with transaction.atomic():
        job = Add(a=1, b=1).send(on_commit=True)
        with pytest.raises(layerq.JobNotFound):
            job.status()
    assert job.status() is JobStatus.QUEUED

    with transaction.atomic():
        lost = Add(a=1, b=1).send(on_commit=True)
        transaction.set_rollback(True)
    with pytest.raises(layerq.JobNotFound):
        lost.status()


def test_event_without_default_channel_needs_one(sync_layer: Any) -> None:
    """An Event declared without channel= must be given one at send."""

    class Loose(layerq.Event, type="tests.loose"):
        x: int

    with pytest.raises(layerq.InvalidEvent, match="no default channel"):
        Loose(x=1).send()
    assert Loose(x=1).send(channel="math").channel == "math"
