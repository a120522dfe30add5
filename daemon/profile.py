"""Device profiles: what one class of e-reader lets the daemon spend (RAM, flash, radio, battery).

One TOML file per device class lives in device_profiles/ (in an installed wheel,
daemon/device_profiles/: `shipped_profiles_dir`). The daemon and the link emulator read
the same file, so each number means the same thing to both; docs/PROFILES.md documents every field.

Parsing is strict and pure: a profile with an unknown, missing, mistyped or out-of-range field is
refused with a ConfigError naming the dotted field (`link.down_kbps`) and the reason, rather than
guessed at on a device nobody can debug. Only reading the files (`load_profile`, `list_profiles`,
`shipped_profiles_dir`) touches the file system.

Units: MB means MiB and kb (in `zstd_window_cap_kb`) means KiB, as memory and flash are counted;
kbps means 1000 bits per second, as links are rated.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import ConfigError


def shipped_profiles_dir() -> Path:
    """The shipped profiles: daemon/device_profiles/ in an installed wheel (pyproject.toml maps
    the repository's top-level folder there), else device_profiles/ beside daemon/ (a checkout,
    an editable install)."""
    package = Path(__file__).resolve().parent
    installed = package / "device_profiles"
    return installed if installed.is_dir() else package.parent / "device_profiles"


PROFILES_DIR = shipped_profiles_dir()

KIB = 1024
MIB = 1024 * 1024
MAX_CONCURRENCY = 16
MAX_WINDOW_CAP_KB = 128 * 1024  # 128 MiB: zstd's own default decoder limit (window log 27)
MAX_RAM_BUDGET_MB = 64 * 1024
MAX_STORAGE_MB = 16 * 1024 * 1024  # 16 TiB
MAX_KBPS = 10_000_000  # 10 Gbit/s
MAX_DELAY_MS = 60_000
# Timeouts and intervals above a day are a unit slip (milliseconds written as seconds).
MAX_INTERVAL_S = 86_400.0
FILE_FIELD = "<file>"  # the `field` of errors about the file itself (missing, unreadable, bad TOML)
ROOT_FIELD = "<root>"  # the `field` of an error about the document as a whole

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_TOML_KINDS: dict[type[object], str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    dict: "a table",
    list: "an array",
}


@dataclass(frozen=True, slots=True)
class MemoryPolicy:
    """RAM the daemon may use, and the largest zstd window it agrees to decode."""

    ram_budget_mb: int  # MiB: the daemon's whole resident set, all tasks included
    zstd_window_cap_kb: int  # KiB: frames declaring a larger window are refused undecoded

    @property
    def ram_budget_bytes(self) -> int:
        return self.ram_budget_mb * MIB

    @property
    def zstd_window_cap_bytes(self) -> int:
        """The `window_cap` argument of `daemon.protocol.codec.decode_frame`."""
        return self.zstd_window_cap_kb * KIB

    @property
    def caches(self) -> CacheSizes:
        """The caches the budget pays for (docs/PROFILES.md): on a 64 MiB device they are
        the ones measured to fit beside the interpreter and its libraries (about 54 MiB)."""
        budget = self.ram_budget_bytes
        return CacheSizes(
            frame_cache_bytes=min(max(budget // 16, FRAME_CACHE_MIN_BYTES), 32 * MIB),
            writer_page_cache_kib=budget // 128 // KIB,
            reader_page_cache_kib=budget // 256 // KIB,
            notes_page_cache_kib=budget // 256 // KIB,
        )


# One 2 MiB frame part-decoded, kept whole while a reader pages through it (content/reader.py).
FRAME_CACHE_MIN_BYTES = 4608 * KIB


@dataclass(frozen=True, slots=True)
class CacheSizes:
    frame_cache_bytes: int  # decoded frames kept for the next page (content/reader.py)
    writer_page_cache_kib: int  # SQLite page cache of the store's writer connection
    reader_page_cache_kib: int  # of each of the local API's read-only connections
    notes_page_cache_kib: int  # of the notes' connection


@dataclass(frozen=True, slots=True)
class StoragePolicy:
    """Flash the daemon may fill with books, and what it always leaves free."""

    quota_mb: int  # MiB: books (frames, manifests, covers) never take more than this
    reserve_mb: int  # MiB: filesystem free space never pushed below this, for notes and the OS

    @property
    def quota_bytes(self) -> int:
        return self.quota_mb * MIB

    @property
    def reserve_bytes(self) -> int:
        return self.reserve_mb * MIB


@dataclass(frozen=True, slots=True)
class Outage:
    """A periodic outage: the link is down for the last `down_s` seconds of every `every_s`."""

    down_s: float  # seconds without any link, 0 < down_s < every_s
    every_s: float  # seconds in one period; the first period starts at t = 0, link up


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """The network the device class typically has: rates, delay, loss and when it is gone."""

    down_kbps: int  # service -> device, 1000 bit/s
    up_kbps: int  # device -> service, 1000 bit/s
    rtt_ms: int  # base round-trip time
    jitter_ms: int  # a round trip takes rtt_ms plus a random 0..jitter_ms
    loss_pct: float  # percent of segments lost, 0 <= loss_pct < 100
    outage: Outage | None  # periodic outages, or None
    outage_timeline: tuple[tuple[float, float], ...]  # (start_s, end_s) outages, sorted, disjoint

    @property
    def down_bytes_per_s(self) -> int:
        return self.down_kbps * 125

    @property
    def up_bytes_per_s(self) -> int:
        return self.up_kbps * 125

    @property
    def rtt_s(self) -> float:
        return self.rtt_ms / 1000

    @property
    def worst_rtt_s(self) -> float:
        """The longest round trip the link produces (without loss)."""
        return (self.rtt_ms + self.jitter_ms) / 1000

    def is_down(self, t_s: float) -> bool:
        """Whether the link is in an outage at `t_s` seconds after the emulation started."""
        return self.next_up(t_s) > t_s

    def next_up(self, t_s: float) -> float:
        """The first moment at or after `t_s` at which the link is up."""
        if self.outage is not None:
            period = math.floor(t_s / self.outage.every_s)
            outage_start = period * self.outage.every_s + self.outage.every_s - self.outage.down_s
            return (period + 1) * self.outage.every_s if t_s >= outage_start else t_s
        up = t_s
        for start, end in self.outage_timeline:  # sorted, so touching outages chain
            if start <= up < end:
                up = end
        return up


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    """How many book downloads run at once and when one counts as failed."""

    concurrency: int  # downloads at a time, 1..16
    stall_timeout_s: float  # a download that receives no byte for this long is stalled
    min_rate_kbps: int  # ...or fewer than this many kbit/s over stall_timeout_s; 0 disables
    connect_timeout_s: float  # DNS + TCP + TLS, including the radio waking up

    @property
    def min_rate_bytes_per_s(self) -> int:
        return self.min_rate_kbps * 125


@dataclass(frozen=True, slots=True)
class BatteryPolicy:
    """When low battery restricts the daemon to purchases and note pushes."""

    min_percent: int  # below this charge (and not charging), only urgent work runs
    charging_overrides: bool  # charging lifts the restriction

    def restricted(self, percent: float, charging: bool) -> bool:
        """Whether only purchases and note pushes may run at this charge."""
        if charging and self.charging_overrides:
            return False
        return percent < self.min_percent


@dataclass(frozen=True, slots=True)
class SyncPolicy:
    """How the daemon hears about library changes."""

    poll_interval_s: float  # pull the changes feed this often while the push channel is down
    keepalive_s: float  # ping the push channel at least this often (under NAT idle timeouts)
    batch_window_s: float  # deferrable network work waits at most this long for a wake window


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """Everything the daemon and the link emulator need to know about one device class."""

    name: str  # human-readable device class
    memory: MemoryPolicy
    storage: StoragePolicy
    link: LinkProfile
    downloads: DownloadPolicy
    battery: BatteryPolicy
    sync: SyncPolicy


def list_profiles() -> list[str]:
    """The names of the shipped profiles, as `load_profile` accepts them, sorted."""
    return sorted(path.stem for path in PROFILES_DIR.glob("*.toml"))


def load_profile(name_or_path: str) -> DeviceProfile:
    """Read a profile by bare name (device_profiles/<name>.toml) or by path.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8 TOML, or not a valid profile.
    """
    is_path = "/" in name_or_path or "\\" in name_or_path or name_or_path.endswith(".toml")
    if not is_path and not _NAME.fullmatch(name_or_path):
        raise ConfigError(
            name_or_path, FILE_FIELD, "not a profile name (letters, digits, '-', '_') nor a path"
        )
    path = Path(name_or_path) if is_path else PROFILES_DIR / f"{name_or_path}.toml"
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        known = ", ".join(list_profiles()) or "none"
        hint = "" if is_path else f"; shipped profiles: {known}"
        raise ConfigError(source, FILE_FIELD, f"no such file{hint}") from e
    except OSError as e:
        raise ConfigError(source, FILE_FIELD, f"cannot read: {e.strerror or e}") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(source, FILE_FIELD, f"not UTF-8 (byte {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, FILE_FIELD, f"invalid TOML: {e}") from e
    return parse_profile(data, source)


def parse_profile(data: Mapping[str, object], source: str) -> DeviceProfile:
    """Validate a parsed TOML document; `source` names it in errors.

    Raises:
        ConfigError: for the first unknown, missing, mistyped or out-of-range field.
    """
    root = _Table(source, "", data)
    name = root.string("name")
    memory = _memory(root.table("memory"))
    storage = _storage(root.table("storage"))
    link = _link(root.table("link"))
    downloads = _downloads(root.table("downloads"), link)
    battery = _battery(root.table("battery"))
    sync = _sync(root.table("sync"))
    root.finish()
    return DeviceProfile(name, memory, storage, link, downloads, battery, sync)


def _memory(t: _Table) -> MemoryPolicy:
    policy = MemoryPolicy(
        ram_budget_mb=t.integer("ram_budget_mb", 1, MAX_RAM_BUDGET_MB),
        zstd_window_cap_kb=t.integer("zstd_window_cap_kb", 1, MAX_WINDOW_CAP_KB),
    )
    if policy.zstd_window_cap_bytes > policy.ram_budget_bytes:
        raise t.error("zstd_window_cap_kb", "a window larger than ram_budget_mb can never decode")
    t.finish()
    return policy


def _storage(t: _Table) -> StoragePolicy:
    policy = StoragePolicy(
        quota_mb=t.integer("quota_mb", 1, MAX_STORAGE_MB),
        reserve_mb=t.integer("reserve_mb", 0, MAX_STORAGE_MB),
    )
    t.finish()
    return policy


def _link(t: _Table) -> LinkProfile:
    down_kbps = t.integer("down_kbps", 1, MAX_KBPS)
    up_kbps = t.integer("up_kbps", 1, MAX_KBPS)
    rtt_ms = t.integer("rtt_ms", 0, MAX_DELAY_MS)
    jitter_ms = t.integer("jitter_ms", 0, MAX_DELAY_MS)
    loss_pct = t.number("loss_pct", 0.0, 100.0, low_open=False, high_open=True)
    outage_raw = t.optional("outage")
    timeline_raw = t.optional("outage_timeline")
    if outage_raw is not None and timeline_raw is not None:
        raise t.error("outage_timeline", "give either outage or outage_timeline, not both")
    outage = None if outage_raw is None else _outage(t.sub("outage", outage_raw))
    timeline = () if timeline_raw is None else _timeline(t, "outage_timeline", timeline_raw)
    t.finish()
    return LinkProfile(down_kbps, up_kbps, rtt_ms, jitter_ms, loss_pct, outage, timeline)


def _outage(t: _Table) -> Outage:
    down_s = t.number("down_s", 0.0, math.inf)
    every_s = t.number("every_s", 0.0, math.inf)
    if down_s >= every_s:
        raise t.error("down_s", f"an outage of {down_s:g} s must be shorter than every_s")
    t.finish()
    return Outage(down_s, every_s)


def _timeline(t: _Table, key: str, raw: object) -> tuple[tuple[float, float], ...]:
    if not isinstance(raw, list):
        raise t.error(key, f"must be an array of [start_s, end_s] pairs, got {_kind(raw)}")
    intervals: list[tuple[float, float]] = []
    for i, item in enumerate(raw):
        field = f"{t.field(key)}[{i}]"
        if not isinstance(item, list) or len(item) != 2:
            raise ConfigError(t.source, field, "must be a [start_s, end_s] pair")
        start, end = (_finite(t.source, field, v) for v in item)
        if start < 0:
            raise ConfigError(t.source, field, f"starts at {start:g} s, before 0")
        if end <= start:
            raise ConfigError(t.source, field, f"ends at {end:g} s, not after its start {start:g}")
        if intervals and start < intervals[-1][1]:
            raise ConfigError(
                t.source, field, f"starts at {start:g} s, before the previous outage ends"
            )
        intervals.append((start, end))
    return tuple(intervals)


def _downloads(t: _Table, link: LinkProfile) -> DownloadPolicy:
    policy = DownloadPolicy(
        concurrency=t.integer("concurrency", 1, MAX_CONCURRENCY),
        stall_timeout_s=t.number("stall_timeout_s", 0.0, MAX_INTERVAL_S),
        min_rate_kbps=t.integer("min_rate_kbps", 0, MAX_KBPS),
        connect_timeout_s=t.number("connect_timeout_s", 0.0, MAX_INTERVAL_S),
    )
    # Timeouts shorter than one round trip would fail every request on this link.
    for key in ("stall_timeout_s", "connect_timeout_s"):
        if getattr(policy, key) <= link.worst_rtt_s:
            raise t.error(key, f"must exceed the link's worst round trip, {link.worst_rtt_s:g} s")
    if policy.min_rate_kbps >= link.down_kbps:
        raise t.error("min_rate_kbps", "must be below link.down_kbps, or every download stalls")
    t.finish()
    return policy


def _battery(t: _Table) -> BatteryPolicy:
    policy = BatteryPolicy(
        min_percent=t.integer("min_percent", 0, 100),
        charging_overrides=t.boolean("charging_overrides"),
    )
    t.finish()
    return policy


def _sync(t: _Table) -> SyncPolicy:
    policy = SyncPolicy(
        poll_interval_s=t.number("poll_interval_s", 0.0, MAX_INTERVAL_S),
        keepalive_s=t.number("keepalive_s", 0.0, MAX_INTERVAL_S),
        batch_window_s=t.number("batch_window_s", 0.0, MAX_INTERVAL_S, low_open=False),
    )
    t.finish()
    return policy


class _Table:
    """One TOML table being read; keys never read by the schema are refused by `finish`."""

    def __init__(self, source: str, path: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ConfigError(source, path or ROOT_FIELD, f"must be a table, got {_kind(data)}")
        self.source = source
        self.path = path
        self._data: dict[object, object] = data
        self._unread = set(data)

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.source, self.field(key), reason)

    def optional(self, key: str) -> object | None:
        self._unread.discard(key)
        return self._data.get(key)

    def required(self, key: str) -> object:
        if key not in self._data:
            unknown = [k for k in self._unread if isinstance(k, str)]
            import difflib  # only a broken profile needs it: not loaded on every start

            close = difflib.get_close_matches(key, unknown, n=1)
            hint = f" (is {close[0]!r} a misspelling of it?)" if close else ""
            raise self.error(key, f"missing{hint}")
        return self.optional(key)

    def sub(self, key: str, data: object) -> _Table:
        return _Table(self.source, self.field(key), data)

    def table(self, key: str) -> _Table:
        return self.sub(key, self.required(key))

    def string(self, key: str) -> str:
        value = self.required(key)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {_kind(value)}")
        if not value.strip():
            raise self.error(key, "must not be blank")
        return value

    def boolean(self, key: str) -> bool:
        value = self.required(key)
        if not isinstance(value, bool):
            raise self.error(key, f"must be a boolean (true or false), got {_kind(value)}")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.required(key)
        # bool is an int subclass, and a float here is a unit or rounding mistake: both refused.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {_kind(value)}")
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}, got {_show_int(value)}")
        return value

    def number(
        self,
        key: str,
        low: float,
        high: float,
        *,
        low_open: bool = True,
        high_open: bool = False,
    ) -> float:
        """A finite number (an integer is accepted) between low and high; `*_open` excludes."""
        value = _finite(self.source, self.field(key), self.required(key))
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            raise self.error(key, f"must be in {left}{low:g}, {high:g}{right}, got {value:g}")
        return value

    def finish(self) -> None:
        if self._unread:
            key = sorted(self._unread, key=str)[0]
            kind = "section" if isinstance(self._data[key], dict) else "field"
            raise self.error(str(key), f"unknown {kind}")


def _finite(source: str, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(source, field, f"must be a number, got {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(source, field, f"must be a finite number, got {_show_number(value)}")
    return number


def _kind(value: object) -> str:
    return _TOML_KINDS.get(type(value), f"a {type(value).__name__}")


def _show_int(value: int) -> str:
    # str() of an int past 4300 digits raises; such a number is a mistake whatever it is.
    return str(value) if value.bit_length() <= 128 else "a huge integer"


def _show_number(value: int | float) -> str:
    return _show_int(value) if isinstance(value, int) else f"{value:g}"
