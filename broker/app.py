"""wharf-broker's root: the store, the queues, the API and admin listeners, in one frame.

Start: open the store, rebuild every queue's index from it, create the queues the config
declares, bind, then report ready. Stop: the frame drains the listeners (long polls return at
once), and only then is the store closed, after its last commits are durable.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import sqlite3
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

import msgspec
import trio
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

import broker.registry
from broker import declarations
from broker.auth import Authenticator, Credential, load_credentials
from broker.clock import boot_id, resume_saved, save_forever
from broker.config import AwsIdentity, BrokerConfig, SnsSettings
from broker.disk_space import DiskSpace, statvfs_free_bytes
from broker.fanout import Fanout
from broker.frontend import Frontend
from broker.http_client import HttpClient
from broker.http_delivery import HttpDeliveries
from broker.metrics import BrokerMetrics
from broker.model.signing import Signer
from broker.move_tasks import MoveTasks
from broker.refusals import ApiRefusals
from broker.registry import QueueRegistry
from broker.sns import SnsApi
from broker.sns_http import SnsFrontend
from broker.sns_keys import load_signing_keys
from broker.sns_metrics import watch_topics
from broker.sns_signing import EnvelopeSigning, auto_processes
from broker.sqs import SqsApi
from broker.store.base import Store
from broker.store.lock import DataDirectoryInUse
from broker.store.sealing import KeyRing, Sealer, exposure, fingerprints, load_key_file
from broker.store.sqlite import FILE_NAME, SqliteStore
from broker.tls import TlsTerminator, server_context, validity_warning
from broker.topics import TopicRegistry
from monitoring import fastio
from monitoring.admin import AdminServer, open_admin_listener
from monitoring.configfile import ConfigError
from monitoring.durable import write_file
from monitoring.httpserver import BodyBudget, Request, Response, serve_http
from monitoring.lifecycle import DaemonStopping, Frame, Listener, StartupError, bind_tcp
from monitoring.logging import EventLog
from monitoring.safefile import check_regular_file
from monitoring.settings import HttpLimits, same_listen_host, state_directory
from proto.aws.sns_shapes import SNS
from proto.aws.sqs_shapes import SQS

KEY_FILE: Final = "receipt-handle.key"
KEY_BYTES: Final = 32
# The fingerprints of the encryption keys in use at the last start or reload: a start that
# finds another key under one of their ids is refused, as a reload is.
KEY_HISTORY_FILE: Final = "sealing-keys.json"
DECLARED_FILE: Final = "declared-queues.json"  # the names the file declared at the last apply
# The [aws] account and region the store was last served under: queue ARNs in subscriptions,
# RedrivePolicies and policies name them, so a start under others is refused.
IDENTITY_FILE: Final = "aws-identity.json"
# Where ``wharf-broker restore`` holds the restored files while it puts them in place: the
# data directory is half old, half restored while it exists (see broker.backup).
RESTORING_DIR: Final = "restore-in-progress"
STORE_CLOSE_TIMEOUT_SECONDS: Final = 30.0  # bound on the last commits at shutdown


def data_directory(configured: str) -> Path:
    """The configured data directory, else systemd's StateDirectory, else ./wharf-data."""
    return state_directory(configured, "wharf-data")


def _refuse_an_emptied_store(directory: Path) -> None:
    """SQLite takes a missing or zero-byte file for a new, empty database, and so it takes a
    file whose data all sits in a ``-wal`` it cannot read (damaged, or from another file):
    in a data directory that was in use (its receipt-handle key is there) that would be every
    message gone, silently, and creating the schema would overwrite that WAL, the data's last
    copy. A read-only look finds out first: it leaves the WAL as it is.

    Raises:
        StartupError: naming the file and what to do.
    """
    store_file = directory / FILE_NAME
    if not (directory / KEY_FILE).exists():
        _refuse_a_store_without_its_key(directory, store_file)
        return  # a new data directory
    try:
        if store_file.stat().st_size == 0:
            raise _store_lost(store_file, "is empty")
    except FileNotFoundError:
        raise _store_lost(store_file, "is missing") from None
    if _schema_version(store_file) == 0:
        raise _store_lost(store_file, "holds no store (is its -wal damaged?)")


