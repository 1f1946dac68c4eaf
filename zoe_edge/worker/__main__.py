import sys

from zoe_edge.worker.main import main

sys.exit(main())
