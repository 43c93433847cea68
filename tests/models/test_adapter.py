"""The base adapter: loading, bad inputs, frozen weights, fingerprints, BOS, positions, cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from megacontext.errors import InvalidInputError, MegaContextError
from megacontext.models import (
    BaseAdapter,
    MissingModelFilesError,
    NotACausalLMError,
    UnsupportedArchitectureError,
    UnsupportedPositionPolicyError,
    load_base,
    loading,
)
from megacontext.models.errors import UnknownModelError
from megacontext.models.loading import DEFAULT_BASE_ENV
from megacontext.models.quirks import QUIRKS, family_for_model_type
from megacontext.models.tiny import build_tiny_tokenizer, make_tiny_model_dir

Loader = Callable[..., BaseAdapter]


def copy_dir(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


# ----------------------------------------------------------------------------- bad inputs
def test_missing_directory_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(MissingModelFilesError, match="no model directory or file"):
        load_base(tmp_path / "nope")


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="smollm2") as caught:
        load_base("smollm3")
    assert "gemma3-270m" in str(caught.value) and "models list" in str(caught.value)


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (("config.json",), "config.json"),
        (("model.safetensors",), "weights"),
        (("tokenizer.json",), "tokenizer"),
    ],
)
def test_missing_files_are_named(
    tiny_dirs: dict[str, Path], tmp_path: Path, drop: tuple[str, ...], named: str
) -> None:
    broken = copy_dir(tiny_dirs["llama"], tmp_path / "broken", drop)
    with pytest.raises(MissingModelFilesError, match=named):
        load_base(broken)


def test_not_a_causal_lm(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    model = BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=320,
        )
    )
    model.save_pretrained(tmp_path / "bert")
    build_tiny_tokenizer().save_pretrained(tmp_path / "bert")
    with pytest.raises(NotACausalLMError, match="BertModel"):
        load_base(tmp_path / "bert")


def test_unsupported_architecture_names_the_table(tmp_path: Path) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=320,
    )
    GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "neox")
    build_tiny_tokenizer().save_pretrained(tmp_path / "neox")
    with pytest.raises(UnsupportedArchitectureError, match=r"gpt_neox.*quirks table"):
        load_base(tmp_path / "neox")


def test_unknown_model_type(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "no_such_arch"}))
    with pytest.raises(UnsupportedArchitectureError, match="no_such_arch"):
        load_base(tmp_path / "m")


def test_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MissingModelFilesError, match="offline"):
        load_base("Qwen/Qwen2.5-0.5B")


def test_default_missing_names_the_build_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(loading, "TINY_BASE_DIR", tmp_path / "absent")
    with pytest.raises(MissingModelFilesError, match="make tiny-base"):
        load_base("tiny")
    monkeypatch.setenv(DEFAULT_BASE_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(MissingModelFilesError, match="elsewhere"):
        load_base("default")


def test_default_by_name(load_tiny: Loader) -> None:
    base = load_tiny("default")
    assert base.source.endswith("default")  # the directory "default" resolved to
    assert base.family == "llama" and base.tied_embeddings


def test_errors_share_the_root() -> None:
    for error in (MissingModelFilesError, NotACausalLMError, UnsupportedPositionPolicyError):
        assert issubclass(error, MegaContextError)


# ----------------------------------------------------------------------------- frozen base (D1)
def test_base_is_frozen_but_passes_gradients_to_inputs(load_tiny: Loader) -> None:
    base = load_tiny("qwen3")
    assert not base.model.training
    assert not any(p.requires_grad for p in base.model.parameters())
    x = base.embed(torch.tensor([[5, 6, 7, 8]])).detach().requires_grad_(True)
    out = base.forward(x, torch.arange(4), None)
    out.logits.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in base.model.parameters())


def test_embedding_norm_is_the_typical_row_norm(load_tiny: Loader) -> None:
    base = load_tiny("llama")
    norms = base.embed(torch.arange(3, 300)).norm(dim=-1)
    assert float(norms.min()) <= base.embedding_norm <= float(norms.max())
    assert abs(base.embedding_norm - float(norms.median())) < 0.1 * base.embedding_norm


def test_interface_shapes(load_tiny: Loader) -> None:
    base = load_tiny("mixtral")
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    x = base.embed(ids)
    assert x.shape == (2, 3, base.d_model) == (2, 3, 64)
    logits, hidden, cache = base.forward(x, torch.arange(3), None)
    assert logits.shape == (2, 3, base.vocab_size)
    assert hidden.shape == (2, 3, base.d_model)
    assert base.cache_length(cache) == 3
    assert base.crop_cache(cache, 1) is cache and base.cache_length(cache) == 1
    last = base.forward(x, torch.arange(3), None, use_cache=False, logits_last=2)
    torch.testing.assert_close(last.logits, logits[:, -2:])
    assert last.hidden.shape == hidden.shape


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_a_shared_cache_prefix_reads_a_batch_of_suffixes_as_full_forwards(
    load_tiny: Loader, family: str
) -> None:
    """Variants of one context that differ from entry 2 on: the first 2 positions of the
    context's cache, repeated per variant, then each variant's suffix — the logits of reading
    every variant whole (what LensNet's labels rely on)."""
    base = load_tiny(family)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    cache = base.forward(base.embed(ids), torch.arange(5)).cache
    variants = torch.tensor([[3, 4, 9, 10, 11], [3, 4, 12, 13, 14], [3, 4, 5, 6, 7]])
    full = base.forward(base.embed(variants), torch.arange(5), use_cache=False).logits
    shared = base.cache_prefix(cache, 2, batch=3)
    assert base.cache_length(shared) == 2 and base.cache_length(cache) == 5  # a copy
    suffix = base.forward(base.embed(variants[:, 2:]), torch.arange(2, 5), shared).logits
    torch.testing.assert_close(suffix, full[:, 2:], rtol=1e-4, atol=1e-4)
    with pytest.raises(InvalidInputError, match="positions of a cache"):
        base.cache_prefix(cache, 6)
    with pytest.raises(InvalidInputError, match="batch"):
        base.cache_prefix(cache, 2, batch=0)
    with pytest.raises(InvalidInputError, match="one sequence"):
        base.cache_prefix(shared, 1)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hidden_states_after_a_layer_match_transformers(load_tiny: Loader, family: str) -> None:
    """``hidden_states(layer=L)`` is the residual stream after decoder layer L (transformers'
    ``output_hidden_states[L]``), and ``layer=None`` the final normed states."""
    base = load_tiny(family)
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    x, positions = base.embed(ids), torch.arange(4).expand(2, -1)
    with torch.no_grad():
        every = base.model(
            inputs_embeds=x, position_ids=positions, output_hidden_states=True
        ).hidden_states
    n = base.config.num_hidden_layers
    for layer in range(1, n):
        torch.testing.assert_close(base.hidden_states(x, positions, layer), every[layer])
    torch.testing.assert_close(base.hidden_states(x, positions), every[n])
    with pytest.raises(InvalidInputError, match=f"layer must be in \\[1, {n}\\]"):
        base.hidden_states(x, positions, n + 1)


# ----------------------------------------------------------------------------- fingerprints (D13)
def test_fingerprint_stable_across_loads_and_dtypes(load_tiny: Loader) -> None:
    a, b, c = load_tiny("llama"), load_tiny("llama"), load_tiny("llama", "bfloat16")
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 64
    # fp32 checkpoint loaded in bf16 is a different set of numbers: different weights digest
    assert c.fingerprints["config"] == a.fingerprints["config"]
    assert c.fingerprints["weights"] != a.fingerprints["weights"]


def test_fingerprint_of_bf16_checkpoint_survives_fp32_load(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    src = make_tiny_model_dir("qwen2", tmp_path / "fp32")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    build_tiny_tokenizer().save_pretrained(tmp_path / "bf16")
    assert (
        load_base(tmp_path / "bf16", dtype="bf16").fingerprint
        == load_base(tmp_path / "bf16", dtype="float32").fingerprint
    )


def test_fingerprint_changes_with_weights_and_tokenizer(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    base = load_base(tiny_dirs["llama"])
    other_seed = load_base(make_tiny_model_dir("llama", tmp_path / "seed1", seed=1))
    assert other_seed.fingerprints["weights"] != base.fingerprints["weights"]
    assert other_seed.fingerprints["config"] == base.fingerprints["config"]
    retok = copy_dir(tiny_dirs["llama"], tmp_path / "retok")
    build_tiny_tokenizer(vocab_size=300).save_pretrained(retok)
    changed = load_base(retok)
    assert changed.tokenizer_fingerprint != base.tokenizer_fingerprint
    assert changed.fingerprint != base.fingerprint


# ----------------------------------------------------------------------------- BOS, quirks
@pytest.mark.parametrize(
    ("family", "bos"),
    [("llama", True), ("mixtral", True), ("qwen2", False), ("qwen3", False), ("gpt2", False)],
)
def test_bos_handling_per_family(load_tiny: Loader, family: str, bos: bool) -> None:
    base = load_tiny(family)
    ids = base.encode("the quick brown fox")
    assert (ids[0] == base.bos_token_id) is bos
    assert ids.count(base.bos_token_id) == int(bos)  # never a doubled BOS
    assert base.encode("the quick", add_bos=False)[0] != base.bos_token_id
    assert base.decode(ids) == "the quick brown fox"


def test_quirks_table_covers_the_issue_families() -> None:
    assert {"llama", "qwen2", "qwen3", "mixtral", "gpt2"} <= set(QUIRKS)
    assert family_for_model_type("gpt2").policies == ("compact",)
    assert "llama3" in QUIRKS["llama"].rope_types


def test_qwen2_has_qkv_bias(load_tiny: Loader) -> None:
    attn = load_tiny("qwen2").model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None


# ----------------------------------------------------------------------------- bad calls
def test_bad_calls_raise_invalid_input(load_tiny: Loader) -> None:
    base = load_tiny("llama")
    x = base.embed(torch.tensor([[3, 4, 5]]))
    with pytest.raises(InvalidInputError, match="inputs_embeds"):
        base.forward(x[0], torch.arange(3))
    with pytest.raises(InvalidInputError, match="position_ids"):
        base.forward(x, torch.arange(4))
    with pytest.raises(InvalidInputError, match="non-negative"):
        base.forward(x, torch.tensor([-1, 0, 1]))
    with pytest.raises(InvalidInputError, match="attention_mask"):
        base.forward(x, torch.arange(3), attention_mask=torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="token ids"):
        base.embed(torch.tensor([[10_000]]))
    cache = base.forward(x, torch.arange(3)).cache
    with pytest.raises(InvalidInputError, match="crop"):
        base.crop_cache(cache, 4)


def test_gpt2_rejects_positions_past_its_table_and_gaussian(load_tiny: Loader) -> None:
    base = load_tiny("gpt2")
    x = base.embed(torch.tensor([[3, 4]]))
    with pytest.raises(InvalidInputError, match="compact"):
        base.forward(x, torch.tensor([0, base.config.n_positions]))
    with pytest.raises(UnsupportedPositionPolicyError):
        base.forward(x, torch.arange(2), sigma=torch.zeros(2))


def test_models_layer_imports_nothing_above_it() -> None:
    code = (
        "import sys, megacontext.models, megacontext.models.portability\n"
        "import megacontext.models.porting, megacontext.bench.models\n"
        "bad = [m for m in sys.modules if m.startswith(('megacontext.train', 'megacontext.runtime',"
        " 'megacontext.eval', 'megacontext.cli', 'megacontext.server'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
