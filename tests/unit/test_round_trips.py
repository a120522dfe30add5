"""The delivery benchmark's count of round trips a purchase waited for (bench/delivery.py)."""

from __future__ import annotations

from bench.delivery import ByteLog

RTT = 0.3


def log_of(*pieces: tuple[float, str]) -> ByteLog:
    log = ByteLog()
    for at, direction in pieces:
        log.record(at, "down" if direction == "down" else "up", 1000)
    return log


def test_a_push_then_one_request_is_a_round_trip_and_a_half() -> None:
    log = log_of(
        (0.15, "down"),  # the push, half a round trip after the purchase
        (0.16, "up"),  # the manifest and package asked for together
        (0.47, "down"),
        (0.48, "down"),
        (0.49, "down"),
    )
    assert log.round_trips(0.0, 1.0, RTT / 2) == 1.5


def test_each_request_waited_for_is_a_round_trip_and_a_flowing_answer_is_none() -> None:
    log = log_of(
        (0.15, "down"),
        (0.16, "up"),  # the manifest
        (0.47, "down"),
        (0.48, "up"),  # then the package
        (0.79, "down"),
        (0.80, "up"),  # asked for while the answer still flows: no wait
        (0.81, "down"),
        (0.82, "down"),
    )
    assert log.round_trips(0.0, 1.0, RTT / 2) == 2.5


def test_a_silence_with_nothing_asked_is_not_a_round_trip() -> None:
    log = log_of((0.15, "down"), (0.16, "up"), (0.47, "down"), (1.5, "down"))  # a resend
    assert log.round_trips(0.0, 2.0, RTT / 2) == 1.5


def test_a_device_that_asked_first_waited_a_whole_round_trip() -> None:
    log = log_of((0.01, "up"), (0.31, "down"))  # a poll, not a push
    assert log.round_trips(0.0, 1.0, RTT / 2) == 1.0


def test_only_the_purchase_s_window_counts() -> None:
    log = log_of((0.1, "up"), (0.5, "down"), (2.15, "down"), (2.16, "up"), (2.47, "down"))
    assert log.round_trips(2.0, 3.0, RTT / 2) == 1.5
