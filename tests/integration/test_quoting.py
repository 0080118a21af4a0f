"""No config value reaches a shell unquoted: hostile values through render, the standalone templates and Slurm.

A hostile value holds a space, both quotes, ``$(touch CANARY)``, backticks, ``;``, ``&`` and ``>``: wherever bash
reads it unquoted, a canary file appears in the test's folder. The rendered scripts are not only parsed
(``bash -n``) but run by bash, with ``srun`` (and ``singularity``) replaced by stand-ins that record the argv they
get: quoting is right when every value arrives as the exact word it was, and no canary exists.

Values on ``#SBATCH`` lines are read by sbatch, not bash. The submitit path writes them shell-quoted, which the
dev cluster's sbatch reads back exactly (the Slurm test checks the log landed in the run directory); the
standalone templates refuse by key any value sbatch could misread. A line break (it would end the ``#SBATCH`` line
or comment, and bash would run the rest) or a backslash (sbatch drops it) in a value that reaches an ``#SBATCH``
line is refused by key on both paths. ``cluster.setup`` lines are shell by design and are not tested as values.
"""

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from hpcrun.config.identity import run_id
from tests.slurm import calls, counting_shims, job_id_from, wait_for_end

# Training as short as it gets: two steps of a small model on a small corpus (written by _corpus).
SHORT = ["+experiment=tiny_llama", "train.max_steps=2", "train.batch_size=2", "data.seq_len=32",
         "data.vocab_size=300", "checkpoint.save_every=0"]


def hostile(root: Path, tag: str) -> str:
    """A folder name that makes ``root/canary-TAG-*`` files if any shell reads it unquoted."""
    c = f"{root}/canary-{tag}"
    return f"{tag} it's \"q\" $(touch {c}-a) `touch {c}-b` ; touch {c}-c & echo > {c}-d"


def hydra(key: str, value: str) -> str:
    """``KEY='VALUE'`` as Hydra parses it: quotes escaped, and the backslashes that precede a quote or the end."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return f"{key}='{escaped}'"


def canaries(root: Path) -> List[str]:
    return sorted(p.name for p in root.glob("canary-*"))


def recorder(bin_dir: Path, name: str, then: str = "") -> Path:
    """``bin_dir/name``: writes its argv (NUL-separated) to a new ``name.*`` file in $CALLS, then runs ``then``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" > "$(mktemp -p "$CALLS" {name}.XXXXXX)"\n{then}\n')
    path.chmod(0o755)
    return path


def recorded(calls_dir: Path, name: str) -> List[List[str]]:
    files = sorted(calls_dir.glob(f"{name}.*"), key=lambda p: p.stat().st_mtime_ns)
    return [p.read_bytes().decode().split("\0")[:-1] for p in files]


def python_stub(folder: Path) -> Path:
    """A python at a hostile path that records its argv and runs the real python (``prepare`` really runs)."""
    return recorder(folder, "python", f"exec {shlex.quote(sys.executable)} \"$@\"")


def run_script(text: str, root: Path, stubs: Path, calls_dir: Path) -> subprocess.CompletedProcess:
    """Runs a rendered script with bash (``bash -n`` first), in ``root``, with the stand-ins first on the PATH."""
    script = root / "job.sbatch"
    script.write_text(text)
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    calls_dir.mkdir(exist_ok=True)
    full_env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "CALLS": str(calls_dir),
                "SLURM_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_NODELIST": "vm"}
    return subprocess.run(["bash", str(script)], cwd=root, env=full_env, capture_output=True, text=True, timeout=120)


def sbatch_lines(script: str) -> dict:
    """``{--option: value}`` of the ``#SBATCH`` lines, read as sbatch reads them: one shell-quoted word a line."""
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            (word,) = shlex.split(line[len("#SBATCH "):])
            option, _, value = word.partition("=")
            options[option] = value
    return options


