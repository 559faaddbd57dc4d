"""Tests for Compose variable interpolation, checked against compose-go's rules."""

from __future__ import annotations

import logging

import pytest

from installer.compose import (
    MissingVariable,
    MissingVariablesError,
    interpolate,
    interpolate_tree,
    nested_expressions,
    variable_uses,
)
from installer.errors import InterpolationError

ENV = {"SET": "value", "EMPTY": "", "OTHER": "other"}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$SET", "value"),
        ("${SET}", "value"),
        ("pre-$SET-post", "pre-value-post"),
        ("$SET.suffix", "value.suffix"),
        ("${SET}suffix", "valuesuffix"),
        ("$$SET", "$SET"),
        ("$${SET}", "${SET}"),
        ("a$$b", "a$b"),
        ("$$$SET", "$value"),
        ("no variables", "no variables"),
        ("", ""),
        ("lower ${lower_case}", "lower "),
    ],
)
def test_plain_forms_substitute(template: str, expected: str) -> None:
    assert interpolate(template, ENV) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # `:-` falls back when the variable is unset or empty.
        ("${SET:-default}", "value"),
        ("${EMPTY:-default}", "default"),
        ("${UNSET:-default}", "default"),
        # `-` falls back only when the variable is unset.
        ("${SET-default}", "value"),
        ("${EMPTY-default}", ""),
        ("${UNSET-default}", "default"),
        # `:+` replaces a set, non-empty variable.
        ("${SET:+replacement}", "replacement"),
        ("${EMPTY:+replacement}", ""),
        ("${UNSET:+replacement}", ""),
        # `+` replaces any set variable, even an empty one.
        ("${SET+replacement}", "replacement"),
        ("${EMPTY+replacement}", "replacement"),
        ("${UNSET+replacement}", ""),
        # `?` accepts an empty value, `:?` does not.
        ("${SET:?message}", "value"),
        ("${SET?message}", "value"),
        ("${EMPTY?message}", ""),
    ],
)
def test_operator_forms_follow_specification(template: str, expected: str) -> None:
    assert interpolate(template, ENV) == expected


def test_default_may_be_empty() -> None:
    assert interpolate("${UNSET:-}", ENV) == ""


def test_default_keeps_colons_and_dashes() -> None:
    assert interpolate("${UNSET:-a:b-c}", ENV) == "a:b-c"


def test_default_with_dollar_escape() -> None:
    assert interpolate("${UNSET:-$$literal}", ENV) == "$literal"


def test_nested_default_uses_inner_value() -> None:
    assert interpolate("${UNSET:-${OTHER:-c}}", ENV) == "other"


def test_nested_default_falls_through_two_levels() -> None:
    assert interpolate("${UNSET:-${ALSO_UNSET:-c}}", ENV) == "c"


def test_nested_default_ignored_when_outer_set() -> None:
    assert interpolate("${SET:-${OTHER}}", ENV) == "value"


def test_nested_replacement_interpolates_word() -> None:
    assert interpolate("${SET:+x-${OTHER}-y}", ENV) == "x-other-y"


def test_literal_braces_around_expression_survive() -> None:
    assert interpolate("{{{ ${FOO:-foo} }}}", {}) == "{{{ foo }}}"


def test_literal_braces_after_set_variable_survive() -> None:
    assert interpolate("{{{ ${FOO:-foo} }}}", {"FOO": "bar"}) == "{{{ bar }}}"


def test_balanced_braces_inside_default_are_literal() -> None:
    assert interpolate("${UNSET:-{a}}", ENV) == "{a}"


def test_two_expressions_in_one_string() -> None:
    assert interpolate("${SET}:${OTHER:-x}/${UNSET:-y}", ENV) == "value:other/y"


def test_unset_variable_becomes_empty_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="installer.compose"):
        result = interpolate("a${UNSET}b", ENV, source="compose.yml: services.db.image")

    assert result == "ab"
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage() == (
        'The "UNSET" variable is not set; using an empty string in compose.yml: services.db.image'
    )


def test_empty_variable_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="installer.compose"):
        assert interpolate("${EMPTY}", ENV) == ""
    assert caplog.records == []


def test_unused_default_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="installer.compose"):
        assert interpolate("${SET:-${UNSET}}", ENV) == "value"
    assert caplog.records == []


def test_warning_never_contains_values(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="installer.compose"):
        interpolate("${SECRET}${UNSET}", {"SECRET": "hunter2"})
    assert all("hunter2" not in record.getMessage() for record in caplog.records)


def test_required_non_empty_rejects_empty_value() -> None:
    with pytest.raises(InterpolationError) as caught:
        interpolate("${EMPTY:?must not be empty}", ENV, source="compose.yml: x")
    assert str(caught.value) == (
        "required variable is missing a value: EMPTY: must not be empty (compose.yml: x); "
        "set them in .env or in the environment"
    )


