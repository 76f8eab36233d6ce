"""Example tools (weather, calculator, clock), opt-in: `geppetto worker --tools geppetto_temporal.tools.examples`.

The weather is invented from the city name so the demo needs no network.
"""

from __future__ import annotations

import ast
import hashlib
import operator
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from geppetto_temporal.tools._tool import tool

_CONDITIONS = ("sunny", "cloudy", "light rain", "windy", "foggy", "snow showers")


@tool(timeout=10, local=True)
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict[str, Any]:
    """Current weather for a city (a deterministic stand-in, no network)."""
    digest = hashlib.sha256(city.strip().lower().encode()).digest()
    celsius = digest[0] % 35 - 5
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {
        "city": city,
        "temperature": temperature,
        "unit": unit,
        "conditions": _CONDITIONS[digest[1] % len(_CONDITIONS)],
    }


_OPERATORS: dict[type[ast.AST], Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ValueError("exponent too large")
        result: float | int = _OPERATORS[type(node.op)](left, right)
        return result
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        unary: float | int = _OPERATORS[type(node.op)](_evaluate(node.operand))
        return unary
    raise ValueError(f"unsupported expression element: {ast.dump(node)[:60]}")


@tool(timeout=5, non_retryable_errors=(ValueError, ZeroDivisionError, SyntaxError), local=True)
def calculate(expression: str) -> dict[str, Any]:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses."""
    value = _evaluate(ast.parse(expression, mode="eval"))
    return {"expression": expression, "result": value}


@tool(timeout=5, non_retryable_errors=(ValueError,), local=True)
def current_time(timezone: str = "UTC") -> dict[str, str]:
    """The current date and time in an IANA timezone such as Europe/Paris."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown timezone {timezone!r}") from err
    now = datetime.now(UTC).astimezone(zone)
    return {"timezone": timezone, "iso": now.isoformat(timespec="seconds")}
