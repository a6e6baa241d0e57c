"""The systemd units and the sysusers snippet under ``systemd/``.

Three layers, each able to fail on its own:

- a static check of every setting the units promise (lifecycle, identity, limits, hardening),
  proven to bite by mutating the real files;
- ``systemd-analyze verify`` on copies whose ExecStart points at this venv's console scripts,
  and ``systemd-analyze security --offline=yes`` against an exposure ceiling;
- ``systemd-sysusers`` creating the ``wharf`` user in a scratch root.

The systemd tools are skipped when absent; with ``WHARF_CI=1`` those skips become failures.
Nothing here starts a unit: that needs systemd as PID 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
SYSUSERS = SYSTEMD_DIR / "wharf.sysusers.conf"
DAEMONS = ("broker", "balancer")
INSTALL_BIN = "/opt/wharf/bin/"
# The CLI contract: SIGTERM drains for grace_period_seconds, 30 s unless configured.
CONTRACT_GRACE_SECONDS = 30.0
# Ceiling on `systemd-analyze security` overall exposure (0 = locked down, 10 = exposed).
EXPOSURE_CEILING = {"broker": 2.0, "balancer": 2.0}
IN_CI = os.environ.get("WHARF_CI") == "1"

Unit = dict[str, dict[str, list[str]]]


def skip_unless_ci(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (WHARF_CI=1 makes this skip a failure)")
    pytest.skip(reason)


# --- reading unit files ---------------------------------------------------------------------


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every assignment in order (systemd keys may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    lines = iter(text.splitlines())
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines, "").strip()
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or section is None or not key.strip():
            raise ValueError(f"line {number}: not a key=value inside a section: {raw!r}")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def last(unit: Unit, section: str, key: str) -> str | None:
    values = unit.get(section, {}).get(key)
    return values[-1] if values else None


def words(unit: Unit, section: str, key: str) -> list[str]:
    """A list setting's effective items: an empty assignment resets the list."""
    items: list[str] = []
    for value in unit.get(section, {}).get(key, []):
        items = [] if not value else [*items, *value.split()]
    return items


_SPAN_UNITS = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}


