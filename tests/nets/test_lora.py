"""LoRA on the base: trainable alone, teacher mode is the plain base, detach is bit-identical."""

from __future__ import annotations

import pytest
import torch

from megacontext.errors import InvalidInputError
from megacontext.models import load_base
from megacontext.models.lora import LoraAdapter, LoraSettings
from megacontext.models.tiny import make_tiny_model_dir


@pytest.fixture
def base(tmp_path):  # type: ignore[no-untyped-def]
    return load_base(make_tiny_model_dir("default", tmp_path / "b"))


def logits(base) -> torch.Tensor:  # type: ignore[no-untyped-def]
    ids = torch.arange(3, 19)[None]
    return base.forward(base.embed(ids), torch.arange(16)[None], use_cache=False).logits


def test_lora_trains_alone_and_detaches_bit_identical(base, tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = logits(base)
    fresh = load_base(make_tiny_model_dir("default", tmp_path / "again"))
    weights = {k: v.clone() for k, v in base.model.state_dict().items()}
    lora = LoraAdapter(base, LoraSettings(r=2, alpha=4))
    assert base.fingerprints == fresh.fingerprints  # the fingerprint names the plain base
    assert lora.lora_parameters() and all(p.requires_grad for p in lora.lora_parameters())
    trainable = [n for n, p in base.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.SGD(lora.lora_parameters(), lr=0.5)
    loss = logits(base).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    during = logits(base)
    assert not torch.equal(during, before)  # the trained adapter changes the output
    with lora.disabled():
        torch.testing.assert_close(logits(base), before, rtol=0, atol=0)  # teacher = plain base
    state = lora.state_dict()
    lora.detach()
    assert torch.equal(logits(base), before)
    for key, value in base.model.state_dict().items():
        assert torch.equal(value, weights[key])
    # Re-attaching and loading the saved weights reproduces the adapted output.
    again = LoraAdapter(base, LoraSettings(r=2, alpha=4))
    again.load_state_dict(state)
    torch.testing.assert_close(logits(base), during)
    again.detach()


def test_lora_weights_for_another_shape_are_refused(base) -> None:  # type: ignore[no-untyped-def]
    lora = LoraAdapter(base, LoraSettings(r=2, alpha=4))
    with pytest.raises(InvalidInputError, match="do not fit"):
        lora.load_state_dict({"nonsense.lora_A.weight": torch.zeros(1)})
    lora.detach()
    with pytest.raises(InvalidInputError, match="r and alpha"):
        LoraSettings(r=0)


def test_lora_travels_in_a_bundle(base, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from megacontext.models.bundle import load_bundle, save_bundle

    before = logits(base)
    lora = LoraAdapter(base, LoraSettings(r=2, alpha=4))
    with torch.no_grad():
        for p in lora.lora_parameters():
            p.normal_(0, 0.1)
    adapted = logits(base)
    save_bundle(tmp_path / "bundle", {"lora": lora}, fingerprints=base.fingerprints)
    lora.detach()
    assert torch.equal(logits(base), before)
    bundle = load_bundle(tmp_path / "bundle", fingerprints=base.fingerprints)
    again = bundle.attach_lora(base)
    torch.testing.assert_close(logits(base), adapted)
    again.detach()
    assert torch.equal(logits(base), before)
