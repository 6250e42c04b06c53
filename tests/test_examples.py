import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), *args, "--disable_tqdm", "true"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_quickstart_trains_then_resumes(tmp_path):
    run = tmp_path / "run"
    out = run_example("--output_dir", str(run), "--num_members", "3", "--members_to_train", "0", "1")
    assert "member 1: parent 0, seed 43" in out
    out = run_example("--output_dir", str(run), "--num_members", "3")  # resumes: only member 2 is trained
    manifest = json.loads((run / "ensemble.json").read_text())
    assert [entry["index"] for entry in manifest["members"]] == [0, 1, 2]
    state = json.loads((run / "members/member-02/trainer_state.json").read_text())
    assert state["global_step"] == 16 and "member 2: parent 0" in out