def test_required_rejects_unset_value() -> None:
    with pytest.raises(InterpolationError, match="UNSET: need it"):
        interpolate("${UNSET?need it}", ENV)


def test_required_without_message_still_names_variable() -> None:
    with pytest.raises(InterpolationError, match="UNSET: missing a value"):
        interpolate("${UNSET:?}", ENV)


def test_required_message_is_interpolated() -> None:
    with pytest.raises(InterpolationError, match="UNSET: set it, other"):
        interpolate("${UNSET:?set it, ${OTHER}}", ENV)


def test_required_inside_unused_default_still_fails() -> None:
    """compose-go evaluates a default before it looks at the variable, so this fails there too."""
    with pytest.raises(MissingVariablesError) as caught:
        interpolate("${SET:-${UNSET:?inner}}", ENV)
    assert [item.name for item in caught.value.missing] == ["UNSET"]


def test_several_required_in_one_string_all_listed() -> None:
    """with DB_PASS set and DB_USER missing, only DB_USER is reported."""
    template = "_${DB_USER:?user missing}_${DB_PASS:?pass missing}_${DB_HOST:?host missing}"
    with pytest.raises(MissingVariablesError) as caught:
        interpolate(template, {"DB_PASS": "x"}, source="compose.yml: services.app.environment.DSN")

    assert caught.value.missing == [
        MissingVariable("DB_USER", "user missing", "compose.yml: services.app.environment.DSN"),
        MissingVariable("DB_HOST", "host missing", "compose.yml: services.app.environment.DSN"),
    ]


@pytest.mark.parametrize(
    ("template", "expression", "reason"),
    [
        ("${UNTERMINATED", "${UNTERMINATED", "unterminated ${"),
        ("image:${TAG:-16", "${TAG:-16", "unterminated ${"),
        ("${A:-${B:-c}", "${A:-${B:-c}", "unterminated ${"),
        ("${}", "${}", "invalid variable name"),
        ("${1ABC}", "${1ABC}", "invalid variable name"),
        ("${A B}", "${A B}", "expected }, :-, -, :?, ?, :+ or + after the name"),
        ("${A:x}", "${A:x}", "expected }, :-, -, :?, ?, :+ or + after the name"),
        ("price $5", "$5", "a $ must start a variable name, ${...} or $$"),
        ("trailing $", "$", "a $ must start a variable name, ${...} or $$"),
    ],
)
def test_malformed_expression_names_source_and_expression(
    template: str, expression: str, reason: str
) -> None:
    with pytest.raises(InterpolationError) as caught:
        interpolate(template, ENV, source="compose.yml: services.db.image")
    assert str(caught.value) == (
        f'compose.yml: services.db.image: invalid interpolation "{expression}": {reason}'
        "; write $$ for a literal $"
    )


def test_tree_interpolates_values_not_keys() -> None:
    data = {"services": {"${SET}": {"image": "${SET}", "ports": ["${OTHER}:80", 443]}}}

    result = interpolate_tree(data, ENV, source="compose.yml")

    assert result == {"services": {"${SET}": {"image": "value", "ports": ["other:80", 443]}}}


def test_tree_leaves_non_strings_alone() -> None:
    data = {"a": 1, "b": True, "c": None, "d": 1.5}
    assert interpolate_tree(data, ENV, source="compose.yml") == data


def test_tree_collects_every_missing_variable() -> None:
    """every missing required variable of the file, with its key path."""
    data = {
        "services": {
            "app": {
                "image": "registry.example:5000/demo/app:${APP_TAG:?set APP_TAG}",
                "environment": {"DSN": "_${DB_USER:?user missing}_${DB_PASS:?pass missing}_"},
            },
            "db": {"environment": ["PASSWORD=${DB_ROOT:?root password}"]},
        }
    }

    with pytest.raises(MissingVariablesError) as caught:
        interpolate_tree(data, {"APP_TAG": "1.0", "DB_PASS": "x"}, source="compose.yml")

    assert str(caught.value) == (
        "required variables are missing a value: "
        "DB_USER: user missing (compose.yml: services.app.environment.DSN); "
        "DB_ROOT: root password (compose.yml: services.db.environment[0]); "
        "set them in .env or in the environment"
    )
    assert [item.name for item in caught.value.missing] == ["DB_USER", "DB_ROOT"]


def test_tree_malformed_expression_names_key_path() -> None:
    data = {"services": {"db": {"image": "postgres:${TAG"}}}
    with pytest.raises(InterpolationError, match=r"^compose.yml: services.db.image: invalid"):
        interpolate_tree(data, ENV, source="compose.yml")


