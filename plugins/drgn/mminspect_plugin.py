"""
Load mminspect's drgn command and helpers from a checkout
---------------------------------------------------------

Installing mminspect (``pip install .``) registers its drgn plugin through
the ``drgn.plugins`` entry point; nothing else is needed. This file is for a
drgn that runs from another environment than mminspect, or a checkout that
is not installed: drgn loads it by path.

    $ DRGN_PLUGINS=mminspect=/path/to/mminspect/plugins/drgn/mminspect_plugin.py \\
          drgn -c vmcore -s vmlinux
    >>> %mminspect walk --mm efi_mm

mminspect's dependencies (numpy, click, tabulate) must be importable by that
drgn's Python.
"""

import os
import sys

_checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _checkout not in sys.path:
    sys.path.insert(0, _checkout)

from mminspect.drgn_plugin import *  # noqa: E402,F401,F403  (registers the command)
from mminspect.drgn_plugin import __all__  # noqa: E402,F401
