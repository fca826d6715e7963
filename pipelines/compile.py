"""Compile the pipelines to the YAML checked in next to them (a test fails when they are stale).

    python pipelines/compile.py            # writes pipelines/bridge_pipeline.yaml, compare_pipeline.yaml
    python pipelines/compile.py --out DIR  # somewhere else (the staleness test)
    python pipelines/compile.py --check    # exit 1 when a checked-in YAML differs from a fresh compile

"Differs" means the pipeline spec differs (components, parameters, defaults, images, placement): the
KFP SDK version stamped into the file (`sdkVersion`) is not part of it, so a patch release of kfp does
not make the checked-in files stale.

Images: set BRIDGERL_CPU_IMAGE / BRIDGERL_GPU_IMAGE to compile against your registry's tags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

PIPELINES = {"bridge_pipeline": "bridge_pipeline", "compare_pipeline": "compare_pipeline"}


def fix_header(text: str) -> str:
    """Keep KFP's comment header a comment: kfp 2.17 writes a multi-line parameter default (the
    params.yaml content) into it unescaped, which makes the file invalid YAML for the KFP server."""
    cut = text.find("\ncomponents:\n")
    if cut < 0:
        return text
    header = ["#    " + line if line and not line.startswith("#") else line for line in text[:cut].split("\n")]
    return "\n".join(header) + text[cut:]


def comparable(text: str) -> list:
    """The compiled pipeline's documents without what says only which SDK wrote them (`sdkVersion`)."""
    import yaml

    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for d in docs:
        if isinstance(d, dict):
            d.pop("sdkVersion", None)
    return docs


def stale(fresh: Path, checked_in: Path) -> bool:
    """Whether the checked-in YAML describes a different pipeline than the freshly compiled one."""
    return not checked_in.exists() or comparable(fresh.read_text()) != comparable(checked_in.read_text())


def compile_all(out: Path) -> list[Path]:
    import importlib

    from kfp import compiler

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for module, func in PIPELINES.items():
        pipeline = getattr(importlib.import_module(f"pipelines.{module}"), func)
        path = out / f"{module}.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        path.write_text(fix_header(path.read_text()))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--check", action="store_true", help="compile to a temporary folder and compare")
    args = ap.parse_args(argv)
    if args.check:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            bad = [p.name for p in compile_all(Path(tmp)) if stale(p, HERE / p.name)]
        for name in bad:
            print(f"pipelines/{name} is stale: run `python pipelines/compile.py` and commit it", file=sys.stderr)
        return 1 if bad else 0
    for p in compile_all(args.out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