def _refuse_a_store_without_its_key(directory: Path, store_file: Path) -> None:
    """A store holding messages whose receipt-handle key is gone (a store file copied or
    restored by hand without it, the key deleted): a new key would refuse every receipt
    handle consumers hold (``ReceiptHandleIsInvalid``: their deletes fail and the messages
    come again), silently. ``wharf-broker restore`` refuses such a backup; the start too.

    Raises:
        StartupError: naming the key and what to do.
    """
    if not store_file.is_file() or not _holds_messages(store_file):
        return
    raise StartupError(
        f"{directory / KEY_FILE}: missing, but {store_file} holds messages: with a new key "
        f"every receipt handle issued for them would be refused; put back the {KEY_FILE} "
        "that was beside this store (a backup holds it), or, to start with a new one "
        f"anyway, create it as the service user: (umask 077; head -c {KEY_BYTES} "
        f"/dev/urandom > {directory / KEY_FILE})"
    )


def _holds_messages(store_file: Path) -> bool:
    """Tell whether the store has a message, read without writing (False for a file that is
    no store, or a new one: the store's own open says what is wrong with it)."""
    uri = store_file.resolve().as_uri() + "?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            # Rows of deleted or purged queues wait to be reclaimed: no receipt handle for
            # them will come back, so they are no messages a new key would strand.
            row = connection.execute(
                "SELECT EXISTS (SELECT 1 FROM messages m JOIN queues q USING (queue_id) "
                "WHERE q.deleted = 0 AND m.seq >= q.purged_below)"
            ).fetchone()
            return bool(row[0])
        finally:
            connection.close()
    except sqlite3.DatabaseError:
        return False


def _refuse_an_interrupted_restore(directory: Path) -> None:
    """A restore killed while it moved files in left some of the old ones and some of the
    backup's: started on, that mix would be a store without its keys, or sequences issued
    again.

    Raises:
        StartupError: naming the restore to run again.
    """
    if (directory / RESTORING_DIR).exists():
        raise StartupError(
            f"{directory / RESTORING_DIR}: a wharf-broker restore into this data directory "
            "stopped while putting its files in place (or is running): run the restore "
            f"again; the files it replaced are in the newest {directory}/before-restore-*"
        )


def _schema_version(store_file: Path) -> int | None:
    """The file's schema version, read without writing; None if it is no database (the
    store's own open says so, naming the file)."""
    uri = store_file.resolve().as_uri() + "?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            version: int = connection.execute("PRAGMA user_version").fetchone()[0]
            return version
        finally:
            connection.close()
    except sqlite3.DatabaseError:
        return None


def _store_lost(store_file: Path, what: str) -> StartupError:
    """The store of a data directory in use is gone (emptied, deleted, or all its data in a
    ``-wal`` that SQLite cannot read): starting would start with no queues, silently."""
    return StartupError(
        f"{store_file}: the store file {what}, but this data directory was in use "
        f"({KEY_FILE} is there): restore a backup (wharf-broker restore), or, to start with "
        f"no queues, remove {KEY_FILE} and the {FILE_NAME}* files"
    )


def signing_key(directory: Path) -> bytes:
    """The key that seals receipt handles and derives message ids; made once, kept forever.

    It must survive restarts: message ids are derived from it, and handles issued before a
    restart must still delete their messages after it.
    """
    path = directory / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(KEY_BYTES)
        write_file(path, key, 0o600)
    if len(key) != KEY_BYTES:
        raise ConfigError(path, f"expected {KEY_BYTES} bytes, found {len(key)}")
    return key


def credentials_of(config: BrokerConfig) -> dict[str, Credential]:
    path = config.auth.credentials_file
    try:
        return load_credentials(path) if path else {}
    except ConfigError as error:
        raise error.at("auth.credentials_file") from None


def keyring_of(config: BrokerConfig) -> KeyRing | None:
    path = config.storage.key_file
    try:
        return load_key_file(path) if path else None
    except ConfigError as error:
        raise error.at("storage.key_file") from None


