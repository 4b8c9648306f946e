"""Opening sources and targets: stdin/stdout, gzip, decoding with line numbers (what each
encoding and byte-order mark means, and the messages about them, are in ``_encodings``), atomic
files.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, BinaryIO, cast

from agents.errors import SourceError, TargetError
from agents.formats._encodings import (
    WIDE,
    check_start,
    strip_bom,
    undecodable,
    undecodable_after,
)


@dataclass
class Source:
    """An opened input: its display name, binary stream and, for files, its path."""

    name: str
    stream: BinaryIO
    path: str | None = None

    def close(self) -> None:
        if self.path is not None:
            self.stream.close()


def open_source(location: str, stdin: BinaryIO) -> Source:
    """Open a path (``-`` is stdin; ``.gz`` is decompressed) or fail with a one-line error."""
    if location == "-":
        return Source("<stdin>", _maybe_gunzip(stdin))
    try:
        stream: BinaryIO = open(location, "rb")
    except FileNotFoundError:
        raise SourceError(f"{location}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{location}: is a directory, not a file") from None
    except PermissionError:
        raise SourceError(f"{location}: cannot read the file: permission denied") from None
    except OSError as error:
        raise SourceError(f"{location}: cannot open: {error.strerror}") from None
    if location.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
    return Source(location, stream, location)


def _maybe_gunzip(stream: BinaryIO) -> BinaryIO:
    """stdin that starts with gzip's magic bytes is decompressed, like ``zcat -f``."""
    peekable: Any = stream if hasattr(stream, "peek") else io.BufferedReader(stream)
    if peekable.peek(2)[:2] == b"\x1f\x8b":
        return cast(BinaryIO, gzip.GzipFile(fileobj=peekable, mode="rb"))
    return cast(BinaryIO, peekable)


# Decoding ------------------------------------------------------------------------------------


def utf8_text(stream: BinaryIO) -> io.TextIOWrapper:
    """A UTF-8 file as text for the csv module: a byte-order mark skipped, line ends kept."""
    return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")


CHUNK_BYTES = 1 << 16
HEAD_BYTES = 256  # enough to see a byte-order mark, or the zeros of UTF-16 without one


def read_head(stream: BinaryIO) -> bytes:
    """The first bytes of ``stream`` (at least HEAD_BYTES, unless it is shorter)."""
    read = getattr(stream, "read1", stream.read)
    parts: list[bytes] = []
    while sum(map(len, parts)) < HEAD_BYTES and (data := read(CHUNK_BYTES)):
        parts.append(data)
    return b"".join(parts)


def decoded_chunks(source: Source, encoding: str) -> Iterator[str]:
    """The input as text, in chunks that each end at a line end (but perhaps the last).

    The first bytes are checked against the encoding (:func:`check_start`: a byte-order mark
    skipped or refused). Decoding whole chunks is fast; cutting them at newlines lets an
    invalid byte be reported with its line number after every line before it was delivered.
    UTF-16 and UTF-32, where a newline byte can sit inside a character, are decoded
    incrementally and cut at newline characters instead.
    """
    head = read_head(source.stream)
    start = check_start(source.name, head, encoding)
    head = head[start.skip :]
    if start.codec.startswith(WIDE):
        yield from _wide_chunks(source, head, start.codec, encoding)
        return
    codec = start.codec
    lines_before = 0
    for chunk in _line_chunks(source.stream, head):
        try:
            text = chunk.decode(codec)
        except UnicodeDecodeError as error:
            good = chunk.rfind(b"\n", 0, error.start) + 1
            if good:
                yield chunk[:good].decode(codec)
            line = lines_before + chunk.count(b"\n", 0, error.start) + 1
            end = chunk.find(b"\n", error.start)
            raise undecodable(
                f"{source.name}:{line}",
                chunk[good : end if end >= 0 else len(chunk)],
                error.start - good,
                encoding,
                option=True,
            ) from None
        lines_before += chunk.count(b"\n")
        yield text


def _wide_chunks(source: Source, head: bytes, codec: str, encoding: str) -> Iterator[str]:
    """UTF-16 or UTF-32 (``codec`` names the byte order) as text chunks ending at newlines."""
    decoder = codecs.getincrementaldecoder(codec)()
    read = getattr(source.stream, "read1", source.stream.read)
    carry = ""  # the text after the last newline so far
    lines_before = 0
    data = head
    while True:
        try:
            text = carry + decoder.decode(data, final=not data)
        except UnicodeDecodeError as error:
            before = carry + error.object[: error.start].decode(codec)
            if cut := before.rfind("\n") + 1:
                yield before[:cut]
            raise undecodable_after(
                source.name, before, error, codec, encoding, lines_before
            ) from None
        cut = text.rfind("\n") + 1
        if cut:
            yield text[:cut]
            lines_before += text.count("\n", 0, cut)
        carry = text[cut:]
        if not data:
            if carry:
                yield carry
            return
        data = read(CHUNK_BYTES)


