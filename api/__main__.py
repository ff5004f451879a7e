"""`python -m api [--host H] [--port P]`: what `sweeper serve` runs (see `api.server`)."""

import argparse

from api.server import serve

parser = argparse.ArgumentParser(prog="sweeper serve", description=__doc__)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8000)
args = parser.parse_args()
serve(args.host, args.port)
