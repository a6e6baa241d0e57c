from __future__ import annotations

import io
import re
import socket
import struct
from pathlib import Path

import msgspec
import pytest
import trio

from broker import declarations
from broker.app import BrokerApp
from broker.cli import SPEC, check_files
from broker.config import (
    ApiSettings,
    AuthSettings,
    AwsIdentity,
    BrokerConfig,
    DeclaredQueue,
    StorageSettings,
)
from monitoring.configfile import ConfigError, load
from monitoring.lifecycle import Frame, StartupError
from monitoring.logging import EventLog
from monitoring.metrics import Metrics
from monitoring.settings import AdminSettings, LoggingSettings
from tests.support.daemons import address, running
from tests.support.http import request


async def test_serves_its_admin_listener_and_takes_a_new_config():
    config = BrokerConfig(admin=AdminSettings(port=0))
    async with running(SPEC, config) as daemon:
        assert (await request(address(daemon, "admin"), target="/readyz"))[0] == 200
        new = BrokerConfig(admin=config.admin, logging=LoggingSettings(level="error"))
        await daemon.app.reload(new)
        assert daemon.app.config is new


def _signed_only(tmp_path: Path, host: str) -> BrokerConfig:
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(
        '[[keys]]\naccess_key_id = "AKIDEXAMPLE12345678"\n'
        'secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"\n'
    )
    return BrokerConfig(
        api=ApiSettings(host=host, port=0),
        admin=AdminSettings(port=0),
        auth=AuthSettings(anonymous=False, credentials_file=str(credentials)),
        storage=StorageSettings(data_dir=str(tmp_path / "data")),
    )


async def test_a_reload_cannot_make_a_broker_on_a_network_address_anonymous(tmp_path):
    """The guard judged the new file's api.host, which applies only at a restart: a broker
    bound to 10.x could be reloaded to anonymous by naming 127.0.0.1 in the file."""
    config = _signed_only(tmp_path, "10.11.12.13")  # built, never bound
    app = BrokerApp(
        config, Frame(EventLog("broker", stream=io.StringIO()), Metrics("broker", version="t"))
    )
    loopback_anonymous = msgspec.structs.replace(
        config, api=ApiSettings(host="127.0.0.1", port=0), auth=AuthSettings()
    )
    with pytest.raises(ConfigError, match=re.escape("non-loopback address '10.11.12.13'")):
        await app.reload(loopback_anonymous)
    assert app.config is config


async def test_account_and_region_change_only_at_a_restart(tmp_path):
    config = BrokerConfig(admin=AdminSettings(port=0), api=ApiSettings(port=0))
    async with running(SPEC, config) as daemon:
        moved = msgspec.structs.replace(config, aws=AwsIdentity(account_id="111111111111"))
        await daemon.app.reload(moved)
        assert daemon.app.authenticator.account_id == config.aws.account_id
        log = daemon.log_output.getvalue()  # type: ignore[attr-defined]
        assert "event=config.restart_required daemon=broker section=aws" in log


async def test_a_new_data_directory_is_the_owners_alone(tmp_path):
    """Outside systemd (whose unit sets StateDirectoryMode) the directory holding every
    message body was created 0755, its store 0644: readable by every local user."""
    data = tmp_path / "fresh" / "data"
    config = BrokerConfig(
        admin=AdminSettings(port=0),
        api=ApiSettings(port=0),
        storage=StorageSettings(data_dir=str(data)),
    )
    async with running(SPEC, config):
        assert data.stat().st_mode & 0o777 == 0o700


async def test_restart_required_is_judged_against_what_is_bound(tmp_path):
    """It compared with the last file: a second reload of a changed admin address said
    nothing, and going back to the bound one warned."""
    path = tmp_path / "broker.toml"
    path.write_text("[admin]\nport = 0\n[api]\nport = 0\n")
    config = BrokerConfig(admin=AdminSettings(port=0), api=ApiSettings(port=0))
    async with running(SPEC, config, config_path=path) as daemon:
        warned = []
        for port in (12345, 12345, 0):
            path.write_text(f"[admin]\nport = {port}\n[api]\nport = 0\n")
            mark = len(daemon.log_output.getvalue())  # type: ignore[attr-defined]
            assert await daemon.reload() is None
            log = daemon.log_output.getvalue()[mark:]  # type: ignore[attr-defined]
            warned.append("config.restart_required daemon=broker section=admin" in log)
        assert warned == [True, True, False]


