"""``python -m stream.dotdigital.sandbox``: the sandbox without the rest of ddsync's CLI."""

from stream.dotdigital.sandbox.command import main

raise SystemExit(main())
