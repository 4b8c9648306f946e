"""Text encodings of inputs, and every message about input that is not text: the one home.

agents-read decodes its input with ``--encoding`` (UTF-8 by default). JSON Lines on the standard
input of agents-write and agents-map are UTF-8 and nothing else: those commands have no
``--encoding``, so their hints say how to convert the input instead. A hint names an encoding
that fits the bytes:

* a byte-order mark names its encoding (UTF-8, or UTF-16 and UTF-32 in either byte order);
* zero bytes in every other place (UTF-16) or three places in four (UTF-32) name the family
  and the byte order, when there is no mark;
* bytes that read as UTF-8 need no ``--encoding`` at all;
* anything else is an 8-bit code page, of which latin-1 reads every byte.

A JSON escape of half a UTF-16 surrogate pair (``"\\ud800"``) is no decoding problem: the line
is valid UTF-8, but the value is no character, and no output (UTF-8, SQLite) can hold it. It is
named as what it is, with the field that holds it.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from typing import Any

import orjson

from agents.errors import DataError, SourceError

UNKNOWN_ENCODING_HINT = (
    "use --encoding to name the file's encoding (for example --encoding latin-1)"
)
#: For an --encoding that names no text encoding: the usual names.
ENCODING_NAMES_HINT = "name a text encoding, such as utf-8, utf-16, latin-1 or cp1252"


def normalise_encoding(name: str) -> str:
    """The codec's own name for ``name`` ("UTF8", "utf_8" and "u8" are all "utf-8"); a name
    Python does not know is a usage error, whatever the format."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise SourceError(f"unknown encoding {name!r}", ENCODING_NAMES_HINT) from None
    # base64, rot13, zlib: codecs Python has, but not text encodings (bytes.decode refuses them)
    if not getattr(info, "_is_text_encoding", True):
        raise SourceError(f"{name!r} is not a text encoding", ENCODING_NAMES_HINT)
    return info.name


# Byte-order marks and zero bytes -----------------------------------------------------------


@dataclass(frozen=True)
class Bom:
    mark: bytes
    option: str  # the --encoding that reads a file with this mark: utf-8, utf-16 or utf-32
    order: str = ""  # the byte order it says: le or be

    @property
    def label(self) -> str:
        """For people: "UTF-16 (little-endian)"."""
        family = self.option.upper()
        return (
            f"{family} ({'little' if self.order == 'le' else 'big'}-endian)"
            if self.order
            else family
        )

    @property
    def decoder(self) -> str:
        """The codec that reads what follows the mark."""
        return f"{self.option}-{self.order}" if self.order else self.option

    def fits(self, codec: str) -> bool:
        """Whether a file with this mark may be read with ``codec`` (a normalised name)."""
        return codec in (self.option, self.decoder) or codec == f"{self.option}-sig"


BOMS = (  # UTF-32 first: its little-endian mark begins with UTF-16's
    Bom(codecs.BOM_UTF32_LE, "utf-32", "le"),
    Bom(codecs.BOM_UTF32_BE, "utf-32", "be"),
    Bom(codecs.BOM_UTF8, "utf-8"),
    Bom(codecs.BOM_UTF16_LE, "utf-16", "le"),
    Bom(codecs.BOM_UTF16_BE, "utf-16", "be"),
)

WIDE = ("utf-16", "utf-32")  # the codecs whose byte order only a mark can tell


def strip_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte-order mark."""
    return data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data


def bom_of(head: bytes) -> Bom | None:
    """The byte-order mark ``head`` starts with, if any."""
    return next((bom for bom in BOMS if head.startswith(bom.mark)), None)


def _zero_pattern(head: bytes) -> str | None:
    """The wide codec (with its byte order) that mostly-ASCII text without a mark looks like:
    zeros in every other byte are UTF-16, in three bytes of four UTF-32. No legitimate 8-bit or
    UTF-8 text has them."""
    size = min(len(head), 256) // 4 * 4
    if size < 16:  # fewer bytes show patterns by chance
        return None
    sample, places = head[:size], size // 4
    zeros = [sample[place::4].count(0) for place in range(4)]
    mostly = [count >= places * 3 // 4 for count in zeros]
    rarely = [count <= places // 8 for count in zeros]
    if rarely[0] and mostly[1] and mostly[2] and mostly[3]:
        return "utf-32-le"
    if mostly[0] and mostly[1] and mostly[2] and rarely[3]:
        return "utf-32-be"
    if rarely[0] and mostly[1] and rarely[2] and mostly[3]:
        return "utf-16-le"
    if mostly[0] and rarely[1] and mostly[2] and rarely[3]:
        return "utf-16-be"
    return None


def _looks_like(codec: str) -> str:
    family = "UTF-32" if codec.startswith("utf-32") else "UTF-16"
    order = "little-endian" if codec.endswith("le") else "big-endian"
    zeros = "three bytes in four are" if family == "UTF-32" else "every other byte is"
    return f"{zeros} zero, as in {family} ({order}) text"


def _reads_as_utf8(data: bytes, whole: bool = True) -> bool:
    """Whether ``data`` is UTF-8; unless it is ``whole``, it may end inside a character."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        cut = error.start > len(data) - 4 and error.reason == "unexpected end of data"
        return cut and not whole
    return True


