"""Models from the Hugging Face Hub: ``Model.from_pretrained(repo_id)``.

``pretrained_path`` finds (or downloads, through ``huggingface_hub``) one
model file of a repository: a ``.gguf`` is used as it is; a ``.pth`` or
``.safetensors`` checkpoint is converted once into a GGUF file kept in a
cache beside the hub's own (``<hub cache>/../rwkv_cpp``), named after the
repository, the checkpoint's blob (its content hash in the hub cache) and
the output type, so that another revision with other weights, or another
type, gets its own file, and the same weights are never converted twice.
The conversion writes a temporary file renamed at the end: processes that
race write the same bytes, and a reader never sees a partial file.

With ``HF_HUB_OFFLINE=1`` nothing is fetched: the file must be in the hub
cache (``HF_HUB_CACHE``), laid out as the hub client lays it out.
"""

import os

from .convert import FORMAT_VERSION, convert_file

#: the kinds of files a repository may hold, in order of preference when no
#: file name is given (a GGUF needs no conversion)
MODEL_SUFFIXES = (".gguf", ".safetensors", ".pth")
#: the default type of a converted checkpoint (that of python -m rwkv_cpp.convert)
DEFAULT_TYPE = "FP16"


class PretrainedError(OSError):
    """The repository or file cannot be found (or fetched), or the
    repository holds no model file or several where one is needed."""


def _hub():
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401 (submodules the package does not import)
        import huggingface_hub.errors  # noqa: F401
    except ImportError as exc:  # it comes with tokenizers, but may be removed
        raise PretrainedError("Model.from_pretrained needs the huggingface_hub package "
                              "(pip install huggingface_hub)") from exc
    return huggingface_hub


def pretrained_path(repo_id, filename=None, *, revision=None, out_type=None, cache_dir=None,
                    convert_dir=None, progress=None):
    """The local path of a GGUF model of ``repo_id``: downloaded (or found
    in the hub cache ``cache_dir``, default ``HF_HUB_CACHE``) and, for a
    checkpoint, converted to ``out_type`` (default FP16) into
    ``convert_dir`` (default: ``rwkv_cpp`` beside the hub cache).

    ``filename`` None picks the repository's only model file (a GGUF before a
    ``.safetensors`` before a ``.pth``); several of the chosen kind is an
    error that lists them."""
    hub = _hub()
    filename = filename or _pick_file(hub, repo_id, revision, cache_dir)
    if not filename.endswith(MODEL_SUFFIXES):
        raise PretrainedError("%s: '%s' is not a model file (expected %s)"
                              % (repo_id, filename, ", ".join(MODEL_SUFFIXES)))
    path = _download(hub, repo_id, filename, revision, cache_dir)
    if filename.endswith(".gguf"):
        if out_type is not None:
            raise PretrainedError("%s: '%s' is a GGUF file, used as it is; leave out type= (or quantize it "
                                  "with python -m rwkv_cpp.quantize)" % (repo_id, filename))
        return path
    return _converted(hub, repo_id, path, out_type or DEFAULT_TYPE, cache_dir, convert_dir, progress)


def _where(hub, repo_id, revision, cache_dir):
    return "'%s' (revision %s) in the Hugging Face cache %s" % (
        repo_id, revision or "main", cache_dir or hub.constants.HF_HUB_CACHE)


def _download(hub, repo_id, filename, revision, cache_dir):
    try:
        return hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    except hub.errors.LocalEntryNotFoundError as exc:
        raise PretrainedError("%s: file '%s' is not in %s, and it cannot be downloaded (%s); download it once "
                              "online, or check the names" % (repo_id, filename,
                                                               _where(hub, repo_id, revision, cache_dir),
                                                               _offline_reason(hub))) from exc
    except (hub.errors.RepositoryNotFoundError, hub.errors.RevisionNotFoundError,
            hub.errors.EntryNotFoundError) as exc:
        raise PretrainedError("%s: %s" % (repo_id, exc)) from exc


def _offline_reason(hub):
    return "HF_HUB_OFFLINE is set" if hub.is_offline_mode() else "the Hub could not be reached"


def _repo_files(hub, repo_id, revision, cache_dir):
    """The repository's file names: from the Hub, or offline from the
    cached snapshot."""
    if not hub.is_offline_mode():
        try:
            return hub.list_repo_files(repo_id, revision=revision)
        except (hub.errors.RepositoryNotFoundError, hub.errors.RevisionNotFoundError) as exc:
            raise PretrainedError("%s: %s" % (repo_id, exc)) from exc
        except (OSError, hub.errors.HfHubHTTPError):
            pass  # unreachable: fall back on the cache
    try:
        folder = hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except hub.errors.LocalEntryNotFoundError as exc:
        raise PretrainedError("%s: the repository is not in %s, and it cannot be downloaded (%s)"
                              % (repo_id, _where(hub, repo_id, revision, cache_dir), _offline_reason(hub))) from exc
    names = []
    for root, _, files in os.walk(folder):
        names += [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/") for f in files]
    return sorted(names)


def _pick_file(hub, repo_id, revision, cache_dir):
    files = _repo_files(hub, repo_id, revision, cache_dir)
    for suffix in MODEL_SUFFIXES:
        found = [f for f in files if f.endswith(suffix)]
        if len(found) == 1:
            return found[0]
        if found:
            raise PretrainedError("%s holds %d %s files (%s); choose one with filename="
                                  % (repo_id, len(found), suffix, ", ".join(found)))
    raise PretrainedError("%s holds no model file (%s); its files: %s"
                          % (repo_id, ", ".join(MODEL_SUFFIXES), ", ".join(files) or "none"))


def _converted(hub, repo_id, path, out_type, cache_dir, convert_dir, progress):
    """The GGUF conversion of the checkpoint at ``path``, made once."""
    if convert_dir is None:
        hub_cache = os.path.abspath(cache_dir or hub.constants.HF_HUB_CACHE)
        convert_dir = os.path.join(os.path.dirname(hub_cache), "rwkv_cpp")
    # the blob's name is its content hash (sha256 for LFS files)
    blob = os.path.basename(os.path.realpath(path))
    name = "%s--%s--v%d-%s.gguf" % (repo_id.replace("/", "--"), blob[:32], FORMAT_VERSION, out_type.upper())
    target = os.path.join(convert_dir, name)
    if not os.path.exists(target):
        os.makedirs(convert_dir, exist_ok=True)
        convert_file(path, target, out_type, progress=progress)
    return target
