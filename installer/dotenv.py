"""Read and edit `.env` files the way Docker Compose v2 (compose-go's dotenv package) reads them.

The rules, as compose-go v2 implements them:

- A statement is `KEY=VALUE` (or `KEY: VALUE`); a leading `export ` is
  dropped, but a key such as `exporter` is kept. A line holding only `KEY`
  copies KEY from the environment when it is set there.
- Keys contain letters, digits, `_`, `.`, `-`, `[` and `]`.
- Unquoted values drop leading blanks, end at the first ` #`, lose trailing
  whitespace (including `\\r`), and are interpolated, so `$$` becomes `$`.
- Single-quoted values are literal, may span lines, and `\\'` is a quote.
- Double-quoted values may span lines; `\\n \\r \\t \\\\ \\"` and the other C
  escapes are expanded, and then the value is interpolated.
- Interpolation looks up earlier lines of the file first, then `environ`.
- A UTF-8 byte order mark at the start is skipped.

`parse` returns the values. `DotenvFile` keeps the document so that the
installer can change some keys and write every other line back unchanged,
and `quote` picks a quoting for a new value that reads back identically.
Error messages name line numbers and keys, never values, because values are
often secrets.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from installer.compose import MissingVariablesError, interpolate
from installer.errors import DotenvError, InterpolationError

logger = logging.getLogger(__name__)

__all__ = ["DotenvFile", "parse", "quote"]

_BOM = "\ufeff"
_EXPORT = re.compile(r"export[ \t]+")
# compose-go's isSpace: blanks that are not a line break.
_BLANKS = "\t\v\f\r \x85\xa0"
# Escapes that compose-go expands in double-quoted values, with `\0` plus
# three octal digits for a byte value.
_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
}
_ESCAPE_PATTERN = re.compile(r"\\(?:([abfnrtv\\\"$])|0([0-3][0-7]{2}))")
_KEY = re.compile(r"[^\W][\w.\-\[\]]*")
_SIMPLE_VALUE = re.compile(r"[A-Za-z0-9_./:@%+,=^~-]*")


@dataclass(frozen=True)
class _Statement:
    """One assignment, with offsets into the document text."""

    key: str
    line: int
    # Offset of the key, after any `export ` prefix.
    key_start: int
    # Offset just past the value as written: past the closing quote, or past
    # the last non-blank character before an inline comment.
    end: int
    has_export: bool
    # "'" or '"' for quoted values, "" for unquoted ones.
    quote: str
    # The value between the quotes, or the unquoted value, before any expansion.
    raw_value: str
    # True for a line holding only a key, whose value comes from the environment.
    inherited: bool


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _BLANKS:
        pos += 1
    return pos


def _is_key_char(char: str) -> bool:
    return char.isalnum() or char in "_.-[]"


def _scan(text: str) -> list[_Statement]:
    """Split a document (without BOM) into statements as compose-go does."""
    statements: list[_Statement] = []
    pos = 0
    length = len(text)

    while True:
        # Skip whitespace and comment lines up to the next statement.
        while pos < length and text[pos].isspace():
            pos += 1
        if pos >= length:
            return statements
        if text[pos] == "#":
            newline = text.find("\n", pos)
            if newline < 0:
                return statements
            pos = newline
            continue

        statement, pos = _scan_statement(text, pos)
        statements.append(statement)


def _scan_statement(text: str, start: int) -> tuple[_Statement, int]:
    line = _line_of(text, start)
    export = _EXPORT.match(text, start)
    key_start = export.end() if export else start

    # The key ends at `=`, `:` or the end of the line; blanks may surround it.
    pos = key_start
    length = len(text)
    while pos < length and text[pos] not in "=:\n":
        char = text[pos]
        if char not in _BLANKS and not _is_key_char(char):
            raise DotenvError(f"line {line}: unexpected character {char!r} in variable name")
        pos += 1
    key = text[key_start:pos].rstrip()
    if not key:
        raise DotenvError(f"line {line}: missing variable name before '='")
    if any(char in _BLANKS for char in key):
        raise DotenvError(f"line {line}: variable name {key.split()[0]!r} is followed by a space")

    if pos >= length or text[pos] == "\n":
        # A key alone on its line, including the last line without a newline.
        statement = _Statement(
            key, line, key_start, key_start + len(key), bool(export), "", "", True
        )
        return statement, pos

    value_start = _skip_blanks(text, pos + 1)
    if value_start < length and text[value_start] in "'\"":
        return _scan_quoted(text, key, line, key_start, bool(export), value_start)

    newline = text.find("\n", value_start)
    line_end = length if newline < 0 else newline
    value = text[value_start:line_end]
    comment = value.find(" #")
    if comment >= 0:
        value = value[:comment]
    value = value.rstrip()
    end = value_start + len(value)
    statement = _Statement(key, line, key_start, end, bool(export), "", value, False)
    return statement, line_end


def _scan_quoted(
    text: str, key: str, line: int, key_start: int, has_export: bool, start: int
) -> tuple[_Statement, int]:
    quote_char = text[start]
    chars: list[str] = []
    pos = start + 1
    escaped = False
    while pos < len(text):
        char = text[pos]
        if escaped:
            escaped = False
            # An escaped quote drops its backslash; other escapes keep it for
            # the escape expansion of double-quoted values.
            if char != quote_char:
                chars.append("\\")
            chars.append(char)
        elif char == "\\":
            escaped = True
        elif char == quote_char:
            statement = _Statement(
                key, line, key_start, pos + 1, has_export, quote_char, "".join(chars), False
            )
            return statement, pos + 1
        else:
            chars.append(char)
        pos += 1
    raise DotenvError(
        f"line {line}: unterminated quoted value for {key}",
        hint=f"close the {quote_char} quote, and note that \\{quote_char} does not close it",
    )


def _expand_escapes(value: str) -> str:
    def replace(match: re.Match[str]) -> str:
        char, octal = match.group(1), match.group(2)
        if octal is not None:
            return chr(int(octal, 8))
        if char == "$":
            # `\$` is a literal dollar, written as `$$` for the interpolation that follows.
            return "$$"
        return _ESCAPES[char]

    return _ESCAPE_PATTERN.sub(replace, value)


class _ChainedLookup(Mapping[str, str]):
    """Values from earlier lines first, then the environment, as compose-go looks them up."""

    def __init__(self, parsed: Mapping[str, str], environ: Mapping[str, str]) -> None:
        self._parsed = parsed
        self._environ = environ

    def __getitem__(self, key: str) -> str:
        if key in self._parsed:
            return self._parsed[key]
        return self._environ[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._parsed
        yield from (key for key in self._environ if key not in self._parsed)

    def __len__(self) -> int:
        return len(set(self._parsed) | set(self._environ))


def _evaluate(statement: _Statement, lookup: Mapping[str, str]) -> str:
    if statement.quote == "'":
        return statement.raw_value
    value = statement.raw_value
    if statement.quote == '"':
        value = _expand_escapes(value)
    try:
        return interpolate(value, lookup, source=f".env line {statement.line}: {statement.key}")
    except MissingVariablesError as err:
        names = ", ".join(
            f"{item.name} ({item.message})" if item.message else item.name for item in err.missing
        )
        raise DotenvError(
            f"line {statement.line}: value of {statement.key} "
            f"needs variables that have no value: {names}"
        ) from None
    except InterpolationError:
        # The chained cause would carry the value, which may be a secret.
        raise DotenvError(
            f"line {statement.line}: value of {statement.key} has an invalid ${{...}} expression",
            hint="write $$ for a literal $, or single-quote the value",
        ) from None


def _evaluate_all(statements: list[_Statement], environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    lookup = _ChainedLookup(values, environ)
    for statement in statements:
        if statement.inherited:
            if statement.key in environ:
                values[statement.key] = environ[statement.key]
            continue
        values[statement.key] = _evaluate(statement, lookup)
    return values


def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith(_BOM) else text


def parse(text: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parse `.env` text into its values, interpolating with earlier lines and `environ`.

    Raises DotenvError naming the line (for an unterminated quote, the line of
    the opening quote) and the key, never the value.
    """
    body = _strip_bom(text)
    return _evaluate_all(_scan(body), environ or {})