def _check_key_changes(
    before: Mapping[str, str], new: KeyRing | None, key_file: str, *, whose: str
) -> list[str]:
    """The key ids that ``new`` takes out of use (to warn of), once it is sure that no key
    id keeps its name with other key material.

    Args:
        before: the fingerprints (:func:`fingerprints`) of the keys used so far.
        new: the keys of the key file now.
        key_file: its path, for the message.
        whose: who used the keys so far, for the message ("the running broker's").

    Raises:
        ConfigError: an id now names other key material: every message sealed with the old
            one would fail authentication. Give new material a new id (rotation).
    """
    after = fingerprints(new)
    kept = before.keys() & after.keys()
    changed = sorted(k for k in kept if not hmac.compare_digest(before[k], after[k]))
    if changed:
        raise ConfigError(
            key_file,
            f"key {changed[0]!r} now has other key material than {whose}: the messages "
            "sealed with it could no longer be opened; give the new key a new id "
            "(rotation), or, to replace it all the same, take the id out, reload or "
            "restart, then list it again",
        ).at("storage.key_file")
    return sorted(before.keys() - kept)


def _keys_used_before(directory: Path) -> dict[str, str]:
    """The fingerprints :func:`_remember_keys` wrote at the last start or reload ({} when
    there are none: a new data directory, a restore, a broker older than this file)."""
    try:
        data = (directory / KEY_HISTORY_FILE).read_bytes()
        return msgspec.json.decode(data, type=dict[str, str])
    except (OSError, msgspec.DecodeError):
        return {}


def _remember_keys(directory: Path, keyring: KeyRing | None, log: EventLog) -> None:
    """Write the fingerprints of the keys in use, for the next start to compare with."""
    try:
        write_file(directory / KEY_HISTORY_FILE, msgspec.json.encode(fingerprints(keyring)), 0o600)
    except OSError as error:
        log.warning("storage.key_history_not_written", file=KEY_HISTORY_FILE, reason=str(error))


class _ServedAs(msgspec.Struct, frozen=True):
    account_id: str
    region: str


def _check_identity(directory: Path, aws: AwsIdentity) -> None:
    """Refuse to serve the store under another account or region than at its last start
    (the caller skips this for a store holding no queue and no topic).

    Its SNS subscriptions and RedrivePolicies name queues by ARN, account and region
    included: under another identity every delivery to them fails as "no such queue" and
    its message is lost (found by starting a store with another aws.account_id).

    Raises:
        StartupError: the identity differs, or the file that records it is unreadable.
    """
    path = directory / IDENTITY_FILE
    try:
        before = msgspec.json.decode(path.read_bytes(), type=_ServedAs)
    except FileNotFoundError:
        return  # a new data directory, a restore of an older backup, an older broker's
    except (OSError, msgspec.DecodeError) as error:
        raise StartupError(
            f"{path}: cannot read the account and region the store was served under "
            f"({error}); remove the file to serve it as aws.account_id and aws.region say"
        ) from None
    if (before.account_id, before.region) != (aws.account_id, aws.region):
        raise StartupError(
            f"{directory}: this store was served as account {before.account_id} in "
            f"{before.region}, and the configuration says account {aws.account_id} in "
            f"{aws.region}: its subscriptions and redrive policies name the queues by their "
            "old ARNs, so their messages would be lost; set [aws] as before, or remove "
            f"{path} to serve the store under the new identity all the same"
        )


def _remember_identity(directory: Path, aws: AwsIdentity, log: EventLog) -> None:
    """Write the account and region served, for the next start to compare with."""
    served = _ServedAs(account_id=aws.account_id, region=aws.region)
    try:
        write_file(directory / IDENTITY_FILE, msgspec.json.encode(served), 0o600)
    except OSError as error:
        log.warning("storage.identity_not_written", file=IDENTITY_FILE, reason=str(error))


# A CA bundle of hundreds of certificates (the system's is about 200 KiB); more is the wrong file.
MAX_CA_FILE_BYTES: Final = 16 << 20


