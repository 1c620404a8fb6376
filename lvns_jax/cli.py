"""The ``lvns`` console script: ``lvns run``, ``lvns convert``, ...

User errors (:class:`lvns_jax.errors.LvnsError`) are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from lvns_jax.errors import LvnsError


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.model == "vggish":
        from lvns_jax.models.vggish.convert import convert

        meta = convert(args.source, args.out, pca=args.pca)
    else:
        if args.pca:
            raise LvnsError("--pca only applies to `lvns convert vggish`")
        from lvns_jax.models.rave.convert import convert

        meta = convert(args.source, args.out)
    print(f"wrote {args.out} ({meta.get('architecture', args.model)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lvns", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert RAVE .ts / torchvggish .pth weights to Flax (needs torch)")
    c.add_argument("model", choices=["rave", "vggish"])
    c.add_argument("source", help="RAVE .ts export or torchvggish state dict (.pth)")
    c.add_argument("--out", required=True, help="output directory, e.g. weights/vggish")
    c.add_argument("--pca", default=None, help="torchvggish PCA parameters (.pth), vggish only")
    c.set_defaults(func=_cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LvnsError as e:
        print(f"lvns: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lvns: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
