"""Kafka API tables: names of every API key, flexible-version thresholds, and request/response
schemas (as data) for the APIs podshark decodes, with a small interpreter that walks them.

The schemas are transcribed from Apache Kafka's message definitions
(``clients/src/main/resources/common/message/*.json``, the source of https://kafka.apache.org/protocol):
each field is ``(name, type, first version, last version)``; ``type`` is a primitive (``i8``, ``i16``,
``i32``, ``i64``, ``u16``, ``bool``, ``str``, ``bytes``, ``uuid``, ``f64``, ``records``), an array
of a primitive (``"[i32]"``), or a tuple of fields (an array of structs). Tagged fields of flexible
versions are skipped (their tag sections are read and counted, not decoded). Strings, bytes and
arrays decode length -1 as null whether or not the version declares them nullable.

`decode_body` turns a message body into a plain dict (snake_case field names, JSON-ready), filling
it as it goes so a body cut short (the size limit, a gap) keeps everything before the cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dissect.kafka.records import RecordBudget, render_bytes, summarize_records
from dissect.kafka.wire import KafkaDecodeError, Reader

__all__ = [
    "API_NAMES",
    "DECODED",
    "FLEXIBLE",
    "MAX",
    "Decoded",
    "api_name",
    "decode_body",
    "is_flexible",
    "request_header_version",
    "response_header_version",
]

MAX = 1 << 15  # "and every later version"

#: API key -> name (https://kafka.apache.org/protocol#protocol_api_keys)
API_NAMES: dict[int, str] = {
    0: "Produce",
    1: "Fetch",
    2: "ListOffsets",
    3: "Metadata",
    4: "LeaderAndIsr",
    5: "StopReplica",
    6: "UpdateMetadata",
    7: "ControlledShutdown",
    8: "OffsetCommit",
    9: "OffsetFetch",
    10: "FindCoordinator",
    11: "JoinGroup",
    12: "Heartbeat",
    13: "LeaveGroup",
    14: "SyncGroup",
    15: "DescribeGroups",
    16: "ListGroups",
    17: "SaslHandshake",
    18: "ApiVersions",
    19: "CreateTopics",
    20: "DeleteTopics",
    21: "DeleteRecords",
    22: "InitProducerId",
    23: "OffsetForLeaderEpoch",
    24: "AddPartitionsToTxn",
    25: "AddOffsetsToTxn",
    26: "EndTxn",
    27: "WriteTxnMarkers",
    28: "TxnOffsetCommit",
    29: "DescribeAcls",
    30: "CreateAcls",
    31: "DeleteAcls",
    32: "DescribeConfigs",
    33: "AlterConfigs",
    34: "AlterReplicaLogDirs",
    35: "DescribeLogDirs",
    36: "SaslAuthenticate",
    37: "CreatePartitions",
    38: "CreateDelegationToken",
    39: "RenewDelegationToken",
    40: "ExpireDelegationToken",
    41: "DescribeDelegationToken",
    42: "DeleteGroups",
    43: "ElectLeaders",
    44: "IncrementalAlterConfigs",
    45: "AlterPartitionReassignments",
    46: "ListPartitionReassignments",
    47: "OffsetDelete",
    48: "DescribeClientQuotas",
    49: "AlterClientQuotas",
    50: "DescribeUserScramCredentials",
    51: "AlterUserScramCredentials",
    52: "Vote",
    53: "BeginQuorumEpoch",
    54: "EndQuorumEpoch",
    55: "DescribeQuorum",
    56: "AlterPartition",
    57: "UpdateFeatures",
    58: "Envelope",
    59: "FetchSnapshot",
    60: "DescribeCluster",
    61: "DescribeProducers",
    62: "BrokerRegistration",
    63: "BrokerHeartbeat",
    64: "UnregisterBroker",
    65: "DescribeTransactions",
    66: "ListTransactions",
    67: "AllocateProducerIds",
    68: "ConsumerGroupHeartbeat",
    69: "ConsumerGroupDescribe",
    70: "ControllerRegistration",
    71: "GetTelemetrySubscriptions",
    72: "PushTelemetry",
    73: "AssignReplicasToDirs",
    74: "ListClientMetricsResources",
    75: "DescribeTopicPartitions",
    76: "ShareGroupHeartbeat",
    77: "ShareGroupDescribe",
    78: "ShareFetch",
    79: "ShareAcknowledge",
    80: "AddRaftVoter",
    81: "RemoveRaftVoter",
    82: "UpdateRaftVoter",
    83: "InitializeShareGroupState",
    84: "ReadShareGroupState",
    85: "WriteShareGroupState",
    86: "DeleteShareGroupState",
    87: "ReadShareGroupStateSummary",
}

#: API key -> first flexible version (compact strings/arrays, tagged fields, header v2/v1);
#: None when no version is flexible. APIs missing here are flexible from version 0 (every API added
#: after KIP-482).
FLEXIBLE: dict[int, int | None] = {
    0: 9, 1: 12, 2: 6, 3: 9, 4: 4, 5: 2, 6: 6, 7: 3, 8: 8, 9: 6, 10: 3, 11: 6, 12: 4, 13: 4, 14: 4,
    15: 5, 16: 3, 17: None, 18: 3, 19: 5, 20: 4, 21: 2, 22: 2, 23: 4, 24: 3, 25: 3, 26: 3, 27: 1,
    28: 3, 29: 2, 30: 2, 31: 2, 32: 4, 33: 2, 34: 2, 35: 2, 36: 2, 37: 2, 38: 2, 39: 2, 40: 2,
    41: 2, 42: 2, 43: 2, 44: 1, 47: None, 48: 1, 49: 1, 53: 1, 54: 1,
}  # fmt: skip

MAX_API_VERSION = 20  # no API has reached this version; a larger one is not Kafka


def api_name(key: int) -> str:
    return API_NAMES.get(key, f"ApiKey{key}")


def is_flexible(key: int, version: int) -> bool:
    first = FLEXIBLE.get(key, 0)
    return first is not None and version >= first


def request_header_version(key: int, version: int) -> int:
    """2 for flexible versions (client id then tagged fields), else 1 (ControlledShutdown v0's
    header v0 without a client id is not supported: it has not been sent since Kafka 0.9)."""
    return 2 if is_flexible(key, version) else 1


def response_header_version(key: int, version: int) -> int:
    """1 (correlation id + tagged fields) for flexible versions, except ApiVersions: its response
    header is always v0 so that a client that does not know the broker can read it (KIP-511)."""
    if key == 18:
        return 0
    return 1 if is_flexible(key, version) else 0


Field = tuple[str, Any, int, int]
Schema = tuple[Field, ...]

PRODUCE_REQUEST: Schema = (
    ("transactional_id", "str", 3, MAX),
    ("acks", "i16", 0, MAX),
    ("timeout_ms", "i32", 0, MAX),
    (
        "topic_data",
        (
            ("name", "str", 0, 12),
            ("topic_id", "uuid", 13, MAX),
            (
                "partition_data",
                (
                    ("index", "i32", 0, MAX),
                    ("records", "records", 0, MAX),
                ),
                0,
                MAX,
            ),
        ),
        0,
        MAX,
    ),
)
PRODUCE_RESPONSE: Schema = (
    (
        "responses",
        (
            ("name", "str", 0, 12),
            ("topic_id", "uuid", 13, MAX),
            (
                "partition_responses",
                (
                    ("index", "i32", 0, MAX),
                    ("error_code", "i16", 0, MAX),
                    ("base_offset", "i64", 0, MAX),
                    ("log_append_time_ms", "i64", 2, MAX),
                    ("log_start_offset", "i64", 5, MAX),
                    (
                        "record_errors",
                        (
                            ("batch_index", "i32", 8, MAX),
                            ("batch_index_error_message", "str", 8, MAX),
                        ),
                        8,
                        MAX,
                    ),
                    ("error_message", "str", 8, MAX),
                ),
                0,
                MAX,
            ),
        ),
        0,
        MAX,
    ),
    ("throttle_time_ms", "i32", 1, MAX),
)
FETCH_REQUEST: Schema = (
    ("replica_id", "i32", 0, 14),
    ("max_wait_ms", "i32", 0, MAX),
    ("min_bytes", "i32", 0, MAX),
    ("max_bytes", "i32", 3, MAX),
    ("isolation_level", "i8", 4, MAX),
    ("session_id", "i32", 7, MAX),
    ("session_epoch", "i32", 7, MAX),
    (
        "topics",
        (
            ("topic", "str", 0, 12),
            ("topic_id", "uuid", 13, MAX),
            (
                "partitions",
                (
                    ("partition", "i32", 0, MAX),
                    ("current_leader_epoch", "i32", 9, MAX),
                    ("fetch_offset", "i64", 0, MAX),
                    ("last_fetched_epoch", "i32", 12, MAX),
                    ("log_start_offset", "i64", 5, MAX),
                    ("partition_max_bytes", "i32", 0, MAX),
                ),
                0,
                MAX,
            ),
        ),
        0,
        MAX,
    ),
    (
        "forgotten_topics_data",
        (
            ("topic", "str", 7, 12),
            ("topic_id", "uuid", 13, MAX),
            ("partitions", "[i32]", 7, MAX),
        ),
        7,
        MAX,
    ),
    ("rack_id", "str", 11, MAX),
)
FETCH_RESPONSE: Schema = (
    ("throttle_time_ms", "i32", 1, MAX),
    ("error_code", "i16", 7, MAX),
    ("session_id", "i32", 7, MAX),
    (
        "responses",
        (
            ("topic", "str", 0, 12),
            ("topic_id", "uuid", 13, MAX),
            (
                "partitions",
                (
                    ("partition_index", "i32", 0, MAX),
                    ("error_code", "i16", 0, MAX),
                    ("high_watermark", "i64", 0, MAX),
                    ("last_stable_offset", "i64", 4, MAX),
                    ("log_start_offset", "i64", 5, MAX),
                    (
                        "aborted_transactions",
                        (
                            ("producer_id", "i64", 4, MAX),
                            ("first_offset", "i64", 4, MAX),
                        ),
                        4,
                        MAX,
                    ),
                    ("preferred_read_replica", "i32", 11, MAX),
                    ("records", "records", 0, MAX),
                ),
                0,
                MAX,
            ),
        ),
        0,
        MAX,
    ),
)
LIST_OFFSETS_REQUEST: Schema = (
    ("replica_id", "i32", 0, MAX),
    ("isolation_level", "i8", 2, MAX),
    (
        "topics",
        (
            ("name", "str", 0, MAX),
            (
                "partitions",
                (
                    ("partition_index", "i32", 0, MAX),
                    ("current_leader_epoch", "i32", 4, MAX),
                    ("timestamp", "i64", 0, MAX),
                    ("max_num_offsets", "i32", 0, 0),
                ),
                0,
                MAX,
            ),
        ),
        0,
        MAX,
    ),
    ("timeout_ms", "i32", 10, MAX),
)
LIST_OFFSETS_RESPONSE: Schema = (
    ("throttle_time_ms", "i32", 2, MAX),
    (
        "topics",
        (
            ("name", "str", 0, MAX),
            (
                "partitions",
                (
                    ("partition_index", "i32", 0, MAX),
                    ("error_code", "i16", 0, MAX),
                    ("old_style_offsets", "[i64]", 0, 0),
                    ("timestamp", "i64", 1, MAX),
                    ("offset", "i64", 1, MAX),
                    ("leader_epoch", "i32", 4, MAX),
                ),
                0,
                MAX,
            ),
        ),
        0,
        MAX,
    ),
)
METADATA_REQUEST: Schema = (
    (
        "topics",
        (
            ("topic_id", "uuid", 10, MAX),
            ("name", "str", 0, MAX),
        ),
        0,
        MAX,
    ),
    ("allow_auto_topic_creation", "bool", 4, MAX),
    ("include_cluster_authorized_operations", "bool", 8, 10),
    ("include_topic_authorized_operations", "bool", 8, MAX),
)
METADATA_RESPONSE: Schema = (
    ("throttle_time_ms", "i32", 3, MAX),
    (
        "brokers",
        (
            ("node_id", "i32", 0, MAX),
            ("host", "str", 0, MAX),
            ("port", "i32", 0, MAX),
            ("rack", "str", 1, MAX),
        ),
        0,
        MAX,
    ),
    ("cluster_id", "str", 2, MAX),
    ("controller_id", "i32", 1, MAX),
    (
        "topics",
        (
            ("error_code", "i16", 0, MAX),
            ("name", "str", 0, MAX),
            ("topic_id", "uuid", 10, MAX),
            ("is_internal", "bool", 1, MAX),
            (
                "partitions",
                (
                    ("error_code", "i16", 0, MAX),
                    ("partition_index", "i32", 0, MAX),
                    ("leader_id", "i32", 0, MAX),
                    ("leader_epoch", "i32", 7, MAX),
                    ("replica_nodes", "[i32]", 0, MAX),
                    ("isr_nodes", "[i32]", 0, MAX),
                    ("offline_replicas", "[i32]", 5, MAX),
                ),
                0,
                MAX,
            ),
            ("topic_authorized_operations", "i32", 8, MAX),
        ),
        0,
        MAX,
    ),
    ("cluster_authorized_operations", "i32", 8, 10),
    ("error_code", "i16", 13, MAX),
)
OFFSET_COMMIT_REQUEST: Schema = (
    ("group_id", "str", 0, MAX),
    ("generation_id_or_member_epoch", "i32", 1, MAX),
    ("member_id", "str", 1, MAX),
    ("group_instance_id", "str", 7, MAX),
    ("retention_time_ms", "i64", 2, 4),
    (
        "topics",
        (
            ("name", "str", 0, 9),
            ("topic_id", "uuid", 10, MAX),
            (
                "partitions",
                (
                    ("partition_index", "i32", 0, MAX),
                    ("committed_offset", "i64", 0, MAX),
                    ("committed_leader_epoch", "i32", 6, MAX),
                    ("commit_timestamp", "i64", 1, 1),
                    ("committed_metadata", "str", 0, MAX),
                ),
                0,
                MAX,
            ),
        ),
        0,
        MAX,
    ),
)
OFFSET_COMMIT_RESPONSE: Schema = (
    ("throttle_time_ms", "i32", 3, MAX),
    (
        "topics",
        (
            ("name", "str", 0, 9),
            ("topic_id", "uuid", 10, MAX),
            (
                "partitions",
                (
                    ("partition_index", "i32", 0, MAX),
                    ("error_code", "i16", 0, MAX),
                ),
                0,
                MAX,
            ),
        ),
        0,
        MAX,
    ),
)
OFFSET_FETCH_REQUEST: Schema = (
    ("group_id", "str", 0, 7),
    (
        "topics",
        (
            ("name", "str", 0, 7),
            ("partition_indexes", "[i32]", 0, 7),
        ),
        0,
        7,
    ),
    (
        "groups",
        (
            ("group_id", "str", 8, MAX),
            ("member_id", "str", 9, MAX),
            ("member_epoch", "i32", 9, MAX),
            (
                "topics",
                (
                    ("name", "str", 8, 9),
                    ("topic_id", "uuid", 10, MAX),
                    ("partition_indexes", "[i32]", 8, MAX),
                ),
                8,
                MAX,
            ),
        ),
        8,
        MAX,
    ),
    ("require_stable", "bool", 7, MAX),
)
OFFSET_FETCH_RESPONSE: Schema = (
    ("throttle_time_ms", "i32", 3, MAX),
    (
        "topics",
        (
            ("name", "str", 0, 7),
            (
                "partitions",
                (
                    ("partition_index", "i32", 0, 7),
                    ("committed_offset", "i64", 0, 7),
                    ("committed_leader_epoch", "i32", 5, 7),
                    ("metadata", "str", 0, 7),
                    ("error_code", "i16", 0, 7),
                ),
                0,
                7,
            ),
        ),
        0,
        7,
    ),
    ("error_code", "i16", 2, 7),
    (
        "groups",
        (
            ("group_id", "str", 8, MAX),
            (
                "topics",
                (
                    ("name", "str", 8, 9),
                    ("topic_id", "uuid", 10, MAX),
                    (
                        "partitions",
                        (
                            ("partition_index", "i32", 8, MAX),
                            ("committed_offset", "i64", 8, MAX),
                            ("committed_leader_epoch", "i32", 8, MAX),
                            ("metadata", "str", 8, MAX),
                            ("error_code", "i16", 8, MAX),
                        ),
                        8,
                        MAX,
                    ),
                ),
                8,
                MAX,
            ),
            ("error_code", "i16", 8, MAX),
        ),
        8,
        MAX,
    ),
)
FIND_COORDINATOR_REQUEST: Schema = (
    ("key", "str", 0, 3),
    ("key_type", "i8", 1, MAX),
    ("coordinator_keys", "[str]", 4, MAX),
)
FIND_COORDINATOR_RESPONSE: Schema = (
    ("throttle_time_ms", "i32", 1, MAX),
    ("error_code", "i16", 0, 3),
    ("error_message", "str", 1, 3),
    ("node_id", "i32", 0, 3),
    ("host", "str", 0, 3),
    ("port", "i32", 0, 3),
    (
        "coordinators",
        (
            ("key", "str", 4, MAX),
            ("node_id", "i32", 4, MAX),
            ("host", "str", 4, MAX),
            ("port", "i32", 4, MAX),
            ("error_code", "i16", 4, MAX),
            ("error_message", "str", 4, MAX),
        ),
        4,
        MAX,
    ),
)
JOIN_GROUP_REQUEST: Schema = (
    ("group_id", "str", 0, MAX),
    ("session_timeout_ms", "i32", 0, MAX),
    ("rebalance_timeout_ms", "i32", 1, MAX),
    ("member_id", "str", 0, MAX),
    ("group_instance_id", "str", 5, MAX),
    ("protocol_type", "str", 0, MAX),
    (
        "protocols",
        (
            ("name", "str", 0, MAX),
            ("metadata", "bytes", 0, MAX),
        ),
        0,
        MAX,
    ),
    ("reason", "str", 8, MAX),
)
JOIN_GROUP_RESPONSE: Schema = (
    ("throttle_time_ms", "i32", 2, MAX),
    ("error_code", "i16", 0, MAX),
    ("generation_id", "i32", 0, MAX),
    ("protocol_type", "str", 7, MAX),
    ("protocol_name", "str", 0, MAX),
    ("leader", "str", 0, MAX),
    ("skip_assignment", "bool", 9, MAX),
    ("member_id", "str", 0, MAX),
    (
        "members",
        (
            ("member_id", "str", 0, MAX),
            ("group_instance_id", "str", 5, MAX),
            ("metadata", "bytes", 0, MAX),
        ),
        0,
        MAX,
    ),
)
HEARTBEAT_REQUEST: Schema = (
    ("group_id", "str", 0, MAX),
    ("generation_id", "i32", 0, MAX),
    ("member_id", "str", 0, MAX),
    ("group_instance_id", "str", 3, MAX),
)
HEARTBEAT_RESPONSE: Schema = (
    ("throttle_time_ms", "i32", 1, MAX),
    ("error_code", "i16", 0, MAX),
)
SYNC_GROUP_REQUEST: Schema = (
    ("group_id", "str", 0, MAX),
    ("generation_id", "i32", 0, MAX),
    ("member_id", "str", 0, MAX),
    ("group_instance_id", "str", 3, MAX),
    ("protocol_type", "str", 5, MAX),
    ("protocol_name", "str", 5, MAX),
    (
        "assignments",
        (
            ("member_id", "str", 0, MAX),
            ("assignment", "bytes", 0, MAX),
        ),
        0,
        MAX,
    ),
)
SYNC_GROUP_RESPONSE: Schema = (
    ("throttle_time_ms", "i32", 1, MAX),
    ("error_code", "i16", 0, MAX),
    ("protocol_type", "str", 5, MAX),
    ("protocol_name", "str", 5, MAX),
    ("assignment", "bytes", 0, MAX),
)
API_VERSIONS_REQUEST: Schema = (
    ("client_software_name", "str", 3, MAX),
    ("client_software_version", "str", 3, MAX),
)
API_VERSIONS_RESPONSE: Schema = (
    ("error_code", "i16", 0, MAX),
    (
        "api_keys",
        (
            ("api_key", "i16", 0, MAX),
            ("min_version", "i16", 0, MAX),
            ("max_version", "i16", 0, MAX),
        ),
        0,
        MAX,
    ),
    ("throttle_time_ms", "i32", 1, MAX),
)

#: api key -> (request schema, response schema, highest version the schema describes)
DECODED: dict[int, tuple[Schema, Schema, int]] = {
    0: (PRODUCE_REQUEST, PRODUCE_RESPONSE, 13),
    1: (FETCH_REQUEST, FETCH_RESPONSE, 18),
    2: (LIST_OFFSETS_REQUEST, LIST_OFFSETS_RESPONSE, 11),
    3: (METADATA_REQUEST, METADATA_RESPONSE, 13),
    8: (OFFSET_COMMIT_REQUEST, OFFSET_COMMIT_RESPONSE, 10),
    9: (OFFSET_FETCH_REQUEST, OFFSET_FETCH_RESPONSE, 10),
    10: (FIND_COORDINATOR_REQUEST, FIND_COORDINATOR_RESPONSE, 6),
    11: (JOIN_GROUP_REQUEST, JOIN_GROUP_RESPONSE, 9),
    12: (HEARTBEAT_REQUEST, HEARTBEAT_RESPONSE, 4),
    14: (SYNC_GROUP_REQUEST, SYNC_GROUP_RESPONSE, 5),
    18: (API_VERSIONS_REQUEST, API_VERSIONS_RESPONSE, 4),
}

#: arrays whose elements name a topic (their "name", "topic" or "topic_id" goes into the target)
TOPIC_ARRAYS = frozenset({"topics", "topic_data", "responses"})
_TOPIC_KEYS = ("name", "topic", "topic_id")
_ZERO_UUID = "00000000-0000-0000-0000-000000000000"  # "no topic id" (requests by name)
MAX_ITEMS = 1000  # elements of one array kept in info; the rest are decoded (error codes) and counted
MAX_TOPICS = 100
MAX_BYTES_SHOWN = 4096


@dataclass(slots=True)
class Decoded:
    """What decoding one body found: the tree, and what the call's summary columns need."""

    body: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # every byte decoded and nothing left over
    error: str | None = None
    first_error: int = 0  # the first non-zero error_code anywhere in the tree (depth first)
    topics: list[str] = field(default_factory=list)
    budget: RecordBudget = field(default_factory=RecordBudget)
    tagged: int = 0  # tagged fields skipped

    @property
    def status(self) -> int:
        """Top-level error code when non-zero, else the first non-zero nested one, else 0."""
        top = self.body.get("error_code")
        if isinstance(top, int) and top != 0:
            return top
        return self.first_error