def delivery_client(settings: SnsSettings) -> HttpClient:
    """The client of HTTP/S deliveries, trusting ``settings.ca_file`` (else the system store).

    Raises:
        ConfigError: the CA file cannot be loaded.
    """
    try:
        if settings.ca_file:
            # create_default_context opens the file by name: it would wait for a FIFO's
            # writer (with the whole event loop, on a reload) and read a device without end.
            check_regular_file(settings.ca_file, MAX_CA_FILE_BYTES)
        return HttpClient(
            connect_timeout=settings.connect_timeout_seconds,
            response_timeout=settings.response_timeout_seconds,
            ca_file=settings.ca_file,
        )
    except (OSError, ssl.SSLError) as error:
        reason = f"cannot load the CA file: {error}"
        raise ConfigError(settings.ca_file, reason).at("sns.ca_file") from None


def check_sns_files(config: BrokerConfig) -> None:
    """Load the files ``[sns]`` names as the start does, writing nothing.

    Without a configured signing key the start generates one in the data directory: state,
    not configuration, so it is not looked at.

    Raises:
        ConfigError: naming the file and the reason, as the start does.
    """
    settings = config.sns
    if settings.signing_key_file:
        load_signing_keys(settings, data_directory(config.storage.data_dir))
    if settings.ca_file:
        delivery_client(settings)


def _needs_restart(old: BrokerConfig, new: BrokerConfig) -> bool:
    """Tell whether ``new`` changes what only a restart applies (listener, data directory).

    Certificates and keys are files read again on reload; turning TLS on or off is not.
    """
    api = msgspec.structs.replace(
        old.api, tls=new.api.tls, max_buffered_request_bytes=new.api.max_buffered_request_bytes
    )
    if same_listen_host(old.api.host, new.api.host):  # "0:0::1" binds what "::1" bound
        api = msgspec.structs.replace(api, host=new.api.host)
    storage = msgspec.structs.replace(
        old.storage, key_file=new.storage.key_file, min_free_bytes=new.storage.min_free_bytes
    )
    return api != new.api or storage != new.storage or old.api.tls.enabled != new.api.tls.enabled


