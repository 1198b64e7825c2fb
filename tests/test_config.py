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
