"""MEMConfig: defaults, serialisation and validation messages."""

import dataclasses
import json

import pytest

from hf_unlearnable import MEMConfig


def test_defaults_are_the_papers_budget_and_schedule_with_the_layered_method():
    config = MEMConfig()
    assert config.method == "layered" and config.eot_transforms == ("jpeg",) and config.method_name == "layered"
    paper = MEMConfig.paper()
    assert paper.method == "mem" and paper.eot_transforms == () and paper.method_name == "MEM-3"
    assert config.epsilon == 8 / 255 and config.epsilon_levels == 8
    assert config.pgd_steps == 8 and config.pgd_step_size == 1 / 255 and config.step_levels == 1
    assert config.trigger_length == 3 and config.hotflip_candidates == 16 and config.trigger_rounds == 5
    assert config.surrogate_steps == 200 and config.max_rounds == 20 and config.stop_loss is None
    assert config.learning_rate == 1e-4 and config.shuffle_captions and config.seed == 0


def test_round_trip_through_dict_and_json():
    config = MEMConfig(epsilon=4 / 255, trigger_length=5, stop_loss=0.1, seed=7)
    assert MEMConfig.from_dict(config.to_dict()) == config
    assert MEMConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["trigger_length"] == 5


#: A valid value other than the default for every field ("mem" so that image_noise=False is allowed).
EVERY_FIELD = dict(
    method="mem",
    epsilon=6 / 255,
    pgd_steps=3,
    pgd_step_size=2 / 255,
    trigger_length=4,
    hotflip_candidates=7,
    trigger_words="any",
    trigger_blocklist=("kite", "lamp"),
    trigger_rounds=2,
    surrogate_steps=11,
    max_rounds=9,
    stop_loss=0.25,
    batch_size=12,
    learning_rate=3e-4,
    weight_decay=0.05,
    shuffle_captions=False,
    image_noise=False,
    max_caption_tokens=40,
    online_rounds=3,
    eot_transforms=("jpeg", "blur"),
    trigger_position="random",
    mixed_precision="no",
    seed=11,
)


def test_every_field_survives_dict_and_json():
    defaults = MEMConfig()
    assert set(EVERY_FIELD) == {field.name for field in dataclasses.fields(MEMConfig)}, "a new field needs a value here"
    assert all(getattr(defaults, name) != value for name, value in EVERY_FIELD.items())
    config = MEMConfig(**EVERY_FIELD)
    for again in (
        MEMConfig.from_dict(config.to_dict()),
        MEMConfig.from_json(config.to_json()),
        MEMConfig.from_dict(json.loads(json.dumps(config.to_dict()))),
    ):
        assert again == config
        assert {name: getattr(again, name) for name in EVERY_FIELD} == EVERY_FIELD


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError, match="unknown field.*epsilom"):
        MEMConfig.from_dict({"epsilom": 0.1})


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"epsilon": 0}, "epsilon"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"epsilon": 0.5 / 255}, "epsilon"),
        ({"epsilon": 128 / 255}, "epsilon"),  # would wrap in the int8 noise store
        ({"epsilon": 1.0}, "epsilon"),
        ({"pgd_step_size": 1.5 / 255}, "pgd_step_size"),
        ({"pgd_steps": -1}, "pgd_steps"),
        ({"trigger_length": -1}, "trigger_length"),
        ({"trigger_length": 2.5}, "trigger_length"),
        ({"hotflip_candidates": 0}, "hotflip_candidates"),
        ({"max_rounds": 0}, "max_rounds"),
        ({"batch_size": 1}, "batch_size"),
        ({"stop_loss": -1.0}, "stop_loss"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"shuffle_captions": "yes"}, "shuffle_captions"),
    ],
)
def test_invalid_values_name_the_field_and_range(changes, field):
    with pytest.raises(ValueError, match=rf"MEMConfig\.{field}=.*must be"):
        MEMConfig(**changes)


def test_epsilon_levels_never_exceed_the_budget():
    assert MEMConfig(epsilon=0.03).epsilon_levels == 7  # 7.65 levels: floor, never above 0.03
    assert MEMConfig(epsilon=127 / 255).epsilon_levels == 127  # the int8 store's largest budget


def test_epsilon_above_the_int8_store_states_the_allowed_range():
    with pytest.raises(ValueError, match=r"MEMConfig\.epsilon=.*<= 127/255"):
        MEMConfig(epsilon=153 / 255)


def test_nothing_to_optimise_is_refused():
    with pytest.raises(ValueError, match="nothing would be optimised"):
        MEMConfig(method="mem", trigger_length=0, image_noise=False)


def test_shuffled_captions_without_a_trigger_are_refused():
    # with no trigger, a shuffled caption is another sample's: PGD would not minimise anything useful
    with pytest.raises(ValueError, match="shuffle_captions=False"):
        MEMConfig(method="mem", trigger_length=0)
    assert not MEMConfig(method="mem", trigger_length=0, shuffle_captions=False).shuffle_captions
    # the layered method never shuffles: with no trigger it is its pixel layer alone, EM
    assert MEMConfig(trigger_length=0).method_name == "EM"
