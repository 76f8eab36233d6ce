"""Large payloads live outside workflow history (Temporal External Storage).

A conversation travels through history in every LLM step's input, so history
bytes would grow with its length and a long one would hit Temporal's 2 MB
payload and 50 MB history limits. With external storage, any payload above a
threshold is stored outside and history keeps a small claim instead, so bytes
per step stop growing once the conversation passes the threshold.

Clients and workers must use the same store. The embedded default uses a
directory in the data dir (`FileSystemStorageDriver`); clusters use S3 through
`temporalio.contrib.aws.s3driver`: build an `S3StorageDriver` and pass it to
`payload_storage` (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ExternalStorage,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
)

from geppetto_temporal.errors import ConfigurationError

#: Payloads at least this large are stored externally (Temporal warns at 256 KiB, fails at 2 MB).
DEFAULT_THRESHOLD = 128 * 1024


class FileSystemStorageDriver(StorageDriver):
    """Stores payloads as files named by their SHA-256, so equal payloads are stored once.

    For the embedded default and for workers that share a filesystem with their
    clients. Files are written atomically and never modified.
    """

    def __init__(self, root: Path | str, *, name: str = "geppetto.fs") -> None:
        self.root = Path(root)
        self._name = name

    def name(self) -> str:
        return self._name

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        claims: list[StorageDriverClaim] = []
        for payload in payloads:
            data = payload.SerializeToString()
            key = hashlib.sha256(data).hexdigest()
            await asyncio.to_thread(self._write, key, data)
            claims.append(StorageDriverClaim(claim_data={"key": key}))
        return claims

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        payloads: list[Payload] = []
        for claim in claims:
            key = claim.claim_data["key"]
            try:
                data = await asyncio.to_thread(self._path(key).read_bytes)
            except FileNotFoundError as err:
                raise ConfigurationError(
                    f"payload {key[:12]}… is not in {self.root}: this process must use the same "
                    "payload store as the workers (GEPPETTO_PAYLOAD_STORE)"
                ) from err
            payload = Payload()
            payload.ParseFromString(data)
            payloads.append(payload)
        return payloads


def payload_storage(
    store: str | Path | StorageDriver, *, threshold: int = DEFAULT_THRESHOLD
) -> ExternalStorage:
    """External storage from a driver (e.g. an `S3StorageDriver`), a directory or `file:///dir`."""
    if isinstance(store, StorageDriver):
        driver = store
    else:
        text = str(store)
        parsed = urlparse(text)
        if parsed.scheme in ("", "file"):
            driver = FileSystemStorageDriver(
                Path(parsed.path if parsed.scheme else text).expanduser()
            )
        else:
            raise ConfigurationError(
                f"unknown payload store {text!r}: use a directory or file:///path "
                "(for S3, pass an S3StorageDriver from Python)"
            )
    return ExternalStorage(drivers=[driver], payload_size_threshold=threshold)


def payload_storage_from_env() -> ExternalStorage | None:
    """`GEPPETTO_PAYLOAD_STORE` (and `GEPPETTO_PAYLOAD_THRESHOLD`, bytes), if set."""
    store = os.environ.get("GEPPETTO_PAYLOAD_STORE")
    if not store:
        return None
    threshold = int(os.environ.get("GEPPETTO_PAYLOAD_THRESHOLD", DEFAULT_THRESHOLD))
    return payload_storage(store, threshold=threshold)