def decode_body(
    schema: Schema, data: bytes, pos: int, version: int, flexible: bool, cut: bool, budget: RecordBudget
) -> Decoded:
    """Decode ``data[pos:]`` with ``schema`` at ``version``; never raises.

    ``cut`` says the message was cut short on purpose (size limit, gap): running out of bytes is then
    reported in ``error`` but is not a parse error of the message itself.
    """
    out = Decoded(budget=budget)
    r = Reader(data, pos)
    try:
        _struct(schema, r, version, flexible, out.body, out, top=True)
        if r.remaining:
            out.error = f"{r.remaining} bytes left over after the body"
        else:
            out.complete = True
    except KafkaDecodeError as e:
        out.error = ("cut: " if cut else "") + str(e)
    except (ValueError, OverflowError) as e:  # uuid of wrong size and the like: malformed input
        out.error = f"malformed: {e}"
    return out


def _struct(
    schema: Schema,
    r: Reader,
    v: int,
    flex: bool,
    into: dict[str, Any],
    out: Decoded,
    top: bool = False,
    topical: bool = False,
) -> None:
    named = False
    for name, typ, lo, hi in schema:
        if v < lo or v > hi:
            continue
        if isinstance(typ, tuple):
            n = r.array_len(flex)
            if n < 0:
                into[name] = None
                continue
            items: list[dict[str, Any]] = []
            into[name] = items
            topical = name in TOPIC_ARRAYS
            for i in range(n):
                item: dict[str, Any] = {}
                if i < MAX_ITEMS:
                    items.append(item)
                elif i == MAX_ITEMS:
                    into[name + "_omitted"] = n - MAX_ITEMS
                _struct(typ, r, v, flex, item, out, topical=topical)
        elif typ[0] == "[":
            into[name] = _prim_array(typ[1:-1], r, flex, name, into)
        else:
            val = _prim(typ, r, flex, out)
            into[name] = val
            if topical and not named and name in _TOPIC_KEYS and isinstance(val, str) and val != _ZERO_UUID:
                # noted as soon as read, so a body cut later still names its topic; one per element
                named = True
                if val not in out.topics and len(out.topics) < MAX_TOPICS:
                    out.topics.append(val)
            if name == "error_code" and val and not out.first_error and not top:
                out.first_error = int(val)
    if flex:
        out.tagged += r.tagged_fields()


