"""Per-method cost benchmark; same as `kdlab bench methods`. Usage: python benchmarks/method_cost.py [--methods kd,crd]"""

import sys

from kdlab.cli.main import main

sys.exit(main(["bench", "methods", *sys.argv[1:]]))
