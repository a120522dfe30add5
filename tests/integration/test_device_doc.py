"""docs/DEVICE.md and the systemd unit, exercised: every command of the page is run here (in a
scratch root), played (systemctl and journalctl: the test does what systemd would do, from the
unit file itself), or named below with the reason it cannot run on a build machine."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.api.client import LocalApiClient
from daemon.client import AccountClient
from server_stub.app import running_stub
from server_stub.catalog import PackagingSettings
from server_stub.cli import SAMPLE_LIBRARY
from tests.integration.service_helpers import ServiceManager

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "DEVICE.md"
UNIT = ROOT / "daemon" / "systemd" / "shelfsync.service"
BIN = Path(sys.executable).parent  # this installation's console scripts

# Commands of DEVICE.md no test runs, and why; a new command must be run, played or listed here.
NOT_RUN_HERE = {
    "python3 -m pip wheel": "builds the wheel; the wheel test of issue 13 (item 6) builds one",
    "python3 -m pip download": "fetches arm64 wheels from PyPI, and no test downloads anything",
    "python3 -m venv /opt/shelfsync": "an empty venv; what goes into it needs the wheels above",
    "/opt/shelfsync/bin/pip install": "needs the dependencies' wheels from PyPI (see above)",
    "useradd": "would add a system user to the build machine; the unit's User= is checked",
}


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def doc_commands() -> list[str]:
    return [line for block in _blocks("sh") for line in block.splitlines() if line.strip()]


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: section -> key -> every value given (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_is_a_supervised_hardened_notify_service() -> None:
    unit = parse_unit(UNIT.read_text())
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"  # only the daemon itself may say READY
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a configuration error is not retried
    assert service["StateDirectory"] == "shelfsync"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].endswith("run --config /etc/shelfsync/config.toml")
    assert service["LoadCredential"] == "account-token:/etc/shelfsync/account-token"
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "UMask": "0077",
    }
    assert {k: service.get(k) for k in hardening} == hardening
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    useradd = next(c for c in doc_commands() if c.startswith("useradd"))
    assert service["User"] == useradd.split()[-1]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this installation's script.
    unit = tmp_path / "shelfsync.service"
    unit.write_text(UNIT.read_text().replace("/opt/shelfsync/bin/", f"{BIN}/"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == "", done.stderr


def test_shelfsync_unit_prints_the_shipped_unit() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "unit"], capture_output=True, text=True, check=True
    )
    assert done.stdout == UNIT.read_text()


class Systemd:
    """Plays systemd for DEVICE.md's systemctl and journalctl commands, from the unit file as
    installed in the scratch root: its ExecStart, StateDirectory=, LoadCredential=, WatchdogSec=,
    ExecReload and the journal stream."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp
        self.unit: dict[str, str] = {}
        self.manager = ServiceManager(tmp / "notify")
        self.journal = tmp / "journal"
        self.process: asyncio.subprocess.Process | None = None

    def local(self, text: str) -> str:
        """A path of the device, in the scratch root."""
        text = text.replace("/opt/shelfsync/bin/", f"{BIN}/")
        return text.replace("/etc/", f"{self.root}/etc/").replace(
            "/var/lib/", f"{self.root}/var/lib/"
        )

    async def systemctl(self, verb: str, *args: str) -> None:
        if verb == "daemon-reload":
            installed = self.root / "etc" / "systemd" / "system" / "shelfsync.service"
            self.unit = {k: v[-1] for k, v in parse_unit(installed.read_text())["Service"].items()}
        elif verb in ("start", "enable"):
            assert verb == "start" or args[0] == "--now"
            await self._start()
        elif verb == "status":
            assert self.process is not None
            assert self.process.returncode is None
            lines = [line for m in self.manager.messages for line in m.split("\n")]
            status = [line for line in lines if line.startswith("STATUS=")][-1]
            assert re.fullmatch(r"STATUS=(online|offline); .* on the device, last sync .*", status)
        elif verb == "reload":
            assert self.process is not None
            reload = self.unit["ExecReload"].replace("$MAINPID", str(self.process.pid))
            assert (await _run(shlex.split(reload)))[0] == 0
            await self.manager.expect("RELOADING=1")
            await self.manager.expect("READY=1")
        elif verb == "stop":
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            timeout = float(self.unit["TimeoutStopSec"])
            assert await asyncio.wait_for(self.process.wait(), timeout) == 0
            await self.manager.expect("STOPPING=1")
        else:
            raise AssertionError(f"systemctl {verb}: not played")

    async def _start(self) -> None:
        state = Path(self.local("/var/lib/" + self.unit["StateDirectory"]))
        state.mkdir(mode=int(self.unit["StateDirectoryMode"], 8), parents=True, exist_ok=True)
        credentials = self.tmp / "credentials"
        credentials.mkdir(exist_ok=True)
        name, _, source = self.unit["LoadCredential"].partition(":")
        shutil.copyfile(self.local(source), credentials / name)
        (credentials / name).chmod(0o400)
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("SHELFSYNC_", "XDG_"))}
        with self.journal.open("ab") as journal:
            st = os.fstat(journal.fileno())
            environ |= {
                "STATE_DIRECTORY": str(state),
                "CREDENTIALS_DIRECTORY": str(credentials),
                "NOTIFY_SOCKET": str(self.manager.path),
                "WATCHDOG_USEC": str(int(self.unit["WatchdogSec"]) * 1_000_000),
                "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            }
            self.process = await asyncio.create_subprocess_exec(
                *shlex.split(self.local(self.unit["ExecStart"])),
                env=environ,
                cwd=self.root,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=journal,
                stderr=journal,
            )
        await self.manager.expect("READY=1")  # what `systemctl start` waits for
        async with LocalApiClient(state / "api.sock") as api:
            assert (await api.status())["daemon"]["running"]

    def journalctl(self, *args: str) -> list[str]:
        assert args[:2] == ("-u", "shelfsync")
        lines = self.journal.read_text().splitlines()
        for line in lines:  # every line has its priority, and no time (journald adds it)
            assert re.match(r"<[2-7]>\S+ event=\w+( |$)", line), line
        worst = {"warning": 4, "err": 3}[args[args.index("-p") + 1]]
        return [line for line in lines if int(line[1]) <= worst]

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.manager.close()


async def test_every_command_of_device_md_is_run_or_played_in_a_scratch_root(
    tmp_path: Path,
) -> None:
    root, work = tmp_path / "device", tmp_path / "work"
    work.mkdir()
    for folder in ("etc/systemd/system", "var/lib"):  # a device's skeleton
        (root / folder).mkdir(parents=True)
    systemd = Systemd(root, tmp_path)
    ran: list[str] = []
    async with running_stub(
        tmp_path / "stub", library_dir=SAMPLE_LIBRARY, packaging=PackagingSettings(level=3)
    ) as stub:
        # What the developer copied to the device: the key, the token, the page's config.
        shutil.copy(stub.pub_path, work / "service.pub")
        (work / "account-token").write_text(await AccountClient(stub.url).create_account("r"))
        (config,) = _blocks("toml")
        url = re.search(r'service_url = "(.*)"', config)
        assert url is not None
        (work / "config.toml").write_text(systemd.local(config.replace(url[1], stub.url)))
        try:
            for command in doc_commands():
                words = shlex.split(command)
                if any(command.startswith(prefix) for prefix in NOT_RUN_HERE):
                    continue
                if words[0] == "systemctl":
                    await systemd.systemctl(*words[1:])
                elif words[0] == "journalctl":
                    systemd.journalctl(*words[1:])
                else:
                    code, out = await _run(["bash", "-c", systemd.local(command)], work)
                    assert code == 0, f"{command}\n{out}"
                    if " config --config " in command:
                        assert "account_token = given" in out
                        assert f"state_dir = {root}/var/lib/shelfsync" in out
                ran.append(command)
            # The upgrade's copy is the state as the clean stop left it.
            assert (root / "var/lib/shelfsync.before-upgrade/shelfsync.db").is_file()
            assert (root / "etc/shelfsync/account-token").stat().st_mode & 0o777 == 0o600
        finally:
            await systemd.close()
    assert "systemctl reload shelfsync" in ran
    # No stale excuse: each command not run here is still on the page.
    assert all(any(c.startswith(p) for c in doc_commands()) for p in NOT_RUN_HERE)


async def _run(argv: list[str], cwd: Path | None = None) -> tuple[int, str]:
    """A command's exit code and its output (stdout and stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SHELFSYNC_"))}
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode()
