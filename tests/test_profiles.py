"""Device profiles: the shipped ones load, malformed ones fail with the field and the reason."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.errors import ConfigError
from daemon.profile import (
    FILE_FIELD,
    PROFILES_DIR,
    ROOT_FIELD,
    BatteryPolicy,
    DeviceProfile,
    DownloadPolicy,
    LinkProfile,
    MemoryPolicy,
    Outage,
    StoragePolicy,
    SyncPolicy,
    list_profiles,
    load_profile,
    parse_profile,
)

SHIPPED = ["emulator-loopback", "kindle-keyboard-3g", "oasis-4g", "paperwhite-wifi"]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "PROFILES.md"
DELETE = object()  # an edit that removes the key


def valid() -> dict[str, object]:
    """A fresh, valid profile document to break in one place."""
    with (PROFILES_DIR / "paperwhite-wifi.toml").open("rb") as f:
        return tomllib.load(f)


def edited(edits: dict[str, object]) -> dict[str, object]:
    doc = valid()
    for dotted, value in edits.items():
        *parents, key = dotted.split(".")
        table = doc
        for parent in parents:
            table = table[parent]  # type: ignore[assignment]
        if value is DELETE:
            del table[key]
        else:
            table[key] = value
    return doc


def link(
    outage: Outage | None = None, timeline: tuple[tuple[float, float], ...] = ()
) -> LinkProfile:
    return LinkProfile(1000, 384, 300, 0, 0.0, outage, timeline)


# --- the shipped profiles ---------------------------------------------------------------------


def test_list_profiles_lists_the_shipped_ones() -> None:
    assert set(SHIPPED) <= set(list_profiles())
    assert list_profiles() == sorted(list_profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_by_name_and_by_path(name: str) -> None:
    profile = load_profile(name)
    assert isinstance(profile, DeviceProfile)
    assert load_profile(str(PROFILES_DIR / f"{name}.toml")) == profile


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_comments_every_field(name: str) -> None:
    for line in (PROFILES_DIR / f"{name}.toml").read_text().splitlines():
        if re.match(r"\s*\w+\s*=", line):
            assert "#" in line, f"{name}: no comment on {line!r}"


@pytest.mark.parametrize(
    "cls",
    [DeviceProfile, MemoryPolicy, StoragePolicy, LinkProfile, Outage, DownloadPolicy,
     BatteryPolicy, SyncPolicy],
)  # fmt: skip
def test_every_field_is_documented(cls: type) -> None:
    docs = DOCS.read_text()
    for f in dataclasses.fields(cls):
        documented = f"`{f.name}`" in docs or f"`[{f.name}]`" in docs  # a field or a section
        assert documented, f"{cls.__name__}.{f.name} is missing from PROFILES.md"


def test_shipped_numbers_are_what_the_brief_asks() -> None:
    k3 = load_profile("kindle-keyboard-3g")
    assert (k3.memory.ram_budget_mb < 256, k3.downloads.concurrency) == (True, 1)
    assert k3.link.outage is not None
    pw = load_profile("paperwhite-wifi")
    assert (pw.link.down_kbps, pw.link.up_kbps, pw.link.rtt_ms) == (20_000, 5_000, 30)
    assert pw.downloads.concurrency == 2
    assert load_profile("oasis-4g").link.outage_timeline
    loopback = load_profile("emulator-loopback").link
    assert (loopback.outage, loopback.outage_timeline) == (None, ())


def test_unit_conversions() -> None:
    k3 = load_profile("kindle-keyboard-3g")
    assert k3.link.down_bytes_per_s == 125_000  # 1000 kbit/s
    assert k3.link.up_bytes_per_s == 48_000  # 384 kbit/s
    assert k3.link.rtt_s == pytest.approx(0.3)
    assert k3.link.worst_rtt_s == pytest.approx(0.45)
    assert k3.memory.zstd_window_cap_bytes == 4 * 1024 * 1024
    assert k3.memory.ram_budget_bytes == 64 * 1024 * 1024
    assert k3.storage.quota_bytes == 2048 * 1024 * 1024
    assert k3.storage.reserve_bytes == 256 * 1024 * 1024
    assert k3.downloads.min_rate_bytes_per_s == 1000


def test_profiles_are_frozen() -> None:
    profile = load_profile("paperwhite-wifi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.link.down_kbps = 1  # type: ignore[misc]


# --- semantics of the policies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "down", "next_up"),
    [(0, False, 0), (569.9, False, 569.9), (570, True, 600), (599, True, 600), (600, False, 600),
     (1170, True, 1200)],
)  # fmt: skip
def test_periodic_outage_is_the_end_of_each_period(t: float, down: bool, next_up: float) -> None:
    periodic = link(Outage(down_s=30, every_s=600))
    assert periodic.is_down(t) is down
    assert periodic.next_up(t) == next_up


@pytest.mark.parametrize(
    ("t", "down", "next_up"),
    [(0, False, 0), (10, True, 25), (19.5, True, 25), (20, True, 25), (25, False, 25),
     (30, True, 40), (100, False, 100)],
)  # fmt: skip
def test_outage_timeline_is_half_open_and_chains(t: float, down: bool, next_up: float) -> None:
    timeline = link(timeline=((10, 20), (20, 25), (30, 40)))
    assert timeline.is_down(t) is down
    assert timeline.next_up(t) == next_up


def test_no_outage_is_always_up() -> None:
    assert not link().is_down(12345)


@given(st.integers(0, 10**6), st.integers(1, 10**4), st.integers(1, 10**4))
def test_next_up_is_up_and_not_earlier(t: int, down: int, extra: int) -> None:
    periodic = link(Outage(down_s=down, every_s=down + extra))
    up = periodic.next_up(t)
    assert up >= t
    assert not periodic.is_down(up)
    assert (up > t) is periodic.is_down(t)


@pytest.mark.parametrize(
    ("percent", "charging", "overrides", "restricted"),
    [(19, False, True, True), (20, False, True, False), (5, True, True, False),
     (5, True, False, True), (50, True, False, False)],
)  # fmt: skip
def test_battery_restriction(
    percent: int, charging: bool, overrides: bool, restricted: bool
) -> None:
    doc = edited({"battery.min_percent": 20, "battery.charging_overrides": overrides})
    battery = parse_profile(doc, "t").battery
    assert battery.restricted(percent, charging) is restricted


# --- malformed profiles -----------------------------------------------------------------------

MALFORMED = [
    # (what, edits to a valid profile, field named, words the reason contains)
    ("unknown section", {"radio": {"on": True}}, "radio", "unknown section"),
    ("unknown field", {"link.bandwidth": 5}, "link.bandwidth", "unknown field"),
    ("unknown top-level field", {"model": "x"}, "model", "unknown field"),
    ("misspelt field", {"link.down_kbps": DELETE, "link.down_kpbs": 1}, "link.down_kbps",
     "misspelling"),
    ("missing field", {"sync.keepalive_s": DELETE}, "sync.keepalive_s", "missing"),
    ("missing section", {"battery": DELETE}, "battery", "missing"),
    ("missing name", {"name": DELETE}, "name", "missing"),
    ("section is a scalar", {"memory": 64}, "memory", "must be a table, got an integer"),
    ("name not a string", {"name": 3}, "name", "must be a string"),
    ("blank name", {"name": "  "}, "name", "blank"),
    ("bool for an int", {"downloads.concurrency": True}, "downloads.concurrency",
     "must be an integer, got a boolean"),
    ("float for an int", {"memory.ram_budget_mb": 64.0}, "memory.ram_budget_mb",
     "must be an integer, got a float"),
    ("string for a number", {"link.loss_pct": "1%"}, "link.loss_pct", "must be a number"),
    ("bool for a number", {"sync.poll_interval_s": False}, "sync.poll_interval_s",
     "must be a number, got a boolean"),
    ("int for a bool", {"battery.charging_overrides": 1}, "battery.charging_overrides",
     "must be a boolean"),
    ("date for a number", {"sync.keepalive_s": dt.date(2024, 1, 1)}, "sync.keepalive_s",
     "must be a number, got a date"),
    ("negative down rate", {"link.down_kbps": -1}, "link.down_kbps", "between 1 and"),
    ("zero up rate", {"link.up_kbps": 0}, "link.up_kbps", "between 1 and"),
    ("negative rtt", {"link.rtt_ms": -5}, "link.rtt_ms", "between 0 and"),
    ("negative jitter", {"link.jitter_ms": -1}, "link.jitter_ms", "between 0 and"),
    ("negative loss", {"link.loss_pct": -0.5}, "link.loss_pct", "[0, 100)"),
    ("total loss", {"link.loss_pct": 100}, "link.loss_pct", "[0, 100)"),
    ("nan loss", {"link.loss_pct": float("nan")}, "link.loss_pct", "finite"),
    ("infinite timeout", {"downloads.stall_timeout_s": float("inf")}, "downloads.stall_timeout_s",
     "finite"),
    ("huge integer", {"sync.poll_interval_s": 10**5000}, "sync.poll_interval_s", "huge integer"),
    ("concurrency 0", {"downloads.concurrency": 0}, "downloads.concurrency", "between 1 and 16"),
    ("concurrency 17", {"downloads.concurrency": 17}, "downloads.concurrency", "between 1 and 16"),
    ("window cap 0", {"memory.zstd_window_cap_kb": 0}, "memory.zstd_window_cap_kb",
     "between 1 and 131072"),
    ("window cap over 128 MiB", {"memory.ram_budget_mb": 1024, "memory.zstd_window_cap_kb":
     128 * 1024 + 1}, "memory.zstd_window_cap_kb", "between 1 and 131072"),
    ("window cap over the RAM budget", {"memory.ram_budget_mb": 4, "memory.zstd_window_cap_kb":
     8192}, "memory.zstd_window_cap_kb", "ram_budget_mb"),
    ("zero RAM budget", {"memory.ram_budget_mb": 0}, "memory.ram_budget_mb", "between 1 and"),
    ("zero quota", {"storage.quota_mb": 0}, "storage.quota_mb", "between 1 and"),
    ("negative reserve", {"storage.reserve_mb": -1}, "storage.reserve_mb", "between 0 and"),
    ("percent -1", {"battery.min_percent": -1}, "battery.min_percent", "between 0 and 100"),
    ("percent 101", {"battery.min_percent": 101}, "battery.min_percent", "between 0 and 100"),
    ("zero stall timeout", {"downloads.stall_timeout_s": 0}, "downloads.stall_timeout_s",
     "(0, 86400]"),
    ("timeout in ms by mistake", {"downloads.connect_timeout_s": 10_000_000},
     "downloads.connect_timeout_s", "(0, 86400]"),
    ("stall timeout under a round trip", {"link.rtt_ms": 20_000, "link.jitter_ms": 1_000},
     "downloads.stall_timeout_s", "worst round trip"),
    ("min rate at the link rate", {"downloads.min_rate_kbps": 20_000}, "downloads.min_rate_kbps",
     "below link.down_kbps"),
    ("zero keepalive", {"sync.keepalive_s": 0}, "sync.keepalive_s", "(0, 86400]"),
    ("outage longer than its period", {"link.outage": {"down_s": 700, "every_s": 600}},
     "link.outage.down_s", "shorter than every_s"),
    ("outage as long as its period", {"link.outage": {"down_s": 600, "every_s": 600}},
     "link.outage.down_s", "shorter than every_s"),
    ("negative outage", {"link.outage": {"down_s": -1, "every_s": 600}}, "link.outage.down_s",
     "(0, inf]"),
    ("outage missing its period", {"link.outage": {"down_s": 20}}, "link.outage.every_s",
     "missing"),
    ("outage with an unknown field", {"link.outage": {"down_s": 20, "every_s": 60, "at_s": 3}},
     "link.outage.at_s", "unknown field"),
    ("outage not a table", {"link.outage": 20}, "link.outage", "must be a table"),
    ("both outage forms", {"link.outage": {"down_s": 20, "every_s": 600},
     "link.outage_timeline": [[0, 10]]}, "link.outage_timeline", "not both"),
    ("timeline interval reversed", {"link.outage_timeline": [[0, 10], [50, 40]]},
     "link.outage_timeline[1]", "not after its start"),
    ("timeline interval empty", {"link.outage_timeline": [[5, 5]]}, "link.outage_timeline[0]",
     "not after its start"),
    ("timeline intervals overlap", {"link.outage_timeline": [[0, 10], [5, 20]]},
     "link.outage_timeline[1]", "before the previous outage ends"),
    ("timeline out of order", {"link.outage_timeline": [[100, 110], [0, 10]]},
     "link.outage_timeline[1]", "before the previous outage ends"),
    ("timeline before 0", {"link.outage_timeline": [[-10, 10]]}, "link.outage_timeline[0]",
     "before 0"),
    ("timeline entry not a pair", {"link.outage_timeline": [[1, 2, 3]]}, "link.outage_timeline[0]",
     "pair"),
    ("timeline entry not numbers", {"link.outage_timeline": [["1", "2"]]},
     "link.outage_timeline[0]", "must be a number"),
    ("timeline not an array", {"link.outage_timeline": "0-10"}, "link.outage_timeline",
     "must be an array"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("edits", "field", "reason"),
    [pytest.param(edits, field, reason, id=what) for what, edits, field, reason in MALFORMED],
)
def test_malformed_profile_names_field_and_reason(
    edits: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_profile(edited(edits), "test.toml")
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert caught.value.source == "test.toml"
    assert field in str(caught.value)


def test_valid_edits_are_accepted() -> None:
    """The boundaries the malformed table stops just short of are themselves valid."""
    doc = edited(
        {
            "downloads.concurrency": 16,
            "battery.min_percent": 100,
            "link.loss_pct": 0,  # an integer where a float is expected is fine
            "link.outage_timeline": [[0, 10], [10, 20.5]],  # touching outages are disjoint
            "memory.zstd_window_cap_kb": 1,
            "downloads.min_rate_kbps": 0,
        }
    )
    profile = parse_profile(doc, "t")
    assert profile.link.loss_pct == 0.0
    assert isinstance(profile.link.loss_pct, float)
    assert profile.link.outage_timeline == ((0.0, 10.0), (10.0, 20.5))


def test_document_not_a_table() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_profile([], "t")  # type: ignore[arg-type]
    assert caught.value.field == ROOT_FIELD


# --- files --------------------------------------------------------------------------------------


def test_profile_from_a_path_is_used_as_is(tmp_path: Path) -> None:
    text = (
        (PROFILES_DIR / "kindle-keyboard-3g.toml")
        .read_text()
        .replace("down_kbps = 1000", "down_kbps = 900")
    )
    path = tmp_path / "custom.toml"
    path.write_text(text)
    assert load_profile(str(path)).link.down_kbps == 900


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"name = \n", "invalid TOML"),
        (b"[link]\n[link]\n", "invalid TOML"),
        (b'name = "\xff"\n', "not UTF-8"),
    ],
    ids=["syntax", "duplicate table", "not utf-8"],
)
def test_unreadable_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_profile(str(path))
    assert (caught.value.field, caught.value.source) == (FILE_FIELD, str(path))
    assert reason in caught.value.reason


def test_bad_value_in_toml_file_names_the_field(tmp_path: Path) -> None:
    text = (PROFILES_DIR / "paperwhite-wifi.toml").read_text()
    path = tmp_path / "bad.toml"
    path.write_text(text.replace("concurrency = 2", "concurrency = 0"))
    with pytest.raises(ConfigError) as caught:
        load_profile(str(path))
    assert caught.value.field == "downloads.concurrency"


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"shipped profiles: .*paperwhite-wifi") as caught:
        load_profile("kindle-nonesuch")
    assert caught.value.field == FILE_FIELD
    with pytest.raises(ConfigError, match="no such file"):
        load_profile(str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(str(tmp_path) + "/")  # a directory


@pytest.mark.parametrize("name", ["..", ".hidden", "", "a b"])
def test_bare_name_is_a_plain_word(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_profile(name)
    assert caught.value.field == FILE_FIELD


# --- parse_profile raises ConfigError or nothing -----------------------------------------------


def _leaf_paths(doc: dict[str, object], prefix: str = "") -> list[str]:
    paths = []
    for key, value in doc.items():
        paths.append(prefix + key)
        if isinstance(value, dict):
            paths += _leaf_paths(value, f"{prefix}{key}.")
    return paths


# Real field names, so that random documents get past the first "unknown field" now and then.
_OUTAGE_KEYS = {"outage", "down_s", "every_s", "outage_timeline"}
_KEYS = sorted({path.rsplit(".", 1)[-1] for path in _leaf_paths(valid())} | _OUTAGE_KEYS)
_SCALARS = (
    st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.datetimes()
    | st.dates()
    | st.times()
)
_TOML_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=24,
)


def _parses_or_config_error(doc: object) -> None:
    error = None
    try:
        parse_profile(doc, "fuzz")  # type: ignore[arg-type]
    except ConfigError as e:
        error = e
    if error is not None:
        assert error.field
        assert error.reason


@given(st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), _TOML_VALUES, max_size=8))
def test_arbitrary_documents_raise_only_config_error(doc: dict[str, object]) -> None:
    _parses_or_config_error(doc)


@given(
    st.lists(
        st.tuples(st.sampled_from(_leaf_paths(valid())), st.just(DELETE) | _TOML_VALUES),
        min_size=1,
        max_size=3,
    )
)
def test_damaged_valid_documents_raise_only_config_error(edits: list[tuple[str, object]]) -> None:
    try:
        doc = edited(dict(edits))
    except (KeyError, TypeError):
        return  # an earlier edit removed or replaced a table a later one reaches into
    original = copy.deepcopy(doc)
    _parses_or_config_error(doc)
    assert doc == original  # parsing never mutates its input
