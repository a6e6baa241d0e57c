"""A real wharf-broker for tests, and boto3 clients for it in both SQS wire protocols.

Two ways to run the broker, both in-process on 127.0.0.1 ephemeral ports with a tmp data dir:

- :func:`open_broker` (async): inside the test's own trio loop, for tests that talk raw HTTP or
  look at the broker's objects directly.
- :class:`BrokerThread` (sync): the broker's own trio loop in a thread, so that ordinary
  blocking clients (boto3, the AWS CLI) can be used from plain test functions. ``call`` runs a
  coroutine in the broker's loop (to poke the registry, say).

boto3 clients: ``protocol="json"`` is botocore as shipped (awsJson 1.0, what current SDKs send);
``protocol="query"`` is botocore with the legacy query-protocol SQS model (form posts, XML
responses, what older SDKs send).
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import boto3
import botocore.config
import botocore.session
import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from broker.app import BrokerApp
from broker.cli import SPEC
from broker.config import ApiSettings, AuthSettings, BrokerConfig, StorageSettings, TlsSettings
from monitoring.lifecycle import Daemon
from monitoring.settings import AdminSettings
from tests.support.aws_models import legacy_sqs_query_model_document
from tests.support.daemons import address, running
from tests.support.http import request

Protocol = Literal["json", "query"]
PROTOCOLS: tuple[Protocol, ...] = ("json", "query")
REGION = "us-east-1"
ACCOUNT_ID = "000000000000"
ACCESS_KEY_ID = "AKIAWHARFTESTKEY0001"
SECRET_ACCESS_KEY = "wharf-test-secret-access-key-0001"
T = TypeVar("T")


def broker_config(data_dir: Path | str, **sections: Any) -> BrokerConfig:
    """A config on ephemeral loopback ports with ``data_dir``; ``sections`` override the rest.

    ``api`` and ``storage`` may be given as keyword dicts of their fields.
    """
    api = sections.pop("api", {})
    if isinstance(api, dict):
        api = ApiSettings(**{"port": 0, **api})
    return BrokerConfig(
        api=api,
        admin=AdminSettings(port=0),
        storage=StorageSettings(data_dir=str(data_dir)),
        **sections,
    )


def tls_settings(ca: trustme.CA, directory: Path, stem: str = "server") -> TlsSettings:
    """Write a certificate for 127.0.0.1 signed by ``ca``; the API listener's settings naming
    it (``api.tls``)."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    return TlsSettings(
        cert_file=str(cert_file), key_file=str(key_file), handshake_timeout_seconds=0.5
    )


def https_client(service: str, endpoint: str, verify: str | bool) -> Any:
    """A boto3 client of ``service`` for an HTTPS ``endpoint``, trusting ``verify`` (a CA
    file; False: no check); no retries."""
    session = boto3.Session(botocore_session=botocore_session("json"))
    return session.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        verify=verify,
        config=botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=5),
    )


def write_credentials(
    directory: Path, keys: list[tuple[str, str, str]] | None = None
) -> AuthSettings:
    """Write a credentials file of (access key id, secret, principal) into ``directory``.

    Returns the ``[auth]`` section that requires signatures checked against it.
    """
    if keys is None:
        keys = [(ACCESS_KEY_ID, SECRET_ACCESS_KEY, "")]
    lines = []
    for key_id, secret, principal in keys:
        lines += ["[[keys]]", f'access_key_id = "{key_id}"', f'secret_access_key = "{secret}"']
        if principal:
            lines.append(f'principal = "{principal}"')
        lines.append("")
    path = directory / "credentials.toml"
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return AuthSettings(anonymous=False, credentials_file=str(path))


# ---------------------------------------------------------------------- boto3 clients


@functools.cache
def _query_model_directory() -> str:
    """A botocore data directory holding the legacy query-protocol SQS model (made once)."""
    root = Path(tempfile.mkdtemp(prefix="wharf-sqs-query-model-"))
    target = root / "sqs" / "2012-11-05"
    target.mkdir(parents=True)
    (target / "service-2.json").write_text(json.dumps(legacy_sqs_query_model_document()))
    return str(root)


def botocore_session(protocol: Protocol = "json") -> botocore.session.Session:
    """A botocore session that speaks ``protocol`` to SQS and reads no user config files."""
    session = botocore.session.Session()
    session.set_config_variable("config_file", "/dev/null")
    session.set_config_variable("credentials_file", "/dev/null")
    if protocol == "query":
        session.get_component("data_loader").search_paths.insert(0, _query_model_directory())
    return session


_sessions: dict[Protocol, boto3.Session] = {}
_sessions_lock = threading.Lock()


