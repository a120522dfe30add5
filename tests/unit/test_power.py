"""Battery and charging state from a directory laid out like /sys/class/power_supply."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.profile import BatteryPolicy
from daemon.radio.power import FakePower, PowerState, SysfsPower, power_report

POLICY = BatteryPolicy(min_percent=20, charging_overrides=True)


def supply(root: Path, name: str, **attributes: str) -> Path:
    """One power supply as the kernel shows it: one file per attribute, newline-terminated."""
    path = root / name
    path.mkdir(parents=True)
    for key, value in attributes.items():
        (path / key).write_text(value + "\n")
    return path


def test_a_discharging_battery_below_the_threshold_restricts(tmp_path: Path) -> None:
    supply(tmp_path, "BAT0", type="Battery", capacity="14", status="Discharging")
    state = SysfsPower(tmp_path).read()
    assert state == PowerState(14.0, charging=False)
    assert state.restricted(POLICY)


@pytest.mark.parametrize("status", ["Charging", "Full", "Not charging"])
def test_a_battery_on_external_power_counts_as_charging(tmp_path: Path, status: str) -> None:
    supply(tmp_path, "bq27441-0", type="Battery", capacity="9", status=status)
    state = SysfsPower(tmp_path).read()
    assert state.charging
    assert not state.restricted(POLICY)
    assert state.restricted(BatteryPolicy(min_percent=20, charging_overrides=False))


@pytest.mark.parametrize("kind", ["Mains", "USB", "Wireless"])
def test_an_online_charger_means_charging_even_if_the_battery_says_discharging(
    tmp_path: Path, kind: str
) -> None:
    supply(tmp_path, "battery", type="Battery", capacity="5", status="Discharging")
    supply(tmp_path, "charger", type=kind, online="1")
    assert SysfsPower(tmp_path).read() == PowerState(5.0, charging=True)


def test_an_offline_charger_is_not_charging(tmp_path: Path) -> None:
    supply(tmp_path, "battery", type="Battery", capacity="50", status="Discharging")
    supply(tmp_path, "usb", type="USB", online="0")
    supply(tmp_path, "ac", type="Mains")  # no `online` at all: unknown, not charging
    assert SysfsPower(tmp_path).read() == PowerState(50.0, charging=False)


def test_no_battery_is_unknown_and_never_restricted(tmp_path: Path) -> None:
    supply(tmp_path, "AC", type="Mains", online="0")
    state = SysfsPower(tmp_path).read()
    assert state == PowerState(None, charging=False)
    assert not state.restricted(BatteryPolicy(min_percent=100, charging_overrides=False))
    assert SysfsPower(tmp_path / "no-such-dir").read() == PowerState(None, charging=False)


def test_peripheral_and_absent_batteries_are_ignored(tmp_path: Path) -> None:
    supply(tmp_path, "hid-stylus", type="Battery", scope="Device", capacity="3", status="Charging")
    supply(tmp_path, "BAT1", type="Battery", present="0", capacity="0")
    supply(tmp_path, "BAT0", type="Battery", scope="System", capacity="80", status="Discharging")
    assert SysfsPower(tmp_path).read() == PowerState(80.0, charging=False)


def test_capacity_falls_back_to_energy_or_charge_and_is_clamped(tmp_path: Path) -> None:
    supply(tmp_path, "a", type="Battery", energy_now="3000000", energy_full="12000000")
    assert SysfsPower(tmp_path).read().percent == 25.0
    other = tmp_path / "other"
    supply(other, "b", type="Battery", charge_now="500", charge_full="1000", status="Unknown")
    assert SysfsPower(other).read().percent == 50.0
    clamped = tmp_path / "clamped"
    supply(clamped, "c", type="Battery", capacity="101", status="Full")
    assert SysfsPower(clamped).read().percent == 100.0


def test_several_batteries_combine_by_their_energy(tmp_path: Path) -> None:
    supply(tmp_path, "BAT0", type="Battery", capacity="90", energy_full="30000000")
    supply(tmp_path, "BAT1", type="Battery", capacity="10", energy_full="10000000")
    assert SysfsPower(tmp_path).read().percent == 70.0
    mixed = tmp_path / "mixed"  # one without a gauge: the plain mean
    supply(mixed, "BAT0", type="Battery", capacity="90", energy_full="30000000")
    supply(mixed, "BAT1", type="Battery", capacity="10")
    assert SysfsPower(mixed).read().percent == 50.0


def test_garbage_and_unreadable_attributes_do_not_raise(tmp_path: Path) -> None:
    supply(tmp_path, "BAT0", type="Battery", capacity="n/a", status="Discharging")
    (tmp_path / "BAT0" / "energy_now").mkdir()  # reading a directory fails like EIO would
    (tmp_path / "stray-file").write_text("not a supply")
    assert SysfsPower(tmp_path).read() == PowerState(None, charging=False)


def test_the_fake_and_the_report() -> None:
    power = FakePower(percent=12, charging=False)
    assert power_report(power.read(), POLICY) == {
        "battery_percent": 12,
        "charging": False,
        "restricted": True,
        "min_percent": 20,
        "charging_overrides": True,
    }
    power.set(percent=12, charging=True)
    assert not power.read().restricted(POLICY)
    power.set(percent=None, charging=False)
    assert power_report(power.read(), POLICY)["battery_percent"] is None
