"""The recording file format: writer and reader (docs/recording-format.md is the reference).

    preamble  b"PODTRACE" + u32 format version                     (little-endian throughout)
    record    u32 length | u8 kind | payload[length] | u32 crc32(length, kind, payload)

The first record is the JSON header, then EVENTS, NAMES, COUNTERS and NAT_FLOWS records in time order, then a TRAILER.
The whole stream is gzip- or zstd-compressed when the file name ends in .gz or .zst; readers detect compression
from the first bytes, not the name. Pure IO on bytes: nothing here knows about BPF.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from tracer.events.decode import EVENT_SIZES
from tracer.output.errors import RecordingError
from tracer.recording import schema as recording_schema

if TYPE_CHECKING:
    pass

MAGIC = b"PODTRACE"
FORMAT_VERSION = 1
# Additions within version 1 that older readers skip (header "format_minor"): 1 nat_flows and softirq records,
# 2 the header's "links" and "conntrack" and the last trailer's "conntrack", 3 per-probe counters ("probe_counters"
# in counters records and trailers, "probe_counters_at_start" in headers), 4 the header's part.run_id (rotation parts
# are found by it and their index, never by the trailer's "next"), 5 the header's "merged" (`podtrace merge -o`: two
# nodes' events on one clock, the journeys), 6 the last trailer's "cause_state" (the node state behind the drops'
# causes, tracer/recording/recorded_causes.py), 7 the header's "boot_id" (one boot: one monotonic clock), the merged
# clock's "same_clock" and a journey's "dnat". Absent in the first files: 0.
FORMAT_MINOR = 8
PREAMBLE = struct.Struct("<8sI")

KIND_HEADER = 1
KIND_EVENTS = 2
KIND_NAMES = 3
KIND_COUNTERS = 4
KIND_TRAILER = 5
KIND_NAT_FLOWS = 6  # added within version 1: older readers skip it (unknown kind)
KIND_SOFTIRQ = 7  # added within version 1, likewise
KIND_NAMES_BY_VALUE = {KIND_HEADER: "header", KIND_EVENTS: "events", KIND_NAMES: "names",
                       KIND_COUNTERS: "counters", KIND_TRAILER: "trailer", KIND_NAT_FLOWS: "nat_flows",
                       KIND_SOFTIRQ: "softirq"}

RECORD_HEAD = struct.Struct("<IB")
RECORD_CRC = struct.Struct("<I")
EVENT_LEN = struct.Struct("<H")  # before each event: event structs differ in size (packet 296, NAT 128)
# A length beyond this is corruption, not a record (batches are kept far smaller by the writer).
MAX_RECORD = 64 << 20
MAX_JSON = 32 << 20  # a header with kube-proxy's rules of a large cluster is a few MiB
# Decompression bounds: a part never holds more than MAX_STREAM bytes, and past RATIO_FLOOR bytes the stream may
# not be more than MAX_RATIO times the compressed bytes read (real recordings compress 5-20x; a bomb of empty
# records ~1000x). Both end the read with a RecordingError, in bounded memory: output is taken in OUT_CHUNK pieces.
MAX_STREAM = 16 << 30
MAX_RATIO = 200
RATIO_FLOOR = 4 << 20
OUT_CHUNK = 1 << 20
ZSTD_IN_CHUNK = 512  # zstd RLE blocks reach ~32000x: 512 input bytes never yield more than ~16 MiB

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_HINT = "install it with `pip install zstandard`, or record to a .gz file"


def compression_of(path: str) -> str:
    if path.endswith(".gz"):
        return "gzip"
    if path.endswith(".zst"):
        return "zstd"
    return "none"


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError as err:
        raise RecordingError("zstd recordings need the Python package zstandard", ZSTD_HINT) from err
    return zstandard


def encode_record(kind: int, payload: bytes) -> bytes:
    head = RECORD_HEAD.pack(len(payload), kind)
    return head + payload + RECORD_CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


def encode_json(kind: int, data: dict[str, Any]) -> bytes:
    return encode_record(kind, json.dumps(data, sort_keys=True, separators=(",", ":")).encode())


def encode_events(raw_events: list[bytes]) -> bytes:
    pack = EVENT_LEN.pack
    return encode_record(KIND_EVENTS, b"".join(pack(len(raw)) + raw for raw in raw_events))


FILE_MODE = 0o600  # recordings hold packet snippets: readable by their owner only unless asked (--mode)


class WriteFailed(RecordingError):
    """Writing a recording failed (most often a full disk): the file holds what was written before."""

    def __init__(self, path: str, err: OSError) -> None:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        what = "the disk is full" if full else (err.strerror or str(err))
        super().__init__(f"cannot write {path}: {what}; the recording ends here",
                         "what was written before is readable: podtrace report reads it up to the last complete "
                         "record")


def create_new(path: str, mode: int = FILE_MODE) -> BinaryIO:
    """A new file for writing, created with `mode` exactly (not widened by the umask's absence, not narrowed by
    it): O_EXCL and O_NOFOLLOW, so an existing file or a planted symlink at a predictable path is refused rather
    than overwritten or followed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError as err:
        what = "a symbolic link" if os.path.islink(path) else "an existing file"
        raise RecordingError(f"cannot write {path}: it is {what}, refused (podtrace never overwrites or follows "
                             "links)", "remove it or choose another name") from err
    except OSError as err:
        raise RecordingError(f"cannot write {path}: {err.strerror}") from err
    os.fchmod(fd, mode)
    return os.fdopen(fd, "wb")


