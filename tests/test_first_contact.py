"""What a new user meets first (issue #25, item 6): the README's commands, the project's files.

The README's training example runs on the bundled images (no ../shared data), its outputs are
ignored by git, every command answers --version, the licence, citation and changelog exist and
agree with pyproject, and the torch requirements keep a user's torch.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def env(**extra: str) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.update(extra)
    return e


def test_bundled_training_images_are_the_synthetic_ones():
    """examples/images/shapes holds exactly what uniap.synthetic.shape_images draws (seed 0)."""
    from PIL import Image

    from uniap.synthetic import shape_images

    files = sorted((REPO / "examples" / "images" / "shapes").glob("*.png"))
    assert len(files) == 16
    expected = shape_images(16, (96, 128), seed=0)
    for file, image in zip(files, expected):
        np.testing.assert_array_equal(np.asarray(Image.open(file).convert("RGB")), image, err_msg=file.name)


def test_shape_images_refuses_bad_sizes():
    from uniap.synthetic import shape_images

    with pytest.raises(ValueError, match="sides >= 8"):
        shape_images(2, (4, 64))
    with pytest.raises(ValueError, match="count >= 1"):
        shape_images(0)


def test_readme_training_example_needs_no_data_set(tmp_path):
    """The README's `uniap-train examples/configs/tiny_cpu.yaml ...` with no ../shared at all."""
    pytest.importorskip("torch")
    pytest.importorskip("yaml")
    command = re.search(r"`(uniap-train examples/configs/tiny_cpu\.yaml[^`]*)`", README)
    assert command, "the README's training example is not `uniap-train examples/configs/tiny_cpu.yaml ...`"
    # a checkout with nothing beside it: ../shared resolves to a folder that does not exist
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "examples", checkout / "examples")
    assert not (checkout.parent / "shared").exists()
    out = tmp_path / "run"
    args = command.group(1).split()[1:]
    args = [a if not a.startswith("output_dir=") else f"output_dir={out}" for a in args]
    cmd = [sys.executable, "-m", "uniap_train", *args, "--set", "optim.epochs=5", "--set", "log.progress=false"]
    # UNIAP_DATA at a folder that does not exist: nothing may look for the real data sets
    proc = subprocess.run(cmd, cwd=checkout, env=env(UNIAP_DATA=str(tmp_path / "no-data")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    loss = np.array([float(r["loss"]) for r in rows])
    assert len(rows) == 5 * 4 and np.all(np.isfinite(loss))  # 16 images, batch 4
    assert loss[-4:].mean() < loss[:4].mean()  # it learns something from the bundled images
    assert (out / "checkpoint_last.pt").is_file()


def _readme_outputs() -> list[str]:
    """The files and folders the README's commands write, relative to the repository root."""
    found = set()
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split("#")[0]
            found.update(re.findall(r"--(?:out|viz)[ =](\S+)", line))
            found.update(re.findall(r"output_dir=(\S+)", line))
    found.update(re.findall(r"`uniap-train [^`]*output_dir=(\S+?)`", README))
    return sorted(found)


def test_gitignore_covers_what_the_readme_writes():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = _readme_outputs()
    assert {"masks.json", "masks.png", "runs/tiny"} <= set(outputs), outputs
    for path in outputs:
        proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        assert proc.returncode == 0, f"{path} (written by a README command) is not in .gitignore"


@pytest.mark.parametrize("module", ["uniap.cli", "uniap.merge", "uniap.evaluation.cli", "uniap_train.cli"])
def test_every_command_answers_version(module):
    import uniap

    if module.startswith("uniap_train"):
        pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main(['--version']))"],
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.strip().endswith(uniap.__version__)


def _pyproject() -> dict:
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_license_citation_changelog():
    yaml = pytest.importorskip("yaml")
    project = _pyproject()["project"]
    assert project["license"] == {"text": "MIT"}
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in licence
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert cff["version"] == project["version"]
    paper = cff["preferred-citation"]
    assert paper["title"].startswith("S2-UniSeg") and paper["year"] == 2025
    assert paper["authors"][0] == {"family-names": "Xu", "given-names": "Huihui"}
    assert any(i["value"] == "arXiv:2508.06995" for i in paper["identifiers"])
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog and f"## [{project['version']}]" in changelog


def test_torch_is_a_lower_bound_never_a_pin():
    """An installed torch (a CPU-only build, say) satisfies every extra: no `==` on torch."""
    extras = _pyproject()["project"]["optional-dependencies"]
    specs = [s for deps in extras.values() for s in deps if re.match(r"torch(vision)?\b", s)]
    assert specs, "no extra asks for torch"
    for spec in specs:
        assert "==" not in spec and ">=" in spec, spec
    assert "download.pytorch.org/whl/cpu" in README.split("**uniap** makes")[0]  # the CPU hint, up top
