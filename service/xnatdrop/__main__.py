import sys

from xnatdrop import entry

sys.exit(entry.main())
