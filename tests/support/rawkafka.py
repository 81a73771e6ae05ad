"""Producing records confluent-kafka's Python producer cannot write: a header name that is not
UTF-8 (it writes ``str(name)`` of a bytes name). librdkafka itself takes any bytes, so this
calls it through ctypes, from the copy confluent-kafka ships."""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import confluent_kafka

RawHeader = tuple[bytes, bytes | None]

_VTYPE_END, _VTYPE_TOPIC, _VTYPE_VALUE, _VTYPE_KEY, _VTYPE_MSGFLAGS = 0, 1, 4, 5, 7
_VTYPE_HEADERS = 10
# Without it librdkafka keeps a pointer to the value (not the key) until it sends the record,
# long after the buffer below was freed: the value's first bytes then reached the topic
# overwritten by the allocator (a rare flake of test_hostile_input).
_MSG_F_COPY = 0x2
_ERRSTR = 512


@dataclass(frozen=True)
class RawRecord:
    key: bytes | None
    value: bytes | None
    headers: Sequence[RawHeader] = field(default_factory=tuple)


class _Mem(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _Union(ctypes.Union):
    _fields_ = [
        ("cstr", ctypes.c_char_p),
        ("ptr", ctypes.c_void_p),
        ("i", ctypes.c_int),
        ("mem", _Mem),
        ("pad", ctypes.c_char * 64),
    ]


class _VU(ctypes.Structure):
    """librdkafka's rd_kafka_vu_t: one argument of rd_kafka_produceva()."""

    _fields_ = [("vtype", ctypes.c_int), ("u", _Union)]


def _library() -> ctypes.CDLL:
    package = os.path.dirname(os.path.dirname(confluent_kafka.__file__))
    (path,) = glob.glob(os.path.join(package, "confluent_kafka.libs", "librdkafka*.so*"))
    lib = ctypes.CDLL(path)
    p, size = ctypes.c_void_p, ctypes.c_size_t
    lib.rd_kafka_conf_new.restype = p
    lib.rd_kafka_conf_set.argtypes = [p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, size]
    lib.rd_kafka_new.restype = p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, p, ctypes.c_char_p, size]
    lib.rd_kafka_headers_new.restype = p
    lib.rd_kafka_headers_new.argtypes = [size]
    lib.rd_kafka_header_add.argtypes = [
        p,
        ctypes.c_char_p,
        ctypes.c_ssize_t,
        ctypes.c_char_p,
        ctypes.c_ssize_t,
    ]
    lib.rd_kafka_headers_destroy.argtypes = [p]
    lib.rd_kafka_produceva.restype = p
    lib.rd_kafka_produceva.argtypes = [p, ctypes.POINTER(_VU), size]
    lib.rd_kafka_error_string.restype = ctypes.c_char_p
    lib.rd_kafka_error_string.argtypes = [p]
    lib.rd_kafka_poll.argtypes = [p, ctypes.c_int]
    lib.rd_kafka_flush.argtypes = [p, ctypes.c_int]
    lib.rd_kafka_outq_len.argtypes = [p]
    lib.rd_kafka_destroy.argtypes = [p]
    return lib


def produce_raw(
    bootstrap: str, topic: str, records: Iterable[RawRecord], max_bytes: int = 8_000_000
) -> None:
    """Produce ``records`` in order (idempotent, so retries cannot reorder them); raises when
    librdkafka refuses one or they are not all delivered within a minute."""
    lib = _library()
    error = ctypes.create_string_buffer(_ERRSTR)
    conf = lib.rd_kafka_conf_new()
    for name, value in (
        ("bootstrap.servers", bootstrap),
        ("enable.idempotence", "true"),
        ("message.max.bytes", str(max_bytes)),
        ("linger.ms", "5"),
    ):
        if lib.rd_kafka_conf_set(conf, name.encode(), value.encode(), error, _ERRSTR) != 0:
            raise RuntimeError(error.value.decode())
    producer = lib.rd_kafka_new(0, conf, error, _ERRSTR)  # RD_KAFKA_PRODUCER
    if not producer:
        raise RuntimeError(error.value.decode())
    try:
        for record in records:
            _produce_one(lib, producer, topic, record)
            lib.rd_kafka_poll(producer, 0)
        if lib.rd_kafka_flush(producer, 60_000) != 0 or lib.rd_kafka_outq_len(producer):
            raise RuntimeError("records not delivered within 60 s")
    finally:
        lib.rd_kafka_destroy(producer)


def _produce_one(lib: ctypes.CDLL, producer: int, topic: str, record: RawRecord) -> None:
    keep: list[ctypes.Array[ctypes.c_char]] = []  # alive while produceva copies them (F_COPY)
    arguments: list[tuple[int, str, object]] = [
        (_VTYPE_TOPIC, "cstr", topic.encode()),
        (_VTYPE_MSGFLAGS, "i", _MSG_F_COPY),
    ]
    for vtype, data in ((_VTYPE_KEY, record.key), (_VTYPE_VALUE, record.value)):
        if data is not None:
            buffer = ctypes.create_string_buffer(data, len(data))
            keep.append(buffer)
            arguments.append((vtype, "mem", _Mem(ctypes.cast(buffer, ctypes.c_void_p), len(data))))
    headers = lib.rd_kafka_headers_new(max(len(record.headers), 1))
    for name, value in record.headers:
        lib.rd_kafka_header_add(headers, name, len(name), value, 0 if value is None else len(value))
    arguments.append((_VTYPE_HEADERS, "ptr", headers))
    vus = (_VU * len(arguments))()
    for vu, (vtype, member, argument) in zip(vus, arguments, strict=True):
        vu.vtype = vtype
        setattr(vu.u, member, argument)
    failure = lib.rd_kafka_produceva(producer, vus, len(arguments))
    if failure:
        lib.rd_kafka_headers_destroy(headers)
        raise RuntimeError(lib.rd_kafka_error_string(failure).decode())
