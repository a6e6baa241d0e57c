"""Config-loading fuzz: valid documents of both daemons, mutations of them, and the rule's check.

The rule: "A bad config file names the file, the key and the reason, and a running daemon
keeps its old config." :func:`check_refusal` is that rule for one ``ConfigError``; the test
module (tests/compat/test_config_fuzz.py) drives the daemons' start and reload paths.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import json
import math
import re
import signal
import tomllib
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
import tomli_w
import trustme
from hypothesis import strategies as st

from monitoring.configfile import EMPTY_FILE, ConfigError, has_no_keys

Node = dict[str, Any] | list[Any]
KeyPath = tuple[str | int, ...]

# Keys whose values name files or directories the daemons read (or, access_log, write).
FILE_KEYS = frozenset(
    {
        "cert_file",
        "key_file",
        "credentials_file",
        "signing_key_file",
        "signing_cert_file",
        "ca_file",
        "data_dir",
        "state_dir",
        "destination",
        "token_file",
        "key_files",
    }
)


@dataclass(frozen=True, repr=False)
class Files:
    """Files a valid document names, and bad ones a mutation may point a key at."""

    root: Path
    ca: str
    cert: str
    key: str
    cert2: str
    key2: str
    rsa_key: str
    rsa_cert: str
    credentials: str
    keys_toml: str
    sticky1: str
    sticky2: str
    directory: str
    missing: str
    garbage: str
    empty: str
    access_log: str

    def __repr__(self) -> str:
        return f"Files({self.root})"

    def valid(self) -> list[str]:
        return [
            self.ca,
            self.cert,
            self.key,
            self.cert2,
            self.key2,
            self.rsa_key,
            self.rsa_cert,
            self.credentials,
            self.keys_toml,
            self.sticky1,
        ]

    def bad(self) -> list[str]:
        return [
            self.directory,
            self.missing,
            self.garbage,
            self.empty,
            "",
            "relative/missing.pem",
            self.missing + "\x00.pem",
            str(self.root / "nested" / "deeper" / "missing"),
        ]

    def writable(self, value: object) -> bool:
        """Whether an access log may be opened at ``value`` (the tests run as root: only
        inside the fixture directory)."""
        if not isinstance(value, str) or "\x00" in value or ".." in value:
            return value == "stderr"
        return value == "stderr" or value.startswith(str(self.root) + "/")

    def loggable(self, value: object) -> bool:
        """Whether a running balancer may take ``value`` as an access log destination and
        write to it: the schema refuses it (not an absolute path), or it is the fixture's log,
        or opening it fails without creating anything. Requests through a running balancer
        write their log lines: an input file (a certificate, ``missing``) must not get them."""
        if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
            return True
        return value in {self.access_log, self.directory, str(self.root / "nested/deeper/missing")}


CREDENTIAL_KEY = "AKIAFUZZFUZZFUZZ0001"
CREDENTIAL_SECRET = "fuzz-secret-0123456789"


def make_files(root: Path) -> Files:
    """Certificates (trustme), a credentials file, a key file and stickiness keys in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))

    def pair(stem: str, *names: str) -> tuple[str, str]:
        leaf = ca.issue_cert(*names, common_name=stem)
        cert_file, key_file = root / f"{stem}.pem", root / f"{stem}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert_file))
        for extra in leaf.cert_chain_pems[1:]:
            extra.write_to_path(str(cert_file), append=True)
        leaf.private_key_pem.write_to_path(str(key_file))
        return str(cert_file), str(key_file)

    cert, key = pair("www", "www.example.com")
    cert2, key2 = pair("api", "api.example.com", "*.api.example.com")
    rsa = ca.issue_cert("sns.local", common_name="signing", key_type=trustme.KeyType.RSA)
    rsa.cert_chain_pems[0].write_to_path(str(root / "signing.pem"))
    rsa.private_key_pem.write_to_path(str(root / "signing.key"))
    rsa_cert, rsa_key = str(root / "signing.pem"), str(root / "signing.key")
    credentials = root / "credentials.toml"
    credentials.write_text(
        f'[[keys]]\naccess_key_id = "{CREDENTIAL_KEY}"\n'
        f'secret_access_key = "{CREDENTIAL_SECRET}"\n'
        'principal = "arn:aws:iam::123456789012:role/fuzz"\n'
    )
    keys_toml = root / "keys.toml"
    secret = base64.b64encode(bytes(range(32))).decode()
    keys_toml.write_text(
        'sse_key_id = "k1"\nkms_master_keys = { "alias/orders" = "k1" }\n'
        f'[[keys]]\nid = "k1"\nkey = "{secret}"\n'
    )
    (root / "sticky1.key").write_bytes(bytes(range(32)))
    (root / "sticky2.key").write_bytes(bytes(range(100, 132)))
    (root / "a-directory").mkdir(exist_ok=True)
    (root / "empty").write_bytes(b"")
    (root / "garbage").write_bytes(b"\x00\xff garbage")
    return Files(
        root=root,
        ca=str(root / "ca.pem"),
        cert=cert,
        key=key,
        cert2=cert2,
        key2=key2,
        rsa_key=rsa_key,
        rsa_cert=rsa_cert,
        credentials=str(credentials),
        keys_toml=str(keys_toml),
        sticky1=str(root / "sticky1.key"),
        sticky2=str(root / "sticky2.key"),
        directory=str(root / "a-directory"),
        missing=str(root / "missing.pem"),
        garbage=str(root / "garbage"),
        empty=str(root / "empty"),
        access_log=str(root / "access.log"),
    )


