"""Config overlay: presets, files, --set, scoping, and strict rejection of unknown keys."""

import pytest

from rsbench.config.overlay import fill, load_config_file, parse_set_options, parse_value, set_key, to_dict
from rsbench.config.resolve import resolve_config
from rsbench.config.schema import RunConfig, TrainConfig, parse_augment
from rsbench.errors import UserError


def test_parse_value_types():
    assert parse_value("3", int, "k") == 3
    assert parse_value("1e-4", float, "k") == pytest.approx(1e-4)
    assert parse_value("off", bool, "k") is False
    with pytest.raises(UserError, match="bad value for 'k'"):
        parse_value("abc", int, "k")


def test_set_key_rejects_unknown_with_suggestion():
    t = TrainConfig()
    set_key(t, "epochs", "7")
    assert t.epochs == 7
    with pytest.raises(UserError, match=r"unknown option 'epoch'.*did you mean 'epochs'"):
        set_key(t, "epoch", "3")


def test_resolve_preset_then_set_scoping():
    cfg = resolve_config("vsepp", "synthetic", overrides={"vsepp.margin": "0.3", "train.lr": "1e-3",
                                                          "model.hardest": "false"})
    assert cfg.preset == "small"
    assert cfg.model.backbone == "resnet18"  # from the small preset
    assert cfg.model.margin == pytest.approx(0.3)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.model.hardest is False
    # bare train key works when the method has no option of that name
    cfg = resolve_config("vsepp", "synthetic", overrides={"batch_size": "8"})
    assert cfg.train.batch_size == 8
    paper = resolve_config("vsepp", "rsicd")
    assert paper.preset == "paper" and paper.model.backbone == "resnet152"


def test_resolve_rejects_bad_values():
    with pytest.raises(UserError, match="unknown option 'marginn'"):
        resolve_config("vsepp", "synthetic", overrides={"marginn": "1"})
    with pytest.raises(UserError, match="unknown preset"):
        resolve_config("vsepp", "synthetic", preset="papr")
    with pytest.raises(UserError, match="train.optimizer"):
        resolve_config("vsepp", "synthetic", overrides={"train.optimizer": "lion"})
    with pytest.raises(UserError, match="unknown method 'vsep'.*did you mean 'vsepp'"):
        resolve_config("vsep", "synthetic")


def test_config_file_toml_and_cli_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nepochs = 3\nlr = 0.01\n[vsepp]\nmargin = 0.5\n')
    keys = load_config_file(f)
    cfg = resolve_config("vsepp", "synthetic", file_keys=keys, cli_train={"epochs": 5},
                         overrides=parse_set_options(["train.lr=0.02"]))
    assert cfg.train.epochs == 5 and cfg.train.lr == pytest.approx(0.02) and cfg.model.margin == 0.5
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(UserError, match="bad.toml: cannot parse config"):
        load_config_file(bad)
    with pytest.raises(UserError, match="bad --set"):
        parse_set_options(["novalue"])


def test_augment_and_sampling_are_refused_at_resolution():
    """One check each, at resolution (before any data is loaded), with one line naming the key."""
    assert parse_augment("crop, flip") == {"crop", "flip"} and parse_augment("none") == parse_augment("") == set()
    assert resolve_config("vsepp", "synthetic", overrides={"train.augment": "rotate"}).train.augments == {"rotate"}
    with pytest.raises(UserError, match=r"^bad train.augment 'crop,zoom': unknown zoom; use a comma list") as e:
        resolve_config("vsepp", "synthetic", overrides={"train.augment": "crop,zoom"})
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"^train.sampling 'random'"):
        resolve_config("vsepp", "synthetic", overrides={"train.sampling": "random"})


def test_run_config_round_trips_through_a_dict():
    cfg = resolve_config("amfmn", "synthetic", overrides={"train.lr": "0.003", "vsepp.margin": "0.3"})
    again = RunConfig.from_dict(to_dict(cfg))
    assert again == cfg and type(again.model) is type(cfg.model)
    t = fill(TrainConfig(), {"epochs": 2, "no_such_key": 1})  # unknown keys are ignored
    assert t.epochs == 2 and not hasattr(t, "no_such_key")



def test_method_declared_preset_ret2():
    """`--preset ret2`: taken from a method that declares it; a one-line error for one that does not."""
    cfg = resolve_config("hf_clip", "synthetic", preset="ret2")
    assert cfg.preset == "ret2" and cfg.train.lr == 5e-6 and cfg.train.weight_decay == 0.5
    assert cfg.train.batch_size == 600 and cfg.train.optimizer == "adamw" and cfg.train.warmup_steps == 100
    with pytest.raises(UserError, match=r"method 'vsepp' has no preset 'ret2' \(declared by: .*hf_clip") as e:
        resolve_config("vsepp", "synthetic", preset="ret2")
    assert "\n" not in str(e.value) and "small, paper" in str(e.value)
    with pytest.raises(UserError, match="unknown preset 'ret3'.*did you mean 'ret2'"):
        resolve_config("hf_clip", "synthetic", preset="ret3")


# ---- #21: help and messages that agree with the code ----------------------------------------------

@pytest.mark.parametrize(("key", "hint"), [("lrr", "train.lr"), ("batch_sise", "train.batch_size"),
                                           ("train.lrr", "train.lr"), ("embed_dimm", "embed_dim")])
def test_misspelled_key_suggests_the_full_key(key, hint):
    """A training key is suggested as it must be written (train.lr), never the bare field name."""
    with pytest.raises(UserError) as err:
        resolve_config("vsepp", "synthetic", overrides={key: "1"})
    assert f"unknown option '{key}'" in str(err.value) and f"(did you mean '{hint}'?)" in str(err.value)


def test_launcher_help_and_error_list_submitit_local(tmp_path, capsys):
    from helpers import run_cli

    code, out, _ = run_cli(["run", "--help"], capsys)
    assert code == 0 and "submitit-local" in out
    code, _, err = run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", "--epochs", "0",
                            "--out", str(tmp_path), "--launcher", "slrum"], capsys)
    assert code == 2 and err.strip() == ("error: unknown --launcher 'slrum'; choose from: local, slurm, "
                                         "submitit-local")


def test_methods_verbose_lists_training_keys_with_defaults(capsys):
    from helpers import run_cli

    from rsbench.config.overlay import all_keys

    code, out, _ = run_cli(["methods", "-v"], capsys)
    assert code == 0
    for k in all_keys(TrainConfig()):
        assert f"    train.{k} = {getattr(TrainConfig(), k)!r}" in out.splitlines()
    assert "    display_name = 'VSE++'" in out.splitlines()