class RecordWriter:
    """One recording file: preamble on open, records appended, flushed and fsynced on close."""

    def __init__(self, path: str, mode: int = FILE_MODE) -> None:
        self.path = path
        self.compression = compression_of(path)
        zstd = _zstandard() if self.compression == "zstd" else None  # fail before creating the file
        self._file: BinaryIO = create_new(path, mode)
        self._gzip: Any = None
        self._zstd: Any = None
        if self.compression == "gzip":
            # A raw zlib stream with a gzip wrapper: flush() yields a decodable prefix (Z_SYNC_FLUSH), so a killed
            # recorder leaves a readable file.
            self._gzip = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        elif zstd is not None:
            self._zstd = zstd.ZstdCompressor(level=3).compressobj()
        self.uncompressed = 0
        self._write(PREAMBLE.pack(MAGIC, FORMAT_VERSION))

    def _write(self, data: bytes) -> None:
        self.uncompressed += len(data)
        if self._gzip is not None:
            data = self._gzip.compress(data)
        elif self._zstd is not None:
            data = self._zstd.compress(data)
        if data:
            self._out(self._file.write, data)

    def _out(self, call: Callable[..., Any], *args: Any) -> Any:
        """A write, flush or fsync of the file; a full disk (or any write error) is one RecordingError."""
        try:
            return call(*args)
        except OSError as err:
            self.abandon()
            raise WriteFailed(self.path, err) from err

    def abandon(self) -> None:
        """Close without writing anything more (after a write error: what reached the file stays readable)."""
        if self._file.closed:
            return
        with contextlib.suppress(OSError):
            os.close(self._file.fileno())  # not file.close(): it would flush the buffer again and fail again
        with contextlib.suppress(OSError, ValueError):
            self._file.close()

    @property
    def size(self) -> int:
        """Bytes on disk so far (compressed ones lag by what the compressor still buffers)."""
        return self._file.tell()

    def write_json(self, kind: int, data: dict[str, Any]) -> None:
        self._write(encode_json(kind, data))

    def write_events(self, raw_events: list[bytes]) -> None:
        self._write(encode_events(raw_events))

    def flush(self) -> None:
        """Push everything written so far to the kernel (a SIGKILL after this loses nothing before it)."""
        if self._gzip is not None:
            self._out(self._file.write, self._gzip.flush(zlib.Z_SYNC_FLUSH))
        elif self._zstd is not None:
            self._out(self._file.write, self._zstd.flush(_zstandard().COMPRESSOBJ_FLUSH_BLOCK))
        self._out(self._file.flush)

    def close(self) -> None:
        if self._file.closed:
            return
        if self._gzip is not None:
            self._out(self._file.write, self._gzip.flush(zlib.Z_FINISH))
        elif self._zstd is not None:
            self._out(self._file.write, self._zstd.flush())
        self._out(self._file.flush)
        self._out(os.fsync, self._file.fileno())
        self._file.close()


@dataclass(frozen=True)
class Record:
    kind: int
    payload: bytes
    offset: int  # of the record's length field in the (decompressed) stream

    def json(self, path: str = "") -> dict[str, Any]:
        """The payload as a JSON object checked against its kind's schema (tracer.recording.schema)."""
        name = KIND_NAMES_BY_VALUE.get(self.kind, f"kind {self.kind}")
        what = f"{path + ': ' if path else ''}{name} record at byte offset {self.offset}"
        if len(self.payload) > MAX_JSON:
            raise RecordingError(f"{what} is {len(self.payload)} bytes of JSON, more than {MAX_JSON}")
        data = recording_schema.load(self.payload, what)
        recording_schema.check(data, recording_schema.schema_of(self.kind), what)
        return data


