"""Answers to Basic and Digest challenges: the RFCs' own examples, urllib's implementation
as a second opinion, and the parser's totality."""

from __future__ import annotations

import base64
import hashlib
import urllib.request
from typing import Any

import h11
from hypothesis import given
from hypothesis import strategies as st

from proto.http_auth import (
    BasicScheme,
    Challenge,
    Credentials,
    DigestSession,
    answer_challenges,
    is_stale,
    parse_challenges,
)

MUFASA = Credentials("Mufasa", "Circle of Life")
RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def fields(authorization: str) -> dict[str, str]:
    scheme, _, rest = authorization.partition(" ")
    assert scheme == "Digest"
    parsed: dict[str, str] = urllib.request.parse_keqv_list(urllib.request.parse_http_list(rest))
    return parsed


def digest(values: list[str], credentials: Credentials = MUFASA) -> DigestSession:
    session = answer_challenges(values, credentials)
    assert isinstance(session, DigestSession)
    return session


def test_rfc7616_examples_md5_and_sha256() -> None:
    # RFC 7616 §3.9.1: the same request answered with each algorithm.
    for algorithm, response in [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ]:
        session = digest([RFC7616_CHALLENGE.format(algorithm=algorithm)])
        answer = fields(session.authorization("GET", "/dir/index.html", b"", RFC7616_CNONCE))
        assert answer == {
            "username": "Mufasa",
            "realm": "http-auth@example.org",
            "uri": "/dir/index.html",
            "algorithm": algorithm,
            "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "response": response,
            "qop": "auth",
            "nc": "00000001",
            "cnonce": RFC7616_CNONCE,
            "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
        }


def test_rfc2617_example_and_the_nonce_count() -> None:
    session = digest(
        [
            'Digest realm="testrealm@host.com", qop="auth,auth-int", '
            'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
        ],
        Credentials("Mufasa", "Circle Of Life"),
    )
    first = fields(session.authorization("GET", "/dir/index.html", b"", "0a4f113b"))
    assert first["response"] == "6629fae49393a05397450978507c4ef1"  # RFC 2617 §3.5
    assert "algorithm" not in first  # not named by the challenge: not named back
    second = fields(session.authorization("GET", "/dir/index.html", b"", "0a4f113b"))
    assert (first["nc"], second["nc"]) == ("00000001", "00000002")
    assert second["response"] != first["response"]


def test_rfc2069_challenges_without_qop() -> None:
    session = digest(['Digest realm="r", nonce="n"'], Credentials("u", "p"))
    answer = fields(session.authorization("POST", "/x", b"", "c"))
    assert not {"qop", "nc", "cnonce"} & answer.keys()

    # response = H(H(A1):nonce:H(A2)), RFC 2069 §2.1.2, computed with hashlib directly
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    assert answer["response"] == md5(f"{md5('u:r:p')}:n:{md5('POST:/x')}")


def test_qop_auth_int_and_sess_variants_hash_what_the_rfc_says() -> None:
    def sha(text: str | bytes) -> str:
        return hashlib.sha256(text if isinstance(text, bytes) else text.encode()).hexdigest()

    session = digest(['Digest realm="r", nonce="n", qop="auth-int", algorithm=SHA-256-sess'])
    answer = fields(session.authorization("POST", "/hook", b"body", "c"))
    assert (answer["qop"], answer["algorithm"]) == ("auth-int", "SHA-256-sess")
    ha1 = sha(f"{sha('Mufasa:r:Circle of Life')}:n:c")
    ha2 = sha(f"POST:/hook:{sha(b'body')}")
    assert answer["response"] == sha(f"{ha1}:n:00000001:c:auth-int:{ha2}")


def test_userhash_and_non_ascii_user_names() -> None:
    hashed = digest(['Digest realm="r", nonce="n", qop=auth, userhash=true'])
    answer = fields(hashed.authorization("GET", "/", b"", "c"))
    assert answer["username"] == hashlib.md5(b"Mufasa:r").hexdigest()
    assert answer["userhash"] == "true"
    plain = digest(['Digest realm="r", nonce="n", qop=auth'], Credentials("Jäsøn Doe", "x"))
    header = plain.authorization("GET", "/", b"", "c")
    assert "username*=UTF-8''J%C3%A4s%C3%B8n%20Doe" in header  # RFC 7616 §3.4.4
    quoted = digest(['Digest realm="r", nonce="n"'], Credentials('a"b\\c', "x"))
    assert 'username="a\\"b\\\\c"' in quoted.authorization("GET", "/", b"", "c")


