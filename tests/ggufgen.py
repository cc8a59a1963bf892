"""Writes small RWKV-4 GGUF files directly (without the converter), with
hooks to break them: used by the malformed-input tests."""

import numpy as np

from rwkv_cpp.convert.gguf_constants import GGMLType
from rwkv_cpp.convert.gguf_writer import GGUFWriter


def rwkv4_tensors(n_vocab=64, n_embed=32, n_layer=2, seed=0):
    """Random RWKV-4 tensors as our GGUF stores them (ln0 pre-applied,
    time_decay already -exp, time params squeezed)."""
    rng = np.random.default_rng(seed)
    d, f = n_embed, 4 * n_embed

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"emb.weight": normal(n_vocab, d)}
    for i in range(n_layer):
        p = "blocks.%d." % i
        for ln in ("ln1", "ln2"):
            t[p + ln + ".weight"] = 1 + normal(d, scale=0.1)
            t[p + ln + ".bias"] = normal(d, scale=0.1)
        for m in "kvr":
            t[p + "att.time_mix_" + m] = rng.uniform(0, 1, d).astype(np.float32)
        t[p + "att.time_first"] = normal(d, scale=0.5)
        t[p + "att.time_decay"] = -np.exp(np.linspace(-5, 3, d)).astype(np.float32)
        for m in ("key", "value", "receptance", "output"):
            t[p + "att.%s.weight" % m] = normal(d, d, scale=d ** -0.5)
        for m in "kr":
            t[p + "ffn.time_mix_" + m] = rng.uniform(0, 1, d).astype(np.float32)
        t[p + "ffn.key.weight"] = normal(f, d, scale=d ** -0.5)
        t[p + "ffn.receptance.weight"] = normal(d, d, scale=d ** -0.5)
        t[p + "ffn.value.weight"] = normal(d, f, scale=f ** -0.5)
    t["ln_out.weight"] = 1 + normal(d, scale=0.1)
    t["ln_out.bias"] = normal(d, scale=0.1)
    t["head.weight"] = normal(n_vocab, d, scale=d ** -0.5)
    return t


def rwkv4_metadata(n_vocab=64, n_embed=32, n_layer=2):
    return {
        "general.architecture": "rwkv4",
        "general.alignment": 32,
        "general.file_type": 0,
        "rwkv.format_version": 1,
        "rwkv.version": "4",
        "rwkv.n_vocab": n_vocab,
        "rwkv.n_embed": n_embed,
        "rwkv.n_layer": n_layer,
        "rwkv.n_att": n_embed,
        "rwkv.n_ffn": 4 * n_embed,
        "rwkv.layer_norm_epsilon": 1e-5,
        "rwkv.tokenizer": "",
        "rwkv.emb_ln0_applied": True,
    }


def write_gguf(path, metadata, tensors):
    """Writes metadata (python values: str, bool, int as u32, float as f32)
    and float32 tensors (PyTorch-order shapes)."""
    with open(path, "wb") as f:
        w = GGUFWriter(f)
        for key, value in metadata.items():
            if isinstance(value, bool):
                w.add_bool(key, value)
            elif isinstance(value, str):
                w.add_string(key, value)
            elif isinstance(value, int):
                w.add_u32(key, value)
            else:
                w.add_f32(key, float(value))
        for name, arr in tensors.items():
            w.add_tensor_info(name, arr.shape, GGMLType.F32)
        w.write_header()
        for name, arr in tensors.items():
            w.write_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
        w.finish()
    return path