def _corpus(root: Path) -> Path:
    """A small text corpus in a hostile folder: data.corpus is a value that travels to the job in its config."""
    folder = root / hostile(root, "corpus")
    folder.mkdir(parents=True)
    words = "the king queen lord sweet love night day thou art fair good speak hath doth".split()
    lines = (" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(600))
    (folder / "text.txt").write_text("\n".join(lines))
    return folder / "text.txt"


# ---- render: the submitit script ------------------------------------------------------------------------------


def test_the_submitit_script_keeps_a_hostile_run_dir_name_python_and_srun_argument_each_one_word(hpcrun, tmp_path):
    run_dir = f"{tmp_path}/weird dir/{hostile(tmp_path, 'dir')}"
    name = "it's \"q\" $(touch canary-name-a) `touch canary-name-b` ; touch canary-name-c"
    python = python_stub(tmp_path / hostile(tmp_path, "py"))
    srun_arg = f"--comment={hostile(tmp_path, 'srun')}"
    out = hpcrun("render", *SHORT, "cluster=slurm", hydra("run.dir", run_dir), hydra("run.name", name),
                 hydra("cluster.python", str(python)), f"cluster.srun_args=[{hydra('x', srun_arg)[2:]}]")
    assert out.returncode == 0, out.stderr
    assert not Path(run_dir).exists()  # rendering creates nothing

    options = sbatch_lines(out.stdout)
    assert options["--job-name"] == name
    assert options["--output"] == f"{run_dir}/slurm/%j_0_log.out"
    assert options["--error"] == f"{run_dir}/slurm/%j_0_log.err"
    stubs, calls_dir = tmp_path / "stubs", tmp_path / "calls"
    recorder(stubs, "srun")
    ran = run_script(out.stdout, tmp_path, stubs, calls_dir)
    assert ran.returncode == 0, ran.stderr
    assert recorded(calls_dir, "srun") == [[
        "--unbuffered", "--output", f"{run_dir}/slurm/%j_%t_log.out", "--error", f"{run_dir}/slurm/%j_%t_log.err",
        srun_arg, str(python), "-u", "-m", "submitit.core._submit", f"{run_dir}/slurm"]]
    assert canaries(tmp_path) == []


# ---- render: the standalone templates -------------------------------------------------------------------------

TEMPLATES = {  # template -> overrides that choose it
    "single": [],
    "multi_gpu": ["cluster.tasks_per_node=2"],
    "multi_node": ["cluster.nodes=2"],
    "array": ["-m", "train.seed=0,1"],
    "singularity": ["cluster.container.enabled=true"],
}


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_each_standalone_template_run_by_bash_prepares_the_exact_hostile_run_dir_and_runs_nothing_else(
        template, hpcrun, tmp_path):
    root = tmp_path
    stubs, calls_dir = root / "stubs", root / "calls"
    python = python_stub(root / hostile(root, "py"))
    recorder(stubs, "srun")
    recorder(stubs, "scontrol", "echo vm")
    srun_arg = f"--comment={hostile(root, 'srun')}"
    args = [*TEMPLATES[template], *SHORT, "cluster=slurm", f"cluster.srun_args=[{hydra('x', srun_arg)[2:]}]"]
    if template == "array":  # each point gets its own run.dir under the run root
        run_root = f"{root}/weird root/{hostile(root, 'root')}"
        args.append(hydra("cluster.run_root", run_root))
        run_dir = f"{run_root}/tiny_llama/{run_id([*SHORT, 'train.seed=1'])}"  # SLURM_ARRAY_TASK_ID=1
    else:
        run_dir = f"{root}/weird dir/{hostile(root, 'dir')}"
        args.append(hydra("run.dir", run_dir))
    container = []
    if template == "singularity":
        # The stand-in runtime drops `exec`, its options and the image, and runs the rest on the host.
        recorder(stubs, "singularity", 'shift; while [[ "$1" == --* ]]; do shift; [[ "$1" == --* ]] || shift; done\n'
                                       'shift; exec "$@"')
        env_script = root / hostile(root, "env") / "env.sh"
        env_script.parent.mkdir(parents=True)
        env_script.write_text('echo sourced > "$CALLS/sourced"\n')
        image, overlay, bind = (f"{root}/{hostile(root, tag)}/x" for tag in ("img", "ovl", "bind"))
        args += [hydra("cluster.container.image", image), hydra("cluster.container.overlay", overlay),
                 hydra("cluster.container.env_script", str(env_script)),
                 hydra("cluster.container.python", str(python)), f"cluster.container.binds=[{hydra('x', bind)[2:]}]"]
        container = ["singularity", "exec", "--nv", "--overlay", f"{overlay}:ro", "--bind", bind, image, "/bin/bash",
                     "-c"]
    else:
        args.append(hydra("cluster.python", str(python)))
    out = hpcrun("render", "--standalone", *args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].startswith(f"# hpcrun {'sweep' if template == 'array' else 'run'}")
    assert not Path(run_dir).exists()

    ran = run_script(out.stdout, root, stubs, calls_dir)
    assert ran.returncode == 0, ran.stderr
    assert f"hpcrun: run directory {run_dir} (job 4242" in ran.stdout
    # `prepare` got the embedded config intact and wrote it into exactly that directory.
    assert (Path(run_dir) / "config.yaml").exists()
    prepare = ["-m", "hpcrun.job", "prepare"] + (["--index", "1"] if template == "array" else [])
    assert recorded(calls_dir, "python")[0] == prepare
    (srun,) = recorded(calls_dir, "srun")
    assert srun[:2] == ["--unbuffered", srun_arg]
    assert srun[-6:] == [str(python) if not container else "hpcrun", "-u", "-m", "hpcrun.job", "run", run_dir]
    if container:
        assert srun[2:2 + len(container)] == container
        assert recorded(calls_dir, "singularity")[0][:len(container) - 1] == container[1:]
        assert (calls_dir / "sourced").exists()  # the env script at its hostile path was sourced in the "container"
    assert canaries(root) == []


def test_a_line_break_in_an_override_stays_inside_the_standalone_scripts_comment(hpcrun, tmp_path):
    # data.corpus only reaches the embedded config and the "Rendered ... from:" comment; a line break there must
    # not end the comment.
    corpus = f"x\ntouch {tmp_path}/canary-comment-a #"
    out = hpcrun("render", "--standalone", *SHORT, "cluster=slurm", "run.dir=run", hydra("data.corpus", corpus),
                 hydra("cluster.python", str(python_stub(tmp_path / "py"))))
    assert out.returncode == 0, out.stderr
    stubs, calls_dir = tmp_path / "stubs", tmp_path / "calls"
    recorder(stubs, "srun")
    ran = run_script(out.stdout, tmp_path, stubs, calls_dir)
    assert ran.returncode == 0, ran.stderr
    assert canaries(tmp_path) == []
    (command,) = [ln for ln in out.stdout.splitlines() if ln.startswith("#   hpcrun render --standalone")]
    assert "canary-comment-a #" in command  # the whole command, line break and all, on its comment line
    assert "canary-comment-a" in (tmp_path / "run" / "config.yaml").read_text()  # the value itself arrived


def test_a_job_name_sbatch_would_misread_is_refused_by_key_in_a_standalone_script(hpcrun, tmp_path):
    name = "it's $(touch canary-name-a)"
    out = hpcrun("render", "--standalone", *SHORT, "cluster=slurm", hydra("run.name", name), "-o", "job.sbatch")
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"hpcrun: error: run.name={name!r} is invalid: expected a value sbatch reads verbatim in '#SBATCH "
        "--job-name=' (no spaces, quotes, '#' or backslashes)"]
    assert not (tmp_path / "job.sbatch").exists() and canaries(tmp_path) == []