# ---------------------------------------------------------------------------------------------
# Valid documents.


def broker_document(files: Files) -> dict[str, Any]:
    """A broker.toml using every file key: HTTPS, credentials, sealing keys, SNS signing."""
    dlq = "arn:aws:sqs:eu-west-1:123456789012:orders-dlq"
    return {
        "api": {
            "host": "127.0.0.1",
            "port": 0,
            "public_url": "https://sqs.internal:8443",
            "max_request_bytes": 1 << 20,
            "limits": {"max_connections": 100, "header_timeout_seconds": 5.0},
            "tls": {"cert_file": files.cert, "key_file": files.key},
        },
        "aws": {"region": "eu-west-1", "account_id": "123456789012"},
        "auth": {"anonymous": False, "credentials_file": files.credentials},
        "storage": {"data_dir": str(files.root / "data"), "key_file": files.keys_toml},
        "queues": [
            {
                "name": "orders",
                "attributes": {
                    "VisibilityTimeout": "60",
                    "KmsMasterKeyId": "alias/orders",
                    "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq, "maxReceiveCount": 5}),
                },
                "tags": {"team": "shop", "env": "fuzz"},
            },
            {"name": "orders-dlq", "attributes": {"MessageRetentionPeriod": "1209600"}},
            {
                "name": "events.fifo",
                "attributes": {"FifoQueue": "true", "ContentBasedDeduplication": "true"},
            },
            {"name": "sealed", "attributes": {"SqsManagedSseEnabled": "true"}},
        ],
        "sqs": {"max_in_flight_messages": 1000},
        "sns": {
            "signing_key_file": files.rsa_key,
            "signing_cert_file": files.rsa_cert,
            "signing_cert_url_base": "https://sns.internal",
            "signature_version": "2",
            "ca_file": files.ca,
            "delivery_concurrency": 16,
        },
        "admin": {"host": "127.0.0.1", "port": 0},
        "logging": {"level": "debug"},
        "lifecycle": {"grace_period_seconds": 1.5},
    }