def sqs_client(
    endpoint: str,
    protocol: Protocol = "json",
    *,
    access_key_id: str = ACCESS_KEY_ID,
    secret_access_key: str = SECRET_ACCESS_KEY,
    region: str = REGION,
    validate: bool = True,
    read_timeout: float = 60,
) -> Any:
    """A boto3 SQS client for ``endpoint``; no retries, so every error reaches the test."""
    with _sessions_lock:  # one session per protocol: it caches the models it has loaded
        session = _sessions.get(protocol)
        if session is None:
            session = _sessions[protocol] = boto3.Session(
                botocore_session=botocore_session(protocol)
            )
        client = session.client(
            "sqs",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=botocore.config.Config(
                retries={"total_max_attempts": 1},
                parameter_validation=validate,
                read_timeout=read_timeout,
                connect_timeout=5,
            ),
        )
    assert client.meta.service_model.protocol == protocol
    return client


# ---------------------------------------------------------------------- the broker


@contextlib.asynccontextmanager
async def open_broker(config: BrokerConfig) -> AsyncIterator[Daemon[BrokerConfig]]:
    """The broker, running in the current trio loop until the block ends."""
    async with running(SPEC, config) as daemon:
        yield daemon


class BrokerThread:
    """The broker in a thread of its own, for blocking clients."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._daemon: Daemon[BrokerConfig] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._thread = threading.Thread(target=self._run, name="wharf-broker", daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with open_broker(self.config) as daemon:
            self._daemon = daemon
            self._started.set()
            await self._stop.wait()

    def start(self) -> BrokerThread:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise RuntimeError("the broker did not start") from self._error
        assert self._daemon is not None, "the broker did not start in 30 s"
        return self

    def stop(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the broker did not stop in 60 s"
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def daemon(self) -> Daemon[BrokerConfig]:
        assert self._daemon is not None
        return self._daemon

    @property
    def app(self) -> BrokerApp:
        app = self.daemon.app
        assert isinstance(app, BrokerApp)
        return app

    @property
    def api(self) -> tuple[str, int]:
        return address(self.daemon, "api")

    @property
    def admin(self) -> tuple[str, int]:
        return address(self.daemon, "admin")

    @property
    def endpoint(self) -> str:
        host, port = self.api
        return f"http://{host}:{port}"

    def client(self, protocol: Protocol = "json", **options: Any) -> Any:
        """A boto3 SQS client of this broker (cached: building one loads botocore's models)."""
        key = (protocol, *sorted(options.items()))
        if key not in self._clients:
            self._clients[key] = sqs_client(self.endpoint, protocol, **options)
        return self._clients[key]

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in the broker's trio loop and return its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the broker's trio loop (between its tasks' steps)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def http(
        self, method: str, target: str = "/", **options: Any
    ) -> tuple[int, dict[str, str], bytes]:
        """One raw HTTP request to the API listener (see :func:`tests.support.http.request`)."""
        return trio.run(functools.partial(request, self.api, method, target, **options))

    def metrics(self) -> dict[str, Any]:
        """Scrape /metrics on the admin listener: {family name: family}."""
        status, _, body = trio.run(functools.partial(request, self.admin, "GET", "/metrics"))
        assert status == 200
        return {f.name: f for f in text_string_to_metric_families(body.decode())}


# ---------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerThread]:
    """One anonymous broker for every test that only needs queues of its own."""
    with BrokerThread(broker_config(tmp_path_factory.mktemp("broker"))) as broker:
        yield broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerThread]:
    """A fresh anonymous broker of the test's own, on ``tmp_path / "data"``."""
    with BrokerThread(broker_config(tmp_path / "data")) as running_broker:
        yield running_broker


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> Protocol:
    """Each test that takes it runs once per SQS wire protocol."""
    value: Protocol = request.param
    return value


@pytest.fixture
def sqs(shared_broker: BrokerThread, protocol: Protocol) -> Any:
    """A boto3 SQS client of the shared broker, in each protocol."""
    return shared_broker.client(protocol)


class QueueFactory:
    """Creates queues with names unique to the test; deletes them at the end."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.urls: list[str] = []
        self._count = 0

    def name(self, suffix: str = "", *, fifo: bool = False) -> str:
        self._count += 1
        name = f"{self.prefix}-{self._count}{suffix}"
        return f"{name}.fifo" if fifo else name

    def __call__(
        self, *, fifo: bool = False, name: str | None = None, **attributes: str | int
    ) -> str:
        attrs = {key: str(value) for key, value in attributes.items()}
        if fifo:
            attrs["FifoQueue"] = "true"
        queue_name = name or self.name(fifo=fifo)
        url: str = self.client.create_queue(QueueName=queue_name, Attributes=attrs)["QueueUrl"]
        self.urls.append(url)
        return url

    def cleanup(self) -> None:
        for url in self.urls:
            with contextlib.suppress(Exception):
                self.client.delete_queue(QueueUrl=url)


_unique = iter(range(10**9))


@pytest.fixture
def queues(sqs: Any, request: pytest.FixtureRequest) -> Iterator[QueueFactory]:
    """``queues(**attributes)`` creates a queue for this test and returns its URL."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.originalname)[:50]
    factory = QueueFactory(sqs, f"{stem}-{next(_unique)}")
    yield factory
    factory.cleanup()