@dataclass(frozen=True)
class Start:
    """How to decode a file, once its first bytes were seen: skip a mark, then ``codec``."""

    skip: int
    codec: str


def check_start(name: str, head: bytes, encoding: str) -> Start:
    """Check the first bytes of the file ``name`` against the ``--encoding`` it is read with.

    A byte-order mark of that encoding is skipped (UTF-16 and UTF-32 are then read in its byte
    order); a mark of another, or zeros that show UTF-16 or UTF-32, are refused with the
    ``--encoding`` that fits; ``--encoding utf-16`` (or utf-32) without a mark is refused too,
    since nothing tells the byte order.
    """
    codec = normalise_encoding(encoding)
    bom = bom_of(head)
    if bom is not None:
        if bom.fits(codec):
            return Start(len(bom.mark), bom.decoder)
        raise DataError(
            name,
            f"starts with a {bom.label} byte-order mark, so it is not {encoding} text",
            f"read it with --encoding {bom.option}",
        )
    wide = _zero_pattern(head)
    if wide is not None and codec != wide and not (codec in WIDE and wide.startswith(codec)):
        raise DataError(
            name,
            f"{_looks_like(wide)} without a byte-order mark, so it is not {encoding} text",
            f"read it with --encoding {wide}",
        )
    if codec in WIDE and head:
        if wide is not None:
            hint = f"{_looks_like(wide)}: read it with --encoding {wide}"
        elif _reads_as_utf8(head, whole=False):
            hint = "it reads as UTF-8, the default: leave out --encoding"
        else:
            hint = f"name the byte order: --encoding {codec}-le or --encoding {codec}-be"
        raise DataError(
            name, f"has no byte-order mark to tell the byte order of --encoding {encoding}", hint
        )
    return Start(0, "utf-8" if codec == "utf-8-sig" else codec)


# Bytes that do not decode ------------------------------------------------------------------


def not_text_hint(data: bytes, encoding: str, option: bool) -> str:
    """What to do about ``data`` (a line, or the start of a file) that ``encoding`` cannot
    decode. ``option``: the command has ``--encoding`` (agents-read); without it (JSON Lines on
    stdin) the hint says how to convert the input with agents-read."""
    bom = bom_of(data)
    wide = _zero_pattern(data)
    if bom is not None and bom.option != "utf-8":
        why, fits = f"it starts with a {bom.label} byte-order mark", bom.option
    elif wide is not None:
        why, fits = _looks_like(wide), wide
    elif option and normalise_encoding(encoding) != "utf-8" and _reads_as_utf8(data):
        return "it reads as UTF-8, the default: leave out --encoding"
    elif option:
        return UNKNOWN_ENCODING_HINT
    else:
        return (
            "JSON Lines are UTF-8: convert the input with agents-read FILE --encoding latin-1 "
            "(or the file's own encoding)"
        )
    if option:
        return f"{why}: use --encoding {fits}"
    return f"JSON Lines are UTF-8, and {why}: convert it with agents-read FILE --encoding {fits}"


def undecodable(where: str, line: bytes, start: int, encoding: str, option: bool) -> DataError:
    """The error for ``line`` (named by ``where``), whose byte ``start`` does not decode."""
    return DataError(
        where,
        f"invalid {encoding} at byte {start + 1} of the line",
        not_text_hint(line, encoding, option),
    )