class LineSplitter:
    """Whole lines (without their newlines) out of chunks of any size.

    The unfinished tail is kept as a list of parts, so a very long line costs linear time. A
    UTF-8 byte-order mark before the first line is dropped, as agents-read drops it: a JSON
    Lines file saved by a Windows editor is still UTF-8.
    """

    def __init__(self) -> None:
        self.partial: list[bytes] = []
        self.first = True

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk:
            self.partial.append(chunk)
            return []
        lines = chunk.split(b"\n")
        if self.partial:
            self.partial.append(lines[0])
            lines[0] = b"".join(self.partial)
        tail = lines.pop()
        self.partial = [tail] if tail else []
        if self.first:
            self.first = False
            lines[0] = strip_bom(lines[0])
        return lines

    def finish(self) -> list[bytes]:
        """The last line, when the input did not end with a newline."""
        rest = [b"".join(self.partial)] if self.partial else []
        if rest and self.first:
            rest[0] = strip_bom(rest[0])
        self.partial = []
        return rest


def _line_chunks(stream: BinaryIO, head: bytes = b"") -> Iterator[bytes]:
    """Raw chunks of about CHUNK_BYTES, each cut just after a newline (but perhaps the last);
    ``head``, the bytes already read, comes first."""
    read = getattr(stream, "read1", stream.read)
    parts: list[bytes] = []
    while True:
        data, head = head or read(CHUNK_BYTES), b""
        if not data:
            if parts:
                yield b"".join(parts)
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            parts.append(data)
            continue
        parts.append(data[:cut])
        yield b"".join(parts)
        parts = [data[cut:]] if cut < len(data) else []


def csv_lines(source: Source, encoding: str) -> Iterator[str]:
    """Lines for the csv module: split at \n, \r\n or \r, endings kept, as it expects."""
    return chain.from_iterable(
        io.StringIO(text, newline="") for text in decoded_chunks(source, encoding)
    )


# Writing ------------------------------------------------------------------------------------


@dataclass
class AtomicFile:
    """A temporary file beside ``path`` that replaces it on :meth:`commit`, or vanishes on abort.

    An interrupted or failed write therefore leaves the old target exactly as it was.
    """

    path: str
    stream: BinaryIO = field(init=False)
    temp_path: str = field(init=False)

    def __post_init__(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        base = os.path.basename(self.path)
        try:
            fd, self.temp_path = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
        except FileNotFoundError:
            raise TargetError(f"{self.path}: the folder {folder} does not exist") from None
        except PermissionError:
            raise TargetError(f"{self.path}: cannot write in {folder}: permission denied") from None
        except OSError as error:
            raise TargetError(f"{self.path}: cannot write: {error.strerror}") from None
        self.stream = os.fdopen(fd, "w+b")

    def commit(self) -> None:
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        if os.path.exists(self.path):
            with contextlib.suppress(OSError):
                os.chmod(self.temp_path, os.stat(self.path).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.temp_path, 0o666 & ~umask)
        os.replace(self.temp_path, self.path)
        fsync_folder(self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)


def fsync_folder(path: str) -> None:
    """Make a rename or a new file in ``path``'s folder durable."""
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def standard_stream_at(path: str | os.PathLike[str]) -> str | None:
    """Which standard stream (``stdin``, ``stdout``, ``stderr``) is the file at ``path``, if
    one is: ``> out.jsonl --stats out.jsonl`` names the results' file again, which the shell
    has emptied already (so it looks new), and writing it whole would lose them."""
    try:
        mine = os.stat(path)
    except OSError:
        return None
    for fd, name in ((1, "stdout"), (2, "stderr"), (0, "stdin")):
        try:
            theirs = os.fstat(fd)
        except OSError:
            continue
        if (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino) and os.path.isfile(path):
            return name
    return None


def check_writable(path: str) -> None:
    """Fail early, before reading any input, when ``path`` cannot be created or replaced."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise TargetError(f"{path}: is a directory")
    if not os.path.isdir(folder):
        raise TargetError(f"{path}: the folder {folder} does not exist")
    if os.path.exists(path) and not os.path.isfile(path):
        return  # a device or a FIFO (/dev/null, /dev/stdout): written as it is
    # Tried for real: access() answers for the permission bits, which root passes, while a
    # read-only mount, a kernel file system or an immutable file still refuse.
    try:
        fd, probe = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".probe", dir=folder
        )
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise TargetError(
            f"{path}: cannot write in {folder}: {(error.strerror or 'refused').lower()}"
        ) from None
    if os.path.exists(path):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))  # opened, not changed
        except OSError:
            raise TargetError(f"{path}: the file is read-only") from None
