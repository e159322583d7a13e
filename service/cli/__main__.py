"""`python -m service.cli`: the same as `kiln`."""

from service.cli.main import main

raise SystemExit(main())
