"""Every node of the evaluation graph is named "what.layer" (or "what"
outside the layers) by the graph builder (src/rwkv_graph_common.h), for
every RWKV version, token count and logits mode, so that a graph dump can be
read."""

import collections
import re

import pytest

from rwkv_cpp.quantize import quantize

from _testing_lib import ffi as _ffi, lib as _lib
from shared_data import REFERENCE, need
from wkv_zoo import VERSIONS

LOGITS_NONE, LOGITS_LAST, LOGITS_ALL = 0, 1, 2
NAME = re.compile(r"([a-z][a-z0-9_]*)(?:\.(\d+))?")
# Nodes outside the layers: the embedding (and ln0 where the file keeps
# it), the head; "_std"/"_scaled" are a layer norm's inner nodes, "_q8" and
# "_cont" a packed product's input nodes.
GLOBAL = re.compile(r"emb|ln0(_std|_scaled)?|out_last|ln_out(_std|_scaled)?|logits(_q8|_cont)?")
# Nodes every layer of every version has.
PER_LAYER = {"att_mix", "wkv", "wkv_state_in", "att_out", "att_res", "ffn_k", "ffn_k_sq", "ffn_v", "ffn_res"}
# Without logits nothing consumes the last layer's channel-mixing output:
# only its token-shift state write stays in the graph.
FFN_OUTPUT = {"ffn_k", "ffn_k_sq", "ffn_v", "ffn_res"}


def node_names(path, n_tokens, logits):
    need_bytes = _lib.rwkv_testing_graph_node_names(str(path).encode(), n_tokens, logits, _ffi.NULL, 0)
    assert need_bytes > 0
    buf = _ffi.new("char[]", need_bytes)
    assert _lib.rwkv_testing_graph_node_names(str(path).encode(), n_tokens, logits, buf, need_bytes) == need_bytes
    return _ffi.string(buf).decode().split("\n")


def check_names(path, n_layer, n_tokens, logits):
    names = node_names(path, n_tokens, logits)
    dup = [n for n, c in collections.Counter(names).items() if c > 1]
    assert not dup, dup
    per_layer = collections.defaultdict(set)
    for n in names:
        m = NAME.fullmatch(n)
        assert m, "unnamed or badly named node %r" % n
        what, layer = m.groups()
        if layer is None:
            assert GLOBAL.fullmatch(what), n
        else:
            assert int(layer) < n_layer, n
            per_layer[int(layer)].add(what)
    assert sorted(per_layer) == list(range(n_layer))
    for il, whats in per_layer.items():
        expected = PER_LAYER - FFN_OUTPUT if logits == LOGITS_NONE and il == n_layer - 1 else PER_LAYER
        assert expected <= whats, (il, expected - whats)
    assert ("logits" in names) == (logits != LOGITS_NONE)
    if logits != LOGITS_NONE:
        assert names[-1] == "logits"
    return names


MODES = [(1, LOGITS_LAST), (4, LOGITS_ALL), (3, LOGITS_NONE), (4, LOGITS_LAST)]


@pytest.mark.parametrize("n_tokens,logits", MODES)
@pytest.mark.parametrize("kind", ["FP32", "Q5_1"])
def test_rwkv4_nodes_named(zoo, tmp_path_factory, kind, n_tokens, logits):
    path = zoo.safetensors_gguf("v300_d96_l2_f328", "FP32")
    if kind != "FP32":
        out = tmp_path_factory.getbasetemp() / ("graph-names-v4-%s.gguf" % kind)
        if not out.exists():
            quantize(path, out, kind, n_threads=1)
        path = out
    names = check_names(path, 2, n_tokens, logits)
    assert "wkv.1" in names and "ffn_mix.1" in names


@pytest.mark.parametrize("n_tokens,logits", MODES)
@pytest.mark.parametrize("version", VERSIONS)
def test_wkv_nodes_named(wkv_zoo, version, n_tokens, logits):
    name = "v%s-small" % version
    names = check_names(wkv_zoo.gguf(name), wkv_zoo.spec(name).n_layer, n_tokens, logits)
    assert "att_norm.0" in names and "wkv_state_store.2" in names


@pytest.mark.parametrize("version", ["6.0", "7.0"])
def test_packed_products_named(wkv_zoo, version):
    # a quantized model: the packed products add their own input nodes
    names = check_names(wkv_zoo.quantized("v%s-h64" % version, "Q5_1"), 3, 4, LOGITS_ALL)
    assert "att_k.1" in names


def test_ln0_nodes_named(tmp_path):
    # an rwkv.cpp import keeps ln0 as a tensor, applied in the graph
    from rwkv_cpp.convert import convert_file

    out = tmp_path / "ln0.gguf"
    convert_file(str(need(REFERENCE / "tiny-rwkv-4v0-660K-FP16.bin")), str(out))
    names = check_names(out, 4, 2, LOGITS_LAST)
    assert {"emb", "ln0", "ln0_std", "ln0_scaled"} <= set(names)


def test_bad_arguments_are_refused(wkv_zoo):
    path = str(wkv_zoo.gguf("v7.0-small")).encode()
    assert _lib.rwkv_testing_graph_node_names(path, 0, LOGITS_LAST, _ffi.NULL, 0) == 0
    assert _lib.rwkv_testing_graph_node_names(path, 1, 3, _ffi.NULL, 0) == 0
    assert _lib.rwkv_testing_graph_node_names(b"/nonexistent.gguf", 1, LOGITS_LAST, _ffi.NULL, 0) == 0
