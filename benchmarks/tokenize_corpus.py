"""How long the built-in task's first start spends tokenizing a corpus, and how much memory it needs.

    python benchmarks/tokenize_corpus.py --mb 200 --procs 1 2     # benchmarks/results/tokenize_corpus.json

Writes a JSON Lines corpus of ``--mb`` MB of English (the built-in Shakespeare, repeated with its lines shuffled
into documents of ~4 KB), then tokenizes it the way a run's first start does (:func:`hpcrun.tasks.tokens.corpus_blocks`
with a byte-level BPE trained on the built-in corpus) once per ``--procs`` value, each in a fresh process, and reports
the wall time, the throughput, the peak memory (``RssAnon``, sampled every 0.1 s: the process's own memory, and with
its tokenizing workers added; and ``ru_maxrss``, which also counts the file-backed pages of the memory-mapped Arrow
and token files that the kernel can drop), and the size of the token file. A last step opens the finished
cache as a restart does and reads every training block once, to show a restart's cost and memory.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tokenize_corpus.json"


def write_corpus(path: Path, megabytes: float) -> int:
    from hpcrun.resources import corpus_path

    with gzip.open(corpus_path("shakespeare"), "rt", encoding="utf-8") as f:
        lines = [ln for ln in f.read().splitlines(keepends=True) if ln.strip()]
    rng = random.Random(0)
    target, written = int(megabytes * 1e6), 0
    with path.open("w", encoding="utf-8") as out:
        while written < target:
            doc = "".join(rng.choice(lines) for _ in range(100))
            row = json.dumps({"text": doc}) + "\n"
            out.write(row)
            written += len(row.encode())
    return written


CHILD = r"""
import json, os, resource, sys, threading, time
from pathlib import Path
from types import SimpleNamespace

def anon_mb(pid):
    # RssAnon: the process's own memory, without the file-backed pages of memory-mapped Arrow and token files,
    # which count in RSS but the kernel drops under pressure
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0

def children(pid):
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in open(f"/proc/{pid}/task/{tid}/children").read().split()]
        except OSError:
            pass
    return out

peak = {"self": 0.0, "all": 0.0}
def sample():
    while True:
        me = anon_mb(os.getpid())
        peak["self"] = max(peak["self"], me)
        peak["all"] = max(peak["all"], me + sum(anon_mb(c) for c in children(os.getpid())))
        time.sleep(0.1)
threading.Thread(target=sample, daemon=True).start()
from hpcrun.tasks.text import tokenizer_for
from hpcrun.tasks.tokens import corpus_blocks
corpus, folder, procs, mode = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cfg = SimpleNamespace(data=SimpleNamespace(corpus=corpus, text_field="text", format="text", num_proc=procs,
                                           seq_len=512, eval_fraction=0.01, tokenizer="bpe", vocab_size=4096))
tok = tokenizer_for(SimpleNamespace(data=SimpleNamespace(corpus="shakespeare", tokenizer="bpe", vocab_size=4096,
                                                         text_field="text")), folder.parent, True)
began = time.monotonic()
train, _ = corpus_blocks(cfg, tok, folder)
built = time.monotonic() - began
read = None
if mode == "read":
    began = time.monotonic()
    for i in range(len(train)):
        train[i]
    read = time.monotonic() - began
time.sleep(0.3)
print(json.dumps({"seconds": built, "read_seconds": read, "blocks": len(train),
                  "anon_peak_mb": peak["self"], "anon_peak_with_workers_mb": peak["all"],
                  "self_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "children_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run(corpus: Path, folder: Path, procs: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(corpus), str(folder), str(procs), mode],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        corpus = tmp_path / "corpus.jsonl"
        size = write_corpus(corpus, args.mb)
        rows = []
        for procs in args.procs:
            folder = tmp_path / f"p{procs}" / "tokens"
            folder.parent.mkdir()
            r = run(corpus, folder, procs, "build")
            meta = json.loads((folder / "meta.json").read_text())
            r.update(procs=procs, corpus_mb=size / 1e6, tokens=meta["tokens"], mb_per_s=size / 1e6 / r["seconds"],
                     token_file_mb=(folder / "ids.u32").stat().st_size / 1e6)
            rows.append(r)
            print(json.dumps(r), flush=True)
        restart = run(corpus, tmp_path / f"p{args.procs[0]}" / "tokens", args.procs[0], "read")
        print(json.dumps({"restart": restart}), flush=True)
    result = {"machine": f"{os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"), "command":
              f"python benchmarks/tokenize_corpus.py --mb {args.mb:g} --procs {' '.join(map(str, args.procs))}",
              "runs": rows, "restart": restart}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
