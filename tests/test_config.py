import pytest

from kdscope.config import ConfigError, apply_overrides, build_config, load_config


def test_overrides_parse_yaml_values_and_create_sections():
    data = apply_overrides({"train": {"epochs": 1}}, ["train.epochs=3", "optim.lr=0.1", "name=x"])
    assert data == {"train": {"epochs": 3}, "optim": {"lr": 0.1}, "name": "x"}


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["train.epochs"])


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError) as err:
        build_config({"student": {"name": "resnet8"}}, ["train.epochs=many"])
    assert "train.epochs" in str(err.value) and "'many'" in str(err.value)


def test_unknown_field_is_refused():
    with pytest.raises(ConfigError, match="train.epoch"):
        build_config({"student": {"name": "resnet8"}, "train": {"epoch": 3}})


def test_yaml_roundtrip(tmp_path):
    cfg = build_config({"student": {"name": "resnet8"}, "name": "abc"}, ["train.epochs=2"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_reads_off_on_yes_no_as_strings_and_only_true_false_as_booleans(tmp_path):
    cfg = build_config(
        {"student": {"name": "resnet8"}},
        ["train.cache=off", "train.amp=false", "train.deterministic=True"],
    )
    assert cfg.train.cache == "off" and cfg.train.amp is False and cfg.train.deterministic is True
    path = tmp_path / "c.yaml"
    path.write_text(
        "student: {name: resnet8}\ntrain: {cache: off, amp: true}\n"
        "data: {options: {maps: on, x: yes, y: no}}\n"
    )
    loaded = load_config(path)
    assert loaded.train.cache == "off" and loaded.train.amp is True
    assert loaded.data.options == {"maps": "on", "x": "yes", "y": "no"}
