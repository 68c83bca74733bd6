"""The shared engine as a new user meets it (issue 12): bad checkpoints, output folders and seeds
are one-line errors with exit status 2, ``resume: auto`` falls back past a damaged checkpoint,
a failed save leaves nothing behind, log.jsonl is trimmed on resume.

Runs use the released recipe's tiny settings of test_train_run (a second each); the engine is
the same for both recipes.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from test_train_run import images, load, read_metrics, small  # noqa: E402, F401 (images: a fixture)
from uniap_train.cli import main  # noqa: E402
from uniap_train.config import load_config  # noqa: E402


def cli(tmp_path, items: list[str]) -> list[str]:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({}))
    argv = [str(config)]
    for item in items:
        argv += ["--set", item]
    return argv


def one_line_error(capsys, status: int, argv: list[str], match: str) -> str:
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    return err


@pytest.fixture
def trained(images, tmp_path):
    from uniap_train.trainer import train

    out = tmp_path / "run"
    train(load_config(None, small(images, out, "optim.max_steps=3", "checkpoint.every_steps=1")))
    return out


@pytest.mark.parametrize("damage", ["truncated", "empty", "malicious", "not_a_checkpoint"])
def test_bad_resume_checkpoint_is_a_one_line_error(images, trained, tmp_path, capsys, damage):
    bad = tmp_path / "bad.pt"
    good = (trained / "checkpoint_last.pt").read_bytes()
    if damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "malicious":
        import pickle

        with open(bad, "wb") as f:
            pickle.dump({"step": 1, "x": _Evil()}, f, protocol=2)
    else:
        torch.save({"weights": torch.zeros(2)}, bad)
    match = {"truncated": "not a readable checkpoint", "empty": "the checkpoint is empty",
             "malicious": "refused: the file holds objects other than tensors",
             "not_a_checkpoint": "not a uniap-train checkpoint"}[damage]
    one_line_error(capsys, 2, cli(tmp_path, small(images, tmp_path / "out", f"resume={bad}")), match)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_resume_with_changed_model_sizes_is_a_one_line_error(images, trained, tmp_path, capsys):
    argv = cli(tmp_path, small(images, tmp_path / "out", f"resume={trained / 'checkpoint_last.pt'}",
                               "model.hidden_dim=48"))
    one_line_error(capsys, 2, argv, "does not fit this run's model (size mismatch for head.mlp.0.weight")
    argv = cli(tmp_path, small(images, tmp_path / "out2", f"resume={trained / 'checkpoint_last.pt'}",
                               "recipe=paper"))
    one_line_error(capsys, 2, argv, "a checkpoint of recipe 'released', this run is recipe 'paper'")


def test_output_dir_and_seed_errors(images, tmp_path, capsys):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    one_line_error(capsys, 2, cli(tmp_path, small(images, afile)), "output_dir: ")
    one_line_error(capsys, 2, cli(tmp_path, small(images, afile / "sub")), "output_dir: ")
    one_line_error(capsys, 2, cli(tmp_path, small(images, tmp_path / "o", "seed=-1")), "seed: must be an integer")
    one_line_error(capsys, 2, cli(tmp_path, small(images, tmp_path / "o", f"seed={2**70}")), "seed: must be")
    one_line_error(capsys, 2, cli(tmp_path, small(images, tmp_path / "o", "optim.lr=.inf")),
                   "optim.lr: must be finite, got inf")
    one_line_error(capsys, 2, cli(tmp_path, small(images, tmp_path / "o", "loss.student_temp=.nan")),
                   "loss.student_temp: must be finite")


def test_resume_auto_falls_back_past_a_damaged_checkpoint(images, trained, capsys):
    from uniap_train.trainer import train

    assert load(trained / "checkpoint_prev.pt")["step"] == 2  # the one checkpoint_last replaced
    (trained / "checkpoint_last.pt").write_bytes(b"garbage, as a crash mid-copy might leave")
    capsys.readouterr()
    train(load_config(None, small(images, trained, "resume=auto", "optim.max_steps=4")))
    out = capsys.readouterr().out
    assert "skipping a damaged checkpoint" in out and "falling back to" in out and "(step 2)" in out
    assert load(trained / "checkpoint_last.pt")["step"] == 4
    assert [int(r["step"]) for r in read_metrics(trained / "metrics.csv")] == [1, 2, 3, 4]
    # nothing readable at all: an error, not a silent fresh start
    for name in ("checkpoint_last.pt", "checkpoint_prev.pt"):
        (trained / name).write_bytes(b"")
    argv = cli(trained, small(images, trained, "resume=auto"))
    one_line_error(capsys, 2, argv, "resume: auto: no readable checkpoint")


def test_failed_save_leaves_no_temporary(images, tmp_path, monkeypatch, capsys):
    from uniap_train import utils

    out = tmp_path / "run"

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(utils.torch, "save", failing_save)
    assert main(cli(tmp_path, small(images, out, "optim.max_steps=2"))) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if "tmp" in p.name or p.suffix == ".pt") == []


def test_log_jsonl_is_trimmed_on_resume(images, tmp_path):
    from uniap_train.trainer import train

    full = tmp_path / "full"
    train(load_config(None, small(images, full, "checkpoint.keep_every=3")))
    part = tmp_path / "part"
    train(load_config(None, small(images, part, "checkpoint.keep_every=3")))
    # resume the second run in place from step 3: its steps 4..8 must appear once
    train(load_config(None, small(images, part, f"resume={part / 'checkpoint_0000003.pt'}")))
    lines = [json.loads(line) for line in (part / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if r["kind"] == "train"]
    assert steps == list(range(1, 9))
    assert [r["kind"] for r in lines].count("start") == 2
    reference = [r["loss"] for r in map(json.loads, (full / "log.jsonl").read_text().splitlines())
                 if r["kind"] == "train"]
    assert [r["loss"] for r in lines if r["kind"] == "train"] == reference
