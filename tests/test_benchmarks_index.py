"""benchmarks/README.md indexes every file in benchmarks/results/, and every results JSON names its command."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# JSON files written before their scripts recorded the command (see benchmarks/README.md, "known gaps")
NO_COMMAND: set[str] = set()  # every results JSON records its command


def indexed_names(text: str) -> set[str]:
    """File names of the first column of the results index: `a.json`, `.md` (same stem), `dir/`."""
    section = text.split("## Results index", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        stem = None
        for tok in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if tok.startswith(".") and stem:
                names.add(stem + tok)
            else:
                names.add(tok.rstrip("/"))
                stem = tok.rsplit(".", 1)[0] if "." in tok else stem
    return names


def test_index_parser_reads_stems_and_folders():
    text = "## Results index\n\n| file | what |\n|---|---|\n| `a.json`, `.md`, `a_recipes/`, `b.yaml` | x |\n"
    assert indexed_names(text) == {"a.json", "a.md", "a_recipes", "b.yaml"}


def test_every_results_file_is_indexed_and_every_indexed_file_exists():
    names = indexed_names((REPO / "benchmarks" / "README.md").read_text())
    present = {p.name for p in RESULTS.iterdir()}
    assert sorted(present - names) == [], "results files missing from benchmarks/README.md's index"
    assert sorted(names - present) == [], "benchmarks/README.md indexes files that do not exist"


def test_every_results_json_records_its_command():
    missing = []
    for p in sorted(RESULTS.glob("*.json")):
        doc = json.loads(p.read_text())
        if p.name not in NO_COMMAND and not (doc.get("command") or doc.get("commands")):
            missing.append(p.name)
    assert missing == []
