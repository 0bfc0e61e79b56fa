"""``python -m loraregistry.train ...`` = ``lorareg train ...``; the entry point for multi-GPU runs:

    accelerate launch --num_processes 2 -m loraregistry.train --config run.toml
"""

import sys

from ..cli import cli, main

cli.lazy_commands.setdefault("train", "loraregistry.cli.train_cmd:train")  # until the CLI lists it itself
args = sys.argv[1:]
debug = ["--debug"] if "--debug" in args else []
sys.exit(main([*debug, "train", *(a for a in args if a != "--debug")]))
