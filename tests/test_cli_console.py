"""What the command line prints: usage errors as one line naming the option (exit 1), -v/-q before or after the
command name, quiet meaning quiet (no TensorFlow, absl or library chatter), exit codes 0 or 1 under a file-size limit."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lczmap.cli import cli

LCZMAP = [sys.executable, "-c", "from lczmap.cli import main; main()"]  # the installed `lczmap` program, as a user runs it


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[str, click.Command]:
    """Every command and subcommand ("models import") by its words after `lczmap`."""
    found: dict[str, click.Command] = {}
    for name, command in sorted(group.commands.items()):
        found[" ".join((*prefix, name))] = command
        if isinstance(command, click.Group):
            found.update(command_paths(command, (*prefix, name)))
    return found


COMMANDS = command_paths(cli)
REQUIRED = [(name, param) for name, command in COMMANDS.items() for param in command.params if param.required]


def hint(param: click.Parameter) -> str:
    return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name


def one_error_line(result) -> str:
    """The single `Error:` line of a refused command (exit 1, no usage block, no traceback)."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output and "Usage:" not in result.output
    return lines[0]


def test_every_command_has_a_required_parameter_to_check():
    assert {name for name, _ in REQUIRED} >= {"batch", "demo-data", "predict", "stage", "train"}


def test_a_closed_pipe_is_no_error():
    """`lczmap classes | head -1`: the reader leaves early; no `Error:` line, no BrokenPipeError traceback."""
    process = subprocess.Popen([*LCZMAP, "classes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # gone before the table is written
    stderr = process.stderr.read()
    assert process.wait(timeout=60) in (0, 1) and stderr == "", stderr


@pytest.mark.parametrize("name, param", REQUIRED, ids=[f"{n}-{p.name}" for n, p in REQUIRED])
def test_a_missing_required_parameter_is_named_with_click_s_message(name, param, tmp_path):
    """Every command, each required option or argument left out (the others given): `Error: --out: missing option ...`."""
    command = COMMANDS[name]
    args = name.split()
    for other in command.params:
        if other.required and other is not param:
            args += ["x"] if isinstance(other, click.Argument) else [other.opts[0], str(tmp_path / "x")]
    line = one_error_line(CliRunner().invoke(cli, args))
    kind = "option" if isinstance(param, click.Option) else "argument"
    assert line == f"Error: {hint(param)}: missing {kind} (see 'lczmap {name} --help')", line


@pytest.mark.parametrize("name", list(COMMANDS))
def test_unknown_options_and_extra_arguments_are_one_line_exit_1(name):
    line = one_error_line(CliRunner().invoke(cli, [*name.split(), "--no-such-option"]))
    assert line.startswith(f"Error: --no-such-option: no such option of lczmap {name}"), line


@pytest.mark.parametrize("args, start", [
    (["--bogus"], "Error: --bogus: no such option of lczmap"),
    (["nosuch"], "Error: lczmap: No such command 'nosuch'."),
    (["demo-data", "a", "b"], "Error: lczmap demo-data: Got unexpected extra argument (b)"),
    (["demo-data", "d", "--size-km", "big"], "Error: --size-km: 'big' is not a valid float."),
    (["predict", "--out", "x.tif", "--resolution", "15"], "Error: --resolution 15: must be a whole multiple of the 10 m"),
    (["evaluate", "--bootstrap", "0"], "Error: --bootstrap: 0 is not in the range x>=1."),
])
def test_usage_errors_are_one_line_exit_1(args, start):
    assert one_error_line(CliRunner().invoke(cli, args)).startswith(start)


def test_plain_lczmap_prints_its_help():
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 0 and "Commands:" in result.output


@pytest.mark.parametrize("name", list(COMMANDS))
def test_verbosity_options_are_accepted_after_every_command(name):
    for args in ([*name.split(), "-q", "--help"], [*name.split(), "-v", "--verbose", "--quiet", "--help"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and "-q, --quiet" in result.output, result.output


def test_quiet_after_the_command_name_quiets_it(tmp_path):
    """`lczmap demo-data DIR -q`: the same as `lczmap -q demo-data DIR`; counts before and after add up."""
    runs = {
        "plain": ["demo-data", str(tmp_path / "a"), "--size-km", "1"],
        "after": ["demo-data", str(tmp_path / "b"), "--size-km", "1", "-q"],
        "both": ["-v", "demo-data", str(tmp_path / "c"), "-q", "--size-km", "1", "-q"],
    }
    stderr = {}
    for key, args in runs.items():
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        stderr[key] = result.stderr
    assert "INFO lczmap.demo: demo city" in stderr["plain"]
    assert stderr["after"] == "" and stderr["both"] == ""


def test_quiet_predict_prints_nothing_but_lczmap_warnings(demo_city, tmp_path):
    """The real program, as a newcomer runs it (no TF_CPP_MIN_LOG_LEVEL of their own): no TensorFlow, absl or
    oneDNN start-up lines, no library warnings; only lczmap's own warnings may show."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    result = subprocess.run([*LCZMAP, "-q", "predict", "--config", str(demo_city / "city.yaml"), "--out",
                             str(tmp_path / "lcz.tif")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "lcz.tif").exists()
    stray = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("WARNING lczmap")]
    assert stray == [], result.stderr


@pytest.mark.parametrize("verbosity, shown", [(-1, False), (0, False), (1, False), (2, True)])
def test_library_warnings_show_only_at_vv(verbosity, shown):
    """A library's Python warning (pyogrio's RuntimeWarning when reading a .pbf, numpy's) and a library's log record."""
    code = (f"from lczmap import console; console.configure({verbosity}); import logging, warnings; "
            "warnings.warn_explicit('layer has no features', RuntimeWarning, 'pyogrio/raw.py', 1, module='pyogrio.raw'); "
            "logging.getLogger('distributed.worker').warning('Compute Failed'); "
            "logging.getLogger('lczmap.stage').warning('ours')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "WARNING lczmap.stage: ours" in result.stderr
    assert ("layer has no features" in result.stderr) == shown and ("Compute Failed" in result.stderr) == shown


def test_train_under_a_file_size_limit_exits_1_with_one_line(tmp_path):
    """The weights cannot be written past `ulimit -f`: the error names the file, and the process exits 1 (no
    segmentation fault while h5py and TensorFlow are torn down, no destructor tracebacks)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import STACK_BANDS, write_h5

    data = write_h5(tmp_path / "toy.h5", 16, 48, 13, 1, bands=STACK_BANDS)
    out = tmp_path / "model"
    result = subprocess.run(
        [*LCZMAP, "-q", "train", "--data", str(data), "--val", "0.25", "--epochs", "1", "--batch-size", "8", "--eager",
         "--out", str(out)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)))
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"Error: {out}") and lines[0].endswith(": file too large (a file-size limit was reached)")
