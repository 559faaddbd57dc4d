"""Tests for `.env` parsing and editing, following compose-go's dotenv rules."""

from __future__ import annotations

import logging

import pytest

from installer import dotenv
from installer.dotenv import DotenvFile, parse, quote
from installer.errors import DotenvError

# Parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("KEY=value", {"KEY": "value"}),
        ("KEY=value\n", {"KEY": "value"}),
        ("KEY=", {"KEY": ""}),
        ("KEY =  value", {"KEY": "value"}),
        ("KEY: value", {"KEY": "value"}),
        ("KEY=a=b=c", {"KEY": "a=b=c"}),
        ("KEY=a#b", {"KEY": "a#b"}),
        ("KEY=a #comment", {"KEY": "a"}),
        ("KEY=a\t #comment", {"KEY": "a"}),
        ("KEY=value   ", {"KEY": "value"}),
        ("KEY=  lead", {"KEY": "lead"}),
        ("KEY=with spaces inside", {"KEY": "with spaces inside"}),
        ("dotted.key-name=1", {"dotted.key-name": "1"}),
        ("KEY=1\nKEY=2", {"KEY": "2"}),
        ("# comment\n\n  # indented comment\nKEY=1\n\n", {"KEY": "1"}),
    ],
)
def test_unquoted_values(text: str, expected: dict[str, str]) -> None:
    assert parse(text) == expected


def test_hash_right_after_separator_is_value() -> None:
    """compose-go cuts at " #" only after the leading blanks are dropped."""
    assert parse("KEY= #not a comment") == {"KEY": "#not a comment"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("KEY='literal $HOME \\n'", "literal $HOME \\n"),
        ("KEY='it\\'s'", "it's"),
        ("KEY='a\\b'", "a\\b"),
        ("KEY='line1\nline2'", "line1\nline2"),
        ("KEY='  keep blanks  '", "  keep blanks  "),
        ("KEY='a #b' # comment", "a #b"),
        ("KEY=''", ""),
    ],
)
def test_single_quoted_values_are_literal(text: str, expected: str) -> None:
    assert parse(text, {"HOME": "/root"}) == {"KEY": expected}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('KEY="a\\nb"', "a\nb"),
        ('KEY="a\\rb"', "a\rb"),
        ('KEY="a\\tb"', "a\tb"),
        ('KEY="a\\\\b"', "a\\b"),
        ('KEY="say \\"hi\\""', 'say "hi"'),
        ('KEY="\\$HOME"', "$HOME"),
        ('KEY="$$HOME"', "$HOME"),
        ('KEY="$HOME/x"', "/root/x"),
        ('KEY="${UNSET:-fallback}"', "fallback"),
        ('KEY="multi\nline"', "multi\nline"),
        ('KEY="\\0101"', "A"),
        ('KEY="\\q"', "\\q"),
        ('KEY="a #b" # comment', "a #b"),
    ],
)
def test_double_quoted_values_expand_escapes_then_interpolate(text: str, expected: str) -> None:
    assert parse(text, {"HOME": "/root"}) == {"KEY": expected}


def test_unquoted_value_is_interpolated() -> None:
    assert parse("KEY=$HOME/${SUB:-x}", {"HOME": "/root"}) == {"KEY": "/root/x"}


def test_earlier_line_wins_over_environment_in_expansion() -> None:
    text = "BASE=file\nDERIVED=${BASE}-x"
    assert parse(text, {"BASE": "shell"}) == {"BASE": "file", "DERIVED": "file-x"}


def test_later_line_not_visible_to_earlier_line() -> None:
    assert parse("A=${B:-unset}\nB=1") == {"A": "unset", "B": "1"}


def test_key_alone_inherits_from_environment() -> None:
    assert parse("FROM_SHELL\nMISSING\nX=1", {"FROM_SHELL": "s"}) == {"FROM_SHELL": "s", "X": "1"}


def test_environment_does_not_override_assignment() -> None:
    assert parse("KEY=file", {"KEY": "shell"}) == {"KEY": "file"}


def test_export_prefix_stripped_but_exporter_kept() -> None:
    """`export ` lines parse; a key that only starts with "export" stays."""
    text = "export COMPOSE_PROJECT_NAME=demo\nexport  APP_TAG=1.4.2\nexporter=prom\n"

    assert parse(text) == {"COMPOSE_PROJECT_NAME": "demo", "APP_TAG": "1.4.2", "exporter": "prom"}


def test_crlf_and_bom_do_not_leak_into_values() -> None:
    """the BOM is skipped and a trailing CR is trimmed."""
    raw = (
        b"\xef\xbb\xbfAPP_IMAGE=registry.example:5000/demo/app:1.0\r\n"
        b'DB_PASSWORD="s3cret"\r\n'
        b"EMPTY=\r\n"
    )

    values = parse(raw.decode("utf-8"))

    assert values == {
        "APP_IMAGE": "registry.example:5000/demo/app:1.0",
        "DB_PASSWORD": "s3cret",
        "EMPTY": "",
    }


