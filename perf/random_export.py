"""`python -m export` with random weights: the same command line, for a configs-only checkpoint (perf.gpu_checkpoint)
whose components each model process builds from its configs with weights from `--weights-seed`.

    python -m perf.random_export [--weights-seed N] --checkpoint DIR --repository DIR [any export flag]
"""

from __future__ import annotations

import argparse
import sys

from export.__main__ import main as export_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--weights-seed", type=int, default=1234)
    args, export_argv = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    export_main(export_argv, random_weights_seed=args.weights_seed)


if __name__ == "__main__":
    main()
