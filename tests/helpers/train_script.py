"""Run the engine on the tiny stage from a subprocess (plain, torchrun or accelerate launch).

usage: python train_script.py OUT_DIR CONFIG_JSON [--resume] [--audit REPORT_PREFIX]

With ``--audit``, every process records the files it opens for writing,
renames, creates or removes under OUT_DIR (Python audit hooks) and writes the
list to ``REPORT_PREFIX.rank<R>.json``: the distributed test uses it to show
that only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.stages import TinyStage, TinyStageConfig  # noqa: E402

from unclip.config import from_dict  # noqa: E402
from unclip.train.engine import run_training  # noqa: E402

WRITE_EVENTS = {"os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "os.truncate"}


def main() -> None:
    out_dir, config_json = Path(sys.argv[1]).resolve(), sys.argv[2]
    writes: list[str] = []
    audit = "--audit" in sys.argv
    if audit:
        def hook(event, args):
            if event == "open" and args and isinstance(args[0], (str, os.PathLike)):
                path, mode, flags = args[0], args[1], args[2]
                writing = (mode and any(c in str(mode) for c in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
                if writing and str(Path(path).resolve()).startswith(str(out_dir)):
                    writes.append(f"open {path}")
            elif event in WRITE_EVENTS and args and str(args[0]).startswith(str(out_dir)):
                writes.append(f"{event} {args[0]}")
        sys.addaudithook(hook)
    stage = TinyStage(from_dict(TinyStageConfig, json.loads(config_json)))
    run_training(stage, out_dir, resume="--resume" in sys.argv)
    if audit:
        prefix = sys.argv[sys.argv.index("--audit") + 1]
        rank = int(os.environ.get("RANK", "0"))
        Path(f"{prefix}.rank{rank}.json").write_text(json.dumps(writes))


if __name__ == "__main__":
    main()
