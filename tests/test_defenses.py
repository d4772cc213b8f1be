"""Defenses an unauthorised trainer might use (hf_unlearnable.defenses): each does what its name says."""

from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from hf_unlearnable.defenses import (
    EDA,
    AdversarialTraining,
    MixUp,
    RareWordFilter,
    available_defenses,
    compose,
    default_synonyms,
    get_defense,
)
from hf_unlearnable.losses import ContrastiveLoss
from hf_unlearnable.surrogate import Surrogate
from hf_unlearnable.testing import synthetic_captions, tiny_clip, tiny_clip_config
from hf_unlearnable.victim import retrieval_scores, train_victim

QUALITIES = (10, 30, 50, 75, 90)
NEEDS_MODEL = {"adv-train-4", "adv-train-8"}


@pytest.fixture(scope="module")
def scenes():
    return synthetic_captions(8, image_size=32, seed=5)


@pytest.fixture(scope="module")
def batch(scenes):
    """The published images as the victim sees them: uint8 levels / 255, (B, 3, H, W)."""
    images = np.stack([np.asarray(image.convert("RGB")) for image in scenes["image"]])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, list(scenes["caption"])


def run(name: str, pixels: torch.Tensor, captions: list[str], seed: int = 0, **hooks):
    defense = get_defense(name)
    return defense(pixels.clone(), list(captions), torch.Generator().manual_seed(seed), **hooks)


