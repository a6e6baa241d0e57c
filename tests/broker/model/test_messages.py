import decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from broker.model.errors import (
    INVALID_MESSAGE_CONTENTS,
    INVALID_PARAMETER_VALUE,
    MISSING_PARAMETER,
    SqsError,
)
from broker.model.messages import (
    AttributeValue,
    SendRequest,
    body_characters_allowed,
    content_deduplication_id,
    is_number_value,
    message_size,
    sequence_number,
    validate_send,
)
from broker.model.settings import parse_create

STANDARD = parse_create({})
FIFO = parse_create({"FifoQueue": "true"})
FIFO_CBD = parse_create({"FifoQueue": "true", "ContentBasedDeduplication": "true"})


def refused(settings, **fields):
    with pytest.raises(SqsError) as raised:
        validate_send(settings, SendRequest(**fields))
    return raised.value.code, raised.value.message


def test_body_rules():
    assert refused(STANDARD, body="")[0] == MISSING_PARAMETER
    assert refused(STANDARD, body="a\x00b")[0] == INVALID_MESSAGE_CONTENTS
    assert refused(STANDARD, body="\ufffe")[0] == INVALID_MESSAGE_CONTENTS
    validate_send(STANDARD, SendRequest(body="tab\tnewline\n\U0001f600 \ue000"))


ALLOWED_CHARACTERS = "#x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]"


@pytest.mark.parametrize(
    ("body", "named"),
    [("a\x00b\x01", "#x0"), ("ok \x1f", "#x1F"), ("\ufffe\uffff", "#xFFFE"), ("x\ud83d", "#xD83D")],
)
def test_a_refused_body_names_its_first_forbidden_character_as_sqs_does(body, named):
    assert refused(STANDARD, body=body) == (
        INVALID_MESSAGE_CONTENTS,
        f"Invalid binary character '{named}' was found in the message body, the set of "
        f"allowed characters is {ALLOWED_CHARACTERS}.",
    )


def test_a_refused_attribute_value_names_its_first_forbidden_character():
    attributes = {"note": AttributeValue("String", "fine\x0b\x00")}
    assert refused(STANDARD, body="b", attributes=attributes) == (
        INVALID_PARAMETER_VALUE,
        "Invalid binary character '#xB' was found in the message attribute 'note' value, the "
        f"set of allowed characters is {ALLOWED_CHARACTERS}.",
    )


def test_lone_surrogates_anywhere_are_refused_before_anything_encodes_them():
    # A JSON escape can bring one (proto.aws.json_protocol); the store's UTF-8 cannot hold it.
    assert refused(STANDARD, body="b", trace_header="Root=\ud800") == (
        INVALID_PARAMETER_VALUE,
        "Invalid binary character '#xD800' was found in the message attribute 'AWSTraceHeader' "
        f"value, the set of allowed characters is {ALLOWED_CHARACTERS}.",
    )
    typed = {"a": AttributeValue("String.\udfff", "v")}
    assert (
        "type of message (user) attribute 'a' is invalid"
        in refused(STANDARD, body="b", attributes=typed)[1]
    )
    # Sizes are counted before the rules run: 3 bytes, as the surrogate's UTF-8 form.
    request = SendRequest(
        body="a\ud800", attributes={"n\udc00": AttributeValue("String", "\ud800")}
    )
    assert message_size(request) == 4 + 4 + 6 + 3


@pytest.mark.parametrize(
    "value",
    [
        "1" + "0" * 40,  # 1e40: one significant digit
        "1." + "0" * 40,
        "-0." + "0" * 60 + "1",
        "0" * 50 + "7",
        "1" * 38 + "0" * 3,
        "1" * 38 + ".000",
        "0.000",
    ],
)
def test_leading_and_trailing_zeros_do_not_count_as_precision(value):
    # SQS: "up to 38 digits of precision ... Leading and trailing zeroes are trimmed."
    assert is_number_value(value)
    request = SendRequest(body="b", attributes={"n": AttributeValue("Number", value)})
    validate_send(STANDARD, request)
    assert request.attributes["n"].string_value == value  # as sent: its MD5 must still match


