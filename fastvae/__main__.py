"""``python -m fastvae ...``: the same as the ``fastvae`` console script."""

import sys

from fastvae.cli import main

sys.exit(main())
