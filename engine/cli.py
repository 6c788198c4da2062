"""The `qstar` command line. Subcommands arrive with the engine and pipeline."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qstar", description=(
        "Sample from the per-token geometric mixture of two causal LMs. "
        "This build ships the kernels (import qstar_kernels); generate/analyze/report come next."))
    parser.add_argument("--version", action="version", version="qstar 0.1.0")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
