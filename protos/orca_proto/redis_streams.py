"""Redis key names and entry codecs shared by the gateway and the scheduler.

The layout (docs/services.md, "Redis contract"):

| key | type | written by | holds |
|---|---|---|---|
| `orca:requests` | stream, group `schedulers` | gateway | one `StreamRequest` per entry |
| `orca:requests:dead` | stream | scheduler | entries that could not be decoded, with the reason |
| `orca:out:<request id>` | stream, expires after finish | scheduler | `TokenChunk`s |
| `orca:control` | stream | gateway | `Control` (cancel / stop) |
| `orca:load` | hash | scheduler | load and liveness, for admission, readiness and autoscaling |
| `orca:gateway:wake:<uuid>` | stream, expires | one gateway | wakes that gateway's blocked output reader when a request is added |

Every stream entry has one field, `data`, holding a serialized protobuf message. No redis
import here: the services bring their own client.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from orca_proto.v1 import stream_pb2

REQUESTS_STREAM = "orca:requests"
REQUESTS_GROUP = "schedulers"
DEAD_LETTER_STREAM = "orca:requests:dead"
CONTROL_STREAM = "orca:control"
LOAD_KEY = "orca:load"
OUTPUT_STREAM_PREFIX = "orca:out:"
GATEWAY_WAKE_STREAM_PREFIX = "orca:gateway:wake:"
DATA_FIELD = b"data"
# How long a finished request's output stream stays readable (a slow reader, a resume).
OUTPUT_TTL_S = 300
# Caps on the request and control streams (approximate trimming, XADD MAXLEN ~).
REQUESTS_MAXLEN = 1_000_000
CONTROL_MAXLEN = 100_000


class MalformedEntryError(ValueError):
    """A stream entry has no `data` field or does not decode as the expected message."""


def output_stream(request_id: str) -> str:
    """Key of the stream that carries one request's TokenChunks."""
    return OUTPUT_STREAM_PREFIX + request_id


def encode(message) -> dict[bytes, bytes]:
    """A protobuf message as the fields of one stream entry."""
    return {DATA_FIELD: message.SerializeToString()}


def _decode(fields_: dict, message_type):
    raw = fields_.get(DATA_FIELD, fields_.get(DATA_FIELD.decode()))
    if raw is None:
        raise MalformedEntryError(f"entry has no '{DATA_FIELD.decode()}' field")
    if isinstance(raw, str):
        raw = raw.encode()
    message = message_type()
    try:
        message.ParseFromString(raw)
    except Exception as exc:  # protobuf raises DecodeError, sometimes others
        raise MalformedEntryError(f"cannot decode {message_type.__name__}: {exc}") from exc
    return message


def decode_request(fields_: dict) -> stream_pb2.StreamRequest:
    """A StreamRequest from an `orca:requests` entry; MalformedEntryError when it is not one."""
    request = _decode(fields_, stream_pb2.StreamRequest)
    if not request.request_id:
        raise MalformedEntryError("StreamRequest has no request_id")
    return request


def decode_chunk(fields_: dict) -> stream_pb2.TokenChunk:
    """A TokenChunk from an output stream entry."""
    return _decode(fields_, stream_pb2.TokenChunk)


def decode_control(fields_: dict) -> stream_pb2.Control:
    """A Control from an `orca:control` entry."""
    return _decode(fields_, stream_pb2.Control)


@dataclass
class LoadReport:
    """The `orca:load` hash: what the scheduler publishes about itself every ~0.5 s."""

    # Served model name and its context length (the gateway validates prompts with it).
    model: str = ""
    max_model_len: int = 0
    # Requests waiting for admission and running in a batch.
    num_waiting: int = 0
    num_running: int = 0
    # Fraction of KV blocks in use, 0..1.
    kv_usage: float = 0.0
    # Pipelines connected and serving, and their shape: pp stages of tp ranks each.
    num_pipelines: int = 0
    pp: int = 1
    tp: int = 1
    # Unix seconds of this report; a stale report means no live scheduler.
    updated_at_unix: float = 0.0

    def to_hash(self) -> dict[str, str]:
        """The report as Redis hash fields."""
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_hash(cls, raw: dict) -> LoadReport:
        """Parse the hash (bytes or str keys); missing or bad fields keep their defaults."""
        report = cls()
        for f in fields(cls):
            value = raw.get(f.name, raw.get(f.name.encode()))
            if value is None:
                continue
            if isinstance(value, bytes):
                value = value.decode()
            try:
                setattr(report, f.name, type(getattr(report, f.name))(value))
            except ValueError:
                continue
        return report
