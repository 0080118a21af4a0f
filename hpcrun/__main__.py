import sys

from hpcrun.cli import main

sys.exit(main())
