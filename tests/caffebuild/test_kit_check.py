"""gpu-kit/run.sh's own checks, on the kit's scripts alone (no kit build):
a setting it cannot use is refused before anything runs, and a run in which
no step ran is a failure, never "passed"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from liftedstruct.paths import REPO_ROOT


@pytest.fixture
def scripts_kit(tmp_path) -> Path:
    """The kit's scripts with the kit.env of a CPU build (no programs: no
    step that needs one is run here)."""
    kit = tmp_path / "gpu-kit"
    kit.mkdir()
    for name in ("run.sh", "steps.sh", "env.sh"):
        shutil.copy2(REPO_ROOT / "gpu-kit" / name, kit / name)
    (kit / "kit.env").write_text("KIT_VERSION='test'\nKIT_VARIANT='cpu'\nKIT_GPU='0'\n"
                                 "KIT_CUDA_ARCH=''\nKIT_CUDA_LIBS=''\n")
    return kit


def check(kit: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    return subprocess.run([str(kit / "run.sh"), "--cpu", str(out)], capture_output=True,
                          text=True, env={**clean, **env}, timeout=120)


def test_settings_it_cannot_use_are_refused_before_any_step(scripts_kit, tmp_path):
    out = tmp_path / "results"
    (tmp_path / "a_file").write_text("x")
    cases = [
        ({"KIT_STEPS": "trian"}, "KIT_STEPS: no step 'trian'"),
        ({"KIT_STEPS": "train feature"}, "KIT_STEPS: no step 'feature'"),
        ({"KIT_STEPS": " "}, "KIT_STEPS is set but empty"),
        ({"KIT_TIME_LIMIT": "ten"}, "KIT_TIME_LIMIT='ten': give whole seconds"),
        ({"KIT_TIME_LIMIT": "5"}, "KIT_TIME_LIMIT=5: too short for any step"),
        ({"KIT_FEATURE_TOLERANCE": "loose"}, "KIT_FEATURE_TOLERANCE='loose'"),
        ({"KIT_FEATURE_TOLERANCE": "0"}, "KIT_FEATURE_TOLERANCE='0'"),
        ({"TMPDIR": str(tmp_path / "a_file")}, "TMPDIR="),
    ]
    for env, message in cases:
        result = check(scripts_kit, out, **env)
        assert result.returncode == 2 and message in result.stderr, (env, result.stderr)
        assert result.stdout == "", env  # no step started
        assert not out.exists(), env    # nothing written
    onto = check(scripts_kit, tmp_path / "a_file")
    assert onto.returncode == 2 and "a file is there" in onto.stderr


def test_a_run_in_which_no_step_ran_fails(scripts_kit, tmp_path):
    """Only a GPU step asked for, in a --cpu run: every step is skipped, and
    the check says it ran nothing instead of passing."""
    out = tmp_path / "results"
    result = check(scripts_kit, out, KIT_STEPS="speed_caffe")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no step ran" in result.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["passed"] is False and report["steps_run"] == 0
    assert "KIT_STEPS" in report["reason"]
    assert {step["status"] for step in report["steps"]} == {"skipped"}
