"""A stand-in for ``transformers`` for llama.cpp's converter, which uses it
only to read a model folder's ``config.json`` (``AutoConfig.from_pretrained
(...).to_dict()``) for the RWKV architectures.  Anything else raises, so a
converter path that needs the real library fails loudly instead of silently
reading something else."""

import json
import os


class _Config(dict):
    def to_dict(self):
        return dict(self)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class AutoConfig:
    @staticmethod
    def from_pretrained(path, **_kwargs):
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return _Config(json.load(f))


def __getattr__(name):
    raise ImportError("transformers.%s is not available: bench/peers/shim stands in for transformers and "
                      "offers only AutoConfig (config.json)" % name)
