"""A memory cgroup for a benchmark's child: a hard cap on what the daemon may hold, as a device's
kernel would enforce it (the OOM killer, not a figure compared after the fact).

cgroup v2 (`memory.max`, swap off with `memory.swap.max`) where the memory controller is enabled
for this process's cgroup, else v1 (`memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes`
where swap accounting exists). Creating one needs root, or a delegated cgroup; where neither
works `MemoryCgroup.create` says why, and the benchmark reports that instead of a figure.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


class CgroupUnavailable(Exception):
    """No memory cgroup can be made here; the message says why."""


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, file system type, options) of every cgroup mount."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, options, *_ = line.split()
        if fstype in ("cgroup", "cgroup2"):
            found.append((point, fstype, set(options.split(","))))
    return found


def _own_cgroups() -> dict[str, str]:
    """Controller (or '' for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


@dataclass(frozen=True, slots=True)
class MemoryCgroup:
    path: Path
    version: int  # 1 or 2
    limit_bytes: int

    @classmethod
    def create(cls, name: str, limit_bytes: int) -> MemoryCgroup:
        """A new cgroup below this process's own, capped at `limit_bytes` with no swap."""
        try:
            mounts, own = _mounts(), _own_cgroups()
        except OSError as e:
            raise CgroupUnavailable(f"cannot read this process's cgroups: {e}") from e
        reasons = []
        for point, fstype, options in mounts:
            if fstype == "cgroup2":
                parent = Path(point) / own.get("", "/").lstrip("/")
                try:
                    enabled = (parent / "cgroup.subtree_control").read_text().split()
                except OSError:
                    enabled = []
                if "memory" not in enabled:
                    reasons.append(f"cgroup v2 at {point}: memory controller not enabled below")
                    continue
                return cls._make(parent / name, 2, limit_bytes)
            if "memory" in options:
                parent = Path(point) / own.get("memory", "/").lstrip("/")
                return cls._make(parent / name, 1, limit_bytes)
        raise CgroupUnavailable("; ".join(reasons) or "no memory cgroup is mounted")

    @classmethod
    def _make(cls, path: Path, version: int, limit_bytes: int) -> MemoryCgroup:
        try:
            path.mkdir(exist_ok=True)
            if version == 2:
                (path / "memory.max").write_text(str(limit_bytes))
                with contextlib.suppress(OSError):  # absent without swap accounting
                    (path / "memory.swap.max").write_text("0")
            else:
                (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                with contextlib.suppress(OSError):
                    (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        except OSError as e:
            raise CgroupUnavailable(f"cannot create {path}: {e}") from e
        return cls(path, version, limit_bytes)

    def wrap(self, args: list[str]) -> list[str]:
        """`args` run inside this cgroup: a shell joins it, then execs them (same pid)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *args]

    def oom_kills(self) -> int:
        """Processes the kernel killed in this cgroup for want of memory."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def peak_bytes(self) -> int | None:
        """The most the cgroup was charged (process memory and page cache), if the kernel
        keeps it."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
