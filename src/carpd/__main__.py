import sys

from carpd.engine.cli import main

sys.exit(main())
