from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.config import BrokerConfig, DeclaredQueue
from monitoring.configfile import ConfigError, decode, load
from tests.support.schema import missing_key_paths, uncommented_key_lines

CONF = Path(__file__).parents[2] / "conf" / "broker.toml"


def test_shipped_file_loads_and_equals_the_defaults_but_for_its_example_queue():
    loaded = load(CONF, BrokerConfig)
    assert [q.name for q in loaded.queues] == ["example"]
    assert msgspec.structs.replace(loaded, queues=[]) == BrokerConfig()


def test_anonymous_access_on_the_network_must_be_asked_for():
    with pytest.raises(ConfigError, match=re.escape("non-loopback address '0.0.0.0'")):
        decode(b'[api]\nhost = "0.0.0.0"\n', BrokerConfig)
    text = b'[api]\nhost = "0.0.0.0"\n[auth]\nallow_anonymous_on_network = true\n'
    assert decode(text, BrokerConfig).auth.anonymous
    with pytest.raises(ConfigError, match=re.escape("needs auth.credentials_file")):
        decode(b"[auth]\nanonymous = false\n", BrokerConfig)


def test_identity_is_checked():
    with pytest.raises(ConfigError, match=re.escape("account_id must be 12 digits - at `$.aws`")):
        decode(b'[aws]\naccount_id = "123"\n', BrokerConfig)
    with pytest.raises(ConfigError, match="not an AWS-style region"):
        decode(b'[aws]\nregion = "mars"\n', BrokerConfig)


@pytest.mark.parametrize("region", ["cn-north-1", "us-gov-west-1", "us-isob-east-1"])
def test_a_region_outside_the_aws_partition_is_refused(region):
    # Its ARNs would be arn:aws-cn:... (found by a report-only hunt: a declared queue's
    # real arn:aws-cn: dead-letter ARN then failed the start).
    with pytest.raises(ConfigError, match="outside the aws partition"):
        decode(b'[aws]\nregion = "%s"\n' % region.encode(), BrokerConfig)
    assert decode(b'[aws]\nregion = "ap-southeast-2"\n', BrokerConfig).aws.region


def test_every_schema_key_appears_in_the_shipped_file():
    assert missing_key_paths(BrokerConfig, CONF.read_text()) == []


def test_every_key_in_the_shipped_file_has_a_comment_above_it():
    assert uncommented_key_lines(CONF.read_text()) == []


def test_minimal_file_gets_aws_like_defaults():
    config = decode(b"", BrokerConfig)
    assert config.admin.port == 9325
    assert config.lifecycle.grace_period_seconds == 30


def test_errors_name_file_key_path_and_reason():
    with pytest.raises(ConfigError) as info:
        decode(b"[admin]\nport = 70000\n", BrokerConfig, path="conf/broker.toml")
    assert str(info.value) == "conf/broker.toml: Expected `int` <= 65535 - at `$.admin.port`"


def declared(targets: list[int | None]) -> list[DeclaredQueue]:
    """Queues q0, q1, ... where queue i's RedrivePolicy names queue targets[i]."""
    queues = []
    for i, target in enumerate(targets):
        attributes = {}
        if target is not None:
            dlq = f"arn:aws:sqs:us-east-1:000000000000:q{target}"
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dlq, "maxReceiveCount": 3}
            )
        queues.append(DeclaredQueue(name=f"q{i}", attributes=attributes))
    return queues


def has_cycle(targets: list[int | None]) -> bool:
    for start in range(len(targets)):
        seen = set()
        at: int | None = start
        while at is not None:
            if at in seen:
                return True
            seen.add(at)
            at = targets[at]
    return False


@given(
    st.integers(0, 8).flatmap(
        lambda n: (
            st.lists(st.none() | st.integers(0, n - 1), min_size=n, max_size=n)
            if n
            else st.just([])
        )
    )
)
def test_declared_dead_letter_targets_come_before_their_sources(targets: list[int | None]):
    queues = declared(targets)
    if has_cycle(targets):
        with pytest.raises(ValueError, match="the declared dead-letter targets form a cycle"):
            BrokerConfig(queues=queues)
        return
    order = [i for i, _ in BrokerConfig(queues=queues).declaration_order()]
    assert sorted(order) == list(range(len(targets)))
    for source, target in enumerate(targets):
        if target is not None:
            assert order.index(target) < order.index(source)


def test_declaration_order_keeps_the_file_order_where_it_can():
    order = BrokerConfig(queues=declared([None, 3, None, None])).declaration_order()
    assert [i for i, _ in order] == [0, 3, 1, 2]