def balancer_document(files: Files) -> dict[str, Any]:
    """A balancer.toml with an HTTPS listener (two certificates), rules of every kind,
    weighted sticky forwards, app-cookie stickiness, key files, a state dir and two workers."""
    return {
        "workers": 2,
        "state_dir": str(files.root / "state"),
        "admin": {"host": "127.0.0.1", "port": 19326},
        "stickiness": {"key_files": [files.sticky1, files.sticky2]},
        "listeners": [
            {
                "name": "plain",
                "protocol": "http",
                "host": "127.0.0.1",
                "port": 18080,
                "default_action": {
                    "type": "redirect",
                    "protocol": "HTTPS",
                    "port": 18443,
                    "status_code": "HTTP_301",
                },
                "access_log": {"enabled": True, "destination": files.access_log},
                "limits": {"header_count": 50},
            },
            {
                "name": "secure",
                "protocol": "https",
                "host": "127.0.0.1",
                "port": 18443,
                "certificates": [
                    {"cert_file": files.cert, "key_file": files.key},
                    {"cert_file": files.cert2, "key_file": files.key2},
                ],
                "ssl_policy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
                "x_forwarded_for": "preserve",
                "trusted_proxies": ["10.0.0.0/8", "::1/128"],
                "timeouts": {"tls_handshake_seconds": 5.0},
                "default_action": {
                    "type": "forward",
                    "target_groups": [
                        {"name": "app", "weight": 3},
                        {"name": "app-canary", "weight": 1},
                    ],
                    "stickiness": {"enabled": True, "duration_seconds": 600},
                },
                "rules": [
                    {
                        "priority": 1,
                        "conditions": {
                            "host_header": ["api.example.com"],
                            "path_pattern": ["/v1/*"],
                        },
                        "action": {"type": "forward", "target_group": "api"},
                    },
                    {
                        "priority": 2,
                        "conditions": {
                            "http_header": [{"name": "X-Mode", "values": ["maint*"]}],
                            "query_string": [{"values": [{"key": "down", "value": "yes"}]}],
                        },
                        "action": {
                            "type": "fixed_response",
                            "status_code": 503,
                            "content_type": "text/plain",
                            "message_body": "down",
                        },
                    },
                    {
                        "priority": 3,
                        "conditions": {
                            "source_ip": ["192.168.0.0/16"],
                            "http_request_method": ["POST"],
                        },
                        "action": {
                            "type": "redirect",
                            "host": "other.example.com",
                            "status_code": "HTTP_302",
                        },
                    },
                ],
            },
        ],
        "target_groups": [
            {
                "name": "app",
                "targets": [
                    {"host": "10.0.0.1", "port": 8080, "weight": 2, "zone": "a"},
                    {"host": "::1", "port": 8081},
                ],
                "stickiness": {"enabled": True, "type": "lb_cookie", "duration_seconds": 3600},
                "health_check": {"path": "/healthz", "matcher": "200,204", "healthy_threshold": 3},
                "slow_start_seconds": 60,
            },
            {
                "name": "app-canary",
                "targets": [{"host": "10.0.0.2", "port": 8080}],
                "algorithm": "weighted_random",
            },
            {
                "name": "api",
                "protocol": "https",
                "port": 8443,
                "targets": [{"host": "api.internal"}, {"host": "api.internal", "port": 8444}],
                "stickiness": {"enabled": True, "type": "app_cookie", "cookie_name": "SESSION"},
                "health_check": {
                    "protocol": "https",
                    "path": "/health",
                    "port": 9000,
                    "matcher": "200-299",
                    "interval_seconds": 10,
                    "timeout_seconds": 5,
                },
                "minimum_healthy_targets": {"count": 1, "percent": 50},
            },
        ],
    }


MARKER_LISTENER = "marker"


def serving_document(
    document: dict[str, Any], target_ports: list[int], message: str
) -> dict[str, Any]:
    """``document`` made to run inside a test, in one process: the admin listener and every
    listener on 127.0.0.1, port 0; every target on 127.0.0.1 at one of ``target_ports`` (two,
    so that no group lists a target twice); and a listener :data:`MARKER_LISTENER` whose fixed
    response ``message`` tells which configuration serves."""
    served = copy.deepcopy(document)
    # One process, as the test runs it: on port 0 workers could not share the listeners, and
    # the start (and so a reload) refuses such a file.
    served.pop("workers", None)
    served["admin"] = {**served.get("admin", {}), "host": "127.0.0.1", "port": 0}
    for listener in served.get("listeners", []):
        listener["host"], listener["port"] = "127.0.0.1", 0
    for group in served.get("target_groups", []):
        group["targets"] = [
            {**target, "host": "127.0.0.1", "port": target_ports[i % len(target_ports)]}
            for i, target in enumerate(group.get("targets", []))
        ]
    served.setdefault("listeners", []).append(
        {
            "name": MARKER_LISTENER,
            "protocol": "http",
            "host": "127.0.0.1",
            "port": 0,
            "default_action": {
                "type": "fixed_response",
                "status_code": 200,
                "message_body": message,
            },
        }
    )
    return served


