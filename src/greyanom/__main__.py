"""``python -m greyanom demo`` and ``python -m greyanom serve``: the command line of :mod:`greyanom.cli`."""

import sys

from greyanom.cli import main

if __name__ == "__main__":
    sys.exit(main())
