import json
import multiprocessing
import threading
import time

import pytest
import torch
from transformers import BertForMaskedLM

from hf_starsse import RunDirectory, load_weights
from hf_starsse.storage.atomic_io import atomic_write_bytes, atomic_write_json
from hf_starsse.storage.weights import weights_sha256

from conftest import bert_config

HEADER = {"ensemble_method": "starsse", "num_members": 3, "base_model": "m", "hyperparameters": {"learning_rate": 0.1}}


def add_member(run: RunDirectory, index: int, model=None):
    model = model or torch.nn.Linear(2, 2)
    from safetensors.torch import save_model

    run.member_dir(index).mkdir(parents=True, exist_ok=True)
    save_model(model, str(run.member_dir(index) / "model.safetensors"))
    return run.record_member(index, parent=0 if index else None, seed=index, steps=5)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    atomic_write_bytes(tmp_path / "plot.png", b"old")

    def disk_full(fd):
        raise OSError("disk full")

    monkeypatch.setattr("hf_starsse.run.directory.os.fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(tmp_path / "plot.png", b"new")
    assert (tmp_path / "plot.png").read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_claim_record_and_verify(tmp_path):
    run = RunDirectory(tmp_path)
    run.claim(HEADER)
    entry = add_member(run, 0)
    add_member(run, 2)
    manifest = run.read_manifest()
    assert manifest["format_version"] == 1 and manifest["ensemble_method"] == "starsse"
    assert [m["index"] for m in manifest["members"]] == [0, 2]
    assert entry == {
        "index": 0,
        "parent": None,
        "seed": 0,
        "steps": 5,
        "path": "members/member-00",
        "sha256": weights_sha256(run.member_dir(0)),
    }
    assert set(run.complete_members()) == {0, 2}
    run.claim({**HEADER, "num_members": 5})  # same run, more members: resumed, members kept
    assert set(run.complete_members()) == {0, 2} and run.read_manifest()["num_members"] == 5


def test_different_run_refused_then_overwritten(tmp_path):
    run = RunDirectory(tmp_path)
    run.claim(HEADER)
    add_member(run, 0)
    other = {**HEADER, "hyperparameters": {"learning_rate": 0.2}}
    with pytest.raises(ValueError, match="learning_rate: 0.1 there, 0.2 now.*overwrite_output_dir=True"):
        run.claim(other)
    assert set(run.complete_members()) == {0}  # nothing lost
    run.claim(other, overwrite=True)
    assert run.complete_members() == {} and not run.member_dir(0).exists()


def test_corrupted_member_detected(tmp_path):
    run = RunDirectory(tmp_path)
    run.claim(HEADER)
    add_member(run, 0)
    weights = run.member_dir(0) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="do not match the sha256 recorded for member 0"):
        run.complete_members()
    weights.unlink()
    with pytest.raises(ValueError, match="holds no weights"):
        run.complete_members()


def test_bad_manifests(tmp_path):
    run = RunDirectory(tmp_path)
    run.manifest_path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        run.read_manifest()
    with pytest.raises(ValueError, match="not valid JSON"):
        run.claim(HEADER)
    run.claim(HEADER, overwrite=True)
    manifest = run.read_manifest()
    manifest["members"] = [{"index": 0, "path": "../elsewhere", "sha256": "0"}]
    atomic_write_json(run.manifest_path, manifest)
    with pytest.raises(ValueError, match="outside the run directory"):
        run.complete_members()


def test_load_weights_accepts_tied_weights(tmp_path):
    torch.manual_seed(0)
    source = BertForMaskedLM(bert_config())
    source.save_pretrained(tmp_path)
    target = BertForMaskedLM(bert_config())
    load_weights(target, tmp_path)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="do not fit Linear"):
        load_weights(torch.nn.Linear(2, 2), tmp_path)


def test_last_checkpoint_skips_torn_and_final_checkpoints(tmp_path):
    run = RunDirectory(tmp_path)
    assert run.last_checkpoint(1) is None
    for step, state in ((2, '{"global_step": 2, "max_steps": 6}'), (4, '{"global_step": 4, "max'), (6, None)):
        checkpoint = run.checkpoints_dir(1) / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        if state is not None:
            (checkpoint / "trainer_state.json").write_text(state)
    assert run.last_checkpoint(1) == str(run.checkpoints_dir(1) / "checkpoint-2")  # 4 torn, 6 without state
    (run.checkpoints_dir(1) / "checkpoint-6/trainer_state.json").write_text('{"global_step": 6, "max_steps": 6}')
    assert run.last_checkpoint(1) == str(run.checkpoints_dir(1) / "checkpoint-2")  # 6 ends training: not resumable