def test_a_declared_value_is_refused_with_its_key():
    text = (
        b'[[queues]]\nname = "ok"\n[[queues]]\nname = "q"\nattributes = { DelaySeconds = "901" }\n'
    )
    with pytest.raises(ConfigError) as info:
        decode(text, BrokerConfig, path="broker.toml")
    assert str(info.value) == (
        "broker.toml: queue 'q': attributes.DelaySeconds: InvalidAttributeValue: "
        "Invalid value for the parameter DelaySeconds. - at `$.queues[1]`"
    )
    fifo_only = b'[[queues]]\nname = "q"\nattributes = { ContentBasedDeduplication = "true" }\n'
    with pytest.raises(ConfigError, match=re.escape("attributes.ContentBasedDeduplication")):
        decode(fifo_only, BrokerConfig)
    fifo = (
        b'[[queues]]\nname = "q.fifo"\n'
        b'attributes = { FifoQueue = "true", ContentBasedDeduplication = "true" }\n'
    )
    assert decode(fifo, BrokerConfig).queues[0].fifo


def _redrive(source: str, source_attributes: str, target: str, target_attributes: str) -> bytes:
    policy = json.dumps(
        {
            "deadLetterTargetArn": f"arn:aws:sqs:us-east-1:000000000000:{target}",
            "maxReceiveCount": 3,
        }
    )
    return (
        f'[[queues]]\nname = "{target}"\nattributes = {{ {target_attributes} }}\n'
        f'[[queues]]\nname = "{source}"\n'
        f"attributes = {{ {source_attributes} RedrivePolicy = '{policy}' }}\n"
    ).encode()


@pytest.mark.parametrize(
    ("source", "source_attributes", "target", "target_attributes", "reason"),
    [
        (
            "src.fifo",
            'FifoQueue = "true",',
            "dlq",
            "",
            "Dead-letter queue must be same type of queue as the source",
        ),
        (
            "src",
            "",
            "dlq.fifo",
            'FifoQueue = "true"',
            "Dead-letter queue must be same type of queue as the source",
        ),
        (
            "src",
            "",
            "dlq",
            'RedriveAllowPolicy = \'{"redrivePermission": "denyAll"}\'',
            "does not have permission to use",
        ),
    ],
)
def test_a_declared_dead_letter_target_the_start_would_refuse_fails_the_check(
    source: str, source_attributes: str, target: str, target_attributes: str, reason: str
) -> None:
    # check-config must find what the start refuses, short of queues only the store knows.
    text = _redrive(source, source_attributes, target, target_attributes)
    with pytest.raises(ConfigError) as info:
        decode(text, BrokerConfig, path="broker.toml")
    message = str(info.value)
    assert message.startswith(
        f"broker.toml: queues[1].attributes.RedrivePolicy (queue {source!r}): "
        "InvalidParameterValue: "
    )
    assert reason in message


def test_a_declared_dead_letter_target_of_the_same_type_passes_the_check() -> None:
    fifo = _redrive("src.fifo", 'FifoQueue = "true",', "dlq.fifo", 'FifoQueue = "true"')
    assert decode(fifo, BrokerConfig).queues[1].fifo
    allowed = 'RedriveAllowPolicy = \'{"redrivePermission": "allowAll"}\''
    assert decode(_redrive("src", "", "dlq", allowed), BrokerConfig).queues[0].name == "dlq"
    # An undeclared target is the start's to check, against the queues the store holds.
    lone = b'[[queues]]\nname = "src.fifo"\nattributes = { FifoQueue = "true", RedrivePolicy = '
    lone += b'\'{"deadLetterTargetArn": "arn:aws:sqs:us-east-1:000000000000:dlq", '
    lone += b'"maxReceiveCount": 3}\' }\n'
    assert decode(lone, BrokerConfig).queues[0].fifo


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ('{ "aws:x" = "y" }', "queue 'q': tags.aws:x: the aws: prefix is reserved for AWS use"),
        (
            "{ " + ", ".join(f'k{n} = "v"' for n in range(51)) + " }",
            "queue 'q': tags: 51 tags, a queue can have at most 50",
        ),
    ],
)
def test_declared_tags_follow_tag_queues_rules(tags: str, reason: str) -> None:
    """Accepted here, a queue would hold tags TagQueue refuses; one past the quota would
    refuse every later TagQueue."""
    text = f'[[queues]]\nname = "q"\ntags = {tags}\n'.encode()
    with pytest.raises(ConfigError) as info:
        decode(text, BrokerConfig, path="broker.toml")
    assert str(info.value) == f"broker.toml: {reason} - at `$.queues[0]`"
    fifty = "{ " + ", ".join(f'k{n} = "v"' for n in range(50)) + " }"
    assert (
        len(decode(f'[[queues]]\nname = "q"\ntags = {fifty}\n', BrokerConfig).queues[0].tags) == 50
    )


