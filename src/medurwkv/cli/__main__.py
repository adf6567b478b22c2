"""``python -m medurwkv.cli ARGS`` (e.g. under ``torchrun``): the same as the ``medurwkv`` command."""

import sys

from . import main

sys.exit(main())
