import sys

from linkdns.cli import main

sys.exit(main())
