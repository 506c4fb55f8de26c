"""`python -m dynafast.bench ARGS` is `dynafast bench ARGS`."""
import sys

from dynafast.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