# ---------------------------------------------------------------------------------------------
# Mutations of the document tree.


def key_paths(node: Any, prefix: KeyPath = ()) -> Iterator[KeyPath]:
    """Every path below ``node`` (not ``node`` itself), parents before children."""
    items: list[tuple[str | int, Any]] = []
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    for key, value in items:
        yield (*prefix, key)
        yield from key_paths(value, (*prefix, key))


def get(document: Any, path: KeyPath) -> Any:
    for key in path:
        document = document[key]
    return document


def is_file_key(path: KeyPath) -> bool:
    """Whether ``path`` holds a file name (``key_files`` entries included)."""
    if isinstance(path[-1], int):
        return len(path) > 1 and path[-2] == "key_files"
    return path[-1] in FILE_KEYS and path[-1] != "key_files"


DATES = [
    datetime.date(2024, 2, 29),
    datetime.time(12, 30),
    datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
]
HUGE = [2**63 - 1, -(2**63), 2**64, -(2**64), 10**40, -1, 0, 65536, 4_000_000_000]
ODD_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 0.5]
ODD_TEXT = ["", " ", "\x00", "a\x00b", "é" * 300, "x" * 70_000, "${HOME}", "../../etc/passwd"]
NAME_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r"), max_size=30)

scalars = st.one_of(
    NAME_TEXT,
    st.sampled_from(ODD_TEXT),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(ODD_FLOATS),
    st.booleans(),
    st.sampled_from(DATES),
)
# Wrong-typed values: scalars, arrays and tables of them (one level deep is enough: the
# schema never nests an unexpected container more than that before refusing it).
wrong_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(NAME_TEXT, scalars, max_size=3),
    st.lists(st.dictionaries(NAME_TEXT, scalars, max_size=2), min_size=1, max_size=2),
)


@st.composite
def tree_mutation(draw: st.DrawFn, document: dict[str, Any], files: Files) -> str:
    """Apply one mutation to ``document`` in place; returns what it did (for ``note``)."""
    paths = list(key_paths(document))
    kind = draw(
        st.sampled_from(
            ["replace", "delete", "unknown", "duplicate", "file", "file", "file", "swap"]
        )
    )
    if kind == "file":
        file_paths = [p for p in paths if is_file_key(p)]
        if file_paths:
            path = draw(st.sampled_from(file_paths))
            value = draw(st.sampled_from(files.valid() + files.bad()))
            get(document, path[:-1])[path[-1]] = value
            return f"file {path} = {value!r}"
    if kind == "duplicate":
        lists = [p for p in paths if isinstance(get(document, p), list) and get(document, p)]
        if lists:
            path = draw(st.sampled_from(lists))
            items = get(document, path)
            items.append(copy.deepcopy(draw(st.sampled_from(items))))
            return f"duplicate an entry of {path}"
    if kind == "unknown":
        tables = [()] + [p for p in paths if isinstance(get(document, p), dict)]
        path = draw(st.sampled_from(tables))
        known = sorted({k for p in paths for k in p if isinstance(k, str)})
        name = draw(st.sampled_from(known) | NAME_TEXT if known else NAME_TEXT)
        get(document, path)[name] = draw(wrong_values)
        return f"add {name!r} to {path}"
    if kind == "swap" and len(paths) > 1:
        # A value of the right kind taken from elsewhere (a port where a weight goes, ...).
        source, target = draw(st.sampled_from(paths)), draw(st.sampled_from(paths))
        value = copy.deepcopy(get(document, source))
        if target[: len(source)] != source:
            get(document, target[:-1])[target[-1]] = value
            return f"copy {source} to {target}"
    if not paths:
        document[draw(NAME_TEXT)] = draw(wrong_values)
        return "add a key to an empty document"
    path = draw(st.sampled_from(paths))
    parent = get(document, path[:-1])
    if kind == "delete":
        del parent[path[-1]]
        return f"delete {path}"
    parent[path[-1]] = draw(wrong_values)
    return f"replace {path} with {parent[path[-1]]!r:.200}"


