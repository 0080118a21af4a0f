"""What turning off MKL's dynamic threading costs a training step (the job sets MKL_DYNAMIC=FALSE).

    python benchmarks/mkl_dynamic.py [--rounds 8] [--steps 5] [--batch 8] [--seq 128]

The tiny Llama's training step (forward, backward, AdamW; the shape the tests train) in one process, with MKL's
dynamic threading switched on and off in turn through MKL's own MKL_Set_Dynamic (exported by torch's CPU library),
round by round, so that a drift in the machine's speed falls on both. Prints the median seconds a step takes each
way and their ratio (off / on). Needs a torch built with MKL.
"""

import argparse
import ctypes
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="steps timed per round and setting")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    a = p.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not torch.backends.mkl.is_available():
        raise SystemExit("this torch has no MKL: nothing to measure")
    mkl = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=512,
                      attention_dropout=0.1)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq))

    def steps(n: int) -> float:
        began = time.perf_counter()
        for _ in range(n):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - began) / n

    steps(2)  # warm-up: first-call costs belong to neither setting
    per_step = {"on": [], "off": []}
    for r in range(a.rounds):
        for setting in (("on", "off") if r % 2 == 0 else ("off", "on")):
            mkl.MKL_Set_Dynamic(1 if setting == "on" else 0)
            per_step[setting].append(steps(a.steps))
    on, off = statistics.median(per_step["on"]), statistics.median(per_step["off"])
    print(json.dumps({"threads": torch.get_num_threads(), "rounds": a.rounds, "steps_per_round": a.steps,
                      "median_step_s_dynamic_on": round(on, 4), "median_step_s_dynamic_off": round(off, 4),
                      "ratio_off_over_on": round(off / on, 3)}, indent=1))


if __name__ == "__main__":
    main()