def timespan(value: str) -> float:
    """systemd.time(7) time span ("45s", "1min 30s", bare seconds) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    if not parts or re.sub(r"[\d.\sa-z]", "", value):
        raise ValueError(f"not a time span: {value!r}")
    return sum(float(number) * _SPAN_UNITS[suffix or "s"] for number, suffix in parts)


# --- what every unit must say ---------------------------------------------------------------

COMMON_SERVICE = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "Restart": "on-failure",
    "User": "wharf",
    "Group": "wharf",
    "ConfigurationDirectory": "wharf",
    "UMask": "0077",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
}

PER_DAEMON: dict[str, dict[str, str | None]] = {
    "broker": {
        "LimitNOFILE": "65536",
        "StateDirectory": "wharf-broker",
        "StateDirectoryMode": "0700",
        "LogsDirectory": None,  # logs go to journald only
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    },
    "balancer": {
        "LimitNOFILE": "1048576",
        "StateDirectory": "wharf-balancer",  # targets.json: the targets API's changes
        "StateDirectoryMode": "0700",
        # /var/log/wharf-balancer: access log files (ProtectSystem=strict leaves no other)
        "LogsDirectory": "wharf-balancer",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    },
}


def problems(unit: Unit, daemon: str, grace_seconds: float = CONTRACT_GRACE_SECONDS) -> list[str]:
    """Every way ``unit`` falls short of what wharf-<daemon>.service must say; [] if none."""
    found: list[str] = []
    svc = "Service"
    if unit.get("Unit", {}).get("Description") is None:
        found.append("[Unit] Description= missing")
    if "multi-user.target" not in words(unit, "Install", "WantedBy"):
        found.append("[Install] WantedBy= must include multi-user.target")

    expected_start = f"{INSTALL_BIN}wharf-{daemon} serve --config /etc/wharf/{daemon}.toml"
    if unit.get(svc, {}).get("ExecStart") != [expected_start]:
        found.append(f"ExecStart= must be exactly {expected_start!r}")
    for key, want in COMMON_SERVICE.items():
        if last(unit, svc, key) != want:
            found.append(f"{key}= is {last(unit, svc, key)!r}, want {want!r}")
    for key, want_or_none in PER_DAEMON[daemon].items():
        if last(unit, svc, key) != want_or_none:
            found.append(f"{key}= is {last(unit, svc, key)!r}, want {want_or_none!r}")

    # Capabilities: the effective sets, whatever the spelling.
    caps = {"broker": [], "balancer": ["CAP_NET_BIND_SERVICE"]}[daemon]
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        if key not in unit.get(svc, {}):
            found.append(f"{key}= must be set explicitly (an absent bounding set means all)")
        elif sorted(words(unit, svc, key)) != caps:
            found.append(f"{key}= grants {words(unit, svc, key)}, want {caps}")

    families = words(unit, svc, "RestrictAddressFamilies")
    if sorted(families) != ["AF_INET", "AF_INET6", "AF_UNIX"]:
        found.append(f"RestrictAddressFamilies= is {families}, want AF_UNIX AF_INET AF_INET6")
    filters = words(unit, svc, "SystemCallFilter")
    if not filters or filters[0] != "@system-service":
        found.append("SystemCallFilter= must start with the @system-service allow list")
    if not {"~@privileged", "@resources"} <= set(filters):
        found.append("SystemCallFilter= must deny ~@privileged @resources")

    environment = words(unit, svc, "Environment")
    if "PYTHONUNBUFFERED=1" not in environment:
        found.append("Environment= must set PYTHONUNBUFFERED=1 (logs reach journald at once)")

    # Timers: the watchdog is on, stop waits for the drain, restarts are spaced.
    timers = ("WatchdogSec", "TimeoutStopSec", "RestartSec")
    found += [f"{key}= missing" for key in timers if last(unit, svc, key) is None]
    if (watchdog := last(unit, svc, "WatchdogSec")) is not None and timespan(watchdog) <= 0:
        found.append("WatchdogSec= must be positive: the daemon pings at half of it")
    if (stop := last(unit, svc, "TimeoutStopSec")) is not None and timespan(stop) <= grace_seconds:
        found.append(f"TimeoutStopSec={stop} must exceed the {grace_seconds:g} s grace period")
    if (restart := last(unit, svc, "RestartSec")) is not None and timespan(restart) <= 0:
        found.append("RestartSec= must be positive")

    # The state (and logs) directories are the only writable places; nothing else is opened.
    found += [
        f"{key}= opens {words(unit, svc, key)}; use StateDirectory= or LogsDirectory="
        for key in ("ReadWritePaths", "ReadWriteDirectories")
        if words(unit, svc, key)
    ]
    return found


def read_unit(daemon: str) -> Unit:
    return parse_unit((SYSTEMD_DIR / f"wharf-{daemon}.service").read_text())


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_says_everything_it_must(daemon: str) -> None:
    assert problems(read_unit(daemon), daemon) == []


def test_the_balancer_state_dir_default_is_the_units_state_directory() -> None:
    from balancer.config import BalancerConfig

    # Empty: the daemon takes $STATE_DIRECTORY, which systemd sets from StateDirectory=.
    assert last(read_unit("balancer"), "Service", "StateDirectory") == "wharf-balancer"
    assert BalancerConfig().state_dir == ""


def test_the_balancer_can_write_access_log_files_where_its_config_says() -> None:
    """ProtectSystem=strict left only the state directory writable: an access log under
    /var/log could not be opened and the start failed."""
    directory = last(read_unit("balancer"), "Service", "LogsDirectory")
    assert directory == "wharf-balancer"
    shipped = (REPO / "conf" / "balancer.toml").read_text()
    assert f"/var/log/{directory}/" in shipped
    assert f"/var/log/{directory}" in (SYSTEMD_DIR / "README.md").read_text()
    unit = parse_unit(_drop((SYSTEMD_DIR / "wharf-balancer.service").read_text(), "LogsDirectory"))
    assert any("LogsDirectory=" in problem for problem in problems(unit, "balancer"))


def _drop(text: str, key: str) -> str:
    return re.sub(rf"(?m)^{key}=.*\n", "", text)


def _set(text: str, key: str, value: str) -> str:
    changed, count = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
    assert count, f"{key}= not in the unit"
    return changed


# Each mutation of the real broker unit, and a fragment of the problem it must cause.
MUTATIONS: dict[str, tuple[Callable[[str], str], str | None]] = {
    "simple service": (lambda t: _set(t, "Type", "simple"), "Type="),
    "no watchdog": (lambda t: _drop(t, "WatchdogSec"), "WatchdogSec= missing"),
    "stop before drain ends": (lambda t: _set(t, "TimeoutStopSec", "30s"), "grace period"),
    "stop in minutes": (lambda t: _set(t, "TimeoutStopSec", "1min"), None),
    "restart always": (lambda t: _set(t, "Restart", "always"), "Restart="),
    "no reload": (lambda t: _drop(t, "ExecReload"), "ExecReload="),
    "root": (lambda t: _drop(t, "User"), "User="),
    "writable /usr": (lambda t: _set(t, "ProtectSystem", "full"), "ProtectSystem="),
    "new privileges": (lambda t: _drop(t, "NoNewPrivileges"), "NoNewPrivileges="),
    "all capabilities": (lambda t: _drop(t, "CapabilityBoundingSet"), "CapabilityBoundingSet="),
    "raw sockets": (
        lambda t: _set(t, "CapabilityBoundingSet", "CAP_NET_RAW"),
        "CapabilityBoundingSet=",
    ),
    "netlink": (
        lambda t: _set(t, "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
        "RestrictAddressFamilies=",
    ),
    "any syscall": (lambda t: _drop(t, "SystemCallFilter"), "SystemCallFilter="),
    "buffered logs": (lambda t: _drop(t, "Environment"), "PYTHONUNBUFFERED"),
    "wx memory": (lambda t: _set(t, "MemoryDenyWriteExecute", "no"), "MemoryDenyWriteExecute="),
    "extra writable path": (
        lambda t: t.replace("UMask=0077", "UMask=0077\nReadWritePaths=/srv"),
        "ReadWritePaths=",
    ),
    "wrong binary": (
        lambda t: t.replace("bin/wharf-broker serve", "bin/wharf-balancer serve"),
        "ExecStart=",
    ),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_static_check_catches(name: str) -> None:
    mutate, fragment = MUTATIONS[name]
    found = problems(
        parse_unit(mutate((SYSTEMD_DIR / "wharf-broker.service").read_text())), "broker"
    )
    if fragment is None:  # a harmless respelling: still accepted
        assert found == []
    else:
        assert any(fragment in problem for problem in found), found


def test_parser_handles_systemd_syntax() -> None:
    unit = parse_unit(
        "[Service]\n; comment\nEnvironment=A=1 \\\n  B=2\nCapabilityBoundingSet=CAP_KILL\n"
        "CapabilityBoundingSet=\nSystemCallFilter=@system-service\nSystemCallFilter=~@privileged\n"
    )
    assert words(unit, "Service", "Environment") == ["A=1", "B=2"]
    assert words(unit, "Service", "CapabilityBoundingSet") == []
    assert words(unit, "Service", "SystemCallFilter") == ["@system-service", "~@privileged"]
    assert timespan("1min 30s") == 90.0
    assert timespan("45") == 45.0
    assert timespan("500ms") == 0.5
    with pytest.raises(ValueError, match="time span"):
        timespan("soon")
    with pytest.raises(ValueError, match="line 1"):
        parse_unit("Type=notify\n")


# --- against the real daemons and the real systemd tools ------------------------------------


def console_script(daemon: str) -> Path:
    """This venv's wharf-<daemon>, or skip (fail under WHARF_CI) if it is not installed."""
    name = f"wharf-{daemon}"
    candidates = [Path(sys.prefix) / "bin" / name]
    if found := shutil.which(name):
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    skip_unless_ci(f"console script {name} is not installed (pip install -e .)")


