"""`python -m streamsend` is the `streamsend` command."""

import sys

from streamsend._cli import main

sys.exit(main())
