"""xnatdrop: take MRI sessions from a drop folder to an XNAT archive, unattended."""

import logging

__version__ = "0.1.0"

# Library modules never configure logging; cli.main does (see STYLE.md, "Logging").
logging.getLogger(__name__).addHandler(logging.NullHandler())
