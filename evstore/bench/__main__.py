"""`python -m evstore.bench`: the bench subcommand on its own."""

import sys

from evstore.bench.runner import main

sys.exit(main())
