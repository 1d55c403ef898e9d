"""Reading dataset files record by record, streaming, with the file:line of every record.

Formats: `.json` (one array, or one object per line), `.jsonl`, `.csv`, `.parquet` (pyarrow), `.txt`
(one pretraining text per line, as LLaMA-Factory reads them).

    >>> for line, record in iter_records(Path("data.jsonl")): ...
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from planner.errors import UserError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
_CHUNK_CHARS = 1 << 22  # 4 Mi characters per read keeps memory flat on multi-GB arrays
_WS = " \t\r\n"


def iter_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record) for each record of one file; line numbers are 1-based."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        if is_json_lines(path):  # JSON Lines saved as .json (LLaMA-Factory accepts both)
            yield from _iter_jsonl(path)
        else:
            yield from _iter_json_array(path)
    elif suffix == ".csv":
        yield from _iter_csv(path)
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    elif suffix == ".txt":
        yield from _iter_txt(path)
    else:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}.",
                        f"Use one of {', '.join(SUFFIXES)}.")


def is_json_lines(path: Path) -> bool:
    """Whether the file holds one JSON record per line (`.jsonl`, or a `.json` that is not one array)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return True
    if suffix != ".json":
        return False
    with open(path, "rb") as fb:
        head = fb.read(4096).lstrip(b" \t\r\n").removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    return not head.startswith(b"[")


def line_blocks(path: Path, size: int = 4 << 20) -> Iterator[tuple[int, int, int]]:
    """(byte offset, byte length, number of its first line) of consecutive blocks of whole lines, each
    about `size` bytes (longer when one line is): another process reads a block with iter_block_lines."""
    with open(path, "rb") as f:
        offset, line = 0, 1
        while True:
            f.seek(offset)
            data = f.read(size)
            if not data:
                return
            cut = data.rfind(b"\n") + 1
            while cut == 0:  # one line longer than the block: read on to its end
                more = f.read(size)
                if not more:
                    cut = len(data)
                    break
                found = more.find(b"\n")
                data += more
                if found >= 0:
                    cut = len(data) - len(more) + found + 1
            yield offset, cut, line
            line += data.count(b"\n", 0, cut)
            offset += cut