async def test_a_listen_host_written_another_way_needs_no_restart(tmp_path):
    # "0:0::1" for "::1" (or "127.1" for "127.0.0.1") warned that a restart was needed to
    # bind what was already bound (found by the IPv6 hunt).
    path = tmp_path / "broker.toml"
    data = f'[storage]\ndata_dir = "{tmp_path}"\n'
    config = BrokerConfig(
        admin=AdminSettings(host="::1", port=0),
        api=ApiSettings(host="::1", port=0),
        storage=StorageSettings(data_dir=str(tmp_path)),
    )
    async with running(SPEC, config, config_path=path) as daemon:
        warned = []
        for admin, api in (("0:0::1", "0::1"), ("::1", "127.0.0.1"), ("0::1", "::1")):
            path.write_text(
                f'[admin]\nhost = "{admin}"\nport = 0\n[api]\nhost = "{api}"\nport = 0\n{data}'
            )
            mark = len(daemon.log_output.getvalue())  # type: ignore[attr-defined]
            assert await daemon.reload() is None
            log = daemon.log_output.getvalue()[mark:]  # type: ignore[attr-defined]
            warned.append(re.findall(r"config.restart_required daemon=broker section=(\S+)", log))
        assert warned == [[], ["api/storage"], []]


async def test_clients_that_reset_at_once_are_not_handler_errors(tmp_path: Path) -> None:
    # TCP health checks that close with RST, port scans: the accepted socket has no peer any
    # more (ENOTCONN); that is traffic, not a bug to log and count.
    config = BrokerConfig(
        api=ApiSettings(port=0),
        admin=AdminSettings(port=0),
        storage=StorageSettings(data_dir=str(tmp_path)),
    )
    async with running(SPEC, config) as daemon:
        for listener in ("api", "admin"):
            for _ in range(20):
                with socket.create_connection(address(daemon, listener)) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.sleep(0.3)
        status, _, body = await request(address(daemon, "admin"), "GET", "/metrics")
        output = daemon.log_output.getvalue()  # type: ignore[attr-defined]
    assert status == 200
    assert "handler_failed" not in output
    assert not re.search(rb"wharf_handler_errors_total\{[^}]*\} [1-9]", body)


async def test_a_reload_refused_while_declaring_queues_leaves_the_running_config(
    tmp_path, monkeypatch
):
    # The plan passed, then the API changed a queue it relied on: the declarations fail
    # last, and what was switched before them is switched back (credentials included).
    config = BrokerConfig(
        api=ApiSettings(port=0),
        admin=AdminSettings(port=0),
        storage=StorageSettings(data_dir=str(tmp_path / "data")),
    )
    async with running(SPEC, config) as daemon:
        app = daemon.app
        authenticator = app.authenticator
        signed = msgspec.structs.replace(_signed_only(tmp_path, "127.0.0.1"), api=config.api)

        async def fails(*args: object) -> None:
            raise ConfigError("broker.toml", "dead-letter target vanished - at `$.queues[0]`")

        monkeypatch.setattr(declarations, "apply", fails)
        with pytest.raises(ConfigError, match="vanished"):
            await app.reload(signed)
        assert app.config is config
        assert app.authenticator is authenticator
        assert app.frontend is not None
        assert app.frontend.authenticator is authenticator
        status, _, _ = await request(address(daemon, "api"), "GET", "/?Action=ListQueues")
        assert status == 200  # still anonymous, as the running file says


def _signed_only_file(tmp_path: Path) -> Path:
    """A broker.toml asking for signed requests (as ``_signed_only``), on free ports."""
    _signed_only(tmp_path, "127.0.0.1")  # writes the credentials file
    path = tmp_path / "broker.toml"
    path.write_text(
        "[api]\nport = 0\n[admin]\nport = 0\n"
        f'[auth]\nanonymous = false\ncredentials_file = "{tmp_path / "credentials.toml"}"\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
    )
    return path


@pytest.mark.parametrize("emptied", ["", "\n\n", "# rewritten by config management\n  \n"])
async def test_a_reload_of_an_emptied_file_is_refused_and_signatures_stay_required(
    tmp_path, emptied
):
    """A file truncated before being rewritten, read by a SIGHUP in between, was taken for
    "every default": anonymous access came back on, and unsigned CreateQueue worked."""
    path = _signed_only_file(tmp_path)
    async with running(SPEC, load(path, BrokerConfig), config_path=path) as daemon:
        api = address(daemon, "api")
        create = b"Action=CreateQueue&QueueName=anyone"
        refused = (403, True)
        status, _, body = await request(api, "POST", "/", body=create)
        assert (status, b"<Code>MissingAuthenticationToken</Code>" in body) == refused
        path.write_text(emptied)
        reason = await daemon.reload()
        assert reason == f"{path}: the file is empty (no keys, only whitespace or comments)"
        assert daemon.app.config.auth.anonymous is False
        status, _, body = await request(api, "POST", "/", body=create)
        assert (status, b"<Code>MissingAuthenticationToken</Code>" in body) == refused


