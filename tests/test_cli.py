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
    (["generate", "x", "--steps", "many"], "invalid int value: 'many'"),
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


def test_tiny_weights_missing_is_a_clear_error_not_random_weights(tmp_path, monkeypatch, capsys):
    from sdlearn import pipeline

    monkeypatch.setattr(pipeline, "__file__", str(tmp_path / "pipeline.py"))  # no data/tiny here
    assert cli.main(["generate", "x", "-o", str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err
    assert "manifest.json is missing" in error and "Traceback" not in error
    assert not (tmp_path / "x.png").exists()