def record_members(path, members, barrier):
    run = RunDirectory(path)
    barrier.wait()
    for index in members:
        run.record_member(index, parent=0, seed=index, steps=1)


def test_concurrent_writers_lose_no_manifest_entries(tmp_path):
    run = RunDirectory(tmp_path)
    run.claim({**HEADER, "num_members": 24})
    for index in range(24):
        add_member(run, index, torch.nn.Linear(2, index + 1))
    atomic_write_json(run.manifest_path, {**run.read_manifest(), "members": []})
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    writers = [
        context.Process(target=record_members, args=(tmp_path, range(start, 24, 4), barrier)) for start in range(4)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
    assert [writer.exitcode for writer in writers] == [0] * 4
    assert sorted(run.complete_members()) == list(range(24))


def test_processes_meet_through_reports(tmp_path):
    run = RunDirectory(tmp_path)
    run.report_process(1, {"members": [3], "error": None})
    reports = []
    waiter = threading.Thread(target=lambda: reports.extend(run.wait_for_reports(2, poll_seconds=0.01)))
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive() and not reports  # process 0 has not reported yet
    run.report_process(0, {"members": [1, 2], "error": "ValueError('x')"})
    waiter.join(timeout=5)
    assert reports == [{"members": [1, 2], "error": "ValueError('x')"}, {"members": [3], "error": None}]
    run.clear_process_reports()
    assert not (tmp_path / ".processes").exists()


def test_training_data_and_precision_are_part_of_the_run_identity(tmp_path):
    from hf_starsse.training.run_identity import dataset_fingerprint, run_header

    from conftest import make_args, text_dataset

    run = RunDirectory(tmp_path / "run")
    run.claim(run_header(make_args(tmp_path), None, text_dataset()))
    run.claim(run_header(make_args(tmp_path), None, text_dataset()))  # the same data loaded again: same run
    with pytest.raises(ValueError, match=r"train_data.sha256: '[0-9a-f]{64}' there, '[0-9a-f]{64}' now"):
        run.claim(run_header(make_args(tmp_path), None, text_dataset(seed=1)))
    with pytest.raises(ValueError, match=r"train_data.num_rows: 48 there, 40 now"):
        run.claim(run_header(make_args(tmp_path), None, text_dataset().select(range(40))))
    with pytest.raises(ValueError, match=r"precision.bf16: False there, True now"):
        run.claim(run_header(make_args(tmp_path, bf16=True), None, text_dataset()))
    # one changed row in the middle changes the fingerprint; a torch dataset of tensors has one too
    changed = text_dataset().map(lambda row, i: {"labels": (row["labels"] + 1) % 3 if i == 24 else row["labels"]},
                                 with_indices=True)  # fmt: skip
    assert dataset_fingerprint(changed) != dataset_fingerprint(text_dataset())
    tensors = torch.utils.data.TensorDataset(torch.arange(10.0))
    assert dataset_fingerprint(tensors)["num_rows"] == 10


def test_manifest_of_an_earlier_version_resumes_and_gains_the_new_fields(tmp_path, caplog):
    import logging

    from hf_starsse.training.run_identity import run_header

    from conftest import make_args, text_dataset

    run = RunDirectory(tmp_path / "run")
    header = run_header(make_args(tmp_path), None, text_dataset())
    old = {key: value for key, value in header.items() if key not in ("precision", "train_data")}
    run.claim(old)  # as an earlier hf_starsse wrote it
    add_member(run, 0)
    with caplog.at_level(logging.WARNING, logger="hf_starsse"):
        run.claim(header)
    assert "written by an older hf_starsse without precision, train_data" in caplog.text
    manifest = run.read_manifest()
    assert manifest["train_data"] == header["train_data"] and [m["index"] for m in manifest["members"]] == [0]
    with pytest.raises(ValueError, match="train_data.sha256"):  # from now on, the data is checked
        run.claim(run_header(make_args(tmp_path), None, text_dataset(seed=1)))
