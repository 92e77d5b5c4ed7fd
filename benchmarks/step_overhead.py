"""Engine step overhead benchmark; same as `kdlab bench step`. Usage: python benchmarks/step_overhead.py"""

import sys

from kdlab.cli.main import main

sys.exit(main(["bench", "step", *sys.argv[1:]]))
