"""The sdlearn command: clear errors, no stack traces, nothing half-written."""

import pytest

from sdlearn import cli, weights


def test_missing_full_weights_give_one_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDLEARN_CACHE", str(tmp_path))
    status = cli.main(["generate", "a horse", "--model", "sd-v1", "-o", str(tmp_path / "x.png")])
    error = capsys.readouterr().err
    assert status == 2
    assert "kcv_encoder.h5" in error and "huggingface.co" in error and str(tmp_path) in error
    assert "sdlearn download" in error and "Traceback" not in error
    assert not (tmp_path / "x.png").exists()


def test_download_offline_names_file_url_and_destination(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDLEARN_CACHE", str(tmp_path))
    unreachable = weights.WeightFile("kcv_encoder.h5", "http://127.0.0.1:9/kcv_encoder.h5",
                                     "0" * 64, 1000)
    monkeypatch.setitem(weights.PUBLISHED, "text_encoder", unreachable)
    assert cli.main(["download"]) == 2
    error = capsys.readouterr().err
    assert "http://127.0.0.1:9/kcv_encoder.h5" in error and str(tmp_path) in error
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("argv, words", [
    (["generate"], "the following arguments are required: prompt"),
    (["generate", "x", "--model", "sd-v9"], "invalid choice: 'sd-v9'"),
    (["generate", "x", "--steps", "many"], "invalid positive_int value: 'many'"),
    (["generate", "x", "--steps", "0"], "must be a positive integer, got 0"),
    (["generate", "x", "--guidance", "inf"], "must be a finite number >= 0, got inf"),
    (["generate", "x", "--seed", "-1"], "must be >= 0, got -1"),
    (["generate", "x", "-o", "out.jpg"], "must be a path ending in .png, got 'out.jpg'"),
    (["evaluate", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["train", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["train-everything"], "invalid choice"),
])
def test_bad_command_lines_are_usage_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_generate_help_gives_each_model_its_default_guidance(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    assert "(default: 7.5 sd-v1, 3 tiny)" in " ".join(capsys.readouterr().out.split())


def test_generate_checks_every_option_before_building_or_downloading(tmp_path, monkeypatch,
                                                                    capsys):
    from sdlearn import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the options were checked")

    monkeypatch.setattr(pipeline, "StableDiffusion", refuse)
    for options, words in ((["--size", "64", "64", "64"], "--size takes one side"),
                           (["--size", "60"], "image height 60 is not a multiple of 16"),
                           (["--model", "sd-v1", "--download", "--size", "500"],
                            "image height 500 is not a multiple of 64"),
                           (["--steps", "5000"], r"num_steps must be in [1, 1000], got 5000")):
        assert cli.main(["generate", "x", "-o", str(tmp_path / "x.png"), *options]) == 2
        assert words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_generate_one_size_is_a_square_png_anyone_can_read(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "x", "--steps", "2", "--seed", "0", "--size", "32",
                     "-o", "a/x.png"]) == 0
    assert Image.open(tmp_path / "a" / "x.png").size == (32, 32)
    assert (tmp_path / "a" / "x.png").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.png"]  # no .part left


def test_tiny_weights_missing_is_a_clear_error_not_random_weights(tmp_path, monkeypatch, capsys):
    from sdlearn import pipeline

    monkeypatch.setattr(pipeline, "__file__", str(tmp_path / "pipeline.py"))  # no data/tiny here
    assert cli.main(["generate", "x", "-o", str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err
    assert "manifest.json is missing" in error and "Traceback" not in error
    assert not (tmp_path / "x.png").exists()
