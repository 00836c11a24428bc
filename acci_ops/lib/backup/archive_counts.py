"""Row counts read from a pg_dump custom-format archive as it streams past: no second scan.

A custom archive (pg_dump -Fc) is a header, a table of contents (TOC) and then one data block
per table: a block type byte, the TOC entry's dump id, and length-prefixed chunks of COPY text
ending with a zero length. COPY text holds exactly one line per row (a newline inside a value is
written as the two characters ``\\n``), so a table's rows are the newlines in its chunks, less the
``\\.`` end-of-data line pg_dump appends. The TOC maps dump ids to schema and table; large objects
come in BLOBS blocks (per object: its OID, then chunks) and are counted apart, they are not rows.

Why here and not ``count(*)``: a second scan reads every table from disk again on a database
larger than memory. Counting the archive also describes the archive itself, which is the
stronger guarantee: the manifest says what the stored bytes hold.

The layout follows PostgreSQL's src/bin/pg_dump (pg_backup_archiver.c ReadHead, ReadToc, ReadInt,
ReadStr, ReadOffset; pg_backup_custom.c _StartData, _EndData, _StartLOs, _EndLOs,
_CustomWriteFunc) for archive versions 1.12 to 1.16 (pg_dump 9.0 to 17), uncompressed data only
(``--compress=0``, which is what the backup runs; zstd compresses the whole stream after).

The parser is fed chunks of any size (one byte works), keeps no more than one TOC string and a
few bytes of carry-over, and never raises from ``feed``: anything it cannot read makes the counts
unavailable with a one-line reason, the backup itself carries on.
"""

from __future__ import annotations

import struct
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
BLK_DATA = 1
BLK_BLOBS = 3
K_OFFSET_FLAGS = (1, 2, 3)  # K_OFFSET_POS_NOT_SET, K_OFFSET_POS_SET, K_OFFSET_NO_DATA
MIN_VERSION = (1, 12)  # separate BLOB entries (pg_dump 9.0)
MAX_VERSION = (1, 16)  # relkind in the TOC, several BLOBS entries (pg_dump 17)
# TOC strings we keep (tag, desc, namespace) are names; longer ones are skipped, never held.
MAX_KEPT_STRING = 64 * 1024
MAX_TOC_ENTRIES = 50_000_000
# Enough of a table's last chunk to see the "\." end-of-data line and the newlines after it.
TAIL_BYTES = 64
# Chunk lengths below 64 KiB whose little-endian bytes include a newline byte (0x0A).
_NEWLINE_LENGTHS = frozenset(v for v in range(65536) if v & 0xFF == 10 or v >> 8 == 10)
_HEADERS = {2: "<BH", 4: "<BI", 8: "<BQ"}
# Below this many bytes of table data in one feed, the per-chunk walk is cheaper than numpy's setup.
VECTOR_MIN_BYTES = 16 * 1024
# A pipe read returns what pg_dump has written so far, a median of 4-8 KiB (measured): feeds are
# gathered up to this much before they are parsed, so per-call costs are paid per 256 KiB.
BATCH_BYTES = 256 * 1024


class ArchiveFormatError(Exception):
    """The stream is not an archive this parser understands; the message is the one-line reason."""


@dataclass
class ArchiveCounts:
    """What the archive held: rows per ``schema.table`` (partitions by their own name, as pg_dump
    writes them), large objects, and the reason when the counts could not be read."""

    rows: dict[str, int] = field(default_factory=dict)
    large_objects: int = 0
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None


# A request from the header/TOC reader to the driver: read n bytes (returned) or skip n bytes.
_Read = tuple[str, int]