def test_the_first_answerable_digest_wins_over_basic() -> None:
    values = [
        'Basic realm="r"',
        'Digest realm="r", nonce="1", algorithm=SHA-1',  # not an RFC 7616 algorithm
        'Digest realm="r", nonce="2", qop="auth-conf"',  # no qop this client can give
        'Digest realm="r", nonce="3", algorithm=SHA-512-256, Digest realm="r", nonce="4"',
    ]
    session = digest(values)
    assert (session.nonce, session.algorithm) == ("3", "SHA-512-256")
    assert answer_challenges(['Basic realm="r"', 'Digest realm="r"'], MUFASA) == BasicScheme(
        MUFASA
    )  # a Digest challenge without a nonce cannot be answered
    assert answer_challenges(['Bearer realm="r"', "Negotiate abc=="], MUFASA) is None
    # Values that would go back in the Authorization header must be printable ASCII there.
    assert answer_challenges(['Digest realm="r\xe9", nonce="n"'], MUFASA) is None
    assert answer_challenges([], MUFASA) is None


def test_basic_is_utf8_user_colon_password() -> None:
    header = BasicScheme(Credentials("us@er", "pä:ss")).authorization("POST", "/", b"", "")
    assert base64.b64decode(header.removeprefix("Basic ")) == "us@er:pä:ss".encode()


def test_parsing_challenges() -> None:
    assert parse_challenges(['Digest realm="a, b", NONCE="x\\"y", qop="auth", Basic realm=z']) == [
        Challenge("digest", {"realm": "a, b", "nonce": 'x"y', "qop": "auth"}),
        Challenge("basic", {"realm": "z"}),
    ]
    assert parse_challenges(["Negotiate YII=, Basic", ", ,", '"?']) == [
        Challenge("negotiate", {}),
        Challenge("yii", {}),
        Challenge("basic", {}),
    ]
    assert is_stale(['Basic realm="r"', 'Digest realm="r", nonce="n", stale=TRUE'])
    assert not is_stale(['Digest realm="r", nonce="n", stale=false'])


@given(st.lists(st.text(max_size=80), max_size=4))
def test_parsing_is_total(values: list[str]) -> None:
    for challenge in parse_challenges(values):
        assert challenge.scheme == challenge.scheme.lower()
    answer_challenges(values, MUFASA)
    is_stale(values)


_PRINTABLE = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"\\'),
    min_size=1,
    max_size=20,
)
_TOKEN = st.text(st.sampled_from("abcdefXYZ0123456789+/="), min_size=1, max_size=20)


@given(
    user=_PRINTABLE,
    password=_PRINTABLE,
    realm=_PRINTABLE,
    nonce=_TOKEN,
    cnonce=_TOKEN,
    path=st.text(st.sampled_from("abc/?=&%"), max_size=20),
    uses=st.integers(1, 3),
)
def test_md5_answers_agree_with_urllib(
    user: str, password: str, realm: str, nonce: str, cnonce: str, path: str, uses: int
) -> None:
    class Handler(urllib.request.AbstractDigestAuthHandler):
        def get_cnonce(self, nonce: Any) -> str:
            return cnonce

    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    passwords.add_password(None, "http://h/", user, password)
    theirs = Handler(passwords)
    request = urllib.request.Request("http://h/" + path, data=b"x", method="POST")
    challenge = {"realm": realm, "nonce": nonce, "qop": "auth", "algorithm": "MD5"}
    values = [f'Digest realm="{realm}", nonce="{nonce}", qop=auth, algorithm=MD5']
    ours = digest(values, Credentials(user, password))
    for _ in range(uses):
        expected = urllib.request.parse_keqv_list(
            urllib.request.parse_http_list(theirs.get_authorization(request, challenge))
        )
        answer = fields(ours.authorization("POST", request.selector, b"x", cnonce))
        assert (answer["response"], answer["nc"]) == (expected["response"], expected["nc"])


@given(
    params=st.dictionaries(
        st.sampled_from(["realm", "nonce", "opaque", "algorithm", "qop", "userhash", "x"]),
        st.text(max_size=30),
    ),
    user=st.text(min_size=1, max_size=20),
    password=st.text(max_size=20),
)
def test_every_answer_is_a_header_value_h11_sends(
    params: dict[str, str], user: str, password: str
) -> None:
    quoted = ", ".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in params.items()
    )
    for value in (f"Digest {quoted}", "Basic realm=x"):
        scheme = answer_challenges([value], Credentials(user, password))
        if scheme is None:
            continue
        header = scheme.authorization("POST", "/hook?a=1", b"body", "c0ffee")
        h11.Request(
            method="POST", target="/hook", headers=[("Host", "h"), ("Authorization", header)]
        )
