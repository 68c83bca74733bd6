"""The code blocks of README.md and docs/*.md run (issue #14).

Convention (for whoever writes docs):

- Every ```` ```python ```` block is executed.  The blocks of one file share a namespace and
  run in order, like a notebook's cells; each file runs in a fresh temporary folder that
  holds a copy of ``examples/`` (so ``examples/images/coffee.jpg`` works and outputs such as
  ``masks/`` land there, not in the checkout).  Use the bundled images and
  ``uniap.synthetic``, never ``../shared/data``.
- A block that cannot run on a fresh CPU-only machine without ``../shared/data`` (it needs a
  GPU, a cluster, real weights, a data set download) carries the line
  ``<!-- no-test: REASON -->`` directly above its fence; it is skipped, and the reason shown.
  Later blocks of the file must not depend on it.
- ```` ```bash ```` blocks are shell usage over your own data, so they are not run, with two
  exceptions.  (1) Every ``uniap-cli``, ``uniap-eval``, ``uniap-merge`` and ``uniap-train``
  command in them (also as ``python -m uniap``, after ``VAR=value`` prefixes, ``\\``
  continuations joined, ``&&`` chains split) must parse with that command's real argument
  parser, so no block shows a flag that does not exist.  (2) A ``uniap-cli`` command whose
  every input lies under ``examples/`` (the README's first command) is run in a temporary
  folder and must exit 0 and write its outputs.  ``pip install`` steps are not run: the
  tests use the installed package.  ``<!-- no-test: ... -->`` skips a bash block too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
NO_TEST = re.compile(r"<!--\s*no-test:\s*(.*?)\s*-->\s*$")
COMMANDS = {"uniap-cli", "uniap-eval", "uniap-merge", "uniap-train"}
MODULES = {"uniap": "uniap-cli", "uniap.evaluation": "uniap-eval", "uniap_train": "uniap-train",
           "uniap.merge": "uniap-merge"}


def blocks(path: Path) -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, no-test reason) of every fenced block of ``path``."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NO_TEST.search(before)
        out.append((line, m.group(1), m.group(2), reason.group(1) if reason else None))
    return out


def _python_files():
    return [pytest.param(p, id=p.relative_to(REPO).as_posix()) for p in DOCS
            if any(lang == "python" for _, lang, _, _ in blocks(p))]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("path", _python_files())
def test_python_blocks_run(path, workdir, capsys):
    namespace: dict = {"__name__": "__docs__"}
    skipped = []
    ran = 0
    for line, lang, code, reason in blocks(path):
        if lang != "python":
            continue
        if reason is not None:
            skipped.append(f"line {line}: {reason}")
            continue
        if re.search(r"^\s*import torch|^\s*from torch", code, re.M):
            pytest.importorskip("torch")
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
        except Exception as err:  # noqa: BLE001 - report which block failed
            raise AssertionError(f"{path.relative_to(REPO)}, block at line {line} failed: "
                                 f"{type(err).__name__}: {err}") from err
        ran += 1
    assert ran or skipped, "no python block found"


def test_no_test_marks_give_a_reason():
    for path in DOCS:
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("<!--") and "no-test" in line:
                assert NO_TEST.search(line), f"{path.name}: malformed no-test mark {line!r}"


def shell_commands(code: str) -> list[str]:
    """The commands of a bash block: continuations joined, comments and ``&&`` chains split."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        current: list[str] = []
        for word in words + ["&&"]:
            if word in ("&&", ";", "||"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return [c for c in commands if c]


def _program(words: list[str]) -> tuple[str | None, list[str]]:
    """The uniap command a command line runs, and its arguments (None: not one of ours)."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]  # VAR=value prefixes
    if not words:
        return None, []
    if words[0] in COMMANDS:
        return words[0], words[1:]
    if words[0] in ("python", "python3") and len(words) > 2 and words[1] == "-m" and words[2] in MODULES:
        return MODULES[words[2]], words[3:]
    return None, []


def _parser(program: str):
    if program == "uniap-cli":
        from uniap.cli import build_parser
    elif program == "uniap-eval":
        from uniap.evaluation.cli import build_parser
    elif program == "uniap-merge":
        from uniap.merge import build_parser
    else:
        from uniap_train.cli import build_parser
    return build_parser()


def documented_commands():
    for path in DOCS:
        for line, lang, code, reason in blocks(path):
            if lang not in ("bash", "sh", "console", "shell") or reason is not None:
                continue
            for words in shell_commands(code):
                program, args = _program(words)
                if program is not None and "..." not in args:
                    yield pytest.param(program, args, id=f"{path.name}:{line}:{program}")


@pytest.mark.parametrize("program,args", list(documented_commands()))
def test_documented_commands_parse(program, args, capsys):
    # Shell variables ($D, "$SLURM_CPUS_PER_TASK") stand for values the reader supplies.
    args = [re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "1", a) for a in args]
    parser = _parser(program)
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        err = capsys.readouterr().err
        if exc.code != 0:
            pytest.fail(f"{program} {' '.join(args)}: {err.strip().splitlines()[-1] if err else exc}")


def bundled_cli_runs():
    for path in DOCS:
        for line, lang, code, reason in blocks(path):
            if lang != "bash" or reason is not None:
                continue
            for words in shell_commands(code):
                program, args = _program(words)
                if program != "uniap-cli" or "..." in args:
                    continue
                try:
                    parsed = _parser(program).parse_args(args)
                except SystemExit:  # reported by test_documented_commands_parse
                    continue
                if parsed.inputs and all(p.startswith("examples/") for p in parsed.inputs):
                    yield pytest.param(args, id=f"{path.name}:{line}")


@pytest.mark.parametrize("args", list(bundled_cli_runs()))
def test_cli_commands_on_bundled_images_run(args, workdir):
    res = subprocess.run([sys.executable, "-m", "uniap", *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:uniap"})
    assert res.returncode == 0, res.stderr
    parsed = _parser("uniap-cli").parse_args(args)
    assert Path(parsed.out).exists()
    if parsed.viz:
        assert Path(parsed.viz).exists()


def test_readme_first_command_is_checked():
    ids = [p.id for p in bundled_cli_runs()]
    assert any(i.startswith("README.md:") for i in ids), "the README's first command is not run by this file"


def test_docs_do_not_send_examples_to_shared_data():
    for path in DOCS:
        for line, lang, code, reason in blocks(path):
            if lang == "python" and reason is None:
                assert "shared/data" not in code, f"{path.name}:{line} reads ../shared/data"
