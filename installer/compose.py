"""Read Compose files the way Docker Compose v2 (compose-go) reads them.

Two halves live here. The first is variable interpolation as the Compose
Specification defines it (`$VAR`, `${VAR}`, `${VAR:-default}`,
`${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+replacement}`,
`${VAR+replacement}`, nesting and `$$`). The second loads one or more compose
files into the small model both programs need (images, profiles, pull
policies, health checks, published ports), merging several files the way
`docker compose -f a.yml -f b.yml` does and resolving `extends` and `include`.

Both sides of the air gap must compute the same image list from the same
files, so the rules follow compose-go rather than Compose v1, which gets
nested defaults wrong.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from installer.errors import ComposeError, InterpolationError

logger = logging.getLogger(__name__)

__all__ = [
    "ComposeProject",
    "EnvFileUse",
    "MissingVariable",
    "MissingVariablesError",
    "NestedExpression",
    "PublishedPort",
    "Service",
    "VariableUse",
    "interpolate",
    "interpolate_tree",
    "load_project",
    "nested_expressions",
    "project_environment",
    "read_document",
    "variable_uses",
]

_NAME_START = re.compile(r"[_A-Za-z]")
_NAME = re.compile(r"[_A-Za-z][_A-Za-z0-9]*")
# Operators of the Compose Specification, longest first so that `:-` is not
# read as `:` followed by `-`.
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")
_LITERAL_DOLLAR_HINT = "write $$ for a literal $"


# ---------------------------------------------------------------------------
# Interpolation: parsing
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Literal:
    text: str


@dataclass(frozen=True)
class _Variable:
    name: str
    # One of _OPERATORS, or "" for `$VAR` and `${VAR}`.
    operator: str
    word: tuple[_Node, ...]
    # The word as written, before evaluation (a default, message or replacement).
    word_text: str


_Node = _Literal | _Variable


class _TemplateSyntaxError(Exception):
    def __init__(self, reason: str, expression: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expression = expression


@lru_cache(maxsize=4096)
def _parse_template(template: str) -> tuple[_Node, ...]:
    nodes, _ = _parse_sequence(template, 0, in_word=False)
    return tuple(nodes)


def _parse_sequence(template: str, pos: int, *, in_word: bool) -> tuple[list[_Node], int]:
    """Parse literals and expressions from `pos`, up to the `}` that ends a word.

    Inside a word, literal braces must balance, as compose-go counts every `{`
    when it looks for the brace that closes `${`.

    NOTE: compose-go accepts an unbalanced `{` in a word (`${A:-{b}` gives
    `{b`) because its pattern then falls back to the last `}` on the line.
    Here that is an "unterminated ${" error.
    """
    nodes: list[_Node] = []
    literal: list[str] = []
    depth = 0
    length = len(template)

    while pos < length:
        char = template[pos]
        if char == "$":
            if template.startswith("$$", pos):
                literal.append("$")
                pos += 2
                continue
            if literal:
                nodes.append(_Literal("".join(literal)))
                literal = []
            node, pos = _parse_expression(template, pos)
            nodes.append(node)
            continue
        if in_word and char == "}":
            if depth == 0:
                break
            depth -= 1
        elif in_word and char == "{":
            depth += 1
        literal.append(char)
        pos += 1

    if literal:
        nodes.append(_Literal("".join(literal)))
    return nodes, pos


def _parse_expression(template: str, start: int) -> tuple[_Variable, int]:
    """Parse the expression that starts with the `$` at `start`."""
    pos = start + 1
    named = _NAME.match(template, pos)
    if named:
        return _Variable(named.group(), "", (), ""), named.end()
    if not template.startswith("{", pos):
        expression_text = template[start : start + 2]
        raise _TemplateSyntaxError("a $ must start a variable name, ${...} or $$", expression_text)

    pos += 1
    named = _NAME.match(template, pos)
    if not named:
        end = template.find("}", pos)
        expression_text = template[start : end + 1] if end >= 0 else template[start:]
        raise _TemplateSyntaxError("invalid variable name", expression_text)
    name = named.group()
    pos = named.end()

    if template.startswith("}", pos):
        return _Variable(name, "", (), ""), pos + 1
    operator = next((op for op in _OPERATORS if template.startswith(op, pos)), None)
    if operator is None:
        end = template.find("}", pos)
        expression_text = template[start : end + 1] if end >= 0 else template[start:]
        reason = (
            "unterminated ${" if end < 0 else "expected }, :-, -, :?, ?, :+ or + after the name"
        )
        raise _TemplateSyntaxError(reason, expression_text)

    word_start = pos + len(operator)
    word, pos = _parse_sequence(template, word_start, in_word=True)
    if pos >= len(template):
        raise _TemplateSyntaxError("unterminated ${", template[start:])
    return _Variable(name, operator, tuple(word), template[word_start:pos]), pos + 1


# ---------------------------------------------------------------------------
# Interpolation: evaluation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MissingVariable:
    """A required variable (`${VAR:?message}` or `${VAR?message}`) with no usable value."""

    name: str
    message: str
    # File and key path, e.g. "compose.yml: services.db.environment.PASSWORD".
    source: str

    def describe(self) -> str:
        """Format the entry as `VAR: message (source)`."""
        message = self.message or "missing a value"
        if self.source:
            return f"{self.name}: {message} ({self.source})"
        return f"{self.name}: {message}"


@dataclass
class _Evaluation:
    """Problems found while evaluating templates, reported after the walk."""

    missing: list[MissingVariable] = field(default_factory=list)
    # Variable name to the sources where it was unset and had no default.
    unset: dict[str, list[str]] = field(default_factory=dict)

    def log_unset(self) -> None:
        for name, sources in self.unset.items():
            where = f" in {sources[0]}" if sources and sources[0] else ""
            more = f" and {len(sources) - 1} more places" if len(sources) > 1 else ""
            logger.warning(
                'The "%s" variable is not set; using an empty string%s%s', name, where, more
            )


def _evaluate(
    nodes: Sequence[_Node],
    environ: Mapping[str, str],
    source: str,
    evaluation: _Evaluation,
) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, _Literal):
            parts.append(node.text)
        else:
            parts.append(_evaluate_variable(node, environ, source, evaluation))
    return "".join(parts)


def _evaluate_variable(
    node: _Variable,
    environ: Mapping[str, str],
    source: str,
    evaluation: _Evaluation,
) -> str:
    value = environ.get(node.name)
    is_set = value is not None
    is_nonempty = bool(value)

    if node.operator == "":
        if not is_set:
            evaluation.unset.setdefault(node.name, []).append(source)
        return value or ""

    # compose-go evaluates the word before it looks at the variable, so a
    # required variable inside an unused default still fails. Warnings about
    # unset variables in an unused word are dropped because they mislead.
    word_evaluation = _Evaluation()
    word = _evaluate(node.word, environ, source, word_evaluation)
    evaluation.missing.extend(word_evaluation.missing)

    operator = node.operator
    use_word = (
        (operator == ":-" and not is_nonempty)
        or (operator == "-" and not is_set)
        or (operator == ":+" and is_nonempty)
        or (operator == "+" and is_set)
    )
    if operator in (":?", "?"):
        satisfied = is_nonempty if operator == ":?" else is_set
        if not satisfied:
            evaluation.missing.append(MissingVariable(node.name, word, source))
            return ""
        return value or ""
    if use_word:
        for name, sources in word_evaluation.unset.items():
            evaluation.unset.setdefault(name, []).extend(sources)
        return word
    return value or ""


def _syntax_error(error: _TemplateSyntaxError, source: str) -> InterpolationError:
    where = f"{source}: " if source else ""
    return InterpolationError(
        f'{where}invalid interpolation "{error.expression}": {error.reason}',
        hint=_LITERAL_DOLLAR_HINT,
    )


class MissingVariablesError(InterpolationError):
    """Required variables have no usable value; `missing` lists each of them."""

    def __init__(self, missing: Sequence[MissingVariable]) -> None:
        listed = "; ".join(item.describe() for item in missing)
        noun = "variable is" if len(missing) == 1 else "variables are"
        super().__init__(
            f"required {noun} missing a value: {listed}",
            hint="set them in .env or in the environment",
        )
        self.missing: list[MissingVariable] = list(missing)


def interpolate(template: str, environ: Mapping[str, str], *, source: str = "") -> str:
    """Substitute variables in `template` as compose-go does.

    `source` names where the template came from (file and key path) for error
    messages. An unset variable without a default becomes "" and logs a
    WARNING naming the variable. Raises InterpolationError for a malformed
    expression, and for required variables without a value, listing each one
    (also available as the error's `missing` attribute).
    """
    try:
        nodes = _parse_template(template)
    except _TemplateSyntaxError as err:
        raise _syntax_error(err, source) from None

    evaluation = _Evaluation()
    result = _evaluate(nodes, environ, source, evaluation)
    if evaluation.missing:
        raise MissingVariablesError(evaluation.missing)
    evaluation.log_unset()
    return result


def _join_path(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _describe_source(source: str, path: str) -> str:
    if source and path:
        return f"{source}: {path}"
    return source or path


def _interpolate_node(
    data: Any,
    environ: Mapping[str, str],
    source: str,
    path: str,
    evaluation: _Evaluation,
) -> Any:
    if isinstance(data, str):
        location = _describe_source(source, path)
        try:
            nodes = _parse_template(data)
        except _TemplateSyntaxError as err:
            raise _syntax_error(err, location) from None
        return _evaluate(nodes, environ, location, evaluation)
    if isinstance(data, _Override):
        return _Override(_interpolate_node(data.value, environ, source, path, evaluation))
    if isinstance(data, Mapping):
        return {
            key: _interpolate_node(value, environ, source, _join_path(path, key), evaluation)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [
            _interpolate_node(item, environ, source, _join_path(path, index), evaluation)
            for index, item in enumerate(data)
        ]
    return data


def interpolate_tree(data: Any, environ: Mapping[str, str], *, source: str) -> Any:
    """Return a copy of `data` with every string value interpolated (keys stay as they are).

    Every missing required variable in the whole tree is collected before one
    InterpolationError lists them all, each as `VAR: message (source: key.path)`.
    The error's `missing` attribute contains them as MissingVariable entries. A
    malformed expression raises at once, naming the key path.
    """
    evaluation = _Evaluation()
    result = _interpolate_node(data, environ, source, "", evaluation)
    if evaluation.missing:
        raise MissingVariablesError(evaluation.missing)
    evaluation.log_unset()
    return result


@dataclass(frozen=True)
class VariableUse:
    """One reference to a variable in a compose tree, found without evaluating it."""

    name: str
    # True for `${VAR:?message}` and `${VAR?message}`.
    required: bool
    # True for `:?`, which also rejects a variable set to "", and False for `?`.
    required_if_empty: bool
    # The message of a required variable, as written.
    message: str | None
    has_default: bool
    # The default of `:-` or `-`, as written (it may itself contain variables).
    default: str | None
    # Key path of the reference, e.g. "services.db.environment.PASSWORD".
    key_path: str
    source: str
    # The operator as written (`:-`, `-`, `:?`, `?`, `:+`, `+`), or None for `$VAR`/`${VAR}`.
    operator: str | None = None


def _walk_variables(nodes: Sequence[_Node]) -> Iterator[_Variable]:
    for node in nodes:
        if isinstance(node, _Variable):
            yield node
            yield from _walk_variables(node.word)


def _walk_strings(data: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, _Override):
        yield from _walk_strings(data.value, path)
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield from _walk_strings(value, _join_path(path, key))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from _walk_strings(item, _join_path(path, index))


def variable_uses(data: Any, *, source: str) -> list[VariableUse]:
    """List every variable reference in `data`'s string values, in document order.

    Nested references are listed too: `${A:-${B}}` gives A (with a default)
    and then B. Raises InterpolationError for a malformed expression.
    """
    uses: list[VariableUse] = []
    for path, text in _walk_strings(data, ""):
        try:
            nodes = _parse_template(text)
        except _TemplateSyntaxError as err:
            raise _syntax_error(err, _describe_source(source, path)) from None
        for variable in _walk_variables(nodes):
            required = variable.operator in (":?", "?")
            has_default = variable.operator in (":-", "-")
            uses.append(
                VariableUse(
                    name=variable.name,
                    required=required,
                    required_if_empty=variable.operator == ":?",
                    message=variable.word_text if required else None,
                    has_default=has_default,
                    default=variable.word_text if has_default else None,
                    key_path=path,
                    source=source,
                    operator=variable.operator or None,
                )
            )
    return uses


@dataclass(frozen=True)
class NestedExpression:
    """An expression whose default, message or replacement contains another expression.

    Compose v2 evaluates the inner expression. docker-compose v1 (checked
    with 1.29.2) ends the outer expression at the first `}`, so the value
    keeps a stray `}` or the inner expression's text.
    """

    # The outer variable's name and operator (`:-`, `-`, `:?`, `?`, `:+` or `+`).
    name: str
    operator: str
    # The outer expression as written, e.g. "${DB_TAG:-${BASE_TAG:-16}}".
    expression: str
    # Names of the variables inside the word, at any depth, in order.
    inner: tuple[str, ...]
    # True when an inner expression is written `${...}`, not `$NAME`.
    inner_braced: bool
    key_path: str
    source: str

    def describe(self) -> str:
        """Return `source: key.path: expression`, for messages."""
        return f"{_describe_source(self.source, self.key_path)}: {self.expression}"


def _has_braced_expression(text: str) -> bool:
    return "${" in text.replace("$$", "")


def nested_expressions(data: Any, *, source: str) -> list[NestedExpression]:
    """List the expressions in `data`'s string values whose word contains an expression.

    Only the outermost expression is listed: `${A:-${B:-${C}}}` gives one
    entry for A, with B and C as its inner names. Raises InterpolationError
    for a malformed expression, as `variable_uses` does.
    """
    found: list[NestedExpression] = []
    for path, text in _walk_strings(data, ""):
        try:
            nodes = _parse_template(text)
        except _TemplateSyntaxError as err:
            raise _syntax_error(err, _describe_source(source, path)) from None
        for node in nodes:
            if not isinstance(node, _Variable):
                continue
            inner = tuple(variable.name for variable in _walk_variables(node.word))
            if not inner:
                continue
            found.append(
                NestedExpression(
                    name=node.name,
                    operator=node.operator,
                    expression=f"${{{node.name}{node.operator}{node.word_text}}}",
                    inner=inner,
                    inner_braced=_has_braced_expression(node.word_text),
                    key_path=path,
                    source=source,
                )
            )
    return found


def project_environment(
    dotenv_values: Mapping[str, str], shell: Mapping[str, str]
) -> dict[str, str]:
    """Combine `.env` values and the shell environment, the shell winning.

    Defaults written in the compose file apply last, during interpolation.
    """
    environment = dict(dotenv_values)
    environment.update(shell)
    return environment


# ---------------------------------------------------------------------------
# YAML as compose-go reads it
# ---------------------------------------------------------------------------


class _Reset:
    """Value of a `!reset` tag: the key is removed when files are merged."""

    def __repr__(self) -> str:
        return "!reset"


_RESET = _Reset()


@dataclass(frozen=True)
class _Override:
    """Value of an `!override` tag: it replaces the earlier value instead of merging."""

    value: Any


class _ComposeLoader(yaml.SafeLoader):
    """A safe loader with YAML 1.2 scalars and compose-go's duplicate-key check.

    compose-go parses YAML 1.2, where `22:22` is a string (YAML 1.1 reads it
    as the base-60 integer 1342), `yes`/`no`/`on`/`off` are strings and dates
    stay strings. PyYAML implements YAML 1.1, so its resolvers are replaced.
    """


_ComposeLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag
        not in (
            "tag:yaml.org,2002:bool",
            "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:float",
            "tag:yaml.org,2002:timestamp",
            "tag:yaml.org,2002:value",
        )
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# The YAML 1.2 core schema (yaml.org/spec/1.2.2, section 10.3.2).
_ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _construct_int(loader: _ComposeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    # YAML 1.2 reads a leading zero as decimal, not octal.
    return int(text, 10)


def _construct_mapping(loader: _ComposeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"mapping key {key!r} is defined twice", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


def _construct_reset(loader: _ComposeLoader, node: yaml.Node) -> _Reset:
    return _RESET


def _construct_override(loader: _ComposeLoader, node: yaml.Node) -> _Override:
    if isinstance(node, yaml.MappingNode):
        return _Override(_construct_mapping(loader, node))
    if isinstance(node, yaml.SequenceNode):
        return _Override(loader.construct_sequence(node, deep=True))
    return _Override(loader.construct_scalar(node))


_ComposeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_ComposeLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_ComposeLoader.add_constructor("!reset", _construct_reset)
_ComposeLoader.add_constructor("!override", _construct_override)


def read_document(path: Path) -> dict[str, Any]:
    """Read one compose file's YAML as compose-go does, without interpolating it."""
    return _read_yaml(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ComposeError(f"{path}: cannot read compose file: {err.strerror}") from err
    try:
        data = yaml.load(text, Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ComposeError(f"{path}: invalid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ComposeError(f"{path}: a compose file must be a mapping at the top level")
    return data


# ---------------------------------------------------------------------------
# Merging several files
# ---------------------------------------------------------------------------

# Keys of a service whose later value replaces the earlier one as a whole.
_REPLACED_KEYS = frozenset({"command", "entrypoint"})
# Sequences that are concatenated with duplicates dropped, as compose-go does.
_UNIQUE_SEQUENCES = frozenset(
    {
        "ports",
        "profiles",
        "expose",
        "dns",
        "dns_search",
        "dns_opt",
        "cap_add",
        "cap_drop",
        "env_file",
        "volumes",
        "secrets",
        "configs",
        "tmpfs",
        "devices",
        "security_opt",
    }
)
# Mappings that may also be written as `KEY=VALUE` lists.
_KEY_VALUE_KEYS = frozenset({"environment", "labels", "annotations", "sysctls", "extra_hosts"})


def _as_key_value_mapping(value: Any, separator: str = "=") -> Any:
    if not isinstance(value, list):
        return value
    mapping: dict[str, Any] = {}
    for item in value:
        key, found, rest = str(item).partition(separator)
        mapping[key] = rest if found else None
    return mapping


def _normalise_service_field(key: str, value: Any) -> Any:
    if key == "build" and isinstance(value, str):
        return {"context": value}
    if key in _KEY_VALUE_KEYS:
        return _as_key_value_mapping(value, ":" if key == "extra_hosts" else "=")
    if key == "depends_on" and isinstance(value, list):
        return {str(name): {"condition": "service_started"} for name in value}
    return value


def _unique(items: Sequence[Any]) -> list[Any]:
    result: list[Any] = []
    for item in items:
        if item not in result:
            result.append(item)
    return result


def _merge_values(base: Any, override: Any, path: tuple[str, ...]) -> Any:
    """Merge `override` onto `base`, where `path` is the key path of both."""
    if isinstance(base, _Override):
        base = base.value
    if isinstance(override, _Override):
        return override.value
    if override is _RESET:
        return _RESET
    if isinstance(base, dict) and isinstance(override, dict):
        return _merge_mappings(base, override, path)
    if isinstance(base, list) and isinstance(override, list):
        if path[-1] in _UNIQUE_SEQUENCES:
            return _unique(base + override)
        return base + override
    if isinstance(base, (dict, list)) and isinstance(override, (dict, list)):
        raise ComposeError(
            f"cannot merge {'.'.join(path)}: one file has a mapping, the other a list"
        )
    return override


def _merge_mappings(
    base: dict[str, Any], override: dict[str, Any], path: tuple[str, ...]
) -> dict[str, Any]:
    merged = dict(base)
    in_service = len(path) == 2 and path[0] == "services"
    in_healthcheck = len(path) == 3 and path[0] == "services" and path[2] == "healthcheck"
    for key, value in override.items():
        if in_service:
            value = _normalise_service_field(key, value)
        replaced = (in_service and key in _REPLACED_KEYS) or (in_healthcheck and key == "test")
        if key not in merged or str(key).startswith("x-"):
            merged[key] = value
        elif replaced:
            merged[key] = value.value if isinstance(value, _Override) else value
        else:
            existing = merged[key]
            if in_service:
                existing = _normalise_service_field(key, existing)
            merged[key] = _merge_values(existing, value, (*path, str(key)))
        if merged[key] is _RESET:
            del merged[key]
    return merged


def _strip_tags(data: Any) -> Any:
    """Remove `!override` wrappers and `!reset` values left after merging."""
    if isinstance(data, _Override):
        return _strip_tags(data.value)
    if isinstance(data, dict):
        return {key: _strip_tags(value) for key, value in data.items() if value is not _RESET}
    if isinstance(data, list):
        return [_strip_tags(item) for item in data if item is not _RESET]
    return data


def _merge_documents(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for document in documents:
        normalised = dict(document)
        services = normalised.get("services")
        if isinstance(services, dict):
            normalised["services"] = {
                name: (
                    {key: _normalise_service_field(key, value) for key, value in service.items()}
                    if isinstance(service, dict)
                    else service
                )
                for name, service in services.items()
            }
        merged = _merge_mappings(merged, normalised, ())
    return merged


# ---------------------------------------------------------------------------
# The project model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedPort:
    """A container port published on the host.

    `host_port` is None when Docker picks a free host port. A host range
    mapped to one container port (`8000-8010:80`) gives one entry per
    candidate host port, because Docker may bind any of them.
    """

    host_ip: str
    host_port: int | None
    container_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class Service:
    """The settings of one compose service that airlock acts on."""

    name: str
    image: str | None
    has_build: bool
    pull_policy: str | None
    profiles: tuple[str, ...]
    # False when the healthcheck is missing, disabled, or defines no test.
    has_healthcheck: bool
    published_ports: tuple[PublishedPort, ...]
    platform: str | None


@dataclass(frozen=True)
class EnvFileUse:
    """One `env_file` entry of a service, resolved against its file's folder."""

    service: str
    # The compose file whose service names the env file.
    compose_file: Path
    # The path as written in the compose file.
    written: str
    path: Path
    # False for a long-syntax entry with `required: false`.
    required: bool = True


@dataclass(frozen=True)
class ComposeProject:
    """The services, volumes and files of a loaded Compose project."""

    name: str | None
    services: dict[str, Service]
    volumes: list[str]
    # Every compose file read (through -f, `extends.file` and `include`) and
    # every env file an `include` read for interpolation, in load order.
    # Services' own `env_file` entries are in `env_files`.
    files: list[Path]
    # Profiles that were active when the project was loaded.
    profiles: tuple[str, ...] = ()
    env_files: list[EnvFileUse] = field(default_factory=list)
    # The compose files among `files`, without the env files.
    compose_files: list[Path] = field(default_factory=list)
    project_dir: Path | None = None
    # True when a file has an `include` section, which Compose v1 rejects.
    uses_include: bool = False

    def active_services(self) -> list[Service]:
        """Return the services that run with the active profiles, in file order.

        A service without profiles always runs; the profile "*" enables every
        service, as `docker compose --profile "*"` does.
        """
        active = set(self.profiles)
        return [
            service
            for service in self.services.values()
            if not service.profiles or "*" in active or active.intersection(service.profiles)
        ]


def _parse_port_number(text: str, label: str) -> tuple[int, int]:
    """Parse `80` or `8000-8010` into an inclusive range."""
    start_text, dash, end_text = text.partition("-")
    try:
        start = int(start_text)
        end = int(end_text) if dash else start
    except ValueError:
        raise ValueError(f"invalid {label} {text!r}") from None
    if not (0 < start <= end <= 65535):
        raise ValueError(f"invalid {label} {text!r}")
    return start, end


def _expand_ports(
    host_ip: str, published: str | None, target: str, protocol: str
) -> list[PublishedPort]:
    container_start, container_end = _parse_port_number(target, "container port")
    container_ports = list(range(container_start, container_end + 1))
    if not published:
        return [PublishedPort(host_ip, None, port, protocol) for port in container_ports]

    host_start, host_end = _parse_port_number(published, "host port")
    host_ports = list(range(host_start, host_end + 1))
    if len(container_ports) == 1:
        return [PublishedPort(host_ip, port, container_ports[0], protocol) for port in host_ports]
    if len(host_ports) != len(container_ports):
        raise ValueError(f"host range {published} and container range {target} differ in length")
    return [
        PublishedPort(host_ip, host, container, protocol)
        for host, container in zip(host_ports, container_ports, strict=True)
    ]


def _parse_short_port(spec: str) -> list[PublishedPort]:
    """Parse `[[IP:]HOST:]CONTAINER[/PROTOCOL]` as Docker's nat.ParsePortSpec does."""
    body, _, protocol = spec.partition("/")
    protocol = protocol or "tcp"
    host_ip = ""
    if body.startswith("["):
        closing = body.find("]")
        if closing < 0 or not body.startswith("]:", closing):
            raise ValueError(f"invalid port {spec!r}")
        host_ip = body[1:closing]
        body = body[closing + 2 :]
        host, _, container = body.rpartition(":")
    else:
        parts = body.split(":")
        container = parts[-1]
        host = parts[-2] if len(parts) >= 2 else ""
        if len(parts) >= 3:
            host_ip = ":".join(parts[:-2])
    return _expand_ports(host_ip, host or None, container, protocol)


def _parse_ports(value: Any) -> list[PublishedPort]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("ports must be a list")
    result: list[PublishedPort] = []
    for entry in value:
        if isinstance(entry, int) and not isinstance(entry, bool):
            result.extend(_parse_short_port(str(entry)))
        elif isinstance(entry, str):
            result.extend(_parse_short_port(entry))
        elif isinstance(entry, dict):
            if "target" not in entry:
                raise ValueError("a port in long syntax needs a target")
            published = entry.get("published")
            result.extend(
                _expand_ports(
                    str(entry.get("host_ip") or ""),
                    str(published) if published not in (None, "") else None,
                    str(entry["target"]),
                    str(entry.get("protocol") or "tcp"),
                )
            )
        else:
            raise ValueError(f"invalid port entry {entry!r}")
    return _unique(result)


def _has_healthcheck(value: Any) -> bool:
    if not isinstance(value, dict) or value.get("disable") is True:
        return False
    test = value.get("test")
    if test is None or test == [] or test == "":
        # NOTE: a healthcheck without `test` only tunes the image's own
        # HEALTHCHECK, which this module cannot see, so it counts as none.
        return False
    return not (isinstance(test, list) and test[0] == "NONE")


def _optional_string(value: Any) -> str | None:
    return None if value is None else str(value)


def _build_service(name: str, data: Any, files_text: str) -> Service:
    """Build the Service model; `files_text` names the files that define the service."""
    if not isinstance(data, dict):
        raise ComposeError(f"{files_text}: service {name} must be a mapping")
    image = _optional_string(data.get("image"))
    has_build = data.get("build") is not None
    if image is None and has_build:
        raise ComposeError(
            f"{files_text}: service {name} has `build:` and no `image:`; "
            "a bundle can carry only images",
            hint=f"build the image, push it to a registry and set `image:` for {name}",
        )
    if image is None:
        raise ComposeError(f"{files_text}: service {name} has no `image:`")
    if not image:
        raise ComposeError(
            f"{files_text}: the image of service {name} is empty after interpolation",
            hint="set the variables its `image:` uses",
        )
    if any(char.isspace() or not char.isprintable() for char in image):
        # A CR from a Windows-edited .env would otherwise reach the registry.
        raise ComposeError(
            f"{files_text}: the image of service {name} contains whitespace or a control "
            f"character: {image!r}",
            hint="check the line endings and quoting of the .env file",
        )

    profiles = data.get("profiles") or []
    if not isinstance(profiles, list):
        raise ComposeError(f"{files_text}: services.{name}.profiles must be a list")
    try:
        ports = _parse_ports(data.get("ports"))
    except ValueError as err:
        raise ComposeError(f"{files_text}: services.{name}.ports: {err}") from err

    return Service(
        name=name,
        image=image,
        has_build=has_build,
        pull_policy=_optional_string(data.get("pull_policy")),
        profiles=tuple(str(profile) for profile in profiles),
        has_healthcheck=_has_healthcheck(data.get("healthcheck")),
        published_ports=tuple(ports),
        platform=_optional_string(data.get("platform")),
    )


# ---------------------------------------------------------------------------
# Loading: files, extends, include
# ---------------------------------------------------------------------------


def _env_file_entries(value: Any) -> list[tuple[str, bool]]:
    """Return `(path, required)` for each `env_file` entry, short or long syntax."""
    entries = value if isinstance(value, list) else [value]
    result = []
    for entry in entries:
        if isinstance(entry, dict):
            if "path" not in entry:
                raise ValueError("an env_file entry in long syntax needs a `path`")
            result.append((str(entry["path"]), entry.get("required", True) is not False))
        else:
            result.append((str(entry), True))
    return result


class _Loader:
    """Read, interpolate and cache compose files for one `load_project` call.

    `project_dir` is the folder relative paths in the top-level files are
    resolved against (Compose's `--project-directory`). Relative paths in a
    file reached through `extends.file` resolve against that file's folder,
    and in an included file against the include's project directory.
    """

    def __init__(
        self,
        environ: Mapping[str, str],
        evaluation: _Evaluation,
        project_dir: Path,
        top_level: Sequence[Path],
    ) -> None:
        self.environ = environ
        self.evaluation = evaluation
        self.project_dir = project_dir
        self.top_level = {path.resolve() for path in top_level}
        self.documents: dict[Path, dict[str, Any]] = {}
        self.files: list[Path] = []
        self.compose_files: list[Path] = []
        self.env_files: list[EnvFileUse] = []

    def document(
        self,
        path: Path,
        environ: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
    ) -> dict[str, Any]:
        resolved = path.resolve()
        if resolved not in self.documents:
            raw = _read_yaml(path)
            environment = self.environ if environ is None else environ
            document = _interpolate_node(
                raw, environment, _display_name(path, self.project_dir), "", self.evaluation
            )
            self.documents[resolved] = document
            self.files.append(path)
            self.compose_files.append(path)
            if base_dir is None:
                base_dir = self.project_dir if resolved in self.top_level else path.parent
            self._record_env_files(path, document, base_dir)
        return self.documents[resolved]

    def _record_env_files(self, path: Path, document: dict[str, Any], base_dir: Path) -> None:
        services = document.get("services")
        if not isinstance(services, dict):
            return
        for name, service in services.items():
            if not isinstance(service, dict) or service.get("env_file") is None:
                continue
            try:
                entries = _env_file_entries(service["env_file"])
            except ValueError as err:
                raise ComposeError(f"{path}: services.{name}.env_file: {err}") from err
            for written, required in entries:
                self.env_files.append(
                    EnvFileUse(str(name), path, written, base_dir / written, required)
                )

    def services_of(self, path: Path) -> dict[str, Any]:
        services = self.document(path).get("services") or {}
        if not isinstance(services, dict):
            raise ComposeError(f"{path}: `services` must be a mapping")
        return services

    def resolve_extends(
        self, path: Path, name: str, chain: tuple[tuple[Path, str], ...] = ()
    ) -> dict[str, Any]:
        """Return service `name` of `path` with its `extends` chain merged in."""
        link = (path.resolve(), name)
        if link in chain:
            cycle = " -> ".join(f"{p.name}:{n}" for p, n in (*chain, link))
            raise ComposeError(f"{path}: `extends` forms a cycle: {cycle}")
        services = self.services_of(path)
        if name not in services:
            raise ComposeError(f"{path}: `extends` names service {name}, which is not defined")
        service = services[name]
        if not isinstance(service, dict) or "extends" not in service:
            return service if isinstance(service, dict) else {}

        extends = service["extends"]
        if isinstance(extends, str):
            base_path, base_name = path, extends
        elif isinstance(extends, dict) and "service" in extends:
            base_name = str(extends["service"])
            base_file = extends.get("file")
            base_path = path.parent / str(base_file) if base_file else path
        else:
            raise ComposeError(f"{path}: services.{name}.extends needs a `service`")

        base = self.resolve_extends(base_path, base_name, (*chain, link))
        own = {key: value for key, value in service.items() if key != "extends"}
        merged = _merge_documents([{"services": {name: base}}, {"services": {name: own}}])
        return merged["services"][name]

    def load_file(
        self,
        path: Path,
        environ: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
    ) -> dict[str, Any]:
        """Return one file's document with `extends` and `include` resolved."""
        document = dict(self.document(path, environ, base_dir))
        services = document.get("services")
        if isinstance(services, dict):
            document["services"] = {name: self.resolve_extends(path, name) for name in services}
        includes = document.pop("include", None)
        if includes:
            document = self._apply_includes(path, document, includes)
        return document

    def _apply_includes(
        self, path: Path, document: dict[str, Any], includes: Any
    ) -> dict[str, Any]:
        if not isinstance(includes, list):
            raise ComposeError(f"{path}: `include` must be a list")
        for entry in includes:
            if isinstance(entry, str):
                entry = {"path": entry}
            if not isinstance(entry, dict) or "path" not in entry:
                raise ComposeError(f"{path}: each `include` entry needs a `path`")
            paths = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
            included_paths = [path.parent / str(item) for item in paths]
            project_dir = path.parent / str(
                entry.get("project_directory") or included_paths[0].parent
            )
            environ = self._include_environment(path, entry, project_dir)
            included = _merge_documents(
                [self.load_file(p, environ, project_dir) for p in included_paths]
            )
            document = self._add_included(path, document, included)
        return document

    def _include_environment(
        self, path: Path, entry: dict[str, Any], project_dir: Path
    ) -> dict[str, str]:
        # Imported here because dotenv uses this module's interpolation.
        from installer import dotenv
        from installer.errors import DotenvError

        env_files = entry.get("env_file")
        if env_files is None:
            candidates = [project_dir / ".env"]
            required = False
        else:
            names = env_files if isinstance(env_files, list) else [env_files]
            candidates = [path.parent / str(name) for name in names]
            required = True
        values: dict[str, str] = {}
        for candidate in candidates:
            if not candidate.exists():
                if required:
                    raise ComposeError(f"{path}: include env_file {candidate} not found")
                continue
            if candidate not in self.files:
                self.files.append(candidate)
            try:
                values.update(dotenv.parse(candidate.read_text(encoding="utf-8"), self.environ))
            except DotenvError as err:
                raise ComposeError(f"{candidate}: {err}") from err
        # TODO: give the included project's .env precedence over the including
        # project's .env, as Compose does. Here every value in `environ` wins,
        # because the caller passes the shell and its .env already combined.
        return project_environment(values, self.environ)

    def _add_included(
        self, path: Path, document: dict[str, Any], included: dict[str, Any]
    ) -> dict[str, Any]:
        result = dict(document)
        for section in ("services", "volumes", "networks", "secrets", "configs"):
            extra = included.get(section) or {}
            if not extra:
                continue
            own = dict(result.get(section) or {})
            for key, value in extra.items():
                if key in own:
                    raise ComposeError(
                        f"{path}: {section[:-1]} {key} is defined both here and in an included file"
                    )
                own[key] = value
            result[section] = own
        return result


def _files_defining(name: str, paths: Sequence[Path], documents: Sequence[dict[str, Any]]) -> str:
    """Name the files that define service `name`, for error messages."""
    defining = [
        str(path)
        for path, document in zip(paths, documents, strict=True)
        if isinstance(document.get("services"), dict) and name in document["services"]
    ]
    return ", ".join(defining or [str(path) for path in paths])


def _display_name(path: Path, project_dir: Path) -> str:
    """Name a file in messages as Compose does: relative to the project folder.

    The installer reads compose files from a staging folder that is gone by
    the time the operator reads the message; the relative name is the one
    they find in the target.
    """
    try:
        return str(path.resolve().relative_to(project_dir.resolve()))
    except ValueError:
        return str(path)


def load_project(
    files: Sequence[Path],
    environ: Mapping[str, str],
    *,
    profiles: Sequence[str] = (),
    project_dir: Path | None = None,
    warn_unset: bool = True,
) -> ComposeProject:
    """Load compose files as `docker compose -f FILE...` does, with `environ` for interpolation.

    Each file is read, interpolated, and has its `extends` and `include`
    resolved; then the files are merged in order, later files winning for
    scalars. Every missing required variable in every file is reported in one
    InterpolationError. When `profiles` is empty, COMPOSE_PROFILES from
    `environ` applies, as in Compose. `project_dir` defaults to the first
    file's folder, as in Compose. `warn_unset=False` drops the WARNING per
    unset variable, for a second load of files already reported on.
    Raises ComposeError for invalid files
    and for a service that has `build:` but no `image:`.
    """
    if not files:
        raise ComposeError("no compose file given")
    paths = [Path(item) for item in files]

    evaluation = _Evaluation()
    project_dir = paths[0].parent if project_dir is None else project_dir
    loader = _Loader(environ, evaluation, project_dir, paths)
    documents = [loader.load_file(path) for path in paths]
    if evaluation.missing:
        raise MissingVariablesError(evaluation.missing)
    if warn_unset:
        evaluation.log_unset()

    merged = _strip_tags(_merge_documents(documents))
    files_text = ", ".join(str(path) for path in paths)

    services_data = merged.get("services") or {}
    if not isinstance(services_data, dict):
        raise ComposeError(f"{files_text}: `services` must be a mapping")
    services = {
        str(name): _build_service(str(name), data, _files_defining(name, paths, documents))
        for name, data in services_data.items()
    }

    volumes_data = merged.get("volumes") or {}
    if not isinstance(volumes_data, dict):
        raise ComposeError(f"{files_text}: `volumes` must be a mapping")

    active = tuple(profiles)
    if not active and environ.get("COMPOSE_PROFILES"):
        active = tuple(
            item.strip() for item in environ["COMPOSE_PROFILES"].split(",") if item.strip()
        )

    name = merged.get("name")
    logger.debug("loaded %d services from %s", len(services), files_text)
    return ComposeProject(
        name=None if name is None else str(name),
        services=services,
        volumes=[str(volume) for volume in volumes_data],
        files=list(loader.files),
        profiles=active,
        env_files=list(loader.env_files),
        compose_files=list(loader.compose_files),
        project_dir=project_dir,
        uses_include=any("include" in document for document in loader.documents.values()),
    )
