"""``python -m stream.sandbox``: the sandbox without the rest of ddsync's CLI."""

from stream.cli.sandbox import main

raise SystemExit(main())
