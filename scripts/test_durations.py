"""Write ``tests/durations.json`` (seconds per test file) from a JUnit XML report of a whole run, e.g.
``./test.sh --junitxml=/tmp/run.xml`` then ``python scripts/test_durations.py /tmp/run.xml``.

``tests/conftest.py`` hands the files to the two workers longest first from these figures (a file not listed counts
as a median one), so the run ends with short files on both workers instead of one long file on one. The figures
are a scheduling hint only: a stale one costs some wall time, never a result."""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "durations.json"


def test_file(classname: str) -> str | None:
    """``tests.sub.test_x.TestClass`` -> ``tests/sub/test_x.py`` (None for a case outside ``tests``)."""
    parts = classname.split(".")
    while parts and parts[-1][:1].isupper():   # a test class
        parts.pop()
    return "/".join(parts) + ".py" if len(parts) >= 2 and parts[0] == "tests" else None


def per_file(report: Path) -> dict[str, float]:
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(report).getroot().iter("testcase"):
        name = test_file(case.get("classname", ""))
        if name:
            seconds[name] += float(case.get("time") or 0)
    return {name: round(s, 1) for name, s in sorted(seconds.items())}


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        sys.exit("usage: python scripts/test_durations.py REPORT.xml  (a JUnit XML report of a whole ./test.sh run)")
    OUT.write_text(json.dumps(per_file(Path(sys.argv[1])), indent=1) + "\n")
    print(f"wrote {OUT}")
