"""The `geppetto` console script: the CLI when its extra is installed, else one line saying so."""

from __future__ import annotations

import sys

from geppetto_temporal.extras import MissingExtraError, require_extra


def main() -> None:
    """Run `geppetto_temporal.cli.main`, or name the extra to install and exit 1."""
    try:
        require_extra("cli", "the geppetto command")
    except MissingExtraError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    from geppetto_temporal.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
