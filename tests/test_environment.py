"""The set-up files agree with each other: pyproject.toml is the one list of dependencies."""

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    expected = set(project["dependencies"]) | {d for name in ("course", "book", "test")
                                               for d in extras[name]}
    listed = set(re.findall(r'^    - "(.+)"$', (ROOT / "environment.yml").read_text(), re.M))
    assert listed == expected, (f"only in environment.yml: {sorted(listed - expected)}; "
                                f"only in pyproject.toml: {sorted(expected - listed)}")


def test_pinned_where_drift_broke_tutorials():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    everything = project["dependencies"] + project["optional-dependencies"]["test"]
    for package in ("keras==", "tensorflow-cpu==", "keras-cv=="):
        assert any(d.startswith(package) for d in everything), package


def test_ci_runs_the_test_command_the_readme_gives():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/course.sh" in readme
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_model_code_does_not_import_tensorflow():
    files = ["layers.py", "text_encoder.py", "unet.py", "vae.py", "sampler.py", "pipeline.py",
             "tokenizer.py", "weights.py", "config.py"]
    for name in files:
        source = (ROOT / "sdlearn" / name).read_text()
        assert not re.search(r"^\s*(import|from) tensorflow", source, re.M), name


def test_cli_is_installed():
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "sdlearn"), "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "generate" in out.stdout and "download" in out.stdout


def test_package_exports_are_lazy_and_complete():
    code = ("import sys, sdlearn; assert 'keras' not in sys.modules; "
            "from sdlearn import StableDiffusion, Tokenizer, TextEncoder, UNet, Decoder, "
            "ImageEncoder; print('ok')")
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
