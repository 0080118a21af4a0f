"""The newcomer's path stays true: every hpcrun command line in the code blocks of README.md, docs/getting-started.md
and docs/sweeps.md composes (a run or a sweep: every point), renders (`render`) or plans (`plan`) as written, without
submitting anything. Lines that need what this machine cannot have are skipped, each for a stated reason: your own
script (`run -- python train.py`), files under /scratch, a run directory made earlier on the page (status, logs,
report, cancel), a placeholder (`<job id>`, `...`), the sites' doctor probes."""

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from hpcrun.cli import main
from hpcrun.config.compose import compose
from hpcrun.config.points import PointComposer
from hpcrun.launch.sweep import expand

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "docs/getting-started.md", "docs/sweeps.md", "docs/custom-tasks.md")
SKIP_VERBS = {"run": "your own script is not here", "status": "needs runs made earlier on the page",
              "logs": "needs runs made earlier on the page", "report": "needs runs made earlier on the page",
              "cancel": "needs runs made earlier on the page", "results": "needs a sweep made earlier on the page",
              "wait": "needs runs made earlier on the page", "doctor": "probes a site (tests/unit/test_doctor.py)",
              "resume": "needs runs made earlier on the page", "--help": "covered by tests/unit/test_cli.py"}


def _blocks(page):
    """(language, text) of each fenced code block of a page, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", (ROOT / page).read_text(), flags=re.S | re.M)


def _files(page):
    """The files a page shows whole, named in their first lines: ``# conf/experiment/x.yaml`` (after the
    ``# @package`` line, as Hydra needs it) or ``# my_settings.py: ...``; written where the page says, so that its
    commands run against them as a reader's would."""
    files = {}
    for kind, block in _blocks(page):
        if kind not in ("yaml", "python"):
            continue
        for line in block.splitlines()[:2]:
            m = re.match(r"#\s*([\w/.-]+\.(?:yaml|py))\b", line)
            if m:
                files[m.group(1)] = block
    return files


def _commands():
    for page in PAGES:
        for kind, block in _blocks(page):
            if kind not in ("bash", "sh", ""):
                continue
            lines = block.replace("\\\n", " ").splitlines()
            for line in lines:
                line = line.strip()
                for prefix in ("scripts/bootstrap && ", ".venv/bin/", "$ "):
                    line = line.removeprefix(prefix)
                if line.startswith("hpcrun "):
                    yield page, re.sub(r"\s+#.*$", "", line).strip()


COMMANDS = sorted(set(_commands()))


def test_the_pages_have_commands_to_check():
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("page, line", COMMANDS, ids=[f"{p}: {c[:70]}" for p, c in COMMANDS])
def test_a_documented_command_composes_renders_or_plans_as_written(page, line, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("USER", "alice")
    monkeypatch.chdir(tmp_path)
    for name, text in _files(page).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    words = shlex.split(os.path.expandvars(line))[1:]
    for w in words:  # a task module the page describes but does not show whole: a stand-in with its function
        target = re.fullmatch(r"task\._target_=(\w+)\.(\w+)", w)
        if target and not (tmp_path / f"{target[1]}.py").exists():
            (tmp_path / f"{target[1]}.py").write_text(f"def {target[2]}(cfg, ctx):\n    pass\n")
    verb = words[0] if words else ""
    if verb in SKIP_VERBS:
        pytest.skip(SKIP_VERBS[verb])
    if any("/scratch/" in w for w in words) or any(w.startswith("<") or w == "..." for w in words):
        pytest.skip("files under /scratch or a placeholder")
    if "--soonest" in words and shutil.which("sbatch") is None:
        pytest.skip("asks Slurm when each shape would start (tests/integration/test_soonest_slurm.py)")
    if verb in ("render", "plan"):
        args = list(words)
        if "-o" in words:  # the page's own output file, here in tmp_path
            i = args.index("-o")
            args[i + 1] = str(tmp_path / Path(args[i + 1]).name)
        status = main(args)
        assert status == 0, (page, line, capsys.readouterr().err)
        return
    multirun = verb in ("-m", "--multirun")
    overrides = [w for w in words if w not in ("-m", "--multirun", "--wait")]
    if multirun:
        composer = PointComposer(cwd=tmp_path)
        for point in expand(overrides):
            composer.compose(point)
    else:
        compose(overrides, cwd=tmp_path)
