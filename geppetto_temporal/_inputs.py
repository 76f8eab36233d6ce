"""Checks on what callers hand in: session ids and prompts, before any RPC is made.

A bad id or prompt is refused here with a typed error, so it never reaches
Temporal as a raw `RPCError` and never leaves a session in a state it cannot
get out of (see docs/api.md, "Session ids" and "Prompt size").
"""

from __future__ import annotations

import re
import unicodedata

from pydantic_core import to_json

from geppetto_temporal.errors import InvalidPromptError, InvalidSessionIdError, PromptTooLargeError

#: The ids `Session.create` accepts: a letter or digit, then letters, digits and `._:@-`.
#: No `/` (so `<session>/inference/<n>` cannot name another session's inference),
#: no whitespace or control characters (ids are printed and put in URLs).
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}", re.ASCII)
MAX_SESSION_ID_LENGTH = 128
#: Temporal's default `limit.maxIDLength`: no workflow id can be longer.
MAX_WORKFLOW_ID_LENGTH = 1000

#: Temporal's default payload size limit (`limit.blobSize.error`), per payload.
PAYLOAD_LIMIT = 2 * 1024 * 1024
#: The largest prompt (bytes of its JSON encoding) accepted when large payloads
#: cannot go to external storage: it travels in the update, the inference's input
#: and the LLM step's input, and stays in the session's state, all under the limit.
MAX_INLINE_PROMPT_BYTES = 1024 * 1024
#: The largest continue-as-new input a session without external storage builds;
#: above it the session stays in its run (see `SessionInput.payload_limit`).
SESSION_CARRY_LIMIT = PAYLOAD_LIMIT - 256 * 1024
#: Room a session keeps for the reply when it accepts a prompt.
REPLY_ROOM = 256 * 1024

_STORAGE_HINT = (
    "configure external payload storage on clients and workers "
    "(GEPPETTO_PAYLOAD_STORE, or connect(payload_storage=payload_storage(...)))"
)


def _bad_character(text: str) -> tuple[int, str] | None:
    """The first control character, lone surrogate or line separator in `text`, if any."""
    for index, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            return index, char
    return None


def check_new_session_id(session_id: str) -> str:
    """A session id for a new session, or `InvalidSessionIdError` (the strict rule)."""
    if not isinstance(session_id, str) or not SESSION_ID_PATTERN.fullmatch(session_id):
        raise InvalidSessionIdError(
            f"invalid session id {_shown(session_id)}: use 1 to {MAX_SESSION_ID_LENGTH} "
            "characters, letters, digits and . _ : @ - only, starting with a letter or digit",
            session_id=session_id if isinstance(session_id, str) else None,
        )
    return session_id


def check_existing_id(workflow_id: str, *, what: str = "session id") -> str:
    """An id of a session (or inference) that may exist, or `InvalidSessionIdError`.

    Lenient, so sessions created before the strict rule stay reachable: it refuses
    only ids no workflow can have (empty, control characters, too long for Temporal).
    """
    problem: str | None = None
    if not isinstance(workflow_id, str) or not workflow_id.strip():
        problem = "it is empty"
    elif len(workflow_id) > MAX_WORKFLOW_ID_LENGTH:
        problem = f"it is {len(workflow_id)} characters long (at most {MAX_WORKFLOW_ID_LENGTH})"
    elif (bad := _bad_character(workflow_id)) is not None:
        index, char = bad
        problem = f"it contains U+{ord(char):04X} at position {index}"
    if problem is not None:
        raise InvalidSessionIdError(
            f"invalid {what} {_shown(workflow_id)}: {problem}",
            session_id=workflow_id if isinstance(workflow_id, str) else None,
        )
    return workflow_id


def _shown(value: object) -> str:
    """The id as it may be printed: escaped, and shortened when long."""
    text = value if isinstance(value, str) else str(value)
    short = text if len(text) <= 60 else f"{text[:40]}…({len(text)} characters)"
    return ascii(short)


def prompt_size(prompt: str) -> int:
    """Bytes of the prompt's JSON encoding, the way it travels in payloads."""
    return len(to_json(prompt))


def check_prompt(prompt: str, *, session_id: str | None, external_storage: bool) -> None:
    """Refuse, with a typed error, a prompt that is empty, not valid text or too large to carry."""
    if not isinstance(prompt, str):
        raise InvalidPromptError(
            f"the prompt must be a string, not {type(prompt).__name__}", session_id=session_id
        )
    if not prompt.strip():
        raise InvalidPromptError("the prompt is empty", session_id=session_id)
    for index, char in enumerate(prompt):
        if unicodedata.category(char) == "Cs":
            raise InvalidPromptError(
                f"the prompt is not valid text: it contains a lone surrogate U+{ord(char):04X} at "
                f"position {index} (invalid UTF-8 in the input?)",
                session_id=session_id,
            )
    if external_storage or len(prompt) * 6 + 2 <= MAX_INLINE_PROMPT_BYTES:
        return  # at most 6 bytes a character in JSON: surely small enough
    size = prompt_size(prompt)
    if size > MAX_INLINE_PROMPT_BYTES:
        raise PromptTooLargeError(
            f"the prompt is {size:,} bytes; without external payload storage a prompt may be at "
            f"most {MAX_INLINE_PROMPT_BYTES:,} bytes (Temporal's payload limit is "
            f"{PAYLOAD_LIMIT:,} bytes): {_STORAGE_HINT}",
            session_id=session_id,
            size=size,
            limit=MAX_INLINE_PROMPT_BYTES,
        )


def session_full_message(session_id: str, size: int, limit: int) -> str:
    """Why a session without external storage takes no more prompts."""
    return (
        f"session {session_id} cannot take this prompt: its conversation with the prompt would be "
        f"{size:,} bytes, over the {limit:,} bytes a session without external payload storage "
        f"can carry; start a new session, or {_STORAGE_HINT}"
    )