DEEP = b"\nnested = " + b"[" * 3000 + b"]" * 3000 + b"\n"
INSERTS = [
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b'"',
    b"'''",
    b"[",
    b"\n[",
    b"\n[[",
    b"=",
    b"\\u",
    b"\\UFFFFFFFF",
    b"\r",
    b"\n",
    b"#",
    b"{",
    DEEP,
    b"\nx = {" * 2000,
    b"\n[api]\n",
    b"\n[[listeners]]\n",
]


@st.composite
def byte_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """Mutate the encoded TOML: truncate, insert, delete, overwrite, or repeat a line."""
    at = draw(st.integers(0, len(data)))
    kind = draw(st.sampled_from(["truncate", "insert", "delete", "overwrite", "repeat"]))
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        inserted = draw(st.sampled_from(INSERTS) | st.binary(min_size=1, max_size=8))
        return data[:at] + inserted + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 16)) :]
    if kind == "overwrite":
        return data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at + 1 :]
    lines = data.splitlines(keepends=True)
    if not lines:
        return data + DEEP
    i = draw(st.integers(0, len(lines) - 1))
    return b"".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])


def encode(document: dict[str, Any]) -> bytes:
    return tomli_w.dumps(document).encode()


# ---------------------------------------------------------------------------------------------
# The rule.


def _structs(annotation: Any, seen: set[type]) -> Iterator[type[msgspec.Struct]]:
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        if annotation in seen:
            return
        seen.add(annotation)
        yield annotation
        hints = typing.get_type_hints(annotation, include_extras=True)
        for field in msgspec.structs.fields(annotation):
            yield from _structs(hints[field.name], seen)
        return
    for arg in typing.get_args(annotation):
        yield from _structs(arg, seen)


def key_names(schema: type[msgspec.Struct]) -> frozenset[str]:
    """Every key name the schema knows, in every section and every tagged variant."""
    names: set[str] = set()
    for struct in _structs(schema, set()):
        names.update(f.encode_name for f in msgspec.structs.fields(struct))
        config = struct.__struct_config__
        if isinstance(config.tag_field, str):
            names.add(config.tag_field)
    return frozenset(names)


def file_values(document: Any) -> set[str]:
    """The non-empty values of file keys anywhere in ``document``."""
    found: set[str] = set()
    for path in key_paths(document):
        value = get(document, path)
        if is_file_key(path) and isinstance(value, str) and value:
            found.add(value)
    return found


WHERE = re.compile(r"`\$[^`]*`")
UNKNOWN = re.compile(r"^Object contains unknown field `")
NEITHER = ("<config>", "<defaults>")


def check_refusal(
    error: ConfigError,
    config_file: Path,
    data: bytes,
    document: Any,
    schema: type[msgspec.Struct],
) -> None:
    """``error`` names a file (the config file, or one it names) and the reason; one about the
    config file itself also says where: a ``$.path``, a key name, or a line and column."""
    message, reason = str(error), error.reason
    text = data.decode(errors="replace")
    assert reason.strip(), f"no reason given: {message!r}"
    if error.path == str(config_file):
        if reason.startswith("cannot read"):
            return
        if reason.startswith(EMPTY_FILE):  # the whole file is where: it sets nothing
            assert has_no_keys(data.decode()), message
            return
        if reason.startswith("TOML syntax error"):
            # tomllib says "(at line 3, column 7)" or "(at end of document)".
            assert "(at " in reason or "utf-8" in reason or "nested" in reason, message
            return
        if UNKNOWN.search(reason):  # the unknown key itself, at the top level of the file
            return
        names = key_names(schema)
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", WHERE.sub(" ", reason)))
        assert WHERE.search(reason) or words & names, f"names no key: {message!r}"
        return
    # Another file: one a file key names (or in a directory one names: state_dir/targets.json).
    # The refusal came after parsing, so the file's own values are those of its text.
    try:
        parsed = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        parsed = document
    referenced = file_values(parsed)
    if error.path in NEITHER:
        assert any(f in message for f in referenced), (
            f"names neither the config file nor a file it names: {message!r}"
        )
    else:
        prefixes = set(referenced) | {str(Path(f)) for f in referenced}
        assert error.path in referenced or any(
            error.path.startswith(p.rstrip("/") + "/") for p in prefixes
        ), f"names a file the config does not: {message!r}"


class Hang(BaseException):
    """A load took longer than its bound."""


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread if the block runs longer than ``seconds``."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"config loading took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