async def test_a_reload_that_turns_anonymous_access_on_says_so(tmp_path):
    path = _signed_only_file(tmp_path)
    async with running(SPEC, load(path, BrokerConfig), config_path=path) as daemon:
        path.write_text(f'[api]\nport = 0\n[admin]\nport = 0\n[storage]\ndata_dir = "{tmp_path}"\n')
        assert await daemon.reload() is None  # anonymous on loopback: allowed, but said
        log = daemon.log_output.getvalue()  # type: ignore[attr-defined]
        [warning] = [line for line in log.splitlines() if "auth.anonymous_enabled" in line]
        assert "level=warning " in warning
        assert f"file={path}" in warning
        mark = len(log)
        assert await daemon.reload() is None  # already on: nothing new to say
        assert "auth.anonymous_enabled" not in daemon.log_output.getvalue()[mark:]  # type: ignore[attr-defined]


@pytest.mark.parametrize("sns", ["ca_file", "signing_key_file"])
async def test_a_reload_refuses_sns_files_the_next_start_could_not_load(tmp_path, sns):
    """[sns] applies at the next restart; the reload took files that restart then failed on,
    while check-config refused them."""
    path = tmp_path / "broker.toml"
    good = f'[api]\nport = 0\n[admin]\nport = 0\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
    path.write_text(good)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a PEM file\n")
    named = (
        f'ca_file = "{not_pem}"\n'
        if sns == "ca_file"
        else f'signing_key_file = "{not_pem}"\nsigning_cert_file = "{not_pem}"\n'
    )
    async with running(SPEC, load(path, BrokerConfig), config_path=path) as daemon:
        config = daemon.app.config
        path.write_text(f"{good}[sns]\n{named}")
        reason = await daemon.reload()
        with pytest.raises(ConfigError) as checked:
            check_files(load(path, BrokerConfig), path)
        assert reason == str(checked.value)  # check-config's message, naming the file
        assert reason.startswith(f"{not_pem}: ")
        assert daemon.app.config is config


async def test_post_reload_on_the_admin_listener_does_what_sighup_does(tmp_path):
    path = tmp_path / "broker.toml"
    base = f'[api]\nport = 0\n[admin]\nport = 0\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
    path.write_text(base)
    async with running(SPEC, load(path, BrokerConfig), config_path=path) as daemon:
        admin = address(daemon, "admin")
        path.write_text(base + '[[queues]]\nname = "declared-by-reload"\n')
        status, _, body = await request(admin, "POST", "/reload")
        assert (status, msgspec.json.decode(body)) == (200, {"reloaded": True})
        status, _, body = await request(
            address(daemon, "api"), "POST", "/", body=b"Action=ListQueues"
        )
        assert b"declared-by-reload" in body
        path.write_text(base + "[api]\n")  # a second [api] table: refused
        status, _, body = await request(admin, "POST", "/reload")
        refused = msgspec.json.decode(body)
        assert (status, refused["error"]) == (400, "ConfigError")
        assert str(path) in refused["message"]


async def test_a_reload_applies_the_body_budget_without_a_restart(tmp_path):
    path = tmp_path / "broker.toml"
    base = f'[admin]\nport = 0\n[storage]\ndata_dir = "{tmp_path / "data"}"\n[api]\nport = 0\n'
    path.write_text(base)
    config = load(path, BrokerConfig)
    async with running(SPEC, config, config_path=path) as daemon:
        app = daemon.app
        assert isinstance(app, BrokerApp)
        assert app.body_budget.limit == 1 << 30
        path.write_text(base + "max_buffered_request_bytes = 8388608\n")
        mark = len(daemon.log_output.getvalue())  # type: ignore[attr-defined]
        assert await daemon.reload() is None
        assert app.body_budget.limit == 8 << 20
        assert "config.restart_required" not in daemon.log_output.getvalue()[mark:]  # type: ignore[attr-defined]


