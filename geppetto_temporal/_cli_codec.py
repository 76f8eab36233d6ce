"""`geppetto codec keygen` and `geppetto codec-server`: encrypted payloads from the command line."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console

from geppetto_temporal.codec import (
    CODEC_KEYS_ENV,
    DEFAULT_CODEC_PORT,
    CodecError,
    CompressionCodec,
    EncryptionCodec,
    codec_from_env,
    compression_from_env,
    generate_key,
)
from geppetto_temporal.extras import MissingExtraError, require_extra

codec_app = typer.Typer(help="Encrypted payloads (GEPPETTO_CODEC_KEYS).", no_args_is_help=True)
_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(f"[red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


@codec_app.command("keygen")
def keygen(
    key_id: Annotated[
        str, typer.Option("--id", help="The key id payloads will name (e.g. k2 for a rotation).")
    ] = "k1",
) -> None:
    """Print a new AES-256 key as `id:base64`, for GEPPETTO_CODEC_KEYS."""
    try:
        key = generate_key(key_id)
    except CodecError as err:
        raise _fail(str(err)) from None
    # Plain print: rich would wrap or colour a secret someone pipes into a file.
    print(key.to_text())


def codec_server(
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to serve on.")] = (
        DEFAULT_CODEC_PORT
    ),
    ui_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--ui-origin",
            help=(
                "Origin of a Temporal Web UI allowed to call it (repeatable; default: "
                "http://127.0.0.1:8233, http://localhost:8233 and the embedded server's UI)."
            ),
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="GEPPETTO_CODEC_TOKEN",
            help="Require Authorization: Bearer <token> (required off loopback; $GEPPETTO_CODEC_TOKEN).",
        ),
    ] = None,
) -> None:
    """Serve the payload codec (GEPPETTO_CODEC_KEYS) for the Temporal Web UI and CLI."""
    try:
        require_extra("dashboard", "geppetto codec serve")
    except MissingExtraError as err:
        raise _fail(str(err), code=1) from None
    import uvicorn

    from geppetto_temporal import devserver
    from geppetto_temporal.codec_server import (
        DEFAULT_UI_ORIGINS,
        CodecServerConfigError,
        check_codec_bind,
        create_codec_app,
    )

    try:
        codec: EncryptionCodec | CompressionCodec | None = codec_from_env()
        check_codec_bind(host, token)
    except (CodecError, CodecServerConfigError) as err:
        raise _fail(str(err)) from None
    if codec is None and compression_from_env():
        codec = CompressionCodec()  # compressed payloads only (GEPPETTO_COMPRESS)
    if codec is None:
        raise _fail(
            f"{CODEC_KEYS_ENV} is not set: the codec server needs the keys the workers use "
            "(make one with `geppetto codec keygen`)"
        )
    origins = list(ui_origin or DEFAULT_UI_ORIGINS)
    running = devserver.server_status() if not ui_origin else None
    if running is not None and running.ui_url not in origins:
        origins.append(running.ui_url)
    app = create_codec_app(codec, token=token, ui_origins=origins)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    _err.print(
        f"codec server on http://{shown}:{port} ("
        + (
            f"keys {', '.join(codec.key_ids)}"
            if isinstance(codec, EncryptionCodec)
            else "compression only"
        )
        + "; "
        f"UI origins {', '.join(origins)}"
        + ("; token required" if token else "")
        + f"); e.g. temporal workflow show --codec-endpoint http://{shown}:{port} ...; "
        "Ctrl-C to stop",
        soft_wrap=True,
    )
    asyncio.run(server.serve())
    if not server.started:
        raise typer.Exit(1)