class BrokerApp:
    """The broker daemon."""

    def __init__(self, config: BrokerConfig, frame: Frame) -> None:
        self.config = config
        # What only a restart changes (listener address, data directory, account and
        # region, the sqs and sns sections) as the running broker has it: reloads compare
        # with this, not with the last file.
        self.running = config
        self.frame = frame
        self.admin = AdminServer(frame)
        self.admin.mount("POST", "/reload", self._reload_route)
        self.metrics = BrokerMetrics(frame.metrics)
        self.metrics.actions_known("sqs", SQS.operations)
        self.metrics.actions_known("sns", SNS.operations)
        self.authenticator = Authenticator(
            config.auth, credentials_of(config), account_id=config.aws.account_id
        )
        # Certificates and encryption keys are read now, so a bad file stops the start.
        self.tls = TlsTerminator(config.api.tls) if config.api.tls.enabled else None
        self._warn_certificate_validity()
        frame.metrics.register_collector(self._collect_certificate_expiry)
        # The balancer's wharf_balancer_tls_negotiation_errors_total, for the API listener.
        self.tls_negotiation_errors = frame.metrics.counter(
            "wharf_broker_tls_negotiation_errors",
            "TLS handshakes on the API listener that failed (reason: OpenSSL's reason, "
            "timeout, or closed).",
            ["listener", "reason"],
        )
        self.sealer = Sealer(keyring_of(config), on_clear=self._warn_stored_in_clear)
        self._warn_key_file_exposure(config)
        # Request bodies the API listener's connections hold at once (a reload sets its limit).
        self.body_budget = BodyBudget(config.api.max_buffered_request_bytes)
        frame.metrics.register_collector(self._collect_body_budget)
        self.store: Store | None = None
        self.directory: Path | None = None  # the data directory in use (a reload keeps it)
        self.registry: QueueRegistry | None = None
        self.disk: DiskSpace | None = None
        self.frontend: Frontend | None = None
        self.move_tasks: MoveTasks | None = None
        self.topics: TopicRegistry | None = None
        self.signing: EnvelopeSigning | None = None

    def _log_removed_keys(self, removed: list[str]) -> None:
        for key_id in removed:
            self.frame.log.warning(
                "storage.key_removed",
                key_id=key_id,
                consequence="messages still sealed with this key cannot be received until "
                "it is listed again (they stay in their queues)",
            )

    def _check_keys_at_start(self, directory: Path) -> None:
        """Compare the key file with the keys of the last start or reload: other material
        under an id stops the start (as it refuses a reload); removed ids are logged. The
        keys are remembered once the start has succeeded (a start that fails sealed nothing)."""
        try:
            removed = _check_key_changes(
                _keys_used_before(directory),
                self.sealer.keyring,
                self.config.storage.key_file,
                whose=f"at the last start or reload ({directory / KEY_HISTORY_FILE})",
            )
        except ConfigError as error:
            raise StartupError(str(error)) from None
        self._log_removed_keys(removed)

    def _warn_key_file_exposure(self, config: BrokerConfig) -> None:
        """Log a ``storage.key_file_exposed`` warning when others may read or write the key
        file (at the start and at every reload: the keys are used all the same)."""
        path = config.storage.key_file
        reason = exposure(path) if path else None
        if reason is not None:
            self.frame.log.warning(
                "storage.key_file_exposed", file=path, reason=reason, fix=f"chmod 0600 {path}"
            )

    def _warn_stored_in_clear(self) -> None:
        self.frame.log.warning(
            "storage.stored_in_clear",
            reason="queues ask for encryption at rest (SqsManagedSseEnabled or "
            "KmsMasterKeyId) but storage.key_file is empty: their messages are stored in clear",
        )

    async def serve(self, frame: Frame, *, task_status: trio.TaskStatus[None]) -> None:
        config = self.config
        directory = data_directory(config.storage.data_dir)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # bodies: the owner only
        self.directory = directory
        store = SqliteStore(directory, sealer=self.sealer)
        room = statvfs_free_bytes(directory, store.wal_bytes)
        disk = DiskSpace(room, config.storage.min_free_bytes, frame.log, store.give_back_wal_space)
        self.disk = disk
        frame.metrics.register_collector(disk.collect)
        _refuse_an_interrupted_restore(directory)
        _refuse_an_emptied_store(directory)
        try:
            await store.open()
        except DataDirectoryInUse as error:
            raise StartupError(str(error)) from error
        except sqlite3.DatabaseError as error:  # corrupt, not a database, full disk, read-only
            raise _cannot_open(store, error) from error
        self.store = store
        try:
            self._check_keys_at_start(directory)  # the directory is locked: this broker's
            if await store.holds_queues_or_topics():
                # An empty store names no ARN: it starts under any identity (the way to start
                # over with no queues, which _store_lost describes, changes aws.account_id).
                _check_identity(directory, config.aws)
            # Before anything reads the time: a restart goes on with the clock's slew.
            boot = boot_id()
            resume_saved(broker.registry.CLOCK, directory, frame.log, boot)
            registry = QueueRegistry(
                store,
                Signer(signing_key(directory)),
                region=config.aws.region,
                account_id=config.aws.account_id,
                log=frame.log,
                in_flight_limit=config.sqs.max_in_flight_messages,
            )
            self.registry = registry
            with _store_damage_stops_the_start(store):
                await registry.load()
            file = self._config_file()
            try:
                await declarations.apply(
                    registry, declarations.plan(registry, config, file), file, frame.log
                )
            except ConfigError as error:
                raise StartupError(str(error)) from None
            declarations.note_undeclared(directory / DECLARED_FILE, config, frame.log)
            self.metrics.watch(registry, store)
            frame.draining.on_start(registry.stop_waiting)
            sqs = SqsApi(registry, account_id=config.aws.account_id)
            move_tasks = MoveTasks(registry, authorize=sqs.authorize, log=frame.log)
            sqs.register(move_tasks.actions())
            with _store_damage_stops_the_start(store):
                await move_tasks.load()  # RUNNING tasks resume once move_tasks.run starts
                self.move_tasks = move_tasks
                sns, deliveries, topics, signing = await self._sns(store, registry, directory)
            frontend = Frontend(
                sqs=sqs,
                authenticator=self.authenticator,
                metrics=self.metrics,
                log=frame.log,
                public_url=config.api.public_url,
                scheme="http" if self.tls is None else "https",
                sns=sns,
                admit=disk.admit,
            )
            self.frontend = frontend
            api = await self._api_listener(frontend)
            admin = await open_admin_listener(frame, config.admin, HttpLimits(), self.admin)
            # The start can no longer fail: from here on messages are sealed with these keys.
            _remember_keys(directory, self.sealer.keyring, frame.log)
            _remember_identity(directory, config.aws, frame.log)
            async with trio.open_nursery() as background:
                background.start_soon(self._stop_if_the_store_fails, store, frame)
                background.start_soon(disk.watch_forever)
                background.start_soon(registry.expire_forever)
                background.start_soon(
                    save_forever, broker.registry.CLOCK, directory, frame.log, boot
                )
                background.start_soon(topics.expire_forever)
                await background.start(move_tasks.run)  # stopped with the background tasks
                await background.start(deliveries.run)  # pending rows resume at the next start
                await background.start(signing.run)  # its processes end with the background
                await frame.serve_listeners([api, admin], task_status=task_status)
                background.cancel_scope.cancel()
        finally:
            with trio.move_on_after(STORE_CLOSE_TIMEOUT_SECONDS, shield=True):
                await store.aclose()

    async def _stop_if_the_store_fails(self, store: Store, frame: Frame) -> None:
        """A failed store (disk full, I/O error) accepts no writes and may be behind memory:
        stop, and let systemd start the broker again from what is on disk."""
        error = await store.wait_until_failed()
        frame.log.error(
            "store.failed",
            reason=str(error),
            consequence="stopping: requests get 503 ServiceUnavailable until the broker "
            "restarts from what is on disk; everything acknowledged is there",
        )
        if frame.fail is not None:
            frame.fail(f"the store failed: {error}")

    async def _sns(
        self, store: Store, queues: QueueRegistry, directory: Path
    ) -> tuple[SnsFrontend, HttpDeliveries, TopicRegistry, EnvelopeSigning]:
        """Topics, the publisher, the HTTP/S delivery worker, the SNS front end, the signing."""
        config = self.config
        settings = config.sns
        keys = load_signing_keys(settings, directory)
        keys.remember(directory)
        processes = settings.signing_processes
        signing = EnvelopeSigning(
            keys.key, auto_processes() if processes == "auto" else processes, self.frame.log
        )
        self.frame.metrics.register_collector(signing.collect)
        self.signing = signing
        client = delivery_client(settings)
        topics = TopicRegistry(
            store,
            region=config.aws.region,
            account_id=config.aws.account_id,
            log=self.frame.log,
            max_filter_policies=settings.max_filter_policies_per_topic,
        )
        await topics.load()
        deliveries = HttpDeliveries(
            store,
            topics,
            client,
            concurrency=settings.delivery_concurrency,
            endpoint_concurrency=settings.endpoint_concurrency,
            log=self.frame.log,
        )
        deliveries.restore(topics.pending_deliveries)
        fanout = Fanout(
            store,
            queues,
            keys,
            signing=signing,
            deliveries=deliveries,
            signature_version=settings.signature_version,
            cert_url_base=settings.signing_cert_url_base,
            log=self.frame.log,
            disk=self.disk,
        )
        deliveries.fanout = fanout
        watch_topics(self.frame.metrics, topics, deliveries)
        self.topics = topics
        api = SnsApi(topics, fanout, deliveries, account_id=config.aws.account_id)
        frontend = SnsFrontend(
            api,
            keys,
            metrics=self.metrics,
            log=self.frame.log,
            region=config.aws.region,
            public_url=config.api.public_url,
            scheme="http" if self.tls is None else "https",
            admit=self.disk.admit if self.disk is not None else None,
        )
        return frontend, deliveries, topics, signing

    async def _api_listener(self, frontend: Frontend) -> Listener:
        api = self.config.api
        limits = api.limits
        frame = self.frame
        refusals = ApiRefusals()  # 408 and 413 as AWS answers them, not plain text

        def report(exc: BaseException) -> None:
            frame.log.exception("api.handler_failed", exc)
            frame.metrics.handler_errors.labels("api").inc()

        def tls_failed(reason: str) -> None:
            self.tls_negotiation_errors.labels("api", reason).inc()
            # At debug: any client can make a handshake fail at will.
            frame.log.debug("tls.handshake_failed", listener="api", reason=reason)

        async def handle_connection(stream: trio.SocketStream) -> None:
            addresses = fastio.accepted_addresses(stream.socket)
            if addresses is None:
                return  # reset before it was served: nothing to answer, nothing to log
            peer, local = addresses
            http: trio.abc.Stream = stream
            if self.tls is not None:  # read per connection: a reload swaps the certificate
                secured = await self.tls.accept(stream, frame.draining, tls_failed)
                if secured is None:
                    return  # the frame closes the socket
                http = secured
            await serve_http(
                http,
                frontend.handle,
                limits,
                client=(str(peer[0]), int(peer[1])),
                draining=frame.draining,
                on_error=report,
                max_body_bytes=api.max_request_bytes,
                on_refusal=refusals,
                on_refused=self.metrics.observe_refusal,
                body_budget=self.body_budget,
                local=(str(local[0]), int(local[1])),
            )

        sockets = await bind_tcp(api.host, api.port)
        return Listener("api", sockets, handle_connection, max_connections=limits.max_connections)

    def _config_file(self) -> str:
        """The configuration file's path, for errors in the queues it declares."""
        path = self.frame.config_path
        return "<config>" if path is None else str(path)

    async def _reload_route(self, request: Request) -> Response:
        """``POST /reload`` on the admin listener: what SIGHUP does, with the outcome (the
        balancer's answers: 200, or 400 ``ConfigError`` with the reason)."""
        if self.frame.reload is None:
            return _json_response(
                503, {"error": "Unavailable", "message": "no daemon to reload this configuration"}
            )
        try:
            refused = await self.frame.reload()
        except DaemonStopping as stopping:
            return _json_response(503, {"error": "Unavailable", "message": str(stopping)})
        if refused is not None:
            return _json_response(400, {"error": "ConfigError", "message": refused})
        return _json_response(200, {"reloaded": True})

    async def reload(self, config: BrokerConfig) -> None:
        """Apply a new config: credentials, anonymous access, certificates, encryption keys,
        declared queues.

        Every file is read (those of ``[sns]`` too, which apply at the next restart), and the
        declared queues are checked against the live ones, before anything changes, so a bad
        one refuses the whole reload. Listener addresses, the data directory and turning TLS
        on or off need a restart.
        """
        file = self._config_file()
        running = self.running
        if config.auth.anonymous_on_network(running.api.host):
            # The new file's api.host applies only at a restart: judge the address bound now.
            raise ConfigError(
                file,
                f"auth.anonymous while the API listens on the non-loopback address "
                f"{running.api.host!r} would let anyone read and write every queue; a new "
                "api.host applies only at a restart - at `$.auth.anonymous`",
            )
        if config.api.max_buffered_request_bytes < running.api.max_request_bytes:
            # api.max_request_bytes applies only at a restart: judge the limit in force.
            raise ConfigError(
                file,
                f"api.max_buffered_request_bytes ({config.api.max_buffered_request_bytes}) is "
                f"less than the running api.max_request_bytes ({running.api.max_request_bytes}, "
                "which a reload does not change): a request of that size could never be "
                "served - at `$.api.max_buffered_request_bytes`",
            )
        steps = None
        if self.registry is not None:
            steps = declarations.plan(self.registry, config, file)
        # Queue URLs and ARNs are built from the account and region the broker started with.
        authenticator = Authenticator(
            config.auth, credentials_of(config), account_id=running.aws.account_id
        )
        keyring = keyring_of(config)
        removed = _check_key_changes(
            fingerprints(self.sealer.keyring),
            keyring,
            config.storage.key_file,
            whose="the running broker's",
        )
        # [sns] applies at the next restart, which these files would fail: refuse them now.
        check_sns_files(config)
        tls = self.tls
        before = (self.authenticator, self.sealer.keyring, self.config)
        was_anonymous = self.config.auth.anonymous
        before_tls = None if tls is None else tls.state()
        if tls is not None and config.api.tls.enabled:
            tls.reload(config.api.tls)
            self._warn_certificate_validity()  # served anyway: said at every load
        elif config.api.tls.enabled:
            server_context(config.api.tls)  # applies at the restart; refuse a bad file now
        self._switch(authenticator, keyring, config)
        self._warn_key_file_exposure(config)
        if self.registry is not None and self.directory is not None and steps is not None:
            try:
                # Last: queues declared with a key only the new key file has need it.
                await declarations.apply(self.registry, steps, file, self.frame.log)
            except BaseException:
                # Refused after all (the API changed a queue the plan relied on): the
                # running configuration again, as a refusal promises. Queues created before
                # the failure stay; the next reload of a good file finds them declared.
                self._switch(*before)
                if tls is not None and before_tls is not None:
                    tls.restore(before_tls)
                raise
            declarations.note_undeclared(self.directory / DECLARED_FILE, config, self.frame.log)
        # Applied: from here on messages are sealed with these keys (a refused reload kept
        # the running ones, and the history must not say otherwise).
        self._log_removed_keys(removed)
        if self.directory is not None:
            _remember_keys(self.directory, keyring, self.frame.log)
        if config.auth.anonymous and not was_anonymous:
            self.frame.log.warning(
                "auth.anonymous_enabled",
                file=file,
                consequence="unsigned requests are served from now on, as anyone's",
            )
        if _needs_restart(running, config):
            self.frame.log.warning("config.restart_required", section="api/storage")
        if config.aws != running.aws:
            self.frame.log.warning("config.restart_required", section="aws")
        if config.sns != running.sns:
            self.frame.log.warning("config.restart_required", section="sns")
        if config.sqs != running.sqs:
            self.frame.log.warning("config.restart_required", section="sqs")

    def _collect_body_budget(self) -> Iterable[Metric]:
        """The request bodies the API listener holds now, and how much it may."""
        held = GaugeMetricFamily(
            "wharf_broker_http_buffered_request_bytes",
            "Bytes of request bodies the API listener holds now: received and not yet answered.",
        )
        held.add_metric([], self.body_budget.held)
        limit = GaugeMetricFamily(
            "wharf_broker_http_buffered_request_bytes_limit",
            "api.max_buffered_request_bytes: beyond it requests get 503 before their body is read.",
        )
        limit.add_metric([], self.body_budget.limit)
        return [held, limit]

    def _collect_certificate_expiry(self) -> Iterable[Metric]:
        """The API certificate's notAfter at scrape time (the one a reload swapped in)."""
        family = GaugeMetricFamily(
            "wharf_broker_certificate_expiry_seconds",
            "End of the API listener's certificate validity (notAfter), as a Unix timestamp.",
            labels=["listener", "certificate"],
        )
        if self.tls is not None:
            certificate = self.tls.certificate
            family.add_metric(["api", certificate.cert_file], certificate.not_after)
        return [family]

    def _warn_certificate_validity(self) -> None:
        """Log a ``tls.certificate_not_valid`` warning when the API's certificate has expired
        or is not valid yet: served all the same, but every client that verifies it fails."""
        if self.tls is None:
            return
        fields = validity_warning(self.tls.certificate, time.time())
        if fields is not None:
            self.frame.log.warning("tls.certificate_not_valid", **fields)

    def _switch(
        self, authenticator: Authenticator, keyring: KeyRing | None, config: BrokerConfig
    ) -> None:
        """Serve with these credentials, keys and settings from now on."""
        self.authenticator = authenticator
        if self.frontend is not None:
            self.frontend.authenticator = authenticator
        self.sealer.replace(keyring)
        self.config = config
        self.body_budget.limit = config.api.max_buffered_request_bytes
        if self.disk is not None:
            self.disk.min_free_bytes = config.storage.min_free_bytes
            self.disk.measure()


def build(config: BrokerConfig, frame: Frame) -> BrokerApp:
    return BrokerApp(config, frame)


def _cannot_open(store: SqliteStore, error: sqlite3.DatabaseError) -> StartupError:
    return StartupError(f"{store.path}: cannot open the store: {error}")


@contextlib.contextmanager
def _store_damage_stops_the_start(store: SqliteStore) -> Iterator[None]:
    """Damage that opening the file did not see (pages past the first, found while loading
    queues, topics and tasks) stops the start as a file that is no database does: one line
    naming the file, not a traceback."""
    try:
        yield
    except sqlite3.DatabaseError as error:
        raise _cannot_open(store, error) from error


def _json_response(status: int, body: object) -> Response:
    return Response(status, msgspec.json.encode(body) + b"\n", content_type="application/json")