async def test_a_reload_refuses_a_body_budget_below_the_running_request_limit(tmp_path):
    # api.max_request_bytes applies only at a restart: a file that lowers it together with
    # the budget would leave every request between the two refused with 503 until then.
    path = tmp_path / "broker.toml"
    base = f'[admin]\nport = 0\n[storage]\ndata_dir = "{tmp_path / "data"}"\n[api]\nport = 0\n'
    path.write_text(base + "max_request_bytes = 16777216\n")
    config = load(path, BrokerConfig)
    async with running(SPEC, config, config_path=path) as daemon:
        app = daemon.app
        assert isinstance(app, BrokerApp)
        path.write_text(
            base + "max_request_bytes = 4194304\nmax_buffered_request_bytes = 8388608\n"
        )
        refusal = await daemon.reload()
        assert refusal is not None
        assert "running api.max_request_bytes (16777216" in str(refusal)
        assert app.body_budget.limit == 1 << 30


async def test_a_store_is_not_served_under_another_account_or_region(tmp_path):
    """Started under another aws.account_id, a store's SNS subscriptions still named its
    queues by their old ARNs: every delivery failed as "no such queue" and was lost."""
    data = tmp_path / "data"

    def config(aws: AwsIdentity, queues: list[DeclaredQueue] | None = None) -> BrokerConfig:
        return BrokerConfig(
            admin=AdminSettings(port=0),
            api=ApiSettings(port=0),
            aws=aws,
            storage=StorageSettings(data_dir=str(data)),
            queues=queues or [],
        )

    async with running(SPEC, config(AwsIdentity(), [DeclaredQueue(name="q")])):
        pass
    for moved in (AwsIdentity(account_id="111111111111"), AwsIdentity(region="eu-west-1")):
        with pytest.RaisesGroup(
            pytest.RaisesExc(StartupError, match="its subscriptions and redrive policies"),
            allow_unwrapped=True,
            flatten_subgroups=True,
        ):
            async with running(SPEC, config(moved)):
                pass
    async with running(SPEC, config(AwsIdentity())):  # the same identity starts, as before
        pass
    (data / "aws-identity.json").unlink()  # the operator's way to take the new one
    async with running(SPEC, config(AwsIdentity(account_id="111111111111"))):
        pass
    assert b"111111111111" in (data / "aws-identity.json").read_bytes()


async def test_a_store_with_no_queue_and_no_topic_starts_under_another_identity(tmp_path):
    """The operator told to remove the store files and receipt-handle.key to start with no
    queues, who also changed aws.account_id, was refused because of aws-identity.json: an
    empty store names no ARN, so it starts, and is then served as the new identity."""
    data = tmp_path / "data"

    def config(aws: AwsIdentity) -> BrokerConfig:
        return BrokerConfig(
            admin=AdminSettings(port=0),
            api=ApiSettings(port=0),
            aws=aws,
            storage=StorageSettings(data_dir=str(data)),
        )

    async with running(SPEC, config(AwsIdentity())):
        pass
    assert (data / "aws-identity.json").exists()
    async with running(SPEC, config(AwsIdentity(account_id="111111111111"))):
        pass
    assert b"111111111111" in (data / "aws-identity.json").read_bytes()


async def _http10(where: tuple[str, int], target: bytes, body: bytes) -> bytes:
    stream = await trio.open_tcp_stream(*where)
    async with stream:
        head = b"POST / HTTP/1.0\r\nX-Amz-Target: " + target + b"\r\n"
        head += b"Content-Type: application/x-amz-json-1.0\r\n"
        await stream.send_all(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
    return answer.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("host", ["::1", "127.0.0.1"])
async def test_a_request_without_host_gets_urls_of_the_address_it_reached(tmp_path, host):
    # HTTP/1.0 needs no Host: queue URLs said http://localhost/..., port 80, which is not
    # where the broker listens (on ::1 not even the address; found by the IPv6 hunt).
    config = BrokerConfig(
        api=ApiSettings(host=host, port=0),
        admin=AdminSettings(port=0),
        storage=StorageSettings(data_dir=str(tmp_path)),
    )
    async with running(SPEC, config) as daemon:
        where = address(daemon, "api")
        body = await _http10(where, b"AmazonSQS.CreateQueue", b'{"QueueName": "old"}')
    authority = f"[{host}]:{where[1]}" if ":" in host else f"{host}:{where[1]}"
    assert msgspec.json.decode(body) == {"QueueUrl": f"http://{authority}/000000000000/old"}