def systemd_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin")
    if path is None:
        skip_unless_ci(f"{name} is not installed (Debian package: systemd)")
    return path


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def installed_copy(daemon: str, tmp_path: Path) -> Path:
    """The unit with /opt/wharf/bin replaced by where this venv's console script lives."""
    binary = console_script(daemon)
    text = (SYSTEMD_DIR / f"wharf-{daemon}.service").read_text()
    assert INSTALL_BIN in text
    copy = tmp_path / f"wharf-{daemon}.service"
    copy.write_text(text.replace(INSTALL_BIN, f"{binary.parent}/"))
    return copy


def verify_complaints(unit_path: Path) -> tuple[int, list[str]]:
    """Exit code of `systemd-analyze verify` and its stderr lines about this unit file."""
    result = run(systemd_tool("systemd-analyze"), "verify", "--man=no", unit_path)
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if unit_path.name in line or str(unit_path.parent) in line
    ]
    return result.returncode, ours


@pytest.mark.parametrize("daemon", DAEMONS)
def test_systemd_analyze_verify(daemon: str, tmp_path: Path) -> None:
    unit_path = installed_copy(daemon, tmp_path)
    returncode, complaints = verify_complaints(unit_path)
    assert complaints == []
    assert returncode == 0


def test_verify_reports_bad_lines(tmp_path: Path) -> None:
    """verify exits 0 on unknown keys and bad values; only its stderr tells, so we read it."""
    unit_path = installed_copy("broker", tmp_path)
    unit_path.write_text(
        unit_path.read_text().replace("ProtectSystem=strict", "ProtectSystem=strictly\nFrob=1")
    )
    _, complaints = verify_complaints(unit_path)
    assert any("protect system" in line.lower() for line in complaints), complaints
    assert any("Frob" in line for line in complaints), complaints


