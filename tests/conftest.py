import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    results = os.environ.get("MLXR_RESULTS")
    if not results:
        return
    path = Path(results) / "upstream-suite.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    terminalreporter.section("upstream python/tests: patched vs unpatched build")
    for label in ("patched", "baseline"):
        r = data[label]
        terminalreporter.write_line(
            f"{label:9}: {r['passed']} passed, {len(r['failed'])} failed, {r['skipped']} skipped"
        )
    terminalreporter.write_line(f"new failures: {len(data['new_failures'])}")
