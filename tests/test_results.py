"""The committed results files, and how a fresh benchmark run is folded into one."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hf_unlearnable import ALGORITHM_VERSION, __version__

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FILES = (
    "layered.json",
    "mem3_sweep.json",
    "precision.json",
    "speed.json",
    "strength.json",
    "tried_and_dropped.json",
    "walltime.json",
    "trigger_length.json",
)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
collect = importlib.import_module("benchmarks.collect_results")
tables = importlib.import_module("benchmarks.robustness_tables")


def robustness(*args: str) -> subprocess.CompletedProcess:
    script = [sys.executable, "benchmarks/robustness.py", "--smoke", "--methods", "mem3", "--victims", "scratch"]
    return subprocess.run([*script, *args], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """The output folder of a real robustness.py run at smoke sizes (about 10 s)."""
    folder = tmp_path_factory.mktemp("runs") / "robustness_fresh"
    result = robustness("--defenses", "none", "--output", str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_a_fresh_run_is_folded_in_without_histories_and_tabled(fresh, tmp_path, capsys):
    written = json.loads((fresh / "robustness.json").read_text())
    assert written["report"]["histories"]  # the fresh folder has them; the results file does not
    file = tmp_path / "mem3_sweep.json"
    assert collect.main([str(file), str(fresh), "--experiment", "A smoke sweep"]) == 0
    assert "new results file" in capsys.readouterr().out
    saved = json.loads(file.read_text())
    assert saved["experiment"] == "A smoke sweep" and file.read_text() == collect.dump(saved)
    (run,) = saved["runs"]
    assert run["name"] == "robustness_fresh" and run["report"]["histories"] == {}
    assert run["report"]["verdicts"] == written["report"]["verdicts"] and run["arguments"] == written["arguments"]
    assert run["command"].startswith("python benchmarks/robustness.py --smoke --methods mem3 --victims scratch")
    assert (run["library_version"], run["algorithm_version"]) == (__version__, ALGORITHM_VERSION)
    assert tables.main(["--results", str(tmp_path), "--table", "scratch"]) == 0
    assert "The victim from scratch, synthetic:" in capsys.readouterr().out
    # --clean-from needs the histories: a results file, or a collected run, is refused up front
    refused = robustness("--defenses", "none", "--clean-from", str(file), "--output", str(tmp_path / "again"))
    assert refused.returncode != 0 and "keeps no per-epoch histories" in refused.stderr


def test_a_run_of_the_same_name_is_replaced(fresh, tmp_path, capsys):
    file = tmp_path / "sweep.json"
    file.write_text(collect.dump({"experiment": "Sweep", "runs": [{"name": "robustness_other", "command": "x"}]}))
    collect.main([str(file), str(fresh)])
    again = tmp_path / "robustness_fresh"
    shutil.copytree(fresh, again)
    written = json.loads((again / "robustness.json").read_text())
    (again / "robustness.json").write_text(json.dumps({**written, "total_seconds": -1.0}))
    capsys.readouterr()
    assert collect.main([str(file), str(again)]) == 0
    assert "replaced run robustness_fresh" in capsys.readouterr().out
    saved = json.loads(file.read_text())
    assert [run["name"] for run in saved["runs"]] == ["robustness_fresh", "robustness_other"]
    assert saved["runs"][0]["total_seconds"] == -1.0 and saved["experiment"] == "Sweep"


def test_collect_refuses_a_new_file_without_a_title_and_a_run_without_its_command(fresh, tmp_path):
    with pytest.raises(SystemExit, match="give --experiment TITLE"):
        collect.main([str(tmp_path / "new.json"), str(fresh)])
    old = tmp_path / "robustness_old"
    old.mkdir()
    (old / "robustness.json").write_text(json.dumps({"arguments": {}, "report": {}}))
    with pytest.raises(SystemExit, match="has no command, library_version"):
        collect.main([str(tmp_path / "new.json"), str(old), "--experiment", "x"])
    assert not (tmp_path / "new.json").exists()


def test_histories_are_emptied_and_nothing_else():
    run = {"report": {"histories": {"a": [1]}, "verdicts": [{"history": [2]}]}, "results": {"m": {"history": [3]}}}
    assert collect.compact(run) == {
        "report": {"histories": {}, "verdicts": [{"history": []}]},
        "results": {"m": {"history": []}},
    }
    assert collect.compact({"protection": [1], "arguments": {"history": "x"}}) == {
        "protection": [1],
        "arguments": {"history": "x"},
    }


def test_the_committed_results_files_are_whole_and_small():
    assert sorted(path.name for path in RESULTS.glob("*.json")) == sorted(FILES)
    names = []
    for name in FILES:
        text = (RESULTS / name).read_text()
        saved = json.loads(text)
        assert set(saved) == {"experiment", "runs"} and "\n" not in saved["experiment"]
        assert text == collect.dump(saved)  # runs sorted by name, compact, one trailing newline
        for run in saved["runs"]:
            assert run["command"].startswith("python benchmarks/"), run["name"]
            assert run["library_version"] and isinstance(run["arguments"], dict), run["name"]
        names += [run["name"] for run in saved["runs"]]
    assert len(names) == len(set(names))  # a run is in one file only
    assert sum((RESULTS / name).stat().st_size for name in FILES) < 2_000_000


def test_robustness_tables_read_the_committed_sweep(tmp_path, capsys):
    shutil.copy(RESULTS / "mem3_sweep.json", tmp_path)  # the file alone, whatever fresh folders lie beside it
    assert tables.main(["--results", str(tmp_path), "--table", "glance"]) == 0
    assert (
        "| none | 8.5 of 84.5 weakened | 7.7 of 90.7 weakened | 7.7 of 22.3 weakened | 15.6 of 38.2 weakened "
        "| 22.6 of 41.8 **broken** | 20.6 of 34.8 **broken** |" in capsys.readouterr().out
    )