def test_tree_warns_once_per_unset_variable(caplog: pytest.LogCaptureFixture) -> None:
    data = {"a": "${UNSET}", "b": ["${UNSET}", "${UNSET}"]}
    with caplog.at_level(logging.WARNING, logger="installer.compose"):
        interpolate_tree(data, ENV, source="compose.yml")
    assert [record.getMessage() for record in caplog.records] == [
        'The "UNSET" variable is not set; using an empty string in compose.yml: a and 2 more places'
    ]


def test_variable_uses_reports_required_and_defaults() -> None:
    data = {
        "services": {
            "postgresql": {
                "environment": {
                    "POSTGRES_PASSWORD": "${PG_PASS:?database password required}",
                    "POSTGRES_USER": "${PG_USER:-authentik}",
                    "OPTIONAL": "${MAYBE?}",
                    "PLAIN": "$PLAIN",
                }
            }
        }
    }

    uses = variable_uses(data, source="compose.yml")

    by_name = {use.name: use for use in uses}
    assert list(by_name) == ["PG_PASS", "PG_USER", "MAYBE", "PLAIN"]
    assert by_name["PG_PASS"].required
    assert by_name["PG_PASS"].required_if_empty
    assert by_name["PG_PASS"].message == "database password required"
    assert by_name["PG_PASS"].key_path == "services.postgresql.environment.POSTGRES_PASSWORD"
    assert by_name["PG_PASS"].source == "compose.yml"
    assert not by_name["PG_USER"].required
    assert by_name["PG_USER"].has_default
    assert by_name["PG_USER"].default == "authentik"
    assert by_name["MAYBE"].required
    assert not by_name["MAYBE"].required_if_empty
    assert not by_name["PLAIN"].required
    assert not by_name["PLAIN"].has_default


def test_variable_uses_lists_nested_variables() -> None:
    uses = variable_uses({"image": "db:${DB_TAG:-${BASE_TAG:-16}}"}, source="c.yml")

    assert [(use.name, use.default) for use in uses] == [
        ("DB_TAG", "${BASE_TAG:-16}"),
        ("BASE_TAG", "16"),
    ]


def test_variable_uses_skips_escaped_dollar() -> None:
    assert variable_uses({"test": "pg_isready -d $${POSTGRES_DB}"}, source="c.yml") == []


def test_variable_uses_rejects_malformed_expression() -> None:
    with pytest.raises(InterpolationError, match=r"c.yml: x: invalid interpolation"):
        variable_uses({"x": "${BROKEN"}, source="c.yml")


def test_nested_expressions_lists_outermost_expression() -> None:
    data = {
        "services": {
            "db": {
                "image": "registry.example:5000/demo/db:${DB_TAG:-${BASE_TAG:-16}}",
                "environment": {"POSTGRES_DB": "${POSTGRES_DB:-${POSTGRES_USER}}"},
            }
        }
    }

    found = nested_expressions(data, source="compose.yml")

    assert [item.describe() for item in found] == [
        "compose.yml: services.db.image: ${DB_TAG:-${BASE_TAG:-16}}",
        "compose.yml: services.db.environment.POSTGRES_DB: ${POSTGRES_DB:-${POSTGRES_USER}}",
    ]
    assert found[0].name == "DB_TAG"
    assert found[0].operator == ":-"
    assert found[0].inner == ("BASE_TAG",)
    assert found[0].inner_braced


@pytest.mark.parametrize(
    ("template", "expression", "inner", "braced"),
    [
        ("${A-${B}}", "${A-${B}}", ("B",), True),
        ("${A:?need ${B}}", "${A:?need ${B}}", ("B",), True),
        ("${A?$B}", "${A?$B}", ("B",), False),
        ("x-${A:+${B:-${C}}}-y", "${A:+${B:-${C}}}", ("B", "C"), True),
        ("${A:-$B}", "${A:-$B}", ("B",), False),
    ],
)
def test_nested_expressions_every_operator(
    template: str, expression: str, inner: tuple[str, ...], braced: bool
) -> None:
    (found,) = nested_expressions({"key": template}, source="c.yml")

    assert found.expression == expression
    assert found.inner == inner
    assert found.inner_braced is braced
    assert found.key_path == "key"


@pytest.mark.parametrize(
    "template",
    [
        "${A:-16}",
        "$A-${B}",
        "${A:-$${B}}",
        "pg_isready -d $${POSTGRES_DB}",
        "{{{ ${FOO:-foo} }}}",
    ],
)
def test_nested_expressions_ignores_flat_expressions(template: str) -> None:
    assert nested_expressions({"key": [template]}, source="c.yml") == []


def test_nested_expressions_rejects_malformed_expression() -> None:
    with pytest.raises(InterpolationError, match=r"c.yml: x\[0\]: invalid interpolation"):
        nested_expressions({"x": ["${BROKEN"]}, source="c.yml")