def _round_trips(value: str, written: str) -> bool:
    try:
        return parse(f"KEY={written}\n") == {"KEY": value}
    except DotenvError:
        return False


def _has_control_character(value: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in value)


def _single_quoted(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _double_quoted(value: str) -> str:
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("$", "$$")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def quote(value: str, *, key: str = "VALUE") -> str:
    """Write `value` so that compose-go reads it back unchanged.

    Plain values stay unquoted; others get single quotes, which keep `$`
    literal; values that single quotes cannot hold get double quotes with
    escapes. Each candidate is parsed back and compared before it is chosen.
    Raises DotenvError naming `key`, never the value, when none round-trips.
    """
    candidates = []
    if _SIMPLE_VALUE.fullmatch(value):
        candidates.append(value)
    # Line breaks go into double quotes as escapes, so that a value never
    # spans lines and a later CRLF normalisation cannot change it.
    if not _has_control_character(value):
        candidates.append(_single_quoted(value))
    candidates.append(_double_quoted(value))
    for candidate in candidates:
        if _round_trips(value, candidate):
            return candidate
    raise DotenvError(
        f"cannot write the value of {key} to .env so that Compose reads it back unchanged",
        hint=f"remove control characters from {key}",
    )


class DotenvFile:
    """A `.env` document that can change values and keep every other byte.

    Lines that are not changed come back from `to_text` exactly as they were
    read, with their comments, order and quoting, except that the text is
    written with LF line endings and without a byte order mark;
    `normalised` reports whether that changed anything.
    """

    def __init__(self, text: str, *, had_bom: bool = False, had_crlf: bool = False) -> None:
        self._text = text
        self.had_bom = had_bom
        self.had_crlf = had_crlf
        self._statements = _scan(text)

    @classmethod
    def from_text(cls, text: str) -> DotenvFile:
        """Read a document, normalising CRLF to LF and dropping a byte order mark.

        NOTE: a CR inside a multi-line quoted value is dropped as well, so such
        a value reads back without it, unlike in Compose.
        """
        had_bom = text.startswith(_BOM)
        body = _strip_bom(text)
        had_crlf = "\r\n" in body
        return cls(body.replace("\r\n", "\n"), had_bom=had_bom, had_crlf=had_crlf)

    @property
    def normalised(self) -> bool:
        """Whether `to_text` differs from the input by line endings or a byte order mark."""
        return self.had_bom or self.had_crlf

    def keys(self) -> list[str]:
        """Return the keys in order of first appearance, including keys set only by inheritance."""
        seen: dict[str, None] = {}
        for statement in self._statements:
            seen.setdefault(statement.key, None)
        return list(seen)

    def __contains__(self, key: object) -> bool:
        return any(statement.key == key for statement in self._statements)

    def values(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the values Compose reads from this document with `environ`."""
        return _evaluate_all(self._statements, environ or {})

    def _last(self, key: str) -> _Statement | None:
        # Compose uses the last assignment of a key, so edits go there too.
        for statement in reversed(self._statements):
            if statement.key == key:
                return statement
        return None

    def get_raw(self, key: str) -> str | None:
        """Return the value of `key` as written, quotes included, or None when absent."""
        statement = self._last(key)
        if statement is None:
            return None
        start = statement.key_start + len(statement.key)
        written = self._text[start : statement.end]
        # Drop the separator and the blanks around it.
        return written.lstrip(_BLANKS)[1:].lstrip(_BLANKS) if not statement.inherited else ""

    def line_of(self, key: str) -> int | None:
        """Return the line number of the assignment Compose uses for `key`."""
        statement = self._last(key)
        return None if statement is None else statement.line

    def set(self, key: str, value: str) -> None:
        """Set `key` to `value`, quoted by `quote`.

        An existing assignment is replaced on its own line, keeping its
        `export` prefix and anything after the value on its line. A new key is
        appended at the end, with `export ` only when every existing assignment
        has it.
        """
        if not _KEY.fullmatch(key):
            raise DotenvError(f"invalid variable name {key!r} for .env")
        written = f"{key}={quote(value, key=key)}"
        statement = self._last(key)
        if statement is not None:
            self._text = self._text[: statement.key_start] + written + self._text[statement.end :]
        else:
            prefix = (
                "export "
                if self._statements and all(item.has_export for item in self._statements)
                else ""
            )
            separator = "" if not self._text or self._text.endswith("\n") else "\n"
            self._text = f"{self._text}{separator}{prefix}{written}\n"
        self._statements = _scan(self._text)
        logger.debug("set %s in .env", key)

    def to_text(self) -> str:
        """Return the document with LF line endings and no byte order mark."""
        return self._text