# ---- refused: values that would end or change an #SBATCH line --------------------------------------------------

def _refusals(root: Path) -> list:
    line_break = f"x\ntouch {root}/canary-nl #"
    return [  # (key, value): every one reaches an #SBATCH line on the submitit path
        ("run.dir", f"{root}/{line_break}"),
        ("run.dir", f"{root}/back\\slash"),
        ("run.name", "x\ntouch canary-nl #"),
        ("run.name", "back\\slash"),
        ("cluster.partition", line_break),
        ("cluster.sbatch_extra.comment", line_break),
    ]


@pytest.mark.parametrize("standalone", [False, True], ids=["submitit", "standalone"])
def test_a_line_break_or_backslash_bound_for_an_sbatch_line_is_refused_with_one_line_naming_key_and_value(
        standalone, hpcrun, tmp_path):
    for key, value in _refusals(tmp_path):
        out = hpcrun("render", *(["--standalone"] if standalone else []), *SHORT, "cluster=slurm", hydra(key, value))
        assert out.returncode == 2, (key, value, out.stdout[-2000:])
        assert out.stdout == "" and "Traceback" not in out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"hpcrun: error: {key}={value!r} is invalid"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run directory, no script, no canary


def test_submitting_a_refused_run_dir_calls_no_sbatch_and_leaves_no_directory(hpcrun, tmp_path, slurm_cluster):
    # slurm_cluster: submitit's executor wants srun on the PATH before hpcrun gets to check the values.
    shims = counting_shims(tmp_path, "sbatch")
    before = sorted(p.name for p in tmp_path.iterdir())
    run_dir = f"{tmp_path}/new/x\ntouch {tmp_path}/canary-nl #"
    out = hpcrun(*SHORT, "cluster=slurm", hydra("run.dir", run_dir), env=shims)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"hpcrun: error: run.dir={run_dir!r} is invalid")
    assert calls(tmp_path, "sbatch") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # not even <tmp>/new


