"""Security: no code runs when loading, tokens are never written or logged.

Also tested elsewhere: saved ensembles load without `trust_remote_code` once the library is imported
(`test_ensemble.py::test_text_ensemble_predicts_mean_probabilities`, `test_image_ensemble_and_pipeline`) and with it
but without the library (`test_ensemble.py::test_loads_as_remote_code_without_the_library`); member paths from a
manifest never leave the run directory (`test_bad_inputs.py`: `manifest_path_with_dotdot`, `manifest_absolute_path`,
`manifest_path_through_a_symlink`); pickle-only members need `allow_pickle` and are then read with
`weights_only=True` (`test_soups.py::test_pickle_only_members_need_the_opt_in_and_load_weights_only`).
"""

import ast
import logging
import zipfile
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as transformers_logging

import hf_starsse
from hf_starsse import StarSSETrainer, evaluate_ensemble

from conftest import load_text_model, make_args, text_dataset, tokenizer

PACKAGE = Path(hf_starsse.__file__).parent
TOKEN = "hf_FakeTokenThatMustNeverBeWritten0123"


def calls(source: Path):
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Call):
            yield node


def keyword(call: ast.Call, name: str):
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def is_true(value) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


@pytest.mark.parametrize("source", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_code_never_unpickles_nor_trusts_remote_code(source):
    for call in calls(source):
        name = ast.unparse(call.func)
        if name.endswith("torch.load") or name == "load" and "from torch import load" in source.read_text():
            assert is_true(keyword(call, "weights_only")), f"{source}:{call.lineno}: torch.load without weights_only"
        assert not is_true(keyword(call, "trust_remote_code")), f"{source}:{call.lineno}: trust_remote_code=True"


def test_the_scan_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\ntorch.load('x')\nAutoModel.from_pretrained('y', trust_remote_code=True)\n")
    found = [(ast.unparse(c.func), is_true(keyword(c, "weights_only")), is_true(keyword(c, "trust_remote_code")))
             for c in calls(bad)]  # fmt: skip
    assert found == [("torch.load", False, False), ("AutoModel.from_pretrained", False, True)]


def readable_bytes(path: Path) -> bytes:
    """A file's bytes, plus the members of a zip archive (torch.save) uncompressed."""
    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            data += b"".join(archive.read(name) for name in archive.namelist())
    return data


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


def test_tokens_are_never_written_or_logged(tmp_path, pretrained_bert, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    records = Records()
    loggers = [logging.getLogger(), transformers_logging.get_logger()]
    for logger in loggers:
        logger.addHandler(records)
    transformers_logging.set_verbosity_debug()
    try:
        args = make_args(tmp_path / "run", num_members=2, hub_token=TOKEN, save_strategy="steps", save_steps=2)
        trainer = StarSSETrainer(
            model=load_text_model(pretrained_bert),
            args=args,
            train_dataset=text_dataset(),
            eval_dataset=text_dataset(16, seed=1),
            processing_class=tokenizer(),
        )
        trainer.train()
        trainer.save_ensemble(str(tmp_path / "ensemble"))
        trainer.save_soup(str(tmp_path / "soup"), method="greedy")
        evaluate_ensemble(tmp_path / "run", {"test": text_dataset(16, seed=2)})
        print(args, repr(args), args.to_json_string())
    finally:
        transformers_logging.set_verbosity_error()
        for logger in loggers:
            logger.removeHandler(records)
    assert trainer.args.hub_token == TOKEN  # still usable by the caller

    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    names = {path.name for path in written}
    assert {"training_args.bin", "trainer_state.json", "ensemble.json", "README.md", "evaluation.json"} <= names
    assert [str(path) for path in written if TOKEN.encode() in readable_bytes(path)] == []
    output = capsys.readouterr()
    leaks = [line for line in records.lines + output.out.splitlines() + output.err.splitlines() if TOKEN in line]
    assert records.lines and leaks == []

    probe = tmp_path.parent / f"{tmp_path.name}-probe.bin"  # the check would see a token that was written
    torch.save(args, probe)
    assert TOKEN.encode() in readable_bytes(probe)
