"""The README's first command runs as written (minus its `pip install .`): it deduplicates the sample that ships in
the package and gives back whole records, a report and the threshold page."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _first_bash_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip()


def test_readme_first_command_runs(tmp_path: Path) -> None:
    cmd = _first_bash_block()
    assert cmd.startswith("pip install . && tokvec dedup ") and "../shared" not in cmd
    job = cmd.split("&&", 1)[1].strip()
    (tmp_path / "python").symlink_to(REPO / "python")  # the command's relative paths, from a folder of its own
    r = subprocess.run(job, shell=True, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("kept 1915 of 2000 texts (removed 85: 38 identical)"), r.stderr
    sample = (REPO / "python" / "tokvec" / "data" / "wikipedia-2000.jsonl").read_bytes().splitlines(keepends=True)
    kept = (tmp_path / "kept.jsonl").read_bytes().splitlines(keepends=True)
    removed = [json.loads(x) for x in (tmp_path / "removed.jsonl").read_text(encoding="utf-8").splitlines()]
    gone = {r["index"] for r in removed}
    assert kept == [line for i, line in enumerate(sample) if i not in gone]  # whole records, byte for byte
    assert len(removed) == 85 and sum(r["match"] == "text" for r in removed) == 38
    assert "Content-Security-Policy" in (tmp_path / "report.html").read_text(encoding="utf-8")
