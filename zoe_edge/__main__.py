import sys

from zoe_edge.cli import main

sys.exit(main())
