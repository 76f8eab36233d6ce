"""Typed output: the JSON-only description an engine carries, and the worker-side check of an answer.

The client keeps the Python type (a pydantic model); history carries only its JSON
schema and a name (`OutputSpec`). The worker checks an answer against that schema
with the small validator below, so a bad answer can go back to the model inside
the same inference, without the worker importing the client's code. See
docs/typed-output.md for why it is done this way.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from pydantic import Field

from geppetto_temporal._wire import WireModel
from geppetto_temporal.turns import Block, BlockKind, PayloadKey, llm_text_block, user_block

#: Block metadata of an answer that failed the schema: why (the text the model is sent back).
OUTPUT_ERROR = "output_error"
#: Block metadata of the user block asking the model to answer again.
OUTPUT_RETRY = "output_retry"

#: How the error of an inference whose answer kept failing the schema begins.
OUTPUT_INVALID = "typed output invalid"

_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")
#: Problems listed in one message to the model; more are summarised as a count.
_MAX_PROBLEMS = 5


class OutputSpec(WireModel):
    """The structured answer an engine asks for: a name and a JSON schema, nothing Python."""

    #: Names the schema for the provider (OpenAI `json_schema.name`, the Anthropic output tool).
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    #: The answer's JSON schema (pydantic's `model_json_schema()`).
    json_schema: dict[str, Any]
    description: str | None = None
    #: OpenAI strict mode; only for schemas that meet its rules (every property required,
    #: `additionalProperties: false`), which pydantic's schemas often do not.
    strict: bool = False
    #: How often an answer that fails the schema is sent back to the model before the
    #: inference fails with `OutputValidationError`. Each retry is one more LLM step.
    retries: int = Field(default=2, ge=0, le=20)


def output_name(title: str) -> str:
    """A provider-safe name from a model's class name."""
    return (_NAME_RE.sub("_", title) or "output")[:64]


def retry_block(error: str) -> Block:
    """The user block that sends a schema failure back to the model (made in the workflow)."""
    text = (
        f"Your answer did not match the required JSON schema: {error}. "
        "Answer again with only a JSON value that matches the schema."
    )
    block = user_block(text)
    block.metadata[OUTPUT_RETRY] = True
    return block


def settle_output(blocks: list[Block], output: OutputSpec) -> tuple[list[Block], str | None]:
    """A step's blocks with the answer in place, and why the answer fails the schema, if it does.

    A call of the output tool (Anthropic) becomes the answer's text block when it is the
    step's only tool call; beside other calls it is dropped, and the model answers again
    after they ran. A step that still calls tools is not an answer and is not checked.
    """
    calls = [b for b in blocks if b.kind == BlockKind.TOOL_CALL]
    answer = [c for c in calls if c.payload.get(PayloadKey.NAME) == output.name]
    if answer:
        if len(answer) == len(calls):
            args = answer[-1].payload.get(PayloadKey.ARGS)
            text = args if isinstance(args, str) else json.dumps(args)
            block = llm_text_block(text, metadata=dict(answer[-1].metadata))
            blocks = [b for b in blocks if b.kind != BlockKind.TOOL_CALL] + [block]
        else:
            blocks = [b for b in blocks if b not in answer]
    if any(b.kind == BlockKind.TOOL_CALL for b in blocks):
        return blocks, None
    # The answer is the last text block (what `Turn.last_text` and the client read); text
    # before it, e.g. a preamble beside Anthropic's output tool call, is not part of it.
    texts = [b for b in blocks if b.kind == BlockKind.LLM_TEXT]
    error = check_answer(texts[-1].text if texts else "", output.json_schema)
    if error is not None and texts:
        texts[-1].metadata[OUTPUT_ERROR] = error
    return blocks, error


