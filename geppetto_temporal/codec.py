"""Encrypted payloads: a Temporal payload codec (zlib, then AES-256-GCM) with rotating keys.

Prompts, answers, tool arguments and results travel through Temporal as
payloads and are kept in workflow history. With a codec key configured, every
payload geppetto's clients and workers write is compressed and encrypted before
it leaves the process, so the Temporal service (and anyone who reads its
database, its UI or its external payload store) sees only ciphertext::

    GEPPETTO_CODEC_KEYS="k2:<base64 of 32 bytes>,k1:<base64 of 32 bytes>"

The first key encrypts; every listed key decrypts. Each encrypted payload names
its key id in its metadata, so after a rotation (a new key put in front) older
payloads stay readable as long as their key is still listed. `geppetto codec
keygen` prints a new key. Without the key a process fails with
`CodecKeyMissingError`, which names the key id and the variable to set.

Without keys, `GEPPETTO_COMPRESS=1` (or `connect(compress=True)`) only
compresses: `CompressionCodec` zlib-compresses each payload it makes smaller
(history bytes per simple prompt about -12%; see docs/performance.md). Every
geppetto process decodes compressed payloads whatever its own settings.

What stays plaintext (search attributes, workflow ids, summaries) is listed in
docs/encryption.md. `geppetto codec-server` serves this codec over Temporal's
remote codec protocol for the Web UI and `temporal workflow show`.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from geppetto_temporal.errors import ConfigurationError

__all__ = [
    "CODEC_KEYS_ENV",
    "COMPRESS_ENV",
    "DEFAULT_CODEC_PORT",
    "ENCODING",
    "KEY_ID_METADATA",
    "ZLIB_ENCODING",
    "CodecError",
    "CodecKey",
    "CodecKeyMissingError",
    "CompressionCodec",
    "EncryptionCodec",
    "PayloadDecryptionError",
    "codec_from_env",
    "compression_from_env",
    "generate_key",
    "is_encrypted",
    "parse_keys",
]

#: The variable holding the codec keys: `id:base64key[,id:base64key...]`, first one encrypts.
CODEC_KEYS_ENV: Final = "GEPPETTO_CODEC_KEYS"
#: Where `geppetto codec-server` listens by default, and the embedded Web UI looks for it.
DEFAULT_CODEC_PORT: Final = 8234
#: Set to 1 (true, yes, on) to compress payloads without encrypting them (`CompressionCodec`).
COMPRESS_ENV: Final = "GEPPETTO_COMPRESS"
#: The `encoding` metadata of a compressed (not encrypted) payload.
ZLIB_ENCODING: Final = b"binary/zlib"
#: Payloads smaller than this are left as they are: zlib rarely pays below it.
_COMPRESS_MIN_BYTES: Final = 200
#: The `encoding` metadata of an encrypted payload.
ENCODING: Final = b"binary/geppetto-aes256gcm"
#: The metadata entry naming the key that encrypted a payload.
KEY_ID_METADATA: Final = "encryption-key-id"
#: The first byte of an encrypted payload's data: version 1 = zlib, then AES-256-GCM.
_FORMAT_V1: Final = b"\x01"
_NONCE_BYTES: Final = 12
_KEY_BYTES: Final = 32
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CodecError(ConfigurationError):
    """The payload codec is misconfigured or cannot decrypt a payload."""


class CodecKeyMissingError(CodecError):
    """A payload was encrypted with a key this process does not have."""

    def __init__(self, message: str, *, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


class PayloadDecryptionError(CodecError):
    """A payload did not decrypt with the key its metadata names (another key under that id,
    or the payload was altered)."""

    def __init__(self, message: str, *, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


@dataclass(frozen=True)
class CodecKey:
    """One AES-256 key and the id that encrypted payloads carry to name it."""

    key_id: str
    secret: bytes

    def __post_init__(self) -> None:
        if not _KEY_ID.fullmatch(self.key_id):
            raise CodecError(
                f"invalid codec key id {self.key_id!r}: use letters, digits, '.', '_' or '-'"
            )
        if len(self.secret) != _KEY_BYTES:
            raise CodecError(
                f"codec key {self.key_id!r} is {len(self.secret)} bytes; AES-256 needs "
                f"{_KEY_BYTES} (make one with `geppetto codec keygen`)"
            )

    def __repr__(self) -> str:
        # Never print the secret, not even in a traceback's locals.
        return f"CodecKey({self.key_id!r})"

    @classmethod
    def from_text(cls, text: str) -> CodecKey:
        """A key from `id:base64` (standard or URL-safe base64 of 32 bytes)."""
        key_id, sep, encoded = text.strip().partition(":")
        key_id = key_id.strip()
        if not sep or not key_id or not encoded.strip():
            raise CodecError(
                f"invalid codec key {key_id or '(empty)'!r}: expected id:base64key "
                "(make one with `geppetto codec keygen`)"
            )
        encoded = encoded.strip()
        try:
            secret = base64.b64decode(
                encoded.replace("-", "+").replace("_", "/") + "=" * (-len(encoded) % 4),
                validate=True,
            )
        except (binascii.Error, ValueError):
            raise CodecError(f"codec key {key_id!r} is not valid base64") from None
        return cls(key_id, secret)

    def to_text(self) -> str:
        """The `id:base64` form `GEPPETTO_CODEC_KEYS` takes."""
        return f"{self.key_id}:{base64.b64encode(self.secret).decode()}"


def generate_key(key_id: str = "k1") -> CodecKey:
    """A new random AES-256 key."""
    return CodecKey(key_id, secrets.token_bytes(_KEY_BYTES))


def parse_keys(text: str) -> list[CodecKey]:
    """Keys from `id:base64[,id:base64...]` (commas or whitespace between them)."""
    keys = [CodecKey.from_text(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    if not keys:
        raise CodecError(f"{CODEC_KEYS_ENV} holds no key: expected id:base64key[,id:base64key]")
    ids = [key.key_id for key in keys]
    duplicates = sorted({key_id for key_id in ids if ids.count(key_id) > 1})
    if duplicates:
        raise CodecError(f"codec key id {duplicates[0]!r} is listed twice")
    return keys


def is_encrypted(payload: Payload) -> bool:
    """Whether a payload was encrypted by this codec."""
    return payload.metadata.get("encoding") == ENCODING


def _associated_data(key_id: str) -> bytes:
    # Binds the ciphertext to its key id: relabelling a payload with another id fails to decrypt.
    return ENCODING + b"/v1/" + key_id.encode()


class EncryptionCodec(PayloadCodec):
    """Compresses (zlib) and encrypts (AES-256-GCM, random 96-bit nonce) every payload.

    The first key encrypts; any key decrypts the payloads that name its id.
    Payloads this codec did not encrypt pass through `decode` unchanged, so
    histories written before encryption was turned on stay readable. With no
    keys at all it encrypts nothing, and decoding an encrypted payload raises
    `CodecKeyMissingError`: a process without the key fails clearly instead of
    handing ciphertext to the JSON converter.
    """

    def __init__(self, keys: Iterable[CodecKey] | Mapping[str, bytes] = ()) -> None:
        items = (
            [CodecKey(key_id, secret) for key_id, secret in keys.items()]
            if isinstance(keys, Mapping)
            else list(keys)
        )
        self._keys: dict[str, AESGCM] = {}
        for key in items:
            if key.key_id in self._keys:
                raise CodecError(f"codec key id {key.key_id!r} is listed twice")
            self._keys[key.key_id] = AESGCM(key.secret)
        self._key_ids = tuple(key.key_id for key in items)

    def __repr__(self) -> str:
        return f"EncryptionCodec(key_ids={list(self._key_ids)!r})"

    @classmethod
    def from_text(cls, text: str) -> EncryptionCodec:
        """A codec from the `GEPPETTO_CODEC_KEYS` format."""
        return cls(parse_keys(text))

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys, the encrypting one first."""
        return self._key_ids

    @property
    def encrypting_key_id(self) -> str | None:
        """The id new payloads are encrypted with; None when this codec encrypts nothing."""
        return self._key_ids[0] if self._key_ids else None

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(decompress(payload)) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        """The encrypted form of a payload (unchanged without keys or when already encrypted)."""
        key_id = self.encrypting_key_id
        if key_id is None or is_encrypted(payload):
            return payload
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[key_id].encrypt(
            nonce, zlib.compress(payload.SerializeToString()), _associated_data(key_id)
        )
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()},
            data=_FORMAT_V1 + nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The payload an encrypted payload holds (any other payload is returned unchanged)."""
        if not is_encrypted(payload):
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        aead = self._keys.get(key_id)
        if aead is None:
            raise CodecKeyMissingError(self._missing_message(key_id), key_id=key_id)
        data = payload.data
        if data[:1] != _FORMAT_V1 or len(data) < 1 + _NONCE_BYTES + 16:
            raise PayloadDecryptionError(
                f"payload encrypted with codec key {key_id!r} has an unknown format "
                "(written by a newer geppetto?)",
                key_id=key_id,
            )
        nonce, sealed = data[1 : 1 + _NONCE_BYTES], data[1 + _NONCE_BYTES :]
        try:
            compressed = aead.decrypt(nonce, sealed, _associated_data(key_id))
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload does not decrypt with codec key {key_id!r}: the key listed under "
                f"that id in {CODEC_KEYS_ENV} is not the one that encrypted it, "
                "or the payload was altered",
                key_id=key_id,
            ) from None
        inner = Payload()
        inner.ParseFromString(zlib.decompress(compressed))
        return inner

    def _missing_message(self, key_id: str) -> str:
        if not self._key_ids:
            return (
                f"payload is encrypted with codec key {key_id!r} and this process has no "
                f"codec keys: set {CODEC_KEYS_ENV}={key_id}:<base64 key> (the key the "
                "writers use)"
            )
        return (
            f"payload is encrypted with codec key {key_id!r}, which this process does not "
            f"have (it has {', '.join(self._key_ids)}): add {key_id}:<base64 key> to "
            f"{CODEC_KEYS_ENV}"
        )


def decompress(payload: Payload) -> Payload:
    """The payload a compressed payload holds (any other payload is returned unchanged)."""
    if payload.metadata.get("encoding") != ZLIB_ENCODING:
        return payload
    inner = Payload()
    inner.ParseFromString(zlib.decompress(payload.data))
    return inner


class CompressionCodec(PayloadCodec):
    """Compresses (zlib) every payload it makes smaller; encrypts nothing.

    Payloads under 200 bytes, and those zlib would not shrink, stay plain JSON.
    Decoding also reads plain and, like a codec without keys, refuses encrypted
    payloads with `CodecKeyMissingError`. Compressed payloads show as binary in
    the Temporal Web UI and `temporal workflow show` unless they use a codec
    server (`geppetto codec-server` decodes them).
    """

    def __init__(self) -> None:
        self._no_keys = EncryptionCodec()

    def __repr__(self) -> str:
        return "CompressionCodec()"

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.compress(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._no_keys.decrypt(decompress(payload)) for payload in payloads]

    @staticmethod
    def compress(payload: Payload) -> Payload:
        """The compressed form of a payload, or the payload itself where that is not smaller."""
        size = payload.ByteSize()
        if size < _COMPRESS_MIN_BYTES or payload.metadata.get("encoding") in (
            ZLIB_ENCODING,
            ENCODING,
        ):
            return payload
        packed = Payload(
            metadata={"encoding": ZLIB_ENCODING}, data=zlib.compress(payload.SerializeToString())
        )
        return packed if packed.ByteSize() < size else payload


def compression_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether `GEPPETTO_COMPRESS` asks for compressed payloads."""
    value = (os.environ if environ is None else environ).get(COMPRESS_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def codec_from_env(environ: Mapping[str, str] | None = None) -> EncryptionCodec | None:
    """The codec `GEPPETTO_CODEC_KEYS` configures, or None when it is unset or empty."""
    text = (os.environ if environ is None else environ).get(CODEC_KEYS_ENV, "").strip()
    return EncryptionCodec.from_text(text) if text else None