def test_dollar_in_secret_follows_quoting(caplog: pytest.LogCaptureFixture) -> None:
    """double quotes interpolate, single quotes do not, `$$` is one `$`."""
    text = "P1=\"abc$def\"\nP2='abc$def'\nP3=pa$$word\nP4='$2a$08$Qx.example.hash'\n"

    with caplog.at_level(logging.WARNING, logger="installer.compose"):
        values = parse(text)

    assert values == {
        "P1": "abc",
        "P2": "abc$def",
        "P3": "pa$word",
        "P4": "$2a$08$Qx.example.hash",
    }
    assert [record.getMessage() for record in caplog.records] == [
        'The "def" variable is not set; using an empty string in .env line 1: P1'
    ]


def test_backslash_before_closing_single_quote_is_unterminated() -> None:
    """`\\'` is an escaped quote, so the value never ends; the opening line is named."""
    text = "A=1\nP5='ends-with-backslash\\'\nB=2\nC=3\n"

    with pytest.raises(DotenvError) as caught:
        parse(text)

    assert str(caught.value) == (
        "line 2: unterminated quoted value for P5; "
        "close the ' quote, and note that \\' does not close it"
    )


def test_unterminated_double_quote_names_opening_line() -> None:
    with pytest.raises(DotenvError, match=r"^line 3: unterminated quoted value for C"):
        parse('A=1\n\nC="open\nmore\n')


def test_quoted_value_spanning_lines_keeps_later_line_numbers() -> None:
    with pytest.raises(DotenvError, match=r"^line 4: unexpected character"):
        parse("A='x\ny'\nB=1\nBAD KEY!=2\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("BAD KEY=1", "line 1: variable name 'BAD' is followed by a space"),
        ("A=1\nBAD$KEY=1", "line 2: unexpected character '$' in variable name"),
        ("=value", "line 1: missing variable name before '='"),
    ],
)
def test_invalid_keys_raise_with_line(text: str, message: str) -> None:
    with pytest.raises(DotenvError) as caught:
        parse(text)
    assert str(caught.value) == message


def test_invalid_expression_error_hides_value() -> None:
    with pytest.raises(DotenvError) as caught:
        parse("A=1\nSECRET=hunter2${oops")

    message = str(caught.value)
    assert message == (
        "line 2: value of SECRET has an invalid ${...} expression; "
        "write $$ for a literal $, or single-quote the value"
    )
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_required_variable_in_value_names_variable() -> None:
    with pytest.raises(DotenvError) as caught:
        parse("URL=postgres://${DB_USER:?set DB_USER}@db")
    assert str(caught.value) == (
        "line 1: value of URL needs variables that have no value: DB_USER (set DB_USER)"
    )


# Quoting


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        "registry.example:5000/demo/app:1.0",
        "abc$def",
        "$2a$08$Qx.example.hash/abcdefghijklmnopqrstuv",
        "$$double",
        "it's",
        'say "hi"',
        "both ' and \"",
        "line1\nline2",
        "crlf\r\nvalue",
        "tab\tvalue",
        "# looks like a comment",
        "a #b",
        " leading",
        "trailing ",
        "ends with backslash\\",
        "\\'",
        "\\n literal",
        "${NOT_A_VARIABLE}",
        "\\$x",
        "\\0101",
        "ünïcödé",
        "control\x01char",
    ],
)
def test_quote_round_trips(value: str) -> None:
    written = quote(value, key="SECRET")
    assert parse(f"SECRET={written}\n") == {"SECRET": value}
    assert "\n" not in written


def test_quote_leaves_plain_values_unquoted() -> None:
    assert quote("1.4.2") == "1.4.2"


def test_quote_single_quotes_dollar_values() -> None:
    assert quote("abc$def") == "'abc$def'"


def test_quote_raises_naming_key_not_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dotenv, "_round_trips", lambda value, written: False)

    with pytest.raises(DotenvError) as caught:
        quote("hunter2", key="DB_PASSWORD")

    assert "DB_PASSWORD" in str(caught.value)
    assert "hunter2" not in str(caught.value)


# The editable document


LIVE_ENV = (
    "# Secrets generated at first install\n"
    "APP_SECRET=K7e...existing\n"
    "ENCRYPTION_SALT=9c1...existing\n"
    "SMTP_PASSWORD='p$ss'   # operator's own\n"
    "\n"
    "CUSTOM_FLAG=on\n"
)


def test_untouched_document_round_trips_byte_for_byte() -> None:
    document = DotenvFile.from_text(LIVE_ENV)

    assert document.to_text() == LIVE_ENV
    assert not document.normalised


def test_merge_keeps_operator_values_and_adds_new_keys() -> None:
    """existing secrets and extra keys survive; only new keys are added."""
    document = DotenvFile.from_text(LIVE_ENV)
    template = {"APP_SECRET": "__generate__", "ENCRYPTION_SALT": "__generate__", "NEW_LIMIT": "100"}

    for key, value in template.items():
        if key not in document:
            document.set(key, value)

    assert document.to_text() == LIVE_ENV + "NEW_LIMIT=100\n"
    assert document.get_raw("SMTP_PASSWORD") == "'p$ss'"
    assert document.values() == {
        "APP_SECRET": "K7e...existing",
        "ENCRYPTION_SALT": "9c1...existing",
        "SMTP_PASSWORD": "p$ss",
        "CUSTOM_FLAG": "on",
        "NEW_LIMIT": "100",
    }