_SIZES = {"i8": 1, "bool": 1, "i16": 2, "u16": 2, "i32": 4, "i64": 8, "f64": 8, "uuid": 16}


def _prim_array(typ: str, r: Reader, flex: bool, name: str, into: dict[str, Any]) -> list[Any] | None:
    n = r.array_len(flex, _SIZES.get(typ, 1))
    if n < 0:
        return None
    vals: list[Any] = []
    for i in range(n):
        val = _prim(typ, r, flex, None)
        if i < MAX_ITEMS:
            vals.append(val)
    if n > MAX_ITEMS:
        into[name + "_omitted"] = n - MAX_ITEMS
    return vals


def _prim(typ: str, r: Reader, flex: bool, out: Decoded | None) -> Any:
    if typ == "i32":
        return r.int32()
    if typ == "i16":
        return r.int16()
    if typ == "str":
        return r.string(flex)
    if typ == "i64":
        return r.int64()
    if typ == "i8":
        return r.int8()
    if typ == "bool":
        return r.boolean()
    if typ == "uuid":
        return r.uuid()
    if typ == "u16":
        return r.uint16()
    if typ == "f64":
        return r.float64()
    if typ == "bytes":
        b = r.bytes_(flex)
        return None if b is None else render_bytes(b, MAX_BYTES_SHOWN)
    if typ == "records":
        span = r.bytes_span(flex)
        if span is None:
            return None
        start, n = span
        avail = min(n, r.end - start)
        budget = out.budget if out is not None else RecordBudget()
        return summarize_records(r.data[start : start + avail], n, budget)
    raise KafkaDecodeError(f"unknown schema type {typ}")