_NUMERALS = st.builds(
    lambda sign, whole, point, fraction, exponent: sign + whole + point + fraction + exponent,
    st.sampled_from(["", "+", "-"]),
    st.text("0123456789", max_size=45),
    st.sampled_from(["", "."]),
    st.text("01239", max_size=45),
    st.sampled_from(["", "e5", "E-3", "e+0", "e-140", "e127"]),
).filter(lambda text: any(c.isdigit() for c in text.lower().partition("e")[0]))


@given(_NUMERALS)
@example("1" + "0" * 40 + ".000e-5")
@example("-000." + "0" * 30 + "1" * 38 + "0" * 9)
def test_number_precision_is_counted_as_decimal_digits_less_the_zeros_at_both_ends(text):
    number = decimal.Decimal(text)
    digits = "".join(map(str, number.as_tuple().digits)).strip("0")
    magnitude = abs(number)
    in_range = not magnitude or decimal.Decimal("1e-128") <= magnitude <= decimal.Decimal("1e126")
    assert is_number_value(text) == (len(digits) <= 38 and in_range)


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("1e126", True),
        ("-1e126", True),  # the range is a magnitude: the same for both signs
        ("1e127", False),
        ("-1e127", False),
        ("1e-128", True),
        ("-1e-128", True),
        ("1e-129", False),
        ("0", True),
        ("0e-300", True),
    ],
)
def test_the_number_range_is_a_magnitude_from_1e_minus_128_to_1e126(text, valid):
    assert is_number_value(text) is valid


def test_size_counts_body_and_attributes():
    small = parse_create({"MaximumMessageSize": "1024"})
    request = SendRequest(body="x" * 1000, attributes={"ab": AttributeValue("String", "x" * 18)})
    assert message_size(request) == 1000 + 2 + 6 + 18
    validate_send(small, SendRequest(body="x" * 1024))
    assert refused(small, body="x" * 1000, attributes=request.attributes) == (
        INVALID_PARAMETER_VALUE,
        "One or more parameters are invalid. Reason: Message must be shorter than 1024 bytes.",
    )
    assert message_size(SendRequest(body="é")) == 2


@pytest.mark.parametrize(
    ("attributes", "fragment"),
    [
        ({f"a{i}": AttributeValue("String", "v") for i in range(11)}, "exceeds the allowed"),
        ({"AWS.x": AttributeValue("String", "v")}, "name 'AWS.x' is invalid"),
        ({"a..b": AttributeValue("String", "v")}, "is invalid"),
        ({".a": AttributeValue("String", "v")}, "is invalid"),
        ({"a": AttributeValue("Text", "v")}, "type of message (user) attribute 'a'"),
        ({"a": AttributeValue("String", "")}, "non-empty value of type 'String'"),
        ({"a": AttributeValue("Binary", None, b"")}, "non-empty value of type 'Binary'"),
        ({"a": AttributeValue("Number", "twelve")}, "to a number"),
        ({"a": AttributeValue("Number", "1e127")}, "to a number"),
        # Python's Decimal reads these; a Number attribute may not (found by the wire fuzz).
        ({"a": AttributeValue("Number", " 1")}, "to a number"),
        ({"a": AttributeValue("Number", "1_000")}, "to a number"),
        ({"a": AttributeValue("Number", "\u0661\u0662")}, "to a number"),
        ({"a": AttributeValue("Number", "Infinity")}, "to a number"),
        ({"a": AttributeValue("String", "\ud800")}, "character '#xD800' was found in the"),
        ({"a": AttributeValue("Number", "1" * 39)}, "to a number"),
        ({"a": AttributeValue("Number", "1" * 39 + "0" * 5)}, "to a number"),
        ({"a": AttributeValue("Number", "0.000" + "1" * 39)}, "to a number"),
    ],
)
def test_attribute_rules(attributes, fragment):
    code, message = refused(STANDARD, body="b", attributes=attributes)
    assert code == INVALID_PARAMETER_VALUE
    assert fragment in message