# ---- the dev Slurm cluster --------------------------------------------------------------------------------------


def _job_name(job: str, timeout: float = 120) -> str:
    """The job's name as slurmctld holds it (kept MinJobAge after the end); waits out a controller restart."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%j"], capture_output=True, text=True,
                             timeout=30)
        if out.returncode == 0 or time.monotonic() > deadline:
            return out.stdout.rstrip("\n")
        time.sleep(5)


@pytest.mark.training
def test_a_run_with_shell_syntax_in_its_dir_name_python_and_corpus_completes_through_submitit(
        hpcrun, tmp_path, slurm_cluster):
    run_dir = Path(f"{tmp_path}/weird dir/{hostile(tmp_path, 'dir')}")
    name = "it's \"q\" $(touch canary-name-a) `touch canary-name-b` ; touch canary-name-c"
    python = python_stub(tmp_path / hostile(tmp_path, "py"))
    corpus = _corpus(tmp_path)
    out = hpcrun(*SHORT, "cluster=slurm", hydra("run.dir", str(run_dir)), hydra("run.name", name),
                 hydra("cluster.python", str(python)), hydra("data.corpus", str(corpus)),
                 env={"CALLS": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    job = job_id_from(out.stdout)
    assert wait_for_end(job) == "COMPLETED"

    assert (run_dir / "final" / "model.safetensors").exists()
    assert (run_dir / "slurm" / f"{job}_0_log.err").exists()  # sbatch read the quoted #SBATCH --error exactly
    assert "trained a 300-token" in (run_dir / "logs" / "latest.log").read_text()  # the hostile corpus was read
    # The job's python was the one at the hostile path, and submitit's folder reached it as one word.
    assert recorded(tmp_path, "python") == [["-u", "-m", "submitit.core._submit", f"{run_dir}/slurm"]]
    # sbatch read the quoted --job-name exactly. Asked of the controller: slurmdbd stores '"' as '`' in job names.
    assert _job_name(job) == name
    assert canaries(tmp_path) == []


@pytest.mark.training
def test_a_standalone_script_for_a_hostile_run_dir_completes_under_plain_sbatch(hpcrun, tmp_path, slurm_cluster):
    run_dir = Path(f"{tmp_path}/weird dir/{hostile(tmp_path, 'dir')}")
    python = python_stub(tmp_path / hostile(tmp_path, "py"))
    corpus = _corpus(tmp_path)
    out = hpcrun("render", "--standalone", *SHORT, "cluster=slurm", hydra("run.dir", str(run_dir)),
                 hydra("cluster.python", str(python)), hydra("data.corpus", str(corpus)), "-o", "job.sbatch")
    assert out.returncode == 0, out.stderr
    job = subprocess.run(["sbatch", "--parsable", "job.sbatch"], cwd=tmp_path, capture_output=True, text=True,
                         check=True, env={**os.environ, "CALLS": str(tmp_path)}).stdout.strip()
    assert wait_for_end(job) == "COMPLETED"

    assert (run_dir / "final" / "model.safetensors").exists()
    assert f"run directory {run_dir} (job {job}" in (tmp_path / f"tiny_llama-{job}.out").read_text()
    assert recorded(tmp_path, "python") == [["-m", "hpcrun.job", "prepare"],
                                            ["-u", "-m", "hpcrun.job", "run", str(run_dir)]]
    assert canaries(tmp_path) == []
