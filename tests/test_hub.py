"""``Model.from_pretrained``, offline, against a Hugging Face cache laid out
in a temporary folder as the hub client lays it out::

    HF_HUB_CACHE/models--OWNER--NAME/refs/main          the commit hash
    HF_HUB_CACHE/models--OWNER--NAME/blobs/SHA256       the file's content
    HF_HUB_CACHE/models--OWNER--NAME/snapshots/COMMIT/FILE -> ../../blobs/SHA256

Each case runs in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE
and HF_HUB_CACHE when it is imported.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv_cpp.convert import convert_state_dict, make_state_dict, save_safetensors

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKENS = [1, 5, 9, 200, 7]


def _add_file(hub, repo_id, name, data):
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    sha = hashlib.sha256(data).hexdigest()
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs" / sha).write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    link = repo / "snapshots" / COMMIT / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(repo / "blobs" / sha, link.parent))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    sd = make_state_dict("6.0", 256, 64, 2, head_size=16, seed=11)
    save_safetensors(str(root / "m.safetensors"), sd)
    convert_state_dict(sd, root / "m-fp16.gguf", "FP16")
    cache = root / "hub"
    _add_file(cache, "someone/rwkv6-tiny", "model.safetensors", (root / "m.safetensors").read_bytes())
    _add_file(cache, "someone/rwkv6-tiny", "README.md", b"a model card")
    _add_file(cache, "someone/rwkv6-gguf", "rwkv6-tiny-fp16.gguf", (root / "m-fp16.gguf").read_bytes())
    _add_file(cache, "someone/two", "a.pth", b"not read")
    _add_file(cache, "someone/two", "b.pth", b"not read")
    return root


def _run(hub, code):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub / "hub"))
    env.pop("HF_HOME", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    return res


LOGITS = """
import json, sys, numpy as np, rwkv_cpp
m = rwkv_cpp.Model.from_pretrained({args})
print(json.dumps({{"path": m.path, "logits": m.eval_sequence({tokens})[0].tolist()}}))
"""


def _logits(hub, args):
    res = _run(hub, LOGITS.format(args=args, tokens=TOKENS))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    return out["path"], np.array(out["logits"], dtype=np.float32)


@pytest.mark.timeout(240)
def test_checkpoint_converted_once_into_a_cache(hub):
    import rwkv_cpp

    path, logits = _logits(hub, "'someone/rwkv6-tiny'")
    assert Path(path).parent == hub / "rwkv_cpp"  # beside the hub cache
    assert path.endswith("-FP16.gguf") and "someone--rwkv6-tiny" in path
    with rwkv_cpp.Model(str(hub / "m-fp16.gguf")) as direct:
        assert np.array_equal(logits, direct.eval_sequence(TOKENS)[0])
    stamp = os.stat(path).st_mtime_ns
    again, _ = _logits(hub, "'someone/rwkv6-tiny', 'model.safetensors'")
    assert again == path and os.stat(path).st_mtime_ns == stamp  # not converted twice
    q8, _ = _logits(hub, "'someone/rwkv6-tiny', type='Q8_0'")
    assert q8 != path and q8.endswith("-Q8_0.gguf")


@pytest.mark.timeout(120)
def test_gguf_used_as_it_is(hub):
    path, logits = _logits(hub, "'someone/rwkv6-gguf'")
    assert os.path.realpath(path).startswith(str(hub / "hub"))
    _, from_checkpoint = _logits(hub, "'someone/rwkv6-tiny'")
    assert np.array_equal(logits, from_checkpoint)


MISSING = """
import rwkv_cpp
from rwkv_cpp.hub import PretrainedError
try:
    rwkv_cpp.Model.from_pretrained({args})
except PretrainedError as exc:
    print(exc)
else:
    print("loaded")
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args, message", [
    ("'nobody/nothing'", "nobody/nothing: the repository is not in 'nobody/nothing' (revision main) in the "
                         "Hugging Face cache {cache}, and it cannot be downloaded (HF_HUB_OFFLINE is set)"),
    ("'someone/rwkv6-tiny', 'other.pth'", "someone/rwkv6-tiny: file 'other.pth' is not in 'someone/rwkv6-tiny' "
                                          "(revision main) in the Hugging Face cache {cache}"),
    ("'someone/two'", "someone/two holds 2 .pth files (a.pth, b.pth); choose one with filename="),
    ("'someone/rwkv6-tiny', 'README.md'", "'README.md' is not a model file"),
])
def test_clear_errors_offline(hub, args, message):
    res = _run(hub, MISSING.format(args=args))
    assert res.returncode == 0, res.stderr
    assert message.format(cache=hub / "hub") in res.stdout
