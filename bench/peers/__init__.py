"""Peer runtimes built and run on this machine, for side-by-side tables.

Only llama.cpp is buildable from the package index (it is vendored in the
``llama-cpp-python`` sdist); :mod:`bench.peers.llamacpp` builds it in a cache
folder outside the repository and drives its converter and tools.  Nothing of
llama.cpp is copied into this repository.
"""
