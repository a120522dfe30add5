"""Power: the battery's charge and whether the device is on external power.

Read from the Linux power-supply class (/sys/class/power_supply, kernel ABI
`sysfs-class-power`): one directory per supply, each with a `type` (Battery, Mains, USB,
Wireless, ...). A battery gives `capacity` (percent) and `status` (Charging, Discharging,
Not charging, Full, Unknown); a charger gives `online` (0 or 1). The planner asks
`PowerSource.read()` and the profile's BatteryPolicy whether only urgent work may run.

Decisions (DESIGN.md promise 5, issue 5 part 3):
- "Charging" means on external power: a charger that is `online`, or a battery whose status is
  Charging, Full or Not charging (the kernel's word for "supplied but not charging", e.g. held at
  a charge limit). On external power a download costs the battery nothing.
- Batteries with `scope` Device (a stylus, a Bluetooth keyboard) are not the device's own and
  are ignored, as upower does. Several system batteries combine by their energy (or charge)
  when every one reports it, else by the mean of their percentages.
- No readable battery (a PC, the emulator, a sysfs the sandbox hides) is "unknown", never
  "low": a wrong low reading would hold back every download forever, and a device that cannot
  read its battery has no basis to save it. Status shows the unknown honestly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from daemon.logs import log_event
from daemon.profile import BatteryPolicy

_LOG = logging.getLogger("shelfsync.power")
SYSFS_ROOT = Path("/sys/class/power_supply")
_CHARGER_TYPES = frozenset({"mains", "usb", "wireless"})
_ON_POWER_STATUSES = frozenset({"charging", "full", "not charging"})
_MAX_ATTRIBUTE_BYTES = 256  # sysfs attributes are one short line; anything longer is not one


@dataclass(frozen=True, slots=True)
class PowerState:
    percent: float | None  # 0..100; None when no battery could be read
    charging: bool  # on external power (see the module's decisions)

    def restricted(self, policy: BatteryPolicy) -> bool:
        """Whether the profile holds the daemon to purchases and note pushes now."""
        if self.percent is None:
            return False
        return policy.restricted(self.percent, self.charging)


class PowerSource(Protocol):
    def read(self) -> PowerState:
        """The power state now. Never raises: an unreadable supply counts as absent."""


def power_report(state: PowerState, policy: BatteryPolicy) -> dict[str, Any]:
    """The status report's `power` section."""
    return {
        "battery_percent": None if state.percent is None else round(state.percent, 1),
        "charging": state.charging,
        "restricted": state.restricted(policy),
        "min_percent": policy.min_percent,
        "charging_overrides": policy.charging_overrides,
    }


@dataclass(frozen=True, slots=True)
class _Battery:
    percent: float
    full: tuple[str, float] | None  # ("energy" or "charge", its value when full)


class SysfsPower:
    """The Linux power-supply class. `root` is injectable so tests lay out a fake sysfs."""

    def __init__(self, root: Path = SYSFS_ROOT) -> None:
        self._root = root
        self._warned: set[str] = set()  # supplies already logged as unreadable

    def read(self) -> PowerState:
        batteries: list[_Battery] = []
        charging = False
        try:
            supplies = sorted(self._root.iterdir())
        except OSError:
            return PowerState(None, False)
        for supply in supplies:
            kind = (_attribute(supply, "type") or "").lower()
            if kind == "battery":
                battery, on_power = self._battery(supply)
                charging = charging or on_power
                if battery is not None:
                    batteries.append(battery)
            elif kind in _CHARGER_TYPES and _attribute(supply, "online") == "1":
                charging = True
        return PowerState(_combine(batteries), charging)

    def _battery(self, supply: Path) -> tuple[_Battery | None, bool]:
        if (_attribute(supply, "scope") or "").lower() == "device":
            return None, False
        on_power = (_attribute(supply, "status") or "").lower() in _ON_POWER_STATUSES
        if _attribute(supply, "present") == "0":
            return None, on_power
        unit, now, full = _gauge(supply)
        percent = _number(_attribute(supply, "capacity"))
        if percent is None and now is not None and full is not None:
            percent = 100 * now / full
        if percent is None:
            if supply.name not in self._warned:
                self._warned.add(supply.name)
                log_event(_LOG, logging.WARNING, "battery_unreadable", supply=supply.name)
            return None, on_power
        # Some gauges report 101 % while topping up, or a negative glitch.
        weight = None if unit is None or full is None else (unit, full)
        return _Battery(min(max(percent, 0.0), 100.0), weight), on_power


class FakePower:
    """A power source for tests: whatever it was last set to."""

    def __init__(self, percent: float | None = 100.0, charging: bool = False) -> None:
        self.state = PowerState(percent, charging)

    def set(self, percent: float | None, charging: bool) -> None:
        self.state = PowerState(percent, charging)

    def read(self) -> PowerState:
        return self.state


def _attribute(supply: Path, name: str) -> str | None:
    try:
        with (supply / name).open("rb") as f:
            raw = f.read(_MAX_ATTRIBUTE_BYTES)
    except OSError:  # absent, or the driver refused the read (ENODATA, EIO, EACCES)
        return None
    return raw.decode("ascii", "replace").strip()


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _gauge(supply: Path) -> tuple[str | None, float | None, float | None]:
    """(unit, now, full) from energy_* (µWh) or else charge_* (µAh); `now` may be unknown."""
    for unit in ("energy", "charge"):
        full = _number(_attribute(supply, f"{unit}_full"))
        if full is not None and full > 0:
            return unit, _number(_attribute(supply, f"{unit}_now")), full
    return None, None, None


def _combine(batteries: list[_Battery]) -> float | None:
    if not batteries:
        return None
    units = {b.full[0] for b in batteries if b.full is not None}
    if len(units) == 1 and all(b.full is not None for b in batteries):
        # A big battery at 90 % and a small one at 10 % hold far more than 50 % between them.
        weights = [b.full[1] for b in batteries if b.full is not None]
        return sum(b.percent * w for b, w in zip(batteries, weights, strict=True)) / sum(weights)
    return sum(b.percent for b in batteries) / len(batteries)
