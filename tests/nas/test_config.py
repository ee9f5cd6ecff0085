"""Strict YAML -> dataclass config: errors name the dotted key; overrides; presets; round trip."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from nas.config import (
    DataConfig,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    list_presets,
    load_config,
)
from nas.errors import UserError


def test_defaults_are_valid_and_frozen():
    cfg = load_config()
    assert cfg == ExperimentConfig()
    assert cfg.model.base == "embedded:digits"
    assert cfg.space.width_fractions == (0.125, 0.25, 0.5, 0.75, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sampling.num_steps = 3  # type: ignore[misc]


def test_unknown_key_suggests_the_close_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  trian_steps: 5\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == "unknown config key 'model.trian_steps' (did you mean 'model.train_steps'?)"


def test_unknown_top_level_key_without_close_match_lists_known_keys():
    with pytest.raises(UserError, match=r"unknown config key 'zzz' \(known keys in the config: name, run_root"):
        config_from_dict({"zzz": 1})


@pytest.mark.parametrize(
    "override, message",
    [
        ("sampling.num_steps=abc", "config key 'sampling.num_steps' must be an int, got 'abc'"),
        ("sampling.num_steps=2.5", "config key 'sampling.num_steps' must be an int, got 2.5"),
        ("sampling.num_steps=true", "config key 'sampling.num_steps' must be an int, got true"),
        ("space.depth=1", "config key 'space.depth' must be a bool (true/false), got 1"),
        ("evaluation.seeds=[0, x]", "config key 'evaluation.seeds[1]' must be an int, got 'x'"),
        ("data.limit=abc", "config key 'data.limit' must be an int or null, got 'abc'"),
        ("data.dataset=lsun", "config key 'data.dataset' must be one of 'digits', 'folder', got 'lsun'"),
        ("model=3", "config key 'model' must be a mapping of settings, got 3"),
        ("sampling.num_steps=0", "config key 'sampling.num_steps' must be >= 1, got 0"),
        ("data.dataset=folder", "config key 'data.path' is required when data.dataset is 'folder'"),
        ("name=../escape", "config key 'name' must be a folder name"),
    ],
)
def test_wrong_values_name_the_dotted_key(override, message):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", "sampling.num_steps=[1,"])
def test_malformed_set_is_a_user_error(bad):
    with pytest.raises(UserError, match="--set"):
        load_config(None, [bad])


def test_overrides_parse_yaml_values():
    cfg = load_config(
        None,
        [
            "sampling.num_steps=50",
            "space.width_fractions=[0.5,1.0]",
            "model.learning_rate=1e-4",  # PyYAML reads this as a string; floats accept it
            "data.limit=null",
            "evaluation.seeds=[1, 2]",
            "name=exp-1",
        ],
    )
    assert cfg.sampling.num_steps == 50
    assert cfg.space.width_fractions == (0.5, 1.0)
    assert isinstance(cfg.space.width_fractions[0], float)
    assert cfg.model.learning_rate == pytest.approx(1e-4)
    assert cfg.data.limit is None
    assert cfg.evaluation.seeds == (1, 2)
    assert cfg.name == "exp-1"


def test_int_is_accepted_for_float_but_not_the_reverse():
    cfg = load_config(None, ["model.learning_rate=1"])
    assert cfg.model.learning_rate == 1.0 and isinstance(cfg.model.learning_rate, float)


def test_layering_preset_then_file_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sampling:\n  num_steps: 7\n  batch_size: 3\n")
    cfg = load_config(path, ["sampling.batch_size=5"], preset="demo")
    assert cfg.name == "demo"  # from the preset
    assert cfg.sampling.num_steps == 7  # file over preset
    assert cfg.sampling.batch_size == 5  # --set over file
    assert cfg.sampling.sampler == "ddim"  # nested keys merge, not replace


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(UserError, match=r"cannot parse config file .*line"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(scalar)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == ExperimentConfig()


def test_presets_load_and_unknown_preset_lists_them():
    assert {"demo", "full"} <= set(list_presets())
    for name in list_presets():
        cfg = load_config(preset=name)
        assert cfg.name == name
    with pytest.raises(UserError, match=r"unknown preset 'dmeo' \(did you mean 'demo'\?\).*demo"):
        load_config(preset="dmeo")


def test_yaml_round_trip_of_resolved_config(tmp_path):
    cfg = load_config(None, ["space.width_fractions=[0.5, 1.0]", "data.limit=10", "evaluation.seeds=[3, 4]"],
                      preset="full")
    path = dump_config(cfg, tmp_path / "sub" / "config.yaml")
    text = path.read_text()
    assert "width_fractions:" in text
    assert yaml.safe_load(text) == config_to_dict(cfg)
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_direct_construction_validates_too():
    with pytest.raises(UserError, match="image_size"):
        DataConfig(image_size=0)


def test_apply_overrides_refuses_to_descend_into_a_value():
    with pytest.raises(UserError, match="'name' is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_a_new_section_is_one_dataclass_and_one_field():
    from nas import config as config_mod

    @dataclasses.dataclass(frozen=True)
    class ExtraConfig:
        budget_ratios: tuple[float, ...] = (0.5,)
        method: str = "router"

    Extended = dataclasses.make_dataclass(
        "Extended",
        [("extra", ExtraConfig, dataclasses.field(default_factory=ExtraConfig))],
        bases=(ExperimentConfig,),
        frozen=True,
    )
    Extended.__annotations__["extra"] = ExtraConfig
    built = config_mod.build_dataclass(Extended, {"extra": {"budget_ratios": [0.25, 1]}}, "")
    assert built.extra.budget_ratios == (0.25, 1.0)
    with pytest.raises(UserError, match=r"unknown config key 'extra.metod' \(did you mean 'extra.method'\?\)"):
        config_mod.build_dataclass(Extended, {"extra": {"metod": "x"}}, "")


def test_sampler_choices_match_nas_sampling():
    import typing

    from nas.config import SamplingConfig
    from nas.sampling import SAMPLERS

    choices = typing.get_args(typing.get_type_hints(SamplingConfig)["sampler"])
    assert set(choices) == set(SAMPLERS)


def test_an_unknown_bench_method_is_one_line_naming_the_key_and_the_registered_methods():
    with pytest.raises(UserError) as err:
        load_config(None, ["bench.methods=[router, routed]"])
    msg = str(err.value)
    assert msg.startswith("config key 'bench.methods[1]' must be a registered allocation method (router, search, "
                          "uniform, static, fewer_steps, steps, base, cache, search_seeded, fewer_steps_tuned, uniform_steps), got 'routed'")
    assert "\n" not in msg
    assert load_config(None, ["bench.methods=[fewer_steps, base]"]).bench.methods == ("fewer_steps", "base")


def test_schedule_section_defaults_off_and_checks_its_keys():
    from experts.schedule import SPACINGS
    from nas.config import ScheduleConfig

    cfg = load_config()
    assert cfg.schedule == ScheduleConfig()
    assert cfg.schedule.joint is False and cfg.schedule.max_steps is None and cfg.schedule.counts is None
    assert cfg.schedule.steps_limit(cfg.sampling) == cfg.sampling.num_steps
    on = load_config(None, ["schedule.joint=true", "schedule.max_steps=6", "schedule.counts=[0, 1, 2, 4]",
                            "schedule.spacings=[trailing]", "sampling.sampler=euler"])
    assert on.schedule.counts == (0, 1, 2, 4) and on.schedule.spacings == ("trailing",)
    assert on.schedule.steps_limit(on.sampling) == 6 and on.sampling.sampler == "euler"
    assert config_from_dict(config_to_dict(on)) == on
    assert set(ScheduleConfig().spacings) == set(SPACINGS)
    for override, message in [
        ("schedule.max_steps=0", "config key 'schedule.max_steps' must be >= 1 or null, got 0"),
        ("schedule.counts=[0]", "config key 'schedule.counts' must hold a count >= 1"),
        ("schedule.counts=[1, 1]", "config key 'schedule.counts' must list distinct step counts >= 0"),
        ("schedule.spacings=[cosine]", "config key 'schedule.spacings[0]' must be one of leading, trailing"),
        ("schedule.proxy=loss", "config key 'schedule.proxy' must be one of 'small_fid', 'distance'"),
        ("schedule.proxy_images=1", "config key 'schedule.proxy_images' must be >= 2, got 1"),
        ("schedule.reference_steps=0", "config key 'schedule.reference_steps' must be >= 1, got 0"),
        ("schedule.jiont=true", "unknown config key 'schedule.jiont' (did you mean 'schedule.joint'?)"),
    ]:
        with pytest.raises(UserError) as err:
            load_config(None, [override])
        assert str(err.value).startswith(message), (override, str(err.value))


def test_demo_preset_is_the_widths_demo_with_the_joint_space_on():
    demo, joint = load_config(preset="widths-demo"), load_config(preset="demo")
    assert joint.schedule.joint and joint.search.promote_top_k > 0 and "steps" in joint.bench.methods
    assert joint.schedule.steps_limit(joint.sampling) == demo.sampling.num_steps
    same = dataclasses.replace(joint, name=demo.name, schedule=demo.schedule,
                               search=dataclasses.replace(joint.search, promote_top_k=demo.search.promote_top_k),
                               bench=dataclasses.replace(joint.bench, methods=demo.bench.methods))
    assert same == demo