@pytest.mark.parametrize("daemon", DAEMONS)
def test_exec_start_matches_the_cli(daemon: str) -> None:
    """The unit's `serve --config FILE` is what the console script accepts."""
    result = run(console_script(daemon), "serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def _grace_values(node: Any) -> list[float]:
    """Every grace_period_seconds value (or JSON-schema default) anywhere in ``node``."""
    found: list[float] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "grace_period_seconds":
                if isinstance(value, int | float):
                    found.append(float(value))
                elif isinstance(value, dict) and isinstance(value.get("default"), int | float):
                    found.append(float(value["default"]))
            found += _grace_values(value)
    elif isinstance(node, list):
        for item in node:
            found += _grace_values(item)
    return found


@pytest.mark.parametrize("daemon", DAEMONS)
def test_stop_timeout_outlasts_the_configured_drain(daemon: str) -> None:
    """TimeoutStopSec exceeds the schema's default grace period and the shipped config's."""
    result = run(console_script(daemon), "config-schema")
    assert result.returncode == 0, result.stderr
    defaults = _grace_values(json.loads(result.stdout))
    assert defaults, "config-schema has no grace_period_seconds default"
    shipped = REPO / "conf" / f"{daemon}.toml"
    configured = _grace_values(tomllib.loads(shipped.read_text())) if shipped.exists() else []
    grace = max(defaults + configured)
    assert problems(read_unit(daemon), daemon, grace_seconds=grace) == []


_EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?) (\S+)")


@pytest.mark.parametrize("daemon", DAEMONS)
def test_security_exposure(daemon: str) -> None:
    """`systemd-analyze security --offline=yes` rates the unit below the ceiling."""
    tool = systemd_tool("systemd-analyze")
    if "--offline" not in run(tool, "--help").stdout:
        skip_unless_ci("this systemd-analyze has no `security --offline` (systemd < 250)")
    unit_path = SYSTEMD_DIR / f"wharf-{daemon}.service"
    result = run(tool, "security", "--offline=yes", "--no-pager", unit_path)
    assert result.returncode == 0, result.stderr
    match = _EXPOSURE.search(result.stdout)
    assert match, result.stdout
    assert match[1] == unit_path.name
    assert float(match[2]) < EXPOSURE_CEILING[daemon], match[0]


# --- the system user ------------------------------------------------------------------------


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    tool = systemd_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    result = run(tool, f"--root={tmp_path}", SYSUSERS.resolve())
    assert result.returncode == 0, result.stderr
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
    }
    groups = {line.split(":")[0] for line in (tmp_path / "etc" / "group").read_text().splitlines()}
    assert set(passwd) == {"wharf"}
    name, _, uid, gid, _gecos, home, shell = passwd["wharf"]
    assert int(uid) < 1000, "a system user"
    assert int(gid) < 1000
    assert shell == "/usr/sbin/nologin"
    assert home == "/var/lib/wharf-broker"
    assert "wharf" in groups
    for daemon in DAEMONS:
        unit = read_unit(daemon)
        assert last(unit, "Service", "User") == name
        assert last(unit, "Service", "Group") in groups