def test_set_replaces_in_place_and_keeps_comment() -> None:
    """a managed key changes on its own line; every other line is unchanged."""
    document = DotenvFile.from_text("A=1\nAPP_TAG=1.0.0  # managed\nB=2\n")

    document.set("APP_TAG", "2.0.0")

    assert document.to_text() == "A=1\nAPP_TAG=2.0.0  # managed\nB=2\n"


def test_set_replaces_quoted_value_spanning_lines() -> None:
    document = DotenvFile.from_text("A=1\nKEY='one\ntwo'\nB=2\n")

    document.set("KEY", "new")

    assert document.to_text() == "A=1\nKEY=new\nB=2\n"


def test_set_replaces_the_assignment_compose_uses() -> None:
    document = DotenvFile.from_text("KEY=first\nKEY=second\n")

    document.set("KEY", "third")

    assert document.to_text() == "KEY=first\nKEY=third\n"
    assert document.values() == {"KEY": "third"}


def test_set_quotes_secret_with_dollar() -> None:
    document = DotenvFile.from_text("A=1\n")

    document.set("PASSWORD", "abc$def")

    assert document.to_text() == "A=1\nPASSWORD='abc$def'\n"
    assert document.values()["PASSWORD"] == "abc$def"


def test_set_keeps_export_prefix_of_existing_line() -> None:
    """the `export` prefix and its spacing stay on a changed line."""
    document = DotenvFile.from_text("export  APP_TAG=1.4.2\nexporter=prom\n")

    document.set("APP_TAG", "1.5.0")

    assert document.to_text() == "export  APP_TAG=1.5.0\nexporter=prom\n"


def test_new_key_copies_uniform_export() -> None:
    document = DotenvFile.from_text("export A=1\nexport B=2\n")

    document.set("C", "3")

    assert document.to_text() == "export A=1\nexport B=2\nexport C=3\n"


def test_new_key_without_export_when_file_mixes() -> None:
    """`exporter=prom` has no prefix, so new keys get none."""
    document = DotenvFile.from_text("export COMPOSE_PROJECT_NAME=demo\nexporter=prom\n")

    document.set("NEW", "x")

    assert document.to_text().endswith("exporter=prom\nNEW=x\n")


def test_new_key_after_last_line_without_newline() -> None:
    document = DotenvFile.from_text("A=1")

    document.set("B", "2")

    assert document.to_text() == "A=1\nB=2\n"


def test_set_on_empty_document() -> None:
    document = DotenvFile.from_text("")

    document.set("A", "1")

    assert document.to_text() == "A=1\n"


def test_set_rejects_invalid_key() -> None:
    with pytest.raises(DotenvError, match="invalid variable name 'BAD KEY'"):
        DotenvFile.from_text("").set("BAD KEY", "x")


def test_crlf_and_bom_normalised_and_reported() -> None:
    """Rewriting writes LF endings and no BOM, and reports that it normalised them."""
    text = (
        '\ufeffAPP_IMAGE=registry.example:5000/demo/app:1.0\r\nDB_PASSWORD="s3cret"\r\nEMPTY=\r\n'
    )

    document = DotenvFile.from_text(text)

    assert document.normalised
    assert document.had_bom
    assert document.had_crlf
    assert document.to_text() == (
        'APP_IMAGE=registry.example:5000/demo/app:1.0\nDB_PASSWORD="s3cret"\nEMPTY=\n'
    )
    assert document.values() == {
        "APP_IMAGE": "registry.example:5000/demo/app:1.0",
        "DB_PASSWORD": "s3cret",
        "EMPTY": "",
    }


def test_keys_in_order_of_first_appearance() -> None:
    document = DotenvFile.from_text("B=1\n# A=commented\nA=2\nB=3\nINHERITED\n")

    assert document.keys() == ["B", "A", "INHERITED"]


def test_values_use_environment_for_inherited_keys() -> None:
    document = DotenvFile.from_text("INHERITED\nX=${INHERITED}-x\n")

    assert document.values({"INHERITED": "s"}) == {"INHERITED": "s", "X": "s-x"}


def test_get_raw_returns_value_as_written() -> None:
    document = DotenvFile.from_text('A = "quoted $x"  # c\nB=plain\n')

    assert document.get_raw("A") == '"quoted $x"'
    assert document.get_raw("B") == "plain"
    assert document.get_raw("MISSING") is None


def test_line_of_names_effective_assignment() -> None:
    document = DotenvFile.from_text("A=1\n\nA=2\n")

    assert document.line_of("A") == 3
    assert document.line_of("B") is None


def test_from_text_raises_for_invalid_document() -> None:
    with pytest.raises(DotenvError, match="^line 1: unterminated quoted value for A"):
        DotenvFile.from_text("A='open\n")
