"""Model cards: the templates ship inside the wheel."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL_MARK = "<!-- rendered from the wheel's template -->"


def test_card_renders_from_the_installed_wheel(tmp_path, text_run):
    """model_cards/ at the repository root is packaged as hf_starsse/model_cards/ and used by the installed copy."""
    source = tmp_path / "source"
    for name in ("hf_starsse", "model_cards"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    template = source / "model_cards/ensemble_card.md"
    template.write_text(template.read_text() + WHEEL_MARK + "\n")  # tells the wheel's template from the checkout's
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source], check=True)
    (wheel,) = (tmp_path / "dist").glob("hf_starsse-*.whl")
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    installed = {
        p.relative_to(target).as_posix() for p in (target / "hf_starsse").rglob("*") if p.suffix in (".py", ".md")
    }
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "hf_starsse").rglob("*.py")}
    assert in_tree <= installed  # every module ships (a new sub-package must be listed in pyproject.toml)
    assert {"hf_starsse/model_cards/ensemble_card.md", "hf_starsse/model_cards/soup_card.md"} <= installed

    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path = [{str(target)!r}] + [p for p in sys.path if p and not p.startswith({str(ROOT)!r})]
        import hf_starsse, hf_starsse.cards
        from hf_starsse import build_ensemble
        build_ensemble({text_run.args.output_dir!r}, {str(tmp_path / "ensemble")!r})
        print(json.dumps([hf_starsse.__file__, str(hf_starsse.cards.TEMPLATES)]))
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    module, templates = json.loads(result.stdout.splitlines()[-1])
    assert Path(module).is_relative_to(target) and Path(templates) == target / "hf_starsse/model_cards"
    card = (tmp_path / "ensemble/README.md").read_text()
    assert card.rstrip().endswith(WHEEL_MARK) and "# StarSSE ensemble of 3" in card
