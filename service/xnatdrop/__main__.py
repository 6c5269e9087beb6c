import sys

from xnatdrop import cli

sys.exit(cli.main())