class ArchiveRowCounter:
    """Feed the archive bytes in order with ``feed``; ``finish`` at the end of the stream."""

    def __init__(self, batch_bytes: int = BATCH_BYTES) -> None:
        self._batch_bytes = batch_bytes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._error: str | None = None
        self._carry = b""
        # Header and TOC: a generator that asks for bytes; None once the data blocks start.
        self._toc_reader: Generator[_Read, bytes | None, None] | None = self._read_header_and_toc()
        self._request: _Read | None = next(self._toc_reader)
        self._skip = 0
        self._int_size = 4
        self._header = struct.Struct(_HEADERS[4])
        self._tables: dict[int, str] = {}  # dump id -> "schema.table" of TABLE DATA entries
        self._blobs_ids: set[int] = set()
        self._dumper_ids: set[int] = set()  # every entry with data (a block may only belong to one)
        self._data_ids: set[int] = set()
        self._seen: set[int] = set()
        self._rows: dict[str, int] = {}
        self._large_objects = 0
        # Data section state.
        self._mode = "block"  # block | chunk | lo_oid
        self._block_id = 0
        self._block_is_table = False
        self._remaining = 0  # payload bytes of the current chunk still to come
        self._newlines = 0  # in the current table block
        self._tail = b""  # last bytes of the current table block's last chunk
        self._chunk_start = True

    # -- public ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Consume the next bytes of the archive (any length). Never raises."""
        if self._error is not None or not data:
            return
        if self._batch_bytes:
            self._pending.append(data)
            self._pending_bytes += len(data)
            if self._pending_bytes < self._batch_bytes:
                return
            data = self._take_pending()
        self._parse(data)

    def _take_pending(self) -> bytes:
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        return data

    def _parse(self, data: bytes) -> None:
        try:
            if self._toc_reader is not None:
                data = self._feed_toc(data)
                if self._toc_reader is not None or not data:
                    return
            self._feed_data(data)
        except ArchiveFormatError as exc:
            self._fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the backup
            self._fail(f"unexpected {type(exc).__name__} while reading the archive: {exc}")

    def finish(self) -> ArchiveCounts:
        """The counts, or the reason they are unavailable (a stream that stopped mid-way)."""
        if self._pending and self._error is None:
            self._parse(self._take_pending())
        if self._error is None:
            if self._toc_reader is not None:
                self._fail("the archive ended inside its header or table of contents")
            elif self._mode != "block" or self._remaining or self._carry:
                self._fail(f"the archive ended inside the data of dump id {self._block_id}")
            else:
                missing = sorted(self._tables[i] for i in self._data_ids - self._seen if i in self._tables)
                if missing:
                    self._fail(f"the archive has no data block for {missing[0]}"
                               + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        if self._error is not None:
            return ArchiveCounts(error=self._error)
        return ArchiveCounts(rows=dict(self._rows), large_objects=self._large_objects)

    # -- header and table of contents ----------------------------------------------------------

    def _fail(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
        self._carry = b""
        self._toc_reader = None

    def _feed_toc(self, data: bytes) -> bytes:
        """Drive the header/TOC generator; returns the bytes left over once the TOC is read."""
        buf = self._carry + data if self._carry else data
        pos = 0
        while self._toc_reader is not None:
            kind, n = self._request
            if kind == "skip":
                take = min(n, len(buf) - pos)
                pos += take
                n -= take
                if n:
                    self._request = ("skip", n)
                    break
                answer = None
            else:
                if len(buf) - pos < n:
                    break
                answer = bytes(buf[pos:pos + n])
                pos += n
            try:
                self._request = self._toc_reader.send(answer)
            except StopIteration:
                self._toc_reader = None
        if self._toc_reader is not None:
            self._carry = bytes(buf[pos:])
            return b""
        self._carry = b""
        return bytes(buf[pos:]) if pos < len(buf) else b""

    def _read_header_and_toc(self) -> Generator[_Read, bytes | None, None]:
        if (yield ("read", 5)) != MAGIC:
            raise ArchiveFormatError("the stream is not a pg_dump custom-format archive (no PGDMP header)")
        vmaj, vmin, vrev = (yield ("read", 3))
        if not MIN_VERSION <= (vmaj, vmin) <= MAX_VERSION:
            raise ArchiveFormatError(f"archive version {vmaj}.{vmin}.{vrev} is not one this reader knows "
                                     f"({MIN_VERSION[0]}.{MIN_VERSION[1]} to {MAX_VERSION[0]}.{MAX_VERSION[1]})")
        version = (vmaj, vmin)
        int_size, off_size, fmt = (yield ("read", 3))
        if not 1 <= int_size <= 8 or not 1 <= off_size <= 16:
            raise ArchiveFormatError(f"implausible integer sizes in the archive header ({int_size}, {off_size})")
        self._int_size = int_size
        if int_size not in _HEADERS:
            raise ArchiveFormatError(f"archive integers of {int_size} bytes are not supported (4 is usual)")
        self._header = struct.Struct(_HEADERS[int_size])
        if fmt != FORMAT_CUSTOM:
            raise ArchiveFormatError(f"archive format {fmt} is not the custom format ({FORMAT_CUSTOM})")
        if version >= (1, 15):
            algorithm = (yield ("read", 1))[0]
            if algorithm != 0:
                raise ArchiveFormatError(f"the archive's data is compressed by pg_dump (algorithm {algorithm}); "
                                         "rows can only be counted with --compress=0")
        else:
            level = yield from self._int()
            if level != 0:
                raise ArchiveFormatError(f"the archive's data is compressed by pg_dump (level {level}); "
                                         "rows can only be counted with --compress=0")
        for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
            yield from self._int()
        for _ in range(3):  # database name, server version, pg_dump version
            yield from self._string(keep=False)

        count = yield from self._int()
        if not 0 <= count <= MAX_TOC_ENTRIES:
            raise ArchiveFormatError(f"implausible number of TOC entries ({count})")
        for _ in range(count):
            dump_id = yield from self._int()
            if dump_id <= 0:
                raise ArchiveFormatError(f"TOC entry id {dump_id} out of range; the table of contents is damaged")
            had_dumper = yield from self._int()
            yield from self._string(keep=False)  # catalog tableoid
            yield from self._string(keep=False)  # catalog oid
            tag = yield from self._string(keep=True)
            desc = yield from self._string(keep=True)
            yield from self._int()  # section
            for _ in range(3):  # defn, dropStmt, copyStmt
                yield from self._string(keep=False)
            namespace = yield from self._string(keep=True)
            yield from self._string(keep=False)  # tablespace
            yield from self._string(keep=False)  # tableam (>= 1.14)
            if version >= (1, 16):
                yield from self._int()  # relkind
            yield from self._string(keep=False)  # owner
            yield from self._string(keep=False)  # "false": the old WITH OIDS flag
            while True:  # dependencies, a list of strings ended by a null string
                length = yield from self._int()
                if length < 0:
                    break
                yield ("skip", length)
            flag = (yield ("read", 1))[0]
            if flag not in K_OFFSET_FLAGS:
                raise ArchiveFormatError(f"unexpected data offset flag {flag} in TOC entry {dump_id}")
            yield ("skip", off_size)
            if had_dumper:
                self._dumper_ids.add(dump_id)
                if desc == "TABLE DATA":
                    if tag is None or namespace is None:
                        raise ArchiveFormatError(f"TABLE DATA entry {dump_id} has no table or schema name")
                    self._tables[dump_id] = f"{namespace}.{tag}"
                    self._data_ids.add(dump_id)
                elif desc == "BLOBS":
                    self._blobs_ids.add(dump_id)

    def _int(self) -> Generator[_Read, bytes | None, int]:
        raw = yield ("read", self._int_size + 1)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def _string(self, *, keep: bool) -> Generator[_Read, bytes | None, str | None]:
        length = yield from self._int()
        if length < 0:
            return None
        if keep and length <= MAX_KEPT_STRING:
            return (yield ("read", length)).decode("utf-8", "replace")
        if length:
            yield ("skip", length)
        return None

    # -- data blocks ---------------------------------------------------------------------------

    def _feed_data(self, data: bytes) -> None:
        buf = self._carry + data if self._carry else data
        self._carry = b""
        n = len(buf)
        pos = 0
        isz = self._int_size + 1
        while pos < n:
            if self._remaining:
                take = min(self._remaining, n - pos)
                if self._block_is_table:
                    self._newlines += buf.count(b"\n", pos, pos + take)
                    self._keep_tail(buf[max(pos, pos + take - TAIL_BYTES):pos + take])
                pos += take
                self._remaining -= take
                continue
            mode = self._mode
            if mode == "block":
                if n - pos < 1 + isz:
                    break
                kind = buf[pos]
                block_id = self._read_int(buf, pos + 1, isz)
                pos += 1 + isz
                self._start_block(kind, block_id)
                continue
            if n - pos < isz:
                break
            if mode == "lo_oid":
                oid = self._read_int(buf, pos, isz)
                pos += isz
                if oid == 0:
                    self._mode = "block"
                else:
                    self._large_objects += 1
                    self._mode = "chunk"
                continue
            # mode == "chunk": the hot loop, one iteration per chunk (pg_dump writes one per row).
            if self._block_is_table:
                pos = self._table_chunks(buf, pos, n, isz)
            else:
                pos = self._skip_chunks(buf, pos, n, isz)
        if pos < n:
            self._carry = bytes(buf[pos:])

    def _table_chunks(self, buf: bytes, pos: int, n: int, isz: int) -> int:
        """Count a table's chunks from ``pos`` (a chunk header); returns where it stopped.

        The vectorized pass takes the stretch of per-row chunks it can prove; the walk below takes
        what is left (the block's end, a chunk cut by the read, anything unusual)."""
        if isz == 5 and n - pos >= VECTOR_MIN_BYTES:
            pos = self._vector_chunks(buf, pos, n)
        return self._walk_chunks(buf, pos, n, isz)

    def _vector_chunks(self, buf: bytes, pos: int, n: int) -> int:
        """Count a stretch of chunks with numpy instead of one Python step per row; returns the first
        chunk header it did not count (``pos`` itself when it proved nothing).

        pg_dump writes one chunk per row (5-byte header: a zero sign byte and a little-endian
        length), and COPY text holds no NUL and ends every row with a newline, so nearly every
        header sits right after a newline and starts with 0x00. Those positions are the candidates;
        each one's length says where the next header is. Every step of the chain from ``pos`` is
        then checked against the candidate list: a counted chunk is one the chain reached, so a
        candidate that is really inside a header (a length byte 0x0A followed by 0x00) or a payload
        that breaks the rules cannot make the count wrong, it only ends the stretch early and the
        walk carries on from the last proven header."""
        a = np.frombuffer(buf, dtype=np.uint8, count=n)
        if a[pos]:
            return pos  # a negative length: the walk names it
        # Newlines followed by a zero byte, with a whole header after them inside the buffer.
        nl = np.flatnonzero(a[pos:n - 5] == 10)
        nl += pos
        cand = nl[a[nl + 1] == 0] + 1
        if cand.size == 0:
            return pos
        # A candidate 2..4 bytes after the one before it is inside that header (a real header is
        # at least 6 bytes after the previous one): drop it before the chain is checked.
        keep = np.empty(cand.size, dtype=bool)
        keep[0] = cand[0] - pos > 4
        np.greater(cand[1:] - cand[:-1], 4, out=keep[1:])
        heads = np.concatenate((np.array([pos], dtype=np.int64), cand[keep]))
        # Every byte offset read as a little-endian uint32 (a strided view, no copy): the lengths.
        words = np.ndarray((n - 3,), dtype="<u4", buffer=buf, strides=(1,))
        lengths = words[heads + 1].astype(np.int64)
        # Chunk k is proven when it is not the end marker and its length lands on heads[k + 1].
        proven = (heads[:-1] + 5 + lengths[:-1] == heads[1:]) & (lengths[:-1] != 0)
        broken = np.flatnonzero(~proven)
        stop = int(broken[0]) if broken.size else heads.size - 1
        if stop == 0:
            return pos
        end = int(heads[stop])
        counted = lengths[:stop]
        header_newlines = sum(int(np.count_nonzero(((counted >> shift) & 0xFF) == 10)) for shift in (0, 8, 16, 24))
        self._newlines += int(np.searchsorted(nl, end)) - header_newlines
        last = int(heads[stop - 1]) + 5
        self._tail = bytes(buf[max(last, end - TAIL_BYTES):end])
        self._chunk_start = end - last <= TAIL_BYTES
        return end

    def _walk_chunks(self, buf: bytes, pos: int, n: int, isz: int) -> int:
        """Walk whole chunks of a table's data from ``pos``; returns where it stopped.

        The one loop that runs per row, so it does the least per chunk: newlines are counted once
        over the whole stretch, and the few headers whose length bytes hold a newline byte (0x0A)
        are subtracted (lengths under 64 KiB are looked up in a precomputed set)."""
        unpack = self._header.unpack_from
        count = buf.count
        region = pos
        header_newlines = 0
        last = -1
        limit = n - isz
        ended = False
        while pos <= limit:
            sign, length = unpack(buf, pos)
            if sign:
                raise ArchiveFormatError(f"negative chunk length in the data of dump id {self._block_id}")
            if length == 0:
                ended = True
                break
            if length >= 65536 or length in _NEWLINE_LENGTHS:
                header_newlines += count(b"\n", pos + 1, pos + isz)
            pos += isz
            last = pos
            pos += length
        stop = min(pos, n)
        self._newlines += count(b"\n", region, stop) - header_newlines
        if last >= 0:
            self._tail = bytes(buf[max(last, stop - TAIL_BYTES):stop])
            self._chunk_start = stop - last <= TAIL_BYTES
        if pos > n:  # the last chunk continues in the next feed
            self._remaining = pos - n
            return n
        if ended:
            self._end_table_block()
            return pos + isz
        return pos

    def _skip_chunks(self, buf: bytes, pos: int, n: int, isz: int) -> int:
        while pos + isz <= n:
            if buf[pos]:
                raise ArchiveFormatError(f"negative chunk length in the data of dump id {self._block_id}")
            length = int.from_bytes(buf[pos + 1:pos + isz], "little")
            pos += isz
            if length == 0:
                # A large object's chunks end; the BLOBS block goes on with the next OID.
                self._mode = "lo_oid" if self._block_id in self._blobs_ids else "block"
                return pos
            if pos + length > n:
                self._remaining = pos + length - n
                return n
            pos += length
        return pos

    def _keep_tail(self, piece: bytes) -> None:
        """Continue the current chunk's tail across feeds (rare path: chunks split by a read)."""
        joined = self._tail + bytes(piece)
        self._chunk_start = self._chunk_start and len(joined) <= TAIL_BYTES
        self._tail = joined[-TAIL_BYTES:]

    @staticmethod
    def _read_int(buf: bytes, pos: int, isz: int) -> int:
        value = int.from_bytes(buf[pos + 1:pos + isz], "little")
        return -value if buf[pos] else value

    def _start_block(self, kind: int, block_id: int) -> None:
        if block_id not in self._dumper_ids:
            raise ArchiveFormatError(f"a data block for dump id {block_id}, which has no data in the table of contents")
        if block_id in self._seen:
            raise ArchiveFormatError(f"a second data block for dump id {block_id}")
        self._seen.add(block_id)
        self._block_id = block_id
        if kind == BLK_DATA:
            if block_id in self._blobs_ids:
                raise ArchiveFormatError(f"a table data block for the large-object entry {block_id}")
            self._block_is_table = block_id in self._tables
            self._newlines = 0
            self._tail = b""
            self._chunk_start = True
            self._mode = "chunk"
        elif kind == BLK_BLOBS:
            if block_id not in self._blobs_ids:
                raise ArchiveFormatError(f"a large-object block for dump id {block_id}, which is not a BLOBS entry")
            self._block_is_table = False
            self._mode = "lo_oid"
        else:
            raise ArchiveFormatError(f"unknown data block type {kind} (dump id {block_id}); the archive is damaged "
                                     "or newer than this reader")

    def _end_table_block(self) -> None:
        rows = self._newlines - _terminator_newlines(self._tail, self._chunk_start)
        self._rows[self._tables[self._block_id]] = rows
        self._mode = "block"


def _terminator_newlines(tail: bytes, at_chunk_start: bool) -> int:
    """Newlines that belong to pg_dump's end-of-data marker ``\\.`` (and the blank lines after it)
    at the end of a table's data, not to rows.

    A row can never be the line ``\\.``: COPY text writes a backslash in a value as two. pg_dump 15
    writes the marker as its own last chunk, ``\\.`` and three newlines; a chunk starts a line."""
    stripped = tail.rstrip(b"\n")
    if not stripped.endswith(b"\\."):
        return 0
    before = stripped[:-2]
    if before.endswith(b"\n") or (not before and at_chunk_start):
        return len(tail) - len(stripped)
    return 0


def count_archive(data: bytes, piece: int = 1 << 20, batch_bytes: int = 0) -> ArchiveCounts:
    """Count a whole archive held in memory (tests, tools), parsed in pieces of ``piece`` bytes
    (``batch_bytes`` 0: each piece as it comes, so a test sees every way a read can cut the stream)."""
    counter = ArchiveRowCounter(batch_bytes)
    for start in range(0, len(data), piece):
        counter.feed(data[start:start + piece])
    return counter.finish()
