import sys

from kdlab.cli.main import main

sys.exit(main())
