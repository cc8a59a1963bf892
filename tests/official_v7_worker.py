"""Runs the official RWKV-7 implementation (rwkv 0.8.32, class RWKV_x070,
strategy "cpu fp32") on checkpoints, one token at a time, in its own process:
the package selects the RWKV-7 class with RWKV_V7_ON=1 at import time.

    python official_v7_worker.py JOBS.json

JOBS.json: a list of {"model": ".pth path", "tokens": ".npy path", "out":
".npz path"} and optionally "time_state": a ".npy path" of (L, H, N, N) WKV
matrices to start from (a tuned state, used as the official state's att_kv
as it is); each out file receives "logits" (T, V) and "states"
(T, state_len), the official state flattened in its order after each token.
"""

import json
import os
import sys

import numpy as np

os.environ["RWKV_V7_ON"] = "1"
os.environ["RWKV_JIT_ON"] = "0"
os.environ["RWKV_CUDA_ON"] = "0"
os.environ.pop("RWKV_DE_VERSION", None)

import torch  # noqa: E402
from rwkv.model import RWKV_x070  # noqa: E402


def run(job) -> None:
    model_path = job["model"]
    assert model_path.endswith(".pth")
    model = RWKV_x070(model_path[: -len(".pth")], "cpu fp32")  # the class appends ".pth"
    state = None
    if "time_state" in job:
        state = model.generate_zero_state()
        for i, matrices in enumerate(np.load(job["time_state"])):
            state[i * 3 + 1] = torch.from_numpy(np.ascontiguousarray(matrices, dtype=np.float32))
    logits, states = [], []
    with torch.no_grad():
        for token in np.load(job["tokens"]):
            out, state = model.forward([int(token)], state)
            logits.append(out.float().numpy().copy())
            states.append(np.concatenate([s.float().reshape(-1).numpy() for s in state]))
    np.savez(job["out"], logits=np.stack(logits), states=np.stack(states))


def main() -> None:
    torch.set_num_threads(1)
    with open(sys.argv[1]) as f:
        for job in json.load(f):
            run(job)


if __name__ == "__main__":
    main()