def undecodable_after(
    name: str,
    before: str,
    error: UnicodeDecodeError,
    codec: str,
    encoding: str,
    lines_before: int = 0,
) -> DataError:
    """The error for the bytes of ``error`` that ``codec`` does not decode, after the text
    ``before`` (which follows ``lines_before`` whole lines of the file ``name``)."""
    tail = before[before.rfind("\n") + 1 :].encode(codec)
    line = lines_before + before.count("\n") + 1
    where = f"{name}:{line}"
    if not codec.startswith(WIDE):
        end = error.object.find(b"\n", error.start)
        rest = error.object[error.start : end if end >= 0 else len(error.object)]
        return undecodable(where, tail + rest, len(tail), encoding, option=True)
    # UTF-16 or UTF-32 (the byte order known from the mark or the option): what does not
    # decode is a cut at the end or a damaged character, not another encoding
    place = f"invalid {encoding} at byte {len(tail) + 1} of the line"
    if error.end >= len(error.object) and error.reason in (
        "truncated data",
        "unexpected end of data",
    ):
        return DataError(
            where,
            f"{place}: the file ends in the middle of a character",
            "the file may have been cut short; the records before it were read",
        )
    return DataError(
        where,
        f"{place}: {error.reason}",
        f"the file is damaged there, or it is not {encoding}",
    )


# JSON text that does not parse -------------------------------------------------------------


@dataclass(frozen=True)
class JsonProblem:
    """Why a JSON text did not parse, for people; ``line``: where in a text of several lines
    the problem is, when that is known better than the parser says."""

    reason: str
    hint: str | None = None
    line: int | None = None


def json_problem(error: orjson.JSONDecodeError, data: bytes | str, option: bool) -> JsonProblem:
    """Why ``data`` did not parse: bytes that are not UTF-8 (with the byte and a hint), a lone
    surrogate (with the field), or a syntax error (with a hint when the bytes are UTF-16)."""
    message = str(getattr(error, "msg", error))
    if "not valid UTF-8" in message and isinstance(data, bytes):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            begin = data.rfind(b"\n", 0, bad.start) + 1
            end = data.find(b"\n", bad.start)
            line = data[begin : end if end >= 0 else len(data)]
            return JsonProblem(
                f"invalid utf-8 at byte {bad.start - begin + 1} of the line",
                not_text_hint(line, "utf-8", option),
                data.count(b"\n", 0, bad.start) + 1,
            )
    if "surrogate" in message:
        found = lone_surrogate(data)
        if found is not None:
            return JsonProblem(
                f"{found.place} holds {found.escape}, {HALF_A_PAIR}", SURROGATE_HINT, found.line
            )
    hint = None
    if isinstance(data, bytes) and (_zero_pattern(data) or bom_of(data)):
        hint = not_text_hint(data, "utf-8", option)
    return JsonProblem(f"invalid JSON: {message}", hint)


HALF_A_PAIR = "half of a UTF-16 surrogate pair without the other half"
SURROGATE_HINT = (
    "half a character cannot be written to any output: fix or remove the value where the data "
    "was made (text cut in the middle of an emoji, say)"
)


Path = list[str | int]


@dataclass(frozen=True)
class Surrogate:
    escape: str  # as written in JSON: \ud800
    place: str  # for people: 'field "a"', 'element 2, field "a"'
    line: int | None  # in a text of several lines


def lone_surrogate(data: bytes | str) -> Surrogate | None:
    """The first string of the JSON text ``data`` holding half a surrogate pair, if any.

    orjson refuses such text without saying where; Python's parser accepts it, so the value is
    parsed again (only on this error path) and searched.
    """
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    found = _find_surrogate(value, [])
    if found is None:
        return None
    path, char, in_key = found
    escape = f"\\u{ord(char):04x}"
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    offset = text.lower().find(escape)
    line = text.count("\n", 0, offset) + 1 if offset >= 0 else None
    return Surrogate(escape, _place(path, in_key), line)


def _find_surrogate(value: Any, path: Path) -> tuple[Path, str, bool] | None:
    """(the path to the first string with a surrogate, the surrogate, whether it is a key)."""
    if isinstance(value, str):
        char = next((c for c in value if "\ud800" <= c <= "\udfff"), None)
        return (path, char, False) if char is not None else None
    items: Any = enumerate(value) if isinstance(value, list) else ()
    if isinstance(value, dict):
        for key in value:
            if found := _find_surrogate(key, path):
                return [*path, key], found[1], True
        items = value.items()
    for key, item in items:
        if found := _find_surrogate(item, [*path, key]):
            return found
    return None


def _place(path: Path, in_key: bool) -> str:
    """A value's place in a record, for people: its array element and its top-level field."""
    parts = []
    if path and isinstance(path[0], int):
        parts.append(f"element {path[0] + 1}")
        path = path[1:]
    if in_key and len(path) == 1:
        parts.append("a field name")
    elif path and isinstance(path[0], str):
        parts.append(f"field {json.dumps(path[0], ensure_ascii=False)}")
    return ", ".join(parts) or "the value"