def test_valid_attributes_with_custom_types():
    validate_send(
        STANDARD,
        SendRequest(
            body="b",
            attributes={
                "n.x": AttributeValue("Number.float", "-1.5e3"),
                "bin": AttributeValue("Binary.gif", None, b"\x00"),
            },
        ),
    )


def test_standard_queue_parameters():
    assert refused(STANDARD, body="b", deduplication_id="d")[0] == INVALID_PARAMETER_VALUE
    assert refused(STANDARD, body="b", delay_seconds=901) == (
        INVALID_PARAMETER_VALUE,
        "Value 901 for parameter DelaySeconds is invalid. "
        "Reason: DelaySeconds must be >= 0 and <= 900.",
    )
    validate_send(STANDARD, SendRequest(body="b", group_id="fair-queue-tenant"))


def test_fifo_queue_parameters():
    assert refused(FIFO, body="b", deduplication_id="d") == (
        MISSING_PARAMETER,
        "The request must contain the parameter MessageGroupId.",
    )
    assert refused(FIFO, body="b", group_id="g") == (
        INVALID_PARAMETER_VALUE,
        "The queue should either have ContentBasedDeduplication enabled or "
        "MessageDeduplicationId provided explicitly",
    )
    assert refused(FIFO_CBD, body="b", group_id="g", delay_seconds=2) == (
        INVALID_PARAMETER_VALUE,
        "Value 2 for parameter DelaySeconds is invalid. "
        "Reason: The request include parameter that is not valid for this queue type.",
    )
    validate_send(FIFO_CBD, SendRequest(body="b", group_id="g", delay_seconds=0))
    assert refused(FIFO, body="b", group_id="g", deduplication_id="x" * 129)[0] == (
        INVALID_PARAMETER_VALUE
    )


def test_derived_values():
    assert content_deduplication_id("hi") == (
        "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"
    )
    assert sequence_number(1) == "10000000000000000001"
    assert len(sequence_number(123456789)) == 20


@given(st.text(max_size=50))
def test_bodies_are_accepted_exactly_when_every_character_is_allowed(body):
    allowed = all(
        ch in "\t\n\r"
        or "\x20" <= ch <= "\ud7ff"
        or "\ue000" <= ch <= "\ufffd"
        or "\U00010000" <= ch <= "\U0010ffff"
        for ch in body
    )
    code = None
    try:
        validate_send(STANDARD, SendRequest(body=body))
    except SqsError as error:
        code = error.code
    expected = (
        None if allowed and body else MISSING_PARAMETER if not body else INVALID_MESSAGE_CONTENTS
    )
    assert code == expected
    assert message_size(SendRequest(body=body)) == len(body.encode("utf-8", "surrogatepass"))


@given(st.text(alphabet=st.characters(max_codepoint=0x7F), min_size=1, max_size=80))
def test_ascii_bodies_with_control_characters_are_checked_like_any_other(body):
    # ASCII bodies that are not all printable take the bytewise check, not the regex.
    allowed = all(ch in "\t\n\r" or ch >= "\x20" for ch in body)
    code = None
    try:
        validate_send(STANDARD, SendRequest(body=body))
    except SqsError as error:
        code = error.code
    assert code == (None if allowed else INVALID_MESSAGE_CONTENTS)


@given(st.text(max_size=30), st.text(max_size=30))
def test_a_body_is_allowed_exactly_when_its_parts_are(left, right):
    # What lets SNS check an envelope's template and URL line once instead of every copy.
    whole = body_characters_allowed(left + right)
    assert whole == (body_characters_allowed(left) and body_characters_allowed(right))
    try:
        validate_send(STANDARD, SendRequest(body=left + right + "x"))
        accepted = True
    except SqsError:
        accepted = False
    assert accepted == whole


def test_checked_characters_are_not_scanned_again():
    assert refused(STANDARD, body="a\x01")[0] == INVALID_MESSAGE_CONTENTS
    validate_send(STANDARD, SendRequest(body="a\x01"), characters_checked=True)
    with pytest.raises(SqsError):  # every other rule still applies
        validate_send(STANDARD, SendRequest(body="x" * 3_000_000), characters_checked=True)