@pytest.mark.parametrize(
    ("api_host", "admin_host"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),  # the wildcard holds the port on every IPv4 address
        ("localhost", "127.0.0.1"),  # resolved as the bind resolves it
        ("::", "::1"),
        ("127.0.0.1", "127.1"),  # written two ways (found by a report-only hunt)
        ("0:0::1", "::1"),
    ],
)
def test_api_and_admin_on_one_address_and_port_is_refused_naming_both_keys(api_host, admin_host):
    """check-config passed it, and the start failed with "Address already in use", naming
    no key."""
    text = (
        f'[api]\nhost = "{api_host}"\nport = 9400\n[admin]\nhost = "{admin_host}"\nport = 9400\n'
        "[auth]\nallow_anonymous_on_network = true\n"
    )
    with pytest.raises(ConfigError) as info:
        decode(text.encode(), BrokerConfig, path="broker.toml")
    assert str(info.value).startswith(
        f"broker.toml: api.port and admin.port are both 9400 on the same address (api.host "
        f"'{api_host}', admin.host '{admin_host}')"
    )


@pytest.mark.parametrize(
    ("api", "admin"),
    [
        (("127.0.0.1", 0), ("127.0.0.1", 0)),  # two free ports
        (("127.0.0.1", 9400), ("127.0.0.2", 9400)),
        (("0.0.0.0", 9400), ("::1", 9400)),  # families apart
        (("127.0.0.1", 9400), ("127.0.0.1", 9401)),
    ],
)
def test_listeners_that_can_both_bind_are_accepted(api, admin):
    text = (
        f'[api]\nhost = "{api[0]}"\nport = {api[1]}\n[admin]\nhost = "{admin[0]}"\n'
        f"port = {admin[1]}\n[auth]\nallow_anonymous_on_network = true\n"
    )
    config = decode(text.encode(), BrokerConfig)
    assert (config.api.port, config.admin.port) == (api[1], admin[1])


@pytest.mark.parametrize(
    "url",
    ["http://::1:9324", "http://[::1", "http://x:99999", "http://a b", "http://host/", "ftp://h"],
)
def test_a_public_url_that_queue_urls_cannot_be_built_on_is_refused(url):
    # An unbracketed IPv6 address passed check-config, then made every queue URL a 500.
    document = f'[api]\npublic_url = "{url}"\n'.encode()
    with pytest.raises(ConfigError, match=re.escape("public_url must be scheme://host[:port]")):
        decode(document, BrokerConfig)
    sns = f'[sns]\nsigning_cert_url_base = "{url}"\n'.encode()
    with pytest.raises(ConfigError, match=re.escape("signing_cert_url_base must be")):
        decode(sns, BrokerConfig)


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("http://::1:9324", ": an IPv6 address goes in brackets (http://[::1]:9324)"),
        ("http://fe80::1%eth0", ": an IPv6 address goes in brackets"),
        ("http://[fe80::1%eth0]:9324", ": a zone id is written %25 in a URL (RFC 6874"),
    ],
)
def test_an_ipv6_host_written_as_no_url_writes_it_is_refused_with_the_fix(url, hint):
    for document, key in (
        (f'[api]\npublic_url = "{url}"\n', "public_url"),
        (f'[sns]\nsigning_cert_url_base = "{url}"\n', "signing_cert_url_base"),
    ):
        with pytest.raises(ConfigError) as info:
            decode(document.encode(), BrokerConfig)
        assert f"{key} must be scheme://host[:port] without a path, got {url!r}{hint}" in str(
            info.value
        )


@pytest.mark.parametrize("url", ["http://[::1]:9324", "https://sqs.example.com", "http://10.0.0.1"])
def test_public_urls_of_any_host_form_are_accepted(url):
    assert decode(f'[api]\npublic_url = "{url}"\n'.encode(), BrokerConfig).api.public_url == url


@pytest.mark.parametrize(
    ("value", "reason"),
    [("-1", 'signing_processes must be "auto" or 0 to 64'), ("65", "0 to 64"), ('"all"', "all")],
)
def test_signing_processes_is_auto_or_a_bounded_count(value, reason):
    with pytest.raises(ConfigError, match=re.escape(reason)):
        decode(f"[sns]\nsigning_processes = {value}\n".encode(), BrokerConfig)
    assert decode(b"[sns]\nsigning_processes = 0\n", BrokerConfig).sns.signing_processes == 0
    assert BrokerConfig().sns.signing_processes == "auto"


def test_the_body_budget_holds_at_least_one_largest_request():
    assert BrokerConfig().api.max_buffered_request_bytes == 1 << 30
    document = b"[api]\nmax_request_bytes = 1048576\nmax_buffered_request_bytes = 1048575\n"
    with pytest.raises(
        ConfigError, match=re.escape("max_buffered_request_bytes (1048575) is less")
    ):
        decode(document, BrokerConfig)
    with pytest.raises(ConfigError, match="max_buffered_request_bytes"):
        decode(b"[api]\nmax_buffered_request_bytes = 1000\n", BrokerConfig)
    text = b"[api]\nmax_request_bytes = 1048576\nmax_buffered_request_bytes = 1048576\n"
    assert decode(text, BrokerConfig).api.max_buffered_request_bytes == 1 << 20
