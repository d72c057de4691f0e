"""``python -m bench.systems MODULE COMMAND``: what the harness runs in each venv."""

import sys

from bench.systems.common import main

main(sys.argv[1:])