def iter_block_lines(path: Path | str, offset: int, length: int, first_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of the non-blank lines of one block from line_blocks."""
    data = _read_range(path, offset, length)
    for number, raw in enumerate(data.split(b"\n"), start=first_line):
        if raw.strip():
            yield number, raw


def _read_range(path: Path | str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


# A JSON string (complete: group 1 is the closing quote; or cut by the end of the buffer) or a structural byte.
_ARRAY_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:(")|\\?\Z)|[\[\]{},]')
_BOM = b"\xef\xbb\xbf"


def _element_pattern(levels: int) -> re.Pattern[bytes]:
    """One whole array element (nested up to `levels` deep) and the ',' or ']' after it, in one match.
    Every repetition starts with a different byte than its neighbour can hold, so matching is linear."""
    string, plain = rb'"[^"\\]*(?:\\.[^"\\]*)*"', rb'[^{}\[\]"]*'
    inner = string
    for _ in range(levels):
        inner = rb"(?:%s|[{\[]%s(?:(?:%s)%s)*[}\]])" % (string, plain, inner, plain)
    scalar = rb'[^,{}\[\]"\s]+'
    return re.compile(rb"\s*(?:%s|%s)\s*([,\]])" % (inner, scalar))


_ELEMENT = _element_pattern(3)  # sharegpt's conversations of turns are 3 deep


def array_blocks(path: Path, size: int = 1 << 20, *, read: int = 4 << 20) -> Iterator[tuple[int, int, int, bool]]:
    """(byte offset, byte length, number of its first line, follows a ',') of consecutive runs of whole
    elements of a top-level JSON array, each about `size` bytes (never an element cut): another process
    parses a block with iter_block_elements. Only strings and brackets are followed here (a whole element
    at a time where one pattern covers it); an error inside an element is found by whoever parses it."""
    depth = 0
    start, start_line, after_comma = -1, 1, False  # the current block: file offset, line, follows a ','
    line, base, buf = 1, 0, b""  # line number and file offset of buf[0]

    def cut(sep: int) -> tuple[int, int, int, bool] | None:
        """The current block, ended at the top-level ',' at buf[sep], once it is `size` long."""
        nonlocal start, start_line, after_comma
        if base + sep - start < size:
            return None
        block = start, base + sep - start, start_line, after_comma
        start, start_line, after_comma = base + sep + 1, line + buf.count(b"\n", 0, sep + 1), True
        return block

    with open(path, "rb") as f:
        chunk = f.read(3)
        if chunk == _BOM:
            chunk, base = b"", 3
        chunk += f.read(read)
        while True:
            buf += chunk
            eof = not chunk
            i = 0  # scanned up to here
            scanning = True
            while scanning:
                if depth == 1:  # between elements: take whole elements while the pattern covers them
                    m = _ELEMENT.match(buf, i)
                    while m is not None:
                        sep = m.start(1)
                        if buf[sep] == 0x5D:  # ']': the array's end
                            yield start, base + sep - start, start_line, after_comma
                            return
                        block = cut(sep)
                        if block:
                            yield block
                        i = sep + 1
                        m = _ELEMENT.match(buf, i)
                scanning = False  # unless a token below hands back to the pattern
                for m in _ARRAY_TOKEN.finditer(buf, i):  # token by token: deeper nesting, or a cut element
                    c = buf[m.start()]
                    if depth == 0:
                        if c != 0x5B or buf[:m.start()].strip():  # '[' first
                            raise _array_error(path, line + buf.count(b"\n", 0, m.start()),
                                               "expected '[' at the start of the file")
                        depth, start, start_line = 1, base + m.end(), line + buf.count(b"\n", 0, m.end())
                        i, scanning = m.end(), True
                        break
                    if c == 0x22:  # '"'
                        if m.group(1) is None and not eof:  # a string cut by the buffer: read on from it
                            i = m.start()
                            break
                    elif c in (0x5B, 0x7B):  # '[' '{'
                        depth += 1
                    elif c in (0x5D, 0x7D):  # ']' '}'
                        depth -= 1
                        if depth == 0:  # the array's end
                            yield start, base + m.start() - start, start_line, after_comma
                            return
                    elif depth == 1:  # a top-level ','
                        block = cut(m.start())
                        if block:
                            yield block
                        i, scanning = m.end(), True
                        break
                else:
                    i = len(buf)
            if eof:
                if depth == 0 and not buf.strip():
                    return  # an empty file (the caller reports an empty dataset)
                for _ in _iter_json_array(Path(path)):  # the record-by-record reader names the first error
                    pass
                raise _array_error(path, line + buf.count(b"\n"),
                                   "unexpected end of file inside the array (missing ']')")
            line += buf.count(b"\n", 0, i)
            buf, base = buf[i:], base + i
            chunk = f.read(read)


def iter_block_elements(path: Path | str, offset: int, length: int, first_line: int,
                        after_comma: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed element) of one block from array_blocks; errors name file:line."""
    data = _read_range(path, offset, length)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, first_line + data.count(b"\n", 0, exc.start), exc) from None
    decoder = json.JSONDecoder()
    pos, line, counted = 0, first_line, 0
    n = len(text)
    expect = after_comma  # a record must come next (a ',' was just read)
    while True:
        while pos < n and text[pos] in _WS:
            pos += 1
        if pos >= n:
            if expect:  # "[..., ]"
                raise _array_error(path, line + text.count("\n", counted, pos), "expected a record after ','")
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _array_error(path, line + text.count("\n", pos, exc.pos), exc.msg) from None
        except RecursionError:
            raise _array_error(path, line, "nesting too deep") from None
        yield line, value
        pos = end
        while pos < n and text[pos] in _WS:
            pos += 1
        expect = pos < n
        if expect:
            if text[pos] != ",":
                raise _array_error(path, line + text.count("\n", counted, pos),
                                   f"expected ',' or ']' between records, found {text[pos]!r}")
            pos += 1


def _array_error(path: Path | str, line: int, message: str) -> UserError:
    return UserError(f"{path}:{line}: malformed JSON: {message}.",
                     "A .json dataset must be one JSON array of objects (or JSON Lines).")


def iter_raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, raw bytes) of the non-blank lines of a JSON Lines file, without parsing."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                yield number, raw


def parse_json_line(path: Path | str, number: int, raw: bytes) -> Any:
    """Decode one JSON Lines line; errors name file:line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, number, exc) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{number}: malformed JSON: {exc.msg} (column {exc.colno}).",
                        "Each line of a .jsonl file must hold one complete JSON object.") from None


def _utf8_error(path: Path | str, line: int, exc: UnicodeDecodeError) -> UserError:
    bad = exc.object[exc.start:exc.start + 4]
    return UserError(f"{path}:{line}: the file is not UTF-8 (bytes {bad!r}).",
                     "Re-encode it as UTF-8, e.g. `iconv -f GBK -t UTF-8 in.json > out.json`.")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    for number, raw in iter_raw_lines(path):
        yield number, parse_json_line(path, number, raw)


class _open_text:
    """Open a file as UTF-8 text, turning decode errors into file:line messages at read time."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, encoding="utf-8-sig", newline="")

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        self.f.close()