def pil_jpeg(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """PIL's encoder (libjpeg, default 4:2:0 subsampling) round trip of a [0, 1] batch."""
    out = []
    for image in (pixels * 255).round().byte().permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def high_frequency_energy(pixels: torch.Tensor) -> float:
    spectrum = (
        torch.fft.fftshift(torch.fft.fft2(pixels - pixels.mean(dim=(-2, -1), keepdim=True)), dim=(-2, -1)).abs() ** 2
    )
    h, w = pixels.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    return float(spectrum[..., (yy.abs() > h // 4) | (xx.abs() > w // 4)].sum())


def is_8bit(pixels: torch.Tensor) -> bool:
    return torch.allclose(pixels * 255, (pixels * 255).round(), atol=1e-4)


# ------------------------------------------------------------------------------------ registry


def test_registry_names_are_the_agreed_ones():
    expected = [
        "none",
        "jpeg-10",
        "jpeg-30",
        "jpeg-50",
        "jpeg-75",
        "jpeg-90",
        "grayscale",
        "iss-grayscale",
        "iss-jpeg-10",
        "bit-depth-2",
        "gaussian-blur",
        "gaussian-noise",
        "mixup",
        "cutout",
        "cutmix",
        "resized-crop-flip",
        "ueraser-lite",
        "adv-train-4",
        "adv-train-8",
        "eda-insert",
        "eda-delete",
        "eda-swap",
        "eda-synonym",
        "eda",
        *[f"strip-{k}" for k in range(1, 8)],
        "rare-words",
    ]
    assert sorted(available_defenses()) == sorted(expected)
    for name in expected:
        defense = get_defense(name)
        assert callable(defense) and defense.name == name
        assert (defense.__doc__ or "").strip()  # source and parameters documented
    assert get_defense("adv-train-8").needs_model and not get_defense("jpeg-10").needs_model


def test_unknown_name_error_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        get_defense("jpeg-11")
    message = str(error.value)
    assert "'jpeg-11'" in message
    assert all(name in message for name in available_defenses())
    with pytest.raises(ValueError, match="'nope'"):
        get_defense("jpeg-75+nope")
    with pytest.raises(TypeError):
        get_defense(75)


def test_composition_by_name_applies_left_to_right(batch):
    pixels, captions = batch
    out, texts = run("jpeg-75+strip-3", pixels, captions)
    alone, _ = run("jpeg-75", pixels, captions)
    assert torch.equal(out, alone)
    assert texts == [" ".join(c.split()[3:]) for c in captions]
    assert get_defense("jpeg-75, strip-3").name == "jpeg-75+strip-3"
    chained = compose(get_defense("grayscale"), get_defense("strip-1"))
    gray, stripped = chained(pixels.clone(), captions, torch.Generator().manual_seed(0))
    assert torch.equal(gray[:, 0], gray[:, 2]) and stripped[0] == " ".join(captions[0].split()[1:])


@pytest.mark.parametrize("name", [n for n in available_defenses() if n not in NEEDS_MODEL])
def test_same_generator_seed_same_output_and_range(name, batch):
    pixels, captions = batch
    fitted = [*captions] * 5  # for rare-words
    first, second = get_defense(name), get_defense(name)
    for defense in (first, second):
        if hasattr(defense, "fit"):
            defense.fit(fitted)
    out_a, text_a = first(pixels.clone(), captions, torch.Generator().manual_seed(3))
    out_b, text_b = second(pixels.clone(), captions, torch.Generator().manual_seed(3))
    assert torch.equal(out_a, out_b) and text_a == text_b
    assert out_a.shape == pixels.shape and out_a.dtype == torch.float32
    assert float(out_a.min()) >= 0.0 and float(out_a.max()) <= 1.0
    assert len(text_a) == len(captions) and all(isinstance(t, str) for t in text_a)


@pytest.mark.parametrize(
    "name", ["gaussian-noise", "mixup", "cutout", "cutmix", "resized-crop-flip", "ueraser-lite", "eda"]
)
def test_random_defenses_depend_on_the_generator_and_leave_global_rng_alone(name, batch):
    pixels, captions = batch
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    out_a, text_a = run(name, pixels, captions, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the victim's own RNG is undisturbed
    out_b, text_b = run(name, pixels, captions, seed=2)
    assert not torch.equal(out_a, out_b) or text_a != text_b
    # Standalone (no generator): the defense's own seed decides.
    alone_a = get_defense(name, seed=7)(pixels.clone(), captions)
    alone_b = get_defense(name, seed=7)(pixels.clone(), captions)
    assert torch.equal(alone_a[0], alone_b[0]) and alone_a[1] == alone_b[1]


def test_none_changes_nothing(batch):
    pixels, captions = batch
    out, texts = run("none", pixels, captions)
    assert torch.equal(out, pixels) and texts == captions


# ------------------------------------------------------------------------------------ image


@pytest.mark.parametrize("quality", QUALITIES)
def test_jpeg_changes_pixels_like_pils_encoder(quality, batch):
    pixels, captions = batch
    ours, texts = run(f"jpeg-{quality}", pixels, captions)
    assert texts == captions and is_8bit(ours)
    reference = pil_jpeg(pixels, quality)
    change = float((reference - pixels).abs().mean())  # what PIL's JPEG does to these images
    mismatch = float((ours - reference).abs().mean())
    assert change > 3 / 255
    # kornia's codec rounds differentiably and up-samples chroma differently from libjpeg, so a
    # few levels of per-pixel difference remain; a wrong quality table, colour transform or
    # subsampling would be off by about as much as the JPEG change itself.
    assert mismatch < 3 / 255 and mismatch < 0.5 * change
    # The closest PIL quality to our output is the same quality.
    distance = {q: float((ours - pil_jpeg(pixels, q)).abs().mean()) for q in QUALITIES}
    assert min(distance, key=distance.get) == quality


def test_iss_jpeg_is_jpeg_10(batch):
    pixels, captions = batch
    assert torch.equal(run("iss-jpeg-10", pixels, captions)[0], run("jpeg-10", pixels, captions)[0])


def test_jpeg_works_on_sizes_that_are_not_multiples_of_16():
    pixels = torch.rand(2, 3, 30, 41)
    out, _ = run("jpeg-50", pixels, ["a", "b"])
    assert out.shape == pixels.shape and float((out - pixels).abs().mean()) > 0.01


@pytest.mark.parametrize("name", ["grayscale", "iss-grayscale"])
def test_grayscale_equalises_channels(name, batch):
    pixels, captions = batch
    out, _ = run(name, pixels, captions)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    luma = 0.299 * pixels[:, 0] + 0.587 * pixels[:, 1] + 0.114 * pixels[:, 2]
    assert float((out[:, 0] - luma).abs().max()) <= 0.5 / 255 + 1e-6 and is_8bit(out)
    assert float(pixels.std(dim=1).mean()) > 0.05  # the input had colour


def test_bit_depth_2_leaves_at_most_4_levels(batch):
    pixels, captions = batch
    out, _ = run("bit-depth-2", pixels, captions)
    levels = torch.unique((out * 255).round())
    assert len(levels) <= 4 and set(levels.tolist()) <= {0.0, 85.0, 170.0, 255.0}
    assert float((out - pixels).abs().max()) <= 1 / 6 + 1 / 255  # rounded to the nearest level


def test_gaussian_blur_reduces_high_frequency_energy(batch):
    pixels, captions = batch
    out, _ = run("gaussian-blur", pixels, captions)
    assert high_frequency_energy(out) < 0.3 * high_frequency_energy(pixels)
    assert abs(float(out.mean() - pixels.mean())) < 2 / 255  # a low-pass filter keeps the mean


def test_gaussian_noise_adds_zero_mean_noise_of_the_stated_std():
    pixels = torch.full((4, 3, 32, 32), 0.5)
    out, _ = run("gaussian-noise", pixels, ["a"] * 4)
    noise = out - pixels
    assert abs(float(noise.mean())) < 0.002 and abs(float(noise.std()) - 8 / 255) < 0.003


def test_cutout_zeroes_a_square_region(batch):
    pixels, captions = batch
    pixels = pixels.clamp(min=1 / 255)  # no zeros before, so every zero is the cutout's
    out, texts = run("cutout", pixels, captions)
    assert texts == captions
    for before, after in zip(pixels, out):
        changed = (after != before).any(dim=0)
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        box = after[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert bool((box == 0).all())  # one filled rectangle of zeros...
        height, width = len(box[0]), len(box[0][0])
        assert abs(height - width) <= 1 and abs(height * width / (32 * 32) - 0.25) < 0.05  # ...a square of 1/4
        assert int(changed.sum()) == height * width  # and nothing outside it changed


def test_mixup_blends_two_images_and_keeps_captions(batch):
    pixels, captions = batch
    out, texts = run("mixup", pixels, captions)
    assert texts == captions
    flat, mixed = pixels.flatten(1), out.flatten(1)
    partners = 0
    for i in range(len(pixels)):
        # out_i = (1 - lam) x_i + lam x_j for some j and lam in [0, 0.5]: fit lam for each j.
        best = math.inf
        for j in range(len(pixels)):
            direction = flat[j] - flat[i]
            if float(direction.norm()) == 0:
                continue
            lam = float((mixed[i] - flat[i]) @ direction / (direction @ direction))
            residual = float((mixed[i] - flat[i] - lam * direction).abs().max())
            if residual < best:
                best, best_lam = residual, lam
        assert best < 1e-4 and -1e-4 <= best_lam <= 0.5 + 1e-4
        partners += best_lam > 0.01
    assert partners >= len(pixels) // 2  # most images really are mixed
    both, texts_both = MixUp(captions="both")(pixels.clone(), captions, torch.Generator().manual_seed(0))
    assert all(text.startswith(own) for text, own in zip(texts_both, captions))
    assert any(len(text) > len(own) for text, own in zip(texts_both, captions))


def test_cutmix_pastes_a_box_of_another_image(batch):
    pixels, captions = batch
    out, texts = run("cutmix", pixels, captions)
    assert texts == captions
    pasted = 0
    for i in range(len(pixels)):
        changed = (out[i] != pixels[i]).any(dim=0)
        if not changed.any():
            continue
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        assert (r1 - r0) * (c1 - c0) <= 0.5 * 32 * 32 + 1
        region = out[i, :, r0:r1, c0:c1]
        sources = [j for j in range(len(pixels)) if j != i and torch.equal(region, pixels[j, :, r0:r1, c0:c1])]
        assert sources  # the box is another image's pixels at the same place
        pasted += 1
    assert pasted >= len(pixels) // 2


def test_resized_crop_flip_keeps_the_size_and_crops_mildly(batch):
    pixels, captions = batch
    out, texts = run("resized-crop-flip", pixels, captions)
    assert out.shape == pixels.shape and texts == captions
    assert not torch.equal(out, pixels)
    # Scale 0.9-1: each output is close to its input or to its mirror image, not to another image.
    for i in range(len(pixels)):
        own = min(float((out[i] - pixels[i]).abs().mean()), float((out[i] - pixels[i].flip(-1)).abs().mean()))
        others = min(float((out[i] - pixels[j]).abs().mean()) for j in range(len(pixels)) if j != i)
        assert own < others


def test_ueraser_lite_changes_images_strongly_and_ends_in_jpeg(batch):
    pixels, captions = batch
    out, texts = run("ueraser-lite", pixels, captions)
    assert texts == captions and is_8bit(out)
    assert float((out - pixels).abs().mean()) > 16 / 255  # far beyond an 8/255 perturbation


# ------------------------------------------------------------------------------------ adversarial training


@pytest.fixture(scope="module")
def victim_loss(clip):
    model, processor = clip
    surrogate = Surrogate.from_processor(model, processor)
    loss_function = ContrastiveLoss()

    def loss(pixels, captions):
        tokens = processor.tokenizer(list(captions), padding=True, return_tensors="pt")
        image_features, text_features = surrogate(pixels, tokens["input_ids"], tokens["attention_mask"])
        return loss_function(image_features, text_features, surrogate.logit_scale())

    return loss


@pytest.mark.parametrize("name,eps", [("adv-train-4", 4 / 255), ("adv-train-8", 8 / 255)])
def test_adversarial_training_pgd_increases_the_victims_loss_within_eps(name, eps, batch, victim_loss):
    pixels, captions = batch
    out, texts = run(name, pixels, captions, loss=victim_loss)
    assert texts == captions
    assert float((out - pixels).abs().max()) <= eps + 1e-6 and float(out.min()) >= 0 and float(out.max()) <= 1
    with torch.no_grad():
        clean, attacked = float(victim_loss(pixels, captions)), float(victim_loss(out, captions))
        noise = pixels + (torch.rand(pixels.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * eps
        random_start = float(victim_loss(noise.clamp(0, 1), captions))
    assert attacked > clean and attacked > random_start  # ascent, not just noise
    again, _ = run(name, pixels, captions, loss=victim_loss)
    assert torch.equal(out, again)  # the random start comes from the generator


def test_adversarial_training_without_the_model_says_how_to_call_it(batch):
    pixels, captions = batch
    with pytest.raises(TypeError, match="loss="):
        run("adv-train-8", pixels, captions)
    with pytest.raises(ValueError, match="8/255"):
        AdversarialTraining(eps=8)


# ------------------------------------------------------------------------------------ text


@pytest.mark.parametrize("k", range(1, 8))
def test_strip_removes_exactly_k_words(k):
    captions = ["w1 w2 w3 w4 w5 w6 w7 a red circle on a blue background.", "one two"]
    pixels = torch.zeros(2, 3, 4, 4)
    _, texts = run(f"strip-{k}", pixels, captions)
    assert texts[0].split() == captions[0].split()[k:]
    assert texts[1] == " ".join(captions[1].split()[k:])  # shorter than k: what is left (maybe nothing)


def test_rare_words_drops_a_word_unique_to_one_caption_and_keeps_common_ones():
    corpus = [f"zq{i} a red circle on a blue background" for i in range(10)] + ["a green square"] * 5
    defense = get_defense("rare-words")
    with pytest.raises(ValueError, match="fit"):
        defense(torch.zeros(1, 3, 4, 4), ["a red circle"])
    defense.fit(corpus)
    _, texts = defense(torch.zeros(3, 3, 4, 4), [corpus[0], corpus[10], "unseen red circle"], torch.Generator())
    assert texts == ["a red circle on a blue background", "a green square", "red circle"]
    assert RareWordFilter(min_captions=10).fit(corpus).is_rare("red") is False
    assert RareWordFilter(min_captions=10).fit(corpus).is_rare("green") is True


def multiset(text: str) -> Counter:
    return Counter(text.split())


CAPTIONS = [
    "a large dotted pink cross in the center and a medium checkered purple ring on the right on a checkered black background.",
    "a small striped orange crescent at the bottom right on a gradient gray background.",
    "a dog and a cat sit on a bench near the bridge in the park",
    "two happy children play with a red ball on the grass",
]


def test_eda_deletion_removes_words():
    _, texts = run("eda-delete", torch.zeros(4, 3, 4, 4), CAPTIONS)
    for before, after in zip(CAPTIONS, texts):
        assert not multiset(after) - multiset(before)  # nothing new
        remaining = iter(before.split())
        assert all(word in remaining for word in after.split())  # the survivors, in their order
    assert sum(len(a.split()) for a in texts) < sum(len(b.split()) for b in CAPTIONS)


def test_eda_insertion_adds_a_synonym_of_a_word_present():
    eda = EDA(["insert"])
    _, texts = run("eda-insert", torch.zeros(4, 3, 4, 4), CAPTIONS)
    for before, after in zip(CAPTIONS, texts):
        added = multiset(after) - multiset(before)
        assert not multiset(before) - multiset(after)  # nothing removed
        assert sum(added.values()) == max(1, int(0.1 * len(before.split())))
        allowed = {s for word in before.split() for s in eda.synonyms_of(word)}
        assert set(added) <= allowed


def test_eda_swap_keeps_the_word_multiset_and_changes_order():
    _, texts = run("eda-swap", torch.zeros(4, 3, 4, 4), CAPTIONS)
    assert all(multiset(a) == multiset(b) for a, b in zip(texts, CAPTIONS))
    assert any(a != b for a, b in zip(texts, CAPTIONS))


def test_eda_synonym_replacement_swaps_words_for_their_synonyms():
    eda = EDA(["synonym"])
    _, texts = run("eda-synonym", torch.zeros(4, 3, 4, 4), CAPTIONS)
    changed = 0
    for before, after in zip(CAPTIONS, texts):
        old, new = before.split(), after.split()
        assert len(old) == len(new)
        for o, n in zip(old, new):
            if o != n:
                assert n.rstrip(".") in eda.synonyms_of(o)
                changed += 1
    assert changed >= len(CAPTIONS)


def test_eda_uses_one_operation_per_caption_and_accepts_another_synonym_source():
    _, texts = run("eda", torch.zeros(20, 3, 4, 4), CAPTIONS * 5)
    assert sum(a != b for a, b in zip(texts, CAPTIONS * 5)) >= 15
    custom = EDA(["synonym"], synonyms={"dog": ["hound"], "cat": ["kitty"]})
    _, texts = custom(torch.zeros(1, 3, 4, 4), ["a dog and a cat"], torch.Generator())
    assert texts[0] in {"a hound and a cat", "a dog and a kitty"}
    assert EDA(["synonym"], synonyms=lambda word: ["X"] if word == "cat" else [])(
        torch.zeros(1, 3, 4, 4), ["a cat"], torch.Generator()
    )[1] == ["a X"]
    with pytest.raises(ValueError, match="operations"):
        EDA(["shuffle"])


def test_shipped_synonym_table_covers_caption_words():
    table = default_synonyms()
    assert len(table) > 500
    assert "little" in table["small"] and "big" in table["large"]
    assert all(word not in synonyms for word, synonyms in table.items())
    assert "the" not in table and "a" not in table  # EDA's stop words are never replaced


# ------------------------------------------------------------------------------------ with the victim


@pytest.fixture(scope="module")
def tiny_data():
    return synthetic_captions(16, image_size=32, seed=0), synthetic_captions(8, image_size=32, seed=1)


def test_train_victim_runs_with_a_composed_defense(clip, tiny_data):
    model, processor = clip
    train, test = tiny_data
    result = train_victim(
        train,
        test,
        model,
        processor,
        epochs=1,
        batch_size=8,
        progress=False,
        defense=get_defense("jpeg-75+resized-crop-flip+eda+strip-1"),
    )
    assert len(result.history) == 2 and math.isfinite(result.history[1]["train_loss"])


def test_train_victim_fits_rare_words_on_all_training_captions(clip, tiny_data):
    model, processor = clip
    train, test = tiny_data
    defense = get_defense("rare-words")
    seen = []
    original = defense.apply

    def spy(pixels, captions, generator, **hooks):
        out = original(pixels, captions, generator, **hooks)
        seen.append((captions, out[1]))
        return out

    defense.apply = spy
    train_victim(train, test, model, processor, epochs=1, batch_size=8, progress=False, defense=defense)
    assert sum(defense.document_frequency.values()) > 0
    assert defense.document_frequency["background"] == len(train)  # every synthetic caption says it
    assert len(seen) == 2 and all(
        after == [" ".join(w for w in c.split() if not defense.is_rare(w)) for c in before] for before, after in seen
    )


def test_train_victim_gives_adversarial_training_the_victims_loss(clip, tiny_data):
    model, processor = clip
    train, test = tiny_data
    defense = get_defense("adv-train-8")
    gaps = []
    original = defense.apply

    def spy(pixels, captions, generator, loss=None, **hooks):
        out = original(pixels, captions, generator, loss=loss, **hooks)
        with torch.no_grad():
            gaps.append(float(loss(out[0], out[1]) - loss(pixels, captions)))
        assert float((out[0] - pixels).abs().max()) <= 8 / 255 + 1e-6
        return out

    defense.apply = spy
    result = train_victim(train, test, model, processor, epochs=1, batch_size=8, progress=False, defense=defense)
    assert len(gaps) == 2 and all(gap > 0 for gap in gaps)  # PGD raised the live victim's loss
    assert math.isfinite(result.history[1]["train_loss"])
    assert all(p.requires_grad for p in result.model.parameters())  # unfrozen after each PGD


def test_fine_tuning_starts_from_the_given_weights_and_logit_scale(clip, tiny_data):
    """The fine-tuning victim: a CLIPModel (pretrained elsewhere) is trained as given, not re-initialised."""
    model, processor = clip
    train, test = tiny_data
    pretrained = type(model)(model.config)
    pretrained.load_state_dict(model.state_dict())
    with torch.no_grad():
        pretrained.logit_scale.fill_(math.log(42.0))
    untouched = train_victim(train, test, pretrained, processor, epochs=0, progress=False)
    assert untouched.history[0]["t2i_r1"] == retrieval_scores(pretrained, processor, test)["t2i_r1"]
    assert math.isclose(float(untouched.model.logit_scale.detach().exp()), 42.0, rel_tol=1e-5)
    tuned = train_victim(train, test, pretrained, processor, epochs=1, batch_size=8, learning_rate=1e-5, progress=False)
    before, after = pretrained.state_dict(), tuned.model.state_dict()
    drift = max(float((after[k].cpu() - before[k]).abs().max()) for k in before if before[k].is_floating_point())
    assert 0 < drift < 1e-3  # a small-rate step from the given weights


def test_transfer_victim_of_another_architecture_trains_with_a_defense(tiny_data):
    """The transfer victim: a CLIP of another shape than the protector's, trained from scratch."""
    train, test = tiny_data
    _, processor = tiny_clip(image_size=32)
    other = tiny_clip_config(image_size=32, hidden_size=48, num_layers=3, num_heads=3, patch_size=4, projection_dim=24)
    result = train_victim(
        train, test, other, processor, epochs=1, batch_size=8, progress=False, defense=get_defense("jpeg-50")
    )
    assert result.model.config.vision_config.num_hidden_layers == 3 and result.model.config.projection_dim == 24
    assert math.isfinite(result.history[1]["train_loss"])
