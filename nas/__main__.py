"""``python -m nas``: the same CLI as the ``diffnas`` console script."""

from nas.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
