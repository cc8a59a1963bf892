"""Files that claim absurd sizes or counts (tensor and key counts, string,
array and name lengths, dimensions, offsets, layer counts) must be refused
with a clear format error before the loader allocates more than the file's
own size: each is loaded in a subprocess whose address space is capped a
little above what it uses before the load (RLIMIT_AS), so an allocation
that follows a claimed size fails the load with an allocation error or
kills the process instead of passing."""

import json
import struct
import subprocess
import sys
import textwrap

import pytest

from ggufgen import rwkv4_metadata, rwkv4_tensors, write_gguf

# Room above the address space in use before the loads: every file here is
# a few KiB and a load of a valid one of them fits (checked below), while a
# table that followed a claimed count (4096 layers: about 9 MiB of expected
# tensor names) would not.
HEADROOM = 4 << 20

GGUF_TYPE_UINT8, GGUF_TYPE_UINT64, GGUF_TYPE_STRING, GGUF_TYPE_ARRAY = 0, 10, 8, 9


def _string(b):
    return struct.pack("<Q", len(b)) + b


def _header(n_tensors, kvs, n_kv=None):
    """A GGUF v3 header: counts, then the given key-value bytes."""
    count = len(kvs) if n_kv is None else n_kv
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, count) + b"".join(kvs)


def _kv_str(key, value):
    return _string(key) + struct.pack("<I", GGUF_TYPE_STRING) + _string(value)


ARCH = [_kv_str(b"general.architecture", b"rwkv4")]
PAD = b"\0" * 64


def _tensor_info(name, dims, offset=0):
    return _string(name) + struct.pack("<I", len(dims)) + struct.pack("<%dQ" % len(dims), *dims) + \
        struct.pack("<IQ", 0, offset)


# name -> file bytes; each claims far more than it holds.
HEADER_CASES = {
    "tensor_count_2^40": _header(2 ** 40, ARCH),
    "tensor_count_1e7": _header(10 ** 7, ARCH),
    "key_count_2^40": _header(0, ARCH, n_kv=2 ** 40),
    "key_count_1e8": _header(0, ARCH, n_kv=10 ** 8),
    "key_length_2^31": _header(0, [struct.pack("<Q", 2 ** 31) + b"abc"]),
    "key_length_2^62": _header(0, [struct.pack("<Q", 2 ** 62) + b"abc"]),
    "string_length_2^31": _header(0, [_string(b"k") + struct.pack("<IQ", GGUF_TYPE_STRING, 2 ** 31) + b"abc"]),
    "string_length_2^64-1": _header(0, [_string(b"k") + struct.pack("<IQ", GGUF_TYPE_STRING, 2 ** 64 - 1)]),
    "u8_array_length_2^31": _header(0, [_string(b"k") + struct.pack("<IIQ", GGUF_TYPE_ARRAY, GGUF_TYPE_UINT8,
                                                                    2 ** 31) + b"abc"]),
    "u64_array_length_2^60": _header(0, [_string(b"k") + struct.pack("<IIQ", GGUF_TYPE_ARRAY, GGUF_TYPE_UINT64,
                                                                     2 ** 60) + b"abc"]),
    "string_array_length_2^28": _header(0, [_string(b"k") + struct.pack("<IIQ", GGUF_TYPE_ARRAY, GGUF_TYPE_STRING,
                                                                        2 ** 28) + struct.pack("<Q", 0) * 4]),
    "nested_array": _header(0, [_string(b"k") + struct.pack("<IIQ", GGUF_TYPE_ARRAY, GGUF_TYPE_ARRAY, 2 ** 20)]),
    "tensor_name_length_2^31": _header(1, ARCH) + struct.pack("<Q", 2 ** 31) + b"abc",
    "tensor_dims_2^40x2^40": _header(1, ARCH) + _tensor_info(b"emb.weight", [2 ** 40, 2 ** 40]),
    "tensor_dims_2^63": _header(1, ARCH) + _tensor_info(b"emb.weight", [2 ** 63, 1]),
    "tensor_n_dims_99": _header(1, ARCH) + _tensor_info(b"emb.weight", [4] * 99),
    "tensor_offset_2^62": _header(1, ARCH) + _tensor_info(b"emb.weight", [4, 4], offset=2 ** 62),
}

# Metadata of a valid one-layer RWKV-4 file changed to claim a huge model.
MODEL_CASES = {
    "n_layer_4096": {"rwkv.n_layer": 4096},
    "n_vocab_2^24": {"rwkv.n_vocab": 2 ** 24},
    "n_embed_2^16": {"rwkv.n_embed": 2 ** 16, "rwkv.n_att": 2 ** 16},
    "n_ffn_2^20": {"rwkv.n_ffn": 2 ** 20},
    "n_layer_2^31": {"rwkv.n_layer": 2 ** 31},
}

# Loads each file under an address-space cap; prints one JSON line per file:
# the exception's class and message, or "loaded".
LOADER = textwrap.dedent("""
    import json, resource, sys
    import rwkv_cpp
    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    headroom = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + headroom, resource.RLIM_INFINITY))
    for path in sys.argv[2:]:
        try:
            with rwkv_cpp.Model(path, n_threads=1) as m:
                result = {"loaded": True}
        except Exception as e:
            result = {"loaded": False, "type": type(e).__name__, "message": str(e)}
        print(json.dumps(result), flush=True)
""")


def _load_capped(paths):
    r = subprocess.run([sys.executable, "-c", LOADER, str(HEADROOM), *map(str, paths)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case of this module (and a valid file) loaded in one capped process."""
    folder = tmp_path_factory.mktemp("sizes")
    paths = {}
    for name, data in HEADER_CASES.items():
        paths[name] = folder / (name + ".gguf")
        paths[name].write_bytes(data + PAD)
    for name, changes in MODEL_CASES.items():
        meta = rwkv4_metadata(16, 8, 1)
        meta.update(changes)
        paths[name] = write_gguf(folder / (name + ".gguf"), meta, rwkv4_tensors(16, 8, 1))
    paths["valid"] = write_gguf(folder / "valid.gguf", rwkv4_metadata(16, 8, 1), rwkv4_tensors(16, 8, 1))
    names = list(paths)
    return dict(zip(names, _load_capped([paths[n] for n in names])))


def test_the_cap_lets_a_valid_file_load(results):
    assert results["valid"]["loaded"]


@pytest.mark.parametrize("name", sorted(HEADER_CASES))
def test_absurd_header_claims_are_refused(results, name):
    r = results[name]
    assert r["type"] == "ModelFormatError", r
    assert "malformed GGUF file" in r["message"] or "missing metadata key" in r["message"], r


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_absurd_model_sizes_are_refused(results, name):
    r = results[name]
    assert r["type"] == "ModelFormatError", r
    key = next(iter(MODEL_CASES[name]))
    # A value above the loader's limit names the key and the range; one
    # within it, the tensor count it cannot fit or the tensor whose shape
    # disagrees.
    assert key in r["message"] or "has shape" in r["message"], r