class _Chunks:
    """Decompressed bytes of a file in chunks of at most OUT_CHUNK; `truncated` once a compressed stream ended early.

    Bounded whatever the file holds: output is pulled in pieces (never one unbounded decompress call) and the
    stream is refused past MAX_STREAM bytes or, beyond RATIO_FLOOR, MAX_RATIO times the compressed bytes read.
    """

    def __init__(self, handle: BinaryIO, path: str) -> None:
        self._handle = handle
        self._path = path
        self.truncated = False
        self._in = 0
        self._out = 0
        first = handle.read(4)
        handle.seek(0)
        self.compression = "gzip" if first[:2] == GZIP_MAGIC else "zstd" if first == ZSTD_MAGIC else "none"

    def __iter__(self) -> Iterator[bytes]:
        if self.compression == "none":
            while chunk := self._handle.read(OUT_CHUNK):
                yield chunk
            return
        pieces = self._gunzip() if self.compression == "gzip" else self._unzstd()
        for piece in pieces:
            if piece:
                self._out += len(piece)
                self._bounded()
                yield piece

    def _read(self, size: int) -> bytes:
        chunk = self._handle.read(size)
        self._in += len(chunk)
        return chunk

    def _bounded(self) -> None:
        if self._out > MAX_STREAM:
            raise RecordingError(f"{self._path}: decompresses to more than {MAX_STREAM >> 30} GiB, refused",
                                 "a recording part is never that large: this looks like a decompression bomb")
        if self._out > RATIO_FLOOR and self._out > MAX_RATIO * max(self._in, 1):
            raise RecordingError(
                f"{self._path}: decompresses more than {MAX_RATIO} times its size ({self._in} bytes -> "
                f"{self._out} so far), refused", "recordings compress far less: this looks like a decompression bomb")

    def _gunzip(self) -> Iterator[bytes]:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        fed = False  # the current member has input: ending now is a cut, not a clean end
        while chunk := self._read(1 << 16):
            while chunk:
                fed = True
                try:
                    yield decompressor.decompress(chunk, OUT_CHUNK)
                except zlib.error as err:
                    raise RecordingError(f"{self._path}: compressed data is corrupt ({err})") from err
                if decompressor.unconsumed_tail:
                    chunk = decompressor.unconsumed_tail
                    continue
                if not decompressor.eof:
                    break
                chunk = decompressor.unused_data  # concatenated gzip members (cat a.gz b.gz)
                decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                fed = False
        if fed:
            yield decompressor.flush(OUT_CHUNK)
            self.truncated = not decompressor.eof

    def _unzstd(self) -> Iterator[bytes]:
        zstd = _zstandard()
        decompressor = zstd.ZstdDecompressor().decompressobj()
        fed = False
        while chunk := self._read(ZSTD_IN_CHUNK):
            while chunk:
                fed = True
                try:
                    yield decompressor.decompress(chunk)
                except zstd.ZstdError as err:
                    raise RecordingError(f"{self._path}: compressed data is corrupt ({err})") from err
                if not decompressor.eof:
                    break
                chunk = decompressor.unused_data  # concatenated frames (cat a.zst b.zst)
                decompressor = zstd.ZstdDecompressor().decompressobj()
                fed = False
        self.truncated = fed and not decompressor.eof


