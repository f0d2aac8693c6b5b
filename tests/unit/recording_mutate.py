"""Hostile variants of real recordings, for tests/unit/test_recording_fuzz.py.

A mutation works on the records of a seed (decoded with the real reader) and writes them back with their CRC
recomputed, so it reaches the parser behind the checksum: JSON values replaced by wrong types, huge numbers, deep
nesting and long strings; events resized, retyped and cut; records dropped, duplicated and reordered; bytes
flipped in payloads. Seeded random.Random only: the same seed gives the same corpus on every machine.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
import struct
import zlib
from typing import Any, BinaryIO

from tracer.events.decode import EVENT_SIZES
from tracer.recording.fileformat import (
    KIND_EVENTS,
    KIND_HEADER,
    MAGIC,
    PREAMBLE,
    RecordReader,
    encode_record,
)

HOSTILE: list[Any] = [
    "x", -1, 0, 1 << 70, -(1 << 70), 1.5, 1e308, True, None, [], {}, [1, "x"], {"a": {"b": []}},
    "9" * 64, "\udcff", "../../etc/passwd", "/etc/passwd", [[[]]], {"nodes": "x"}, {"nodes": [1]},
    {"nodes": [{"netns": 1, "links": "x"}]}, {"pods": {"p": "x"}}, {"hooks": [{}]}, [{"slots": [[99, 1]]}],
]
EVENT_LEN = struct.Struct("<H")


def records_of(path: str) -> list[tuple[int, bytes]]:
    reader = RecordReader(path)
    try:
        return [(record.kind, record.payload) for record in reader.records()]
    finally:
        reader.close()


def encode(records: list[tuple[int, bytes]]) -> bytes:
    return PREAMBLE.pack(MAGIC, 1) + b"".join(encode_record(kind, payload) for kind, payload in records)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON tree (dict key or list index paths)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:8]):
            found += _paths(child, (*prefix, index))
    return found


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = tree
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return tree


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def mutate_json(rng: random.Random, payload: bytes) -> bytes:
    try:
        data = json.loads(payload)
        choice = rng.randrange(8)
    except (ValueError, RecursionError):  # already hostile (an earlier mutation): flip a byte of it
        data, choice = None, 2
    if choice == 0:  # a 100,000-deep nesting or a 100,000-digit integer in place of a value
        text = json.dumps(_set(data, rng.choice(_paths(data)[1:] or [()]), "@@"))
        hostile = _deep(100_000) if rng.random() < 0.5 else "9" * 100_000
        return text.replace('"@@"', hostile, 1).encode()
    if choice == 1:  # NaN, Infinity: json.dumps writes them, json.loads reads them by default
        text = json.dumps(_set(data, rng.choice(_paths(data)[1:] or [()]), "@@"))
        return text.replace('"@@"', rng.choice(["NaN", "Infinity", "-Infinity"]), 1).encode()
    if choice == 2:  # a byte flip in the JSON text
        raw = bytearray(payload)
        if raw:
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes(raw)
    if choice == 3:  # the whole record another JSON type
        return json.dumps(rng.choice([[], "x", 1, None, [{}]])).encode()
    for _ in range(1 + rng.randrange(3)):  # wrong types and out-of-range values
        # a copy: the same list or object put twice, once inside the other, would be a cycle json.dumps refuses
        data = _set(data, rng.choice(_paths(data)), copy.deepcopy(rng.choice(HOSTILE)))
        if not isinstance(data, dict):
            break
    return json.dumps(data).encode("utf-8", "surrogatepass")


def mutate_events(rng: random.Random, payload: bytes) -> bytes:
    events = []
    position = 0
    while position + 2 <= len(payload):
        size, = EVENT_LEN.unpack_from(payload, position)
        events.append(bytearray(payload[position + 2 : position + 2 + size]))
        position += 2 + size
    if not events:
        return payload
    target = rng.randrange(len(events))
    choice = rng.randrange(6)
    event = events[target]
    if choice == 0:  # resized, the size field agreeing
        grown = event + bytes(rng.randrange(1, 300))
        events[target] = event[: rng.randrange(len(event))] if rng.random() < 0.5 else grown
    elif choice == 1:  # another type, its size unchanged
        event[0:4] = struct.pack("<I", rng.choice([*EVENT_SIZES, 0, 99, 0xFFFFFFFF]))
    elif choice == 2:  # random bytes over the fields
        for _ in range(8):
            event[rng.randrange(len(event))] = rng.randrange(256)
    elif choice == 3:  # snap_len and lengths at their maxima
        if len(event) > 60:
            event[38:40] = b"\xff\xff"
            event[50:52] = b"\xff\xff"
    elif choice == 4:  # a size field that lies about the payload (the CRC still matches)
        body = b"".join(EVENT_LEN.pack(len(e)) + bytes(e) for e in events)
        cut = rng.randrange(len(body))
        return body[:cut] + EVENT_LEN.pack(rng.randrange(65536)) + body[cut:]
    else:
        events.insert(rng.randrange(len(events)), bytearray(rng.randbytes(rng.randrange(4, 400))))
    return b"".join(EVENT_LEN.pack(len(e)) + bytes(e) for e in events)


def mutate(rng: random.Random, records: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    records = list(records)
    for _ in range(1 + rng.randrange(2)):
        index = rng.randrange(len(records))
        kind, payload = records[index]
        choice = rng.randrange(10)
        if choice < 5 and kind != KIND_EVENTS:
            records[index] = (kind, mutate_json(rng, payload))
        elif choice < 7 and kind == KIND_EVENTS:
            records[index] = (kind, mutate_events(rng, payload))
        elif choice == 7:
            del records[index]
            if not records:
                records = [(KIND_HEADER, b"{}")]
        elif choice == 8:
            records.insert(rng.randrange(len(records)), records[index])
        else:
            records[index] = (rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 200]), payload)
    return records


def compress(data: bytes, how: str) -> bytes:
    if how == "gz":
        return gzip.compress(data, 6)
    if how == "zst":
        import zstandard

        return bytes(zstandard.ZstdCompressor(level=3).compress(data))
    return data


def compress_stream(out: BinaryIO, prefix: bytes, block: bytes, repeats: int, how: str) -> None:
    """prefix + block * repeats, compressed as it is written (a bomb is built without holding it in memory)."""
    if how == "gz":
        compressor: Any = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        finish: Any = compressor.flush
    else:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=3).compressobj()
        finish = compressor.flush
    out.write(compressor.compress(prefix))
    for _ in range(repeats):
        out.write(compressor.compress(block))
    out.write(finish())
