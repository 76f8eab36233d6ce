"""Scripted-model scripts that several test modules (and `tests/histories/record.py`) share."""

from __future__ import annotations

from typing import Any


def calls_then_answer(
    *calls: dict[str, Any], text: str | None = None, answer: str
) -> dict[str, Any]:
    """A two-step tool loop: a user message gets `calls` (after `text`), tool results get `answer`.

    The calling rule is named `call`, or `calls` when there are several; the other `answer`.
    """
    reply: dict[str, Any] = {"tool_calls": list(calls)}
    if text is not None:
        reply = {"text": text, **reply}
    return {
        "rules": [
            {
                "name": "calls" if len(calls) > 1 else "call",
                "when": {"last_role": "user"},
                "reply": reply,
            },
            {"name": "answer", "when": {"last_role": "tool"}, "reply": {"text": answer}},
        ]
    }


def faulty(*faults: dict[str, Any]) -> dict[str, Any]:
    """Always "finally an answer", but a conversation's first requests meet `faults`, one each."""
    return {
        "rules": [
            {"name": "answer", "reply": {"text": "finally an answer"}, "faults": list(faults)}
        ]
    }


#: Three parallel calls (weather in Paris, 6 * 7, weather in Berlin), then "Done: <results>".
WEATHER_AND_MATH = calls_then_answer(
    {"name": "get_weather", "arguments": {"city": "Paris"}},
    {"name": "calculate", "arguments": {"expression": "6 * 7"}},
    {"name": "get_weather", "arguments": {"city": "Berlin"}},
    text="Let me check.",
    answer="Done: {tool_results}",
)

#: One call of `failing_tool` (it raises "tool exploded: boom"), then "Saw: <results>".
FAILING = calls_then_answer(
    {"name": "failing_tool", "arguments": {"reason": "boom"}}, answer="Saw: {tool_results}"
)

#: A model that calls `calculate` forever (for the max-iterations limit).
LOOPING = {
    "rules": [
        {
            "name": "loop",
            "reply": {"tool_calls": [{"name": "calculate", "arguments": {"expression": "1 + 1"}}]},
        }
    ]
}

#: The text `STORY_RULE` streams, slowly enough to be cancelled mid-stream.
STORY = "Once upon a time " * 40

#: A prompt containing "story" gets `STORY`, four characters every 0.05 s.
STORY_RULE = {
    "name": "story",
    "when": {"last_user_contains": "story"},
    "reply": {"text": STORY, "chunk_size": 4, "chunk_delay": 0.05},
}

#: `STORY_RULE`, and "Sure: <prompt>" for any other prompt.
SLOW_STORY = {"rules": [STORY_RULE, {"name": "other", "reply": {"text": "Sure: {last_user}"}}]}
