"""``cxr demo build``: the shipped demo checkpoints."""
from __future__ import annotations

from pathlib import Path

from .common import Command, train_progress


def cmd_demo(a) -> int:
    from ..demo import build

    if a.action == "build":
        report = build(Path(a.out) if a.out else None, a.baseline_epochs, a.finetune_epochs, progress=train_progress())
        return 0 if report else 1
    if a.action == "tune-change":   # the change thresholds of checkpoints already built (the build's step 6 alone)
        import json

        from .. import workspace
        from ..demo import tune_change

        out = Path(a.out) if a.out else workspace.shipped_checkpoints()
        stored = tune_change({name: out / name for name in ("baseline", "finetuned")})
        build_json = out / "BUILD.json"
        if build_json.is_file():
            report = json.loads(build_json.read_text())
            report["change"] = stored
            build_json.write_text(json.dumps(report, indent=2))
        return 0
    return 2


def _demo_flags(s) -> None:
    s.add_argument("action", choices=["build", "tune-change"],
                   help="build: both checkpoints from nothing; tune-change: only their change thresholds (cxr prior)")
    s.add_argument("--out", help="default: the repository's checkpoints/")
    s.add_argument("--baseline-epochs", type=int, default=None, help="default: cxrcore.demo.BASELINE_EPOCHS")
    s.add_argument("--finetune-epochs", type=int, default=None, help="default: cxrcore.demo.FINETUNE_EPOCHS")
    s.set_defaults(func=cmd_demo)


DEMO = Command("demo", "build the shipped demo checkpoints", _demo_flags)
