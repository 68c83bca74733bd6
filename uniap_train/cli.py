"""``uniap-train CONFIG.yaml [--set key=value ...]``: train from a YAML configuration.

Exit status: 0 when training finished; 2 for a usage or configuration error (unknown key,
wrong type, bad value, missing data, an unusable checkpoint or output folder), reported in one
line; 1 when training failed (a NaN or infinite loss: the message names the step; an operating
system error such as a full disk).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uniap-train",
        description="Student / momentum-teacher self-distillation on UniAP queries (S2-UniSeg's "
        "released-code recipe). Several processes: torchrun --nproc_per_node=N -m uniap_train ...",
        epilog="Example: uniap-train examples/configs/tiny_cpu.yaml --set output_dir=runs/tiny "
        "--set optim.epochs=2. Every key is described in docs/training.md.",
    )
    from uniap.cli import add_version

    add_version(parser)
    parser.add_argument("config", help="YAML configuration file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a configuration key, e.g. --set optim.lr=1e-4 (repeatable; "
                        "values are read as YAML: 3, 0.5, true, null, [1, 2])")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration as YAML and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .config import ConfigError, config_to_dict, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"uniap-train: error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    from .trainer import NonFiniteLossError, train

    try:
        train(cfg)
    except ConfigError as err:
        print(f"uniap-train: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"uniap-train: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("uniap-train: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a disk full while saving, say: the checkpoint on disk is the last good one
        print(f"uniap-train: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