def _line_of_bad_byte(path: Path) -> UserError:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return _utf8_error(path, number, exc)
    return UserError(f"{path}: the file is not UTF-8.")


def _iter_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """Stream the elements of a top-level JSON array with json.JSONDecoder.raw_decode."""
    decoder = json.JSONDecoder()
    st = _ArrayState()
    try:
        with _open_text(path) as f:
            st.f = f
            st.fill()
            st.skip_ws()
            if st.pos >= len(st.buf) or st.buf[st.pos] != "[":
                raise st.error(path, "expected '[' at the start of the file")
            st.pos += 1
            st.skip_ws()
            if st.pos < len(st.buf) and st.buf[st.pos] == "]":
                return
            while True:
                st.skip_ws()
                while True:
                    try:
                        value, end = decoder.raw_decode(st.buf, st.pos)
                    except json.JSONDecodeError as exc:
                        # The record may run past the buffer: read on and retry, up to 64 Mi characters
                        # for one record (a real error further back is reported without reading on).
                        near_end = exc.pos >= len(st.buf) - 2 or len(st.buf) - st.pos < (1 << 26)
                        if near_end and st.fill():
                            continue
                        st.pos = max(st.pos, exc.pos)
                        raise st.error(path, exc.msg) from None
                    except RecursionError:
                        raise st.error(path, "nesting too deep") from None
                    if end >= len(st.buf) and not isinstance(value, (dict, list)) and st.fill():
                        continue  # a number cut by the buffer edge would decode short
                    break
                yield st.line_at(st.pos), value
                st.pos = end
                st.skip_ws()
                if st.pos >= len(st.buf):
                    raise st.error(path, "unexpected end of file inside the array (missing ']')")
                if st.buf[st.pos] == "]":
                    return
                if st.buf[st.pos] != ",":
                    raise st.error(path, f"expected ',' or ']' between records, found {st.buf[st.pos]!r}")
                st.pos += 1
    except UnicodeDecodeError:
        raise _line_of_bad_byte(path) from None


class _ArrayState:
    """Buffer, read position and incremental line count of the streaming array reader."""

    def __init__(self) -> None:
        self.f: Any = None
        self.buf, self.pos, self.eof = "", 0, False
        self.counted_pos, self.counted_line = 0, 1  # line number at buf[counted_pos]

    def line_at(self, p: int) -> int:
        if p >= self.counted_pos:  # positions only move forward, so counting stays linear
            self.counted_line += self.buf.count("\n", self.counted_pos, p)
            self.counted_pos = p
            return self.counted_line
        return self.counted_line - self.buf.count("\n", p, self.counted_pos)

    def fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(_CHUNK_CHARS)
        if not chunk:
            self.eof = True
            return False
        self.line_at(self.pos)
        self.buf, self.pos, self.counted_pos = self.buf[self.pos:] + chunk, 0, 0
        return True

    def skip_ws(self) -> None:
        while True:
            buf, p = self.buf, self.pos
            while p < len(buf) and buf[p] in _WS:
                p += 1
            self.pos = p
            if p < len(buf) or not self.fill():
                return

    def error(self, path: Path, message: str) -> UserError:
        return _array_error(path, self.line_at(self.pos), message)


def _iter_csv(path: Path) -> Iterator[tuple[int, Any]]:
    # strict: an unterminated quote is an error, not the rest of the file read into one field.
    start = 1  # the line the current record starts on (a quoted field may span lines)
    try:
        with _open_text(path) as f:
            reader = csv.DictReader(f, strict=True)
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if k is not None}
                start = reader.line_num + 1
    except UnicodeDecodeError:
        raise _line_of_bad_byte(path) from None
    except csv.Error as exc:
        what = ("a quoted field is never closed" if "unexpected end of data" in str(exc)
                else f"malformed CSV ({exc})")
        raise UserError(f"{path}:{start}: {what}, in the record that starts on this line.",
                        'Close the quote, or write a quote inside a field as two quotes ("").') from None


def _iter_txt(path: Path) -> Iterator[tuple[int, Any]]:
    for number, raw in iter_raw_lines(path):
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise _utf8_error(path, number, exc) from None
        yield number, {"text": text}


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading .parquet files needs pyarrow, which is not installed.",
                        "Install it with `pip install 'vramplan[parquet]'` (or `pip install pyarrow`).") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise UserError(f"{path}: cannot read the parquet file: {exc}.") from None
    row = 0
    for batch in table.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield row, record  # "line" of a parquet file = its row number
