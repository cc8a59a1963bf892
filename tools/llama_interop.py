"""Interop check with llama.cpp: llama.cpp on our export equals llama.cpp
on its own conversion of the same model, and both match rwkv_cpp.

For each of RWKV-6 and RWKV-7 (or one checkpoint given with --checkpoint):

1. the official checkpoint is written as a Hugging Face folder and
   converted by llama.cpp's ``convert_hf_to_gguf.py`` (``--outtype f32``);
2. the same checkpoint is exported by ``python -m rwkv_cpp.convert ...
   --layout llama.cpp``;
3. llama.cpp (through llama-cpp-python, in child processes) runs both files
   on a token list; rwkv_cpp runs the checkpoint and llama.cpp's file.

It prints the largest logit differences and exits 1 when llama.cpp on our
export differs from llama.cpp on its own file by more than --tol (default
0: the two files hold the same numbers, so llama.cpp computes the same
bits) or rwkv_cpp on llama.cpp's file differs from rwkv_cpp on the
checkpoint by more than 1e-5.  Needs a llama.cpp source tree (with
torch and transformers for its converter) and llama-cpp-python:

    python tools/llama_interop.py --llama-cpp PATH/TO/llama.cpp
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORLD_VOCAB = ROOT / "python" / "rwkv_cpp" / "data" / "rwkv_vocab_v20230424.txt"
TOKENS = [1, 5, 300, 7, 9, 100, 42, 0, 200, 13, 261, 33]
#: rwkv_cpp on llama.cpp's file vs on our own conversion (FP32, exact mapping).
SAME_MODEL_TOL = 1e-5

_LOGITS_CHILD = """
import sys, numpy as np, llama_cpp
path, out, tokens = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
llm = llama_cpp.Llama(model_path=path, logits_all=True, verbose=False, n_ctx=256, n_threads=1,
                      n_batch=len(tokens))
llm.eval(tokens)
np.save(out, np.array(llm.scores[:len(tokens)], dtype=np.float32))
"""


def llama_logits(path: Path, work: Path) -> np.ndarray:
    """llama.cpp's logits in a child process (its libllama must not meet
    the ggml that rwkv_cpp loads)."""
    out = work / (path.stem + "-llama.npy")
    subprocess.run([sys.executable, "-c", _LOGITS_CHILD, str(path), str(out), ",".join(map(str, TOKENS))],
                   check=True)
    return np.load(out)


def ours_logits(path: Path) -> np.ndarray:
    import rwkv_cpp

    model = rwkv_cpp.Model(str(path))
    state, rows = None, []
    for token in TOKENS:
        logits, state = model.eval(token, state)
        rows.append(np.array(logits))
    model.close()
    return np.array(rows)


def check(name: str, sd, llama_cpp_dir: Path, work: Path, tol: float) -> bool:
    from rwkv_cpp.convert import convert_state_dict, save_safetensors
    from rwkv_cpp.convert.hf_layout import write_hf_folder

    folder, src = work / f"{name}-hf", work / f"{name}.safetensors"
    write_hf_folder(sd, str(folder), str(WORLD_VOCAB), rescale_every=0)
    theirs, mine, official = work / f"{name}-llama.gguf", work / f"{name}-ours.gguf", work / f"{name}.gguf"
    subprocess.run([sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), str(folder),
                    "--outtype", "f32", "--outfile", str(theirs)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    save_safetensors(str(src), sd)
    subprocess.run([sys.executable, "-m", "rwkv_cpp.convert", str(src), str(mine), "--layout", "llama.cpp",
                    "-q"], check=True)
    convert_state_dict(sd, str(official))
    on_theirs, on_mine = llama_logits(theirs, work), llama_logits(mine, work)
    ours_official, ours_theirs = ours_logits(official), ours_logits(theirs)
    export_diff = float(np.abs(on_mine - on_theirs).max())
    load_diff = float(np.abs(ours_theirs - ours_official).max())
    peer_diff = float(np.abs(ours_official - on_theirs).max())
    print(f"{name}: llama.cpp on our export vs on its conversion: {export_diff:.3g}; "
          f"rwkv_cpp on llama.cpp's file vs on ours: {load_diff:.3g}; "
          f"rwkv_cpp vs llama.cpp: {peer_diff:.3g} (|logits| <= {np.abs(on_theirs).max():.3g})")
    return export_diff <= tol and load_diff <= SAME_MODEL_TOL


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", required=True, type=Path, metavar="DIR",
                    help="llama.cpp source tree (with convert_hf_to_gguf.py)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="an official RWKV-6/7 .pth or .safetensors file (default: random tiny models)")
    ap.add_argument("--tol", type=float, default=0.0,
                    help="largest allowed difference of llama.cpp's logits on the two files (default 0)")
    args = ap.parse_args(argv)
    from rwkv_cpp.convert import open_checkpoint
    from rwkv_cpp.convert.random_weights import make_state_dict

    if args.checkpoint is not None:
        with open_checkpoint(str(args.checkpoint)) as ckpt:
            models = {args.checkpoint.stem: {n: t.to_f32() for n, t in ckpt.tensors.items()}}
    else:
        models = {"rwkv6": make_state_dict("6.0", 320, 128, 2, 64, n_ffn=256, seed=5),
                  "rwkv7": make_state_dict("7.0", 320, 128, 3, 64, n_ffn=256, seed=6)}
    with tempfile.TemporaryDirectory() as work:
        ok = [check(name, sd, args.llama_cpp, Path(work), args.tol) for name, sd in models.items()]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
