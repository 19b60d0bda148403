"""``python -m LiverSegLib`` is the ``liverseg`` command."""

from LiverSegLib.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
