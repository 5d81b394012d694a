import sys

from carpd.cli import main

sys.exit(main())
