"""Alias of :mod:`greyanom.traces`, kept so that code written before the trace package works.

``greyanom.shape`` exports the same names as :mod:`greyanom.traces`, and
``greyanom.shape.control`` / ``greyanom.shape.traces`` are the modules
:mod:`greyanom.traces.control` and ``greyanom.traces._ragged`` (which defines :class:`Traces`).
New code imports from :mod:`greyanom.traces`.
"""

import sys

from greyanom.traces import *  # noqa: F403 - the alias re-exports the package's public names
from greyanom.traces import __all__, _ragged, control

# ``import greyanom.shape.control`` and ``from greyanom.shape.traces import Traces`` keep working.
sys.modules[__name__ + ".control"] = control
sys.modules[__name__ + ".traces"] = _ragged
traces = _ragged
del sys