def open_regular(path: str, follow_symlinks: bool = True) -> BinaryIO:
    """`path` opened for reading only if it is a regular file: a FIFO or a device would hang or never end the read
    (O_NONBLOCK makes the open itself return at once), a symlink is refused when `follow_symlinks` is False."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as err:
        raise RecordingError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise RecordingError(f"{path} is a directory, not a podtrace recording") from err
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RecordingError(f"{path} is a symbolic link: refused as a rotation part") from err
        raise RecordingError(f"cannot read {path}: {err.strerror}") from err
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise RecordingError(f"{path} is {what}, not a podtrace recording")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class RecordReader:
    """Records of one file, in order. Stops cleanly at a cut-off end (`truncated`), raises on corruption."""

    def __init__(self, path: str, follow_symlinks: bool = True) -> None:
        self.path = path
        self._handle: BinaryIO = open_regular(path, follow_symlinks)
        self._chunks = _Chunks(self._handle, path)
        self.compression = self._chunks.compression
        self.truncated = False
        self.version = 0
        self.bytes_read = 0  # decompressed bytes of complete records (and preamble)

    def close(self) -> None:
        self._handle.close()

    def _not_recording(self) -> RecordingError:
        return RecordingError(f"{self.path} is not a podtrace recording")

    def records(self) -> Iterator[Record]:
        buffer = bytearray()
        offset = 0  # stream offset of buffer[0]
        preamble_done = False
        for chunk in self._chunks:
            buffer += chunk
            if not preamble_done:
                if len(buffer) < PREAMBLE.size:
                    if not MAGIC.startswith(bytes(buffer[: len(MAGIC)])):
                        raise self._not_recording()
                    continue
                self._check_preamble(bytes(buffer[: PREAMBLE.size]))
                del buffer[: PREAMBLE.size]
                offset = self.bytes_read = PREAMBLE.size
                preamble_done = True
            position = 0
            while True:
                record = self._parse(buffer, position, offset + position)
                if record is None:
                    break
                position += RECORD_HEAD.size + len(record.payload) + RECORD_CRC.size
                self.bytes_read = offset + position
                yield record
            del buffer[:position]
            offset += position
        if not preamble_done:
            if buffer and MAGIC.startswith(bytes(buffer[: len(MAGIC)])):
                self.truncated = True  # cut inside the preamble
                return
            raise self._not_recording()
        self.truncated = bool(buffer) or self._chunks.truncated

    def _check_preamble(self, data: bytes) -> None:
        magic, version = PREAMBLE.unpack(data)
        if magic != MAGIC:
            raise self._not_recording()
        if version > FORMAT_VERSION:
            raise RecordingError(
                f"{self.path} is recording format version {version}; this podtrace reads up to version "
                f"{FORMAT_VERSION}", "read it with a newer podtrace")
        if version < 1:
            raise self._not_recording()
        self.version = version

    def _parse(self, buffer: bytearray, position: int, stream_offset: int) -> Record | None:
        """The record at `position`, or None when the buffer ends inside it."""
        if len(buffer) - position < RECORD_HEAD.size:
            return None
        length, kind = RECORD_HEAD.unpack_from(buffer, position)
        if length > MAX_RECORD:
            raise self._corrupt(stream_offset, f"length {length} is impossible")
        end = position + RECORD_HEAD.size + length
        if len(buffer) < end + RECORD_CRC.size:
            return None
        stored, = RECORD_CRC.unpack_from(buffer, end)
        if zlib.crc32(buffer[position:end]) != stored:
            raise self._corrupt(stream_offset, "checksum mismatch")
        return Record(kind, bytes(buffer[position + RECORD_HEAD.size : end]), stream_offset)

    def _corrupt(self, offset: int, what: str) -> RecordingError:
        where = f"byte offset {offset}" + (" of the decompressed stream" if self.compression != "none" else "")
        return RecordingError(f"{self.path}: corrupt record at {where} ({what})",
                              "everything before it was read")


def split_events(record: Record, path: str = "") -> list[bytes]:
    """The raw events of an EVENTS record, each checked against its type's size (tracer.events.decode.EVENT_SIZES)
    before anything decodes it. Events of a type this reader does not know are left out (a later minor may add
    types)."""
    payload = record.payload
    events = []
    position = 0
    unpack = EVENT_LEN.unpack_from
    where = f"{path + ': ' if path else ''}events record at byte offset {record.offset}"
    while position < len(payload):
        if position + EVENT_LEN.size > len(payload):
            raise RecordingError(f"{where} does not hold whole events (a size field is cut at {position})")
        size, = unpack(payload, position)
        position += EVENT_LEN.size
        end = position + size
        if size < 4 or end > len(payload):
            raise RecordingError(f"{where} does not hold whole events (an event of {size} bytes at {position})")
        kind = int.from_bytes(payload[position : position + 4], "little")
        expected = EVENT_SIZES.get(kind)
        if expected is not None:
            if size != expected:
                raise RecordingError(f"{where}: the event at {position} is {size} bytes, a type-{kind} event is "
                                     f"{expected}")
            events.append(payload[position:end])
        position = end
    return events


def part_path(path: str, index: int) -> str:
    """Rotation part names: trace.ptrec, trace.ptrec.1, ...; the compression suffix stays last (trace.1.gz)."""
    if index == 0:
        return path
    for suffix in (".gz", ".zst"):
        if path.endswith(suffix):
            return f"{path[: -len(suffix)]}.{index}{suffix}"
    return f"{path}.{index}"
