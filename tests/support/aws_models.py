"""botocore's service models as oracles, and the legacy query-protocol SQS model.

Current botocore speaks awsJson 1.0 to SQS. Older SDKs (and GET query strings) use the query
protocol, whose model botocore no longer ships: :func:`sqs_query_model_document` rebuilds it
from today's model by switching the protocol and putting back the query/XML member names.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import botocore.loaders
import botocore.model

from proto.aws.json_protocol import SQS_ERRORS
from proto.aws.shapes import ListOf, MapOf, Shape, Structure
from proto.aws.sqs_shapes import OPERATIONS as SQS_OPERATIONS

SQS_XML_NAMESPACE = "http://queue.amazonaws.com/doc/2012-11-05/"


@functools.cache
def _raw_model(service: str) -> dict[str, Any]:
    document: dict[str, Any] = botocore.loaders.Loader().load_service_model(service, "service-2")
    return document


def botocore_model(service: str) -> botocore.model.ServiceModel:
    return botocore.model.ServiceModel(copy.deepcopy(_raw_model(service)), service)


def legacy_sqs_names(sqs_model: botocore.model.ServiceModel) -> dict[Any, Any]:
    """Our SQS query names (botocore 1.31.80's ``locationName``s), keyed for
    :func:`sqs_query_model_document`: (shape, member) -> name, (map shape, None) -> (key, value).
    """
    names: dict[Any, Any] = {}

    def walk(ours: Shape, theirs: Any) -> None:
        if isinstance(ours, Structure):
            for name, spec in ours.members.items():
                member_shape = theirs.members[name]
                if spec.wire and spec.wire != name:
                    names[(theirs.name, name)] = spec.wire
                walk(spec.shape, member_shape)
        elif isinstance(ours, ListOf):
            walk(ours.member, theirs.member)
        elif isinstance(ours, MapOf):
            names[(theirs.name, None)] = (ours.key_wire, ours.value_wire)
            walk(ours.value, theirs.value)

    for name, operation in SQS_OPERATIONS.items():
        model = sqs_model.operation_model(name)
        walk(operation.input, model.input_shape)
        if operation.output is not None:
            walk(operation.output, model.output_shape)
    return names


def sqs_query_model_document(names: dict[Any, Any] | None) -> dict[str, Any]:
    """botocore's (JSON) SQS model document switched to the query protocol.

    With ``names`` None, members keep their own names, which is what botocore's query serializer
    makes of today's model. Otherwise ``names`` maps (shape, member) to a query/XML name and
    (map shape, None) to (key name, value name), to describe the legacy query API.
    """
    raw = copy.deepcopy(_raw_model("sqs"))
    raw["metadata"]["protocol"] = "query"
    raw["metadata"]["protocols"] = ["query"]
    raw["metadata"]["xmlNamespace"] = SQS_XML_NAMESPACE
    raw["metadata"].pop("awsQueryCompatible", None)
    raw["metadata"].pop("jsonVersion", None)
    raw["metadata"].pop("targetPrefix", None)
    for name, operation in raw["operations"].items():
        if "output" in operation:
            operation["output"]["resultWrapper"] = f"{name}Result"
    if names is not None:
        for (shape_name, member_name), wire in names.items():
            if member_name is None:
                key_wire, value_wire = wire
                raw["shapes"][shape_name]["key"]["locationName"] = key_wire
                raw["shapes"][shape_name]["value"]["locationName"] = value_wire
            else:
                raw["shapes"][shape_name]["members"][member_name]["locationName"] = wire
    return raw


def sqs_query_model(names: dict[Any, Any] | None) -> botocore.model.ServiceModel:
    return botocore.model.ServiceModel(sqs_query_model_document(names), "sqs")


def legacy_sqs_query_model_document() -> dict[str, Any]:
    """The query-protocol SQS model as the last query-era botocore described it: the query
    member names, and the ``error`` traits that map legacy codes to modeled exceptions (so
    ``client.exceptions.QueueDoesNotExist`` catches ``AWS.SimpleQueueService.NonExistentQueue``).
    """
    raw = sqs_query_model_document(legacy_sqs_names(botocore_model("sqs")))
    for shape, (code, status) in SQS_ERRORS.items():
        if shape in raw["shapes"]:
            raw["shapes"][shape]["error"] = {
                "code": code,
                "httpStatusCode": status,
                "senderFault": True,
            }
    return raw