def check_answer(raw: str, schema: dict[str, Any]) -> str | None:
    """None if `raw` is JSON matching `schema`, else a short description of what is wrong."""
    if not raw.strip():
        return "the answer was empty"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        return f"the answer is not valid JSON ({err.msg} at character {err.pos})"
    problems = validate(value, schema)
    if not problems:
        return None
    shown = "; ".join(problems[:_MAX_PROBLEMS])
    more = len(problems) - _MAX_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "")


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and math.isfinite(v) and v.is_integer())
    ),
}


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> list[str]:
    """Problems of `value` against a JSON schema, each naming where (`$.a.b[0]`).

    The subset pydantic emits: type, properties, required, additionalProperties,
    items, prefixItems, enum, const, anyOf, oneOf, allOf, $ref into `$defs`, and
    the numeric, length and pattern bounds. Other keywords (format, ...) are not
    checked; the client's pydantic validation of the answer catches the rest.
    """
    problems: list[str] = []
    _check(value, schema, root or schema, "$", problems)
    return problems


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/") if ref != "#" else ():
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
    return node if isinstance(node, dict) else {}


def _check(value: Any, schema: Any, root: dict[str, Any], at: str, problems: list[str]) -> None:
    if schema is True or not isinstance(schema, dict):
        return
    if "$ref" in schema:
        _check(value, _resolve(schema["$ref"], root), root, at, problems)
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_TYPES.get(k, lambda v: True)(value) for k in kinds):
            problems.append(f"{at}: expected {' or '.join(kinds)}, got {_shown(value)}")
            return
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{at}: {_shown(value)} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        problems.append(f"{at}: expected {schema['const']!r}")
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options:
            matching = [o for o in options if not validate(value, o, root)]
            if not matching or (key == "oneOf" and len(matching) > 1):
                problems.append(f"{at}: {_shown(value)} matches none of the allowed shapes")
    for sub in schema.get("allOf", ()):
        _check(value, sub, root, at, problems)
    if isinstance(value, dict):
        _check_object(value, schema, root, at, problems)
    elif isinstance(value, list):
        _check_array(value, schema, root, at, problems)
    elif isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"{at}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{at}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            problems.append(f"{at}: does not match the pattern {schema['pattern']!r}")
    elif _TYPES["number"](value):
        for key, fails in (
            ("minimum", operator.lt),
            ("maximum", operator.gt),
            ("exclusiveMinimum", operator.le),
            ("exclusiveMaximum", operator.ge),
        ):
            if key in schema and fails(value, schema[key]):
                problems.append(f"{at}: {value} violates {key} {schema[key]}")


def _check_object(
    value: dict[str, Any],
    schema: dict[str, Any],
    root: dict[str, Any],
    at: str,
    problems: list[str],
) -> None:
    properties: dict[str, Any] = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            problems.append(f"{at}: missing required field {name!r}")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        where = f"{at}.{name}"
        if name in properties:
            _check(item, properties[name], root, where, problems)
        elif extra is False:
            problems.append(f"{at}: unexpected field {name!r}")
        else:
            _check(item, extra, root, where, problems)


def _check_array(
    value: list[Any], schema: dict[str, Any], root: dict[str, Any], at: str, problems: list[str]
) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        problems.append(f"{at}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        problems.append(f"{at}: more than {schema['maxItems']} items")
    prefix = schema.get("prefixItems", [])
    for index, item in enumerate(value):
        sub = prefix[index] if index < len(prefix) else schema.get("items", True)
        _check(item, sub, root, f"{at}[{index}]", problems)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def output_tool(output: OutputSpec) -> dict[str, Any]:
    """The Anthropic tool whose input is the answer (its `input_schema` must be an object)."""
    return {
        "name": output.name,
        "description": output.description or f"Give the final answer as {output.name}.",
        "input_schema": output.json_schema,
    }


__all__ = [
    "OUTPUT_ERROR",
    "OUTPUT_INVALID",
    "OUTPUT_RETRY",
    "OutputSpec",
    "check_answer",
    "output_name",
    "output_tool",
    "retry_block",
    "settle_output",
    "validate",
]
