"""hf_unlearnable.losses: CLIP's loss exactly as before it moved there, SigLIP's as the paper defines it."""

import hashlib
import math

import pytest
import torch

from hf_unlearnable.losses import ContrastiveLoss, SigLipLoss, gather_features, loss_with_text_replaced

# Unit-norm features (float32 values, exactly) and the values the CLIP losses gave on them before
# they moved to hf_unlearnable.losses (surrogate.ContrastiveLoss, mem.hotflip.loss_with_text_replaced;
# torch 2.13 on the development machine). The surrogate, PGD, HotFlip and the CLIP victim all
# train or search with these two functions: a change of a single bit here changes protected data.
IMAGE = [
    [
        -0.5597331523895264,
        -0.5729182958602905,
        -0.124580018222332,
        -0.2157112956047058,
        0.42195287346839905,
        0.34404581785202026,
    ],
    [
        -0.11967311799526215,
        -0.8010274171829224,
        0.17726674675941467,
        -0.05972524359822273,
        0.5467098951339722,
        0.10075213760137558,
    ],
    [
        0.09192784130573273,
        0.4828925132751465,
        -0.07923591881990433,
        -0.06163818761706352,
        0.514617383480072,
        0.6953096389770508,
    ],
    [
        0.6144734621047974,
        0.016468938440084457,
        0.1894180178642273,
        -0.12651295959949493,
        -0.2577641010284424,
        -0.7098055481910706,
    ],
]
TEXT = [
    [
        -0.17785988748073578,
        -0.6118203401565552,
        0.4636526107788086,
        0.21391922235488892,
        -0.14333464205265045,
        -0.5592509508132935,
    ],
    [
        0.41195371747016907,
        0.2146436870098114,
        -0.24993465840816498,
        0.4039236009120941,
        0.48771607875823975,
        0.5663334727287292,
    ],
    [
        -0.4254898130893707,
        0.7389734983444214,
        -0.13618670403957367,
        0.09658770263195038,
        -0.46899864077568054,
        -0.15824274718761444,
    ],
    [
        -0.25537237524986267,
        -0.2659353017807007,
        -0.5678571462631226,
        0.5933815240859985,
        -0.07486668229103088,
        0.42882975935935974,
    ],
]
CANDIDATES = [
    [
        [
            -0.06516008079051971,
            0.4795832335948944,
            -0.5851712226867676,
            0.0006225203978829086,
            0.5876692533493042,
            -0.279236763715744,
        ],
        [
            0.3268476724624634,
            0.11261740326881409,
            -0.0773523598909378,
            0.7240016460418701,
            -0.5916770100593567,
            -0.015636129304766655,
        ],
    ],
    [
        [
            -0.3929724395275116,
            -0.35969966650009155,
            0.012609919533133507,
            0.2670336663722992,
            0.6189412474632263,
            -0.5115022659301758,
        ],
        [
            0.10774543881416321,
            0.16256238520145416,
            -0.8171846866607666,
            -0.5304867625236511,
            -0.07137109339237213,
            0.08754179626703262,
        ],
    ],
    [
        [
            0.2128932923078537,
            0.06628990918397903,
            0.29141950607299805,
            0.391772985458374,
            0.39396148920059204,
            -0.7460998892784119,
        ],
        [
            0.2861860394477844,
            -0.3394745886325836,
            -0.08015680313110352,
            -0.8919423818588257,
            -0.02670801617205143,
            -0.012448914349079132,
        ],
    ],
    [
        [
            0.6083362698554993,
            0.220683291554451,
            -0.5823876261711121,
            -0.03551654517650604,
            -0.3935614228248596,
            -0.2930843234062195,
        ],
        [
            0.6792587637901306,
            -0.1422807276248932,
            0.04379363730549812,
            0.4116956293582916,
            0.32636865973472595,
            0.4903429448604584,
        ],
    ],
]
SCALE = 14.285714149475098  # 1 / 0.07 in float32, CLIP's initial logit scale
CONTRASTIVE = "0x1.08f1fc0000000p+3"
REPLACED = [
    ["0x1.ce8cc00000000p+2", "0x1.3928660000000p+3"],
    ["0x1.50a8a00000000p+2", "0x1.dbccf40000000p+2"],
    ["0x1.5444240000000p+3", "0x1.25765c0000000p+3"],
    ["0x1.123eb20000000p+2", "0x1.8223b40000000p+2"],
]
# The gradients (what PGD and HotFlip follow, what training steps on) see every rounding a loss
# value can hide: SHA-256 of their float32 bytes, first 16 hex digits.
CONTRASTIVE_GRADIENT = "f498c62b9ca37e0f"  # d loss / d (image, text)
REPLACED_GRADIENT = "2ff6445124ffa068"  # d sum(replaced) / d (image, text, candidates)


def features():
    return torch.tensor(IMAGE), torch.tensor(TEXT), torch.tensor(CANDIDATES), torch.tensor(SCALE)


def digest(tensors) -> str:
    return hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in tensors)).hexdigest()[:16]


def test_clip_losses_give_the_values_they_gave_before_the_move():
    image, text, candidates, scale = features()
    assert float(ContrastiveLoss()(image, text, scale)).hex() == CONTRASTIVE
    assert (
        float(ContrastiveLoss(gather=True)(image, text, scale)).hex() == CONTRASTIVE
    )  # one process: nothing to gather
    replaced = loss_with_text_replaced(image, text, candidates, scale)
    assert [[float(value).hex() for value in row] for row in replaced] == REPLACED


def test_clip_loss_gradients_are_the_ones_before_the_move():
    image, text, candidates, scale = (t.requires_grad_(True) for t in features())
    gradients = torch.autograd.grad(ContrastiveLoss()(image, text, scale), (image, text))
    assert digest([torch.cat(gradients)]) == CONTRASTIVE_GRADIENT
    gradients = torch.autograd.grad(
        loss_with_text_replaced(image, text, candidates, scale).sum(), (image, text, candidates)
    )
    assert digest(gradients) == REPLACED_GRADIENT


def test_the_contrastive_loss_takes_a_bias_and_ignores_it():
    image, text, _, scale = features()
    assert float(ContrastiveLoss()(image, text, scale, torch.tensor(-10.0))).hex() == CONTRASTIVE


def test_one_process_gathers_nothing():
    image, text, _, _ = features()
    gathered = gather_features(image, text)
    assert gathered[0] is image and gathered[1] is text


def test_siglip_loss_is_the_mean_over_images_of_every_pairs_negative_log_sigmoid():
    image, text, _, _ = features()
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    expected = 0.0
    for i in range(4):
        for j in range(4):
            logit = float(scale) * float(image[i] @ text[j]) + float(bias)
            label = 1.0 if i == j else -1.0
            expected -= math.log(1 / (1 + math.exp(-label * logit)))
    assert float(SigLipLoss()(image, text, scale, bias)) == pytest.approx(expected / 4, rel=1e-5)


def test_siglip_loss_falls_as_the_pairs_align():
    image, text, _, _ = features()
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    assert float(SigLipLoss()(image, image, scale, bias)) < float(SigLipLoss()(image, text, scale, bias))


def test_siglip_loss_refuses_to_gather():
    with pytest.raises(NotImplementedError, match="single process"):
        SigLipLoss(gather=True)
