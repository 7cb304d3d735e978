"""``python -m icl_lens.cli``: the same as the ``icl-lens`` command."""

import sys

from icl_lens.cli import main

sys.exit(main())
