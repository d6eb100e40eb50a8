"""The docs say only what exists: every command line in README.md, docs/*.md and the
READMEs of docs/measurements/<run>/ runs as written in a dry form, every repository path
and link they name exists, the run scripts (*.sh) of the measurements name only commands
and files that exist, the README stays a quickstart (<= 12 KB), and the generated
performance tables equal their measurement.

Dry forms: a `mobilegen`/`mobilegen-export` line is parsed by the command's own Click
parser (so its command path and every option it names must exist, and literal option
values must convert) and then run with `--help` appended through CliRunner; a recorded
experiment (`docs/measurements/<run>/*.py`) must exist and define every option the line
names (read from its source: it is history, not run here); `scripts/install.sh` is only
syntax-checked (it takes no arguments and installs). The tables between
`<!-- perf_tables: ARGS -->` markers are `mobilegen-export perf-tables ARGS`, run for real.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mobilegen.cli import export_cli, main_cli

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "docs" / "measurements"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(MEASUREMENTS.glob("*/README.md"))]
RUN_SCRIPTS = sorted(MEASUREMENTS.glob("*/*.sh"))
README_LIMIT = 12 * 1024

# What a command line starts with; the text after it is the command's arguments.
PREFIX = re.compile(
    r"^(?:(?P<cli>(?:\.venv/bin/)?(?:mobilegen-export|mobilegen))(?=\s|$)"
    r"|(?:\.venv/bin/)?python3? -m (?P<module>mobilegen(?:\.cli)?)(?=\s|$)"
    r"|(?:(?:\.venv/bin/)?python3? )?(?P<script>(?:scripts|docs/measurements/[\w.-]+)/\S+\.py)"
    r"|bash (?P<shell>scripts/\S+\.sh)"
    r"|torchrun\s.*?-m (?P<torchrun>mobilegen)(?=\s|$))"
)
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*|<[^>]+>)$")  # CKPT, PRUNED, R, <version>: the reader fills these in
ELLIPSIS = {"...", "…"}
# Repository paths named in inline code; each must exist.
REPO_PATH = re.compile(r"^(?:mobilegen|scripts|tests|android|docs|deploy|\.ci)/[\w./-]*$")


class DocError(AssertionError):
    pass


def code_and_prose(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, text) of code lines (fenced or indented, backslash continuations joined)
    and of prose paragraphs (lines joined, so that an inline code span may wrap)."""
    code, prose = [], []
    lines = text.splitlines()
    fence, paragraph, start, pending = False, [], 0, None
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        is_code = fence or (line.startswith("    ") and not paragraph)
        if pending is not None:  # a continuation of the previous code line
            pending = (pending[0], pending[1] + " " + line.strip())
            if not line.rstrip().endswith("\\"):
                code.append((pending[0], pending[1].replace("\\ ", " ")))
                pending = None
            continue
        if is_code:
            if line.rstrip().endswith("\\"):
                pending = (n, line.strip()[:-1].rstrip() + " \\")
            else:
                code.append((n, line.strip()))
            continue
        if line.strip():
            if not paragraph:
                start = n
            paragraph.append(line.strip())
        elif paragraph:
            prose.append((start, " ".join(paragraph)))
            paragraph = []
    if paragraph:
        prose.append((start, " ".join(paragraph)))
    return code, prose


def inline_spans(prose: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(n, m.group(1).strip()) for n, para in prose for m in re.finditer(r"`([^`]+)`", para)]


def doc_commands() -> list[tuple[str, str]]:
    """(where, command line) of every command the docs show."""
    found = []
    for doc in DOCS:
        code, prose = code_and_prose(doc.read_text())
        for n, line in code + inline_spans(prose):
            if PREFIX.match(line):
                found.append((f"{doc.relative_to(ROOT)}:{n}", line))
    return found


def doc_paths() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        _, prose = code_and_prose(doc.read_text())
        for n, span in inline_spans(prose):
            path = span.split()[0].split("::")[0].rstrip(".,;:")
            if REPO_PATH.match(path):
                found.append((f"{doc.relative_to(ROOT)}:{n}", path))
    return found


def doc_links() -> list[tuple[str, Path]]:
    found = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if not re.match(r"^(?:[a-z]+:|#)", target):
                    found.append((f"{doc.relative_to(ROOT)}:{n}", doc.parent / target.split("#")[0]))
    return found


def tokens(line: str) -> list[str]:
    try:
        return [t for t in shlex.split(line, comments=True) if t not in ELLIPSIS]
    except ValueError as exc:  # an unclosed quote
        raise DocError(f"{line!r}: {exc}") from exc


def option_names(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts + param.secondary_opts)
    return names


def check_values(command: click.Command, ctx: click.Context, opts: dict) -> None:
    """Literal option values must convert (a Choice typo, a word where a number goes);
    placeholders and paths (which need not exist here) are not checked."""
    for param in command.params:
        if not isinstance(param, click.Option) or param.name not in opts or param.is_flag:
            continue
        values = opts[param.name] if param.multiple else [opts[param.name]]
        if isinstance(param.type, (click.Path, click.File)):
            continue
        for value in values:
            if not isinstance(value, str) or PLACEHOLDER.match(value):
                continue
            try:
                param.type.convert(value, param, ctx)
            except click.BadParameter as exc:
                raise DocError(f"{param.opts[-1]} {value!r}: {exc.format_message()}") from exc


def check_click(cli: click.Group, args: list[str]) -> None:
    """The line's command path exists, every option it names is an option of that command
    (group options before the subcommand), literal values convert, and `--help` appended
    exits 0."""
    prog = "mobilegen-export" if cli is export_cli else "mobilegen"
    ctx = click.Context(cli, info_name=prog)
    rest = list(args)
    while rest and rest[0].startswith("-"):
        if rest[0] not in option_names(cli):
            raise DocError(f"{rest[0]} is not an option of {prog} (before the command)")
        rest.pop(0)
    if rest and PLACEHOLDER.match(rest[0]):  # `mobilegen <version>`: a value shown, not a command
        return
    if rest:
        name = rest.pop(0)
        command = cli.commands.get(name)
        if command is None:
            raise DocError(f"{name!r} is not a command of {prog}: {sorted(cli.commands)}")
        sub = click.Context(command, info_name=name, parent=ctx)
        try:
            opts, positional, _ = command.make_parser(sub).parse_args(list(rest))
        except click.UsageError as exc:
            raise DocError(f"{prog} {name}: {exc.format_message()}") from exc
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        if all(p.nargs >= 0 for p in arguments) and len(positional) > sum(p.nargs for p in arguments):
            raise DocError(f"{prog} {name} takes {sum(p.nargs for p in arguments)} argument(s), the line gives {positional}")
        check_values(command, sub, opts)
    result = CliRunner().invoke(cli, [*args, "--help"], prog_name=prog)
    if result.exit_code != 0:
        raise DocError(f"`{prog} {shlex.join(args)} --help` exited {result.exit_code}: {result.output.strip()}")


def defined_options(script: Path) -> set[str]:
    """The option strings a script's source defines (every quoted `-x`/`--name` literal)."""
    return set(re.findall(r"""["'](--?[a-zA-Z][\w-]*)["']""", script.read_text()))


def check_script(script: str, args: list[str]) -> None:
    if not (ROOT / script).is_file():
        raise DocError(f"{script} does not exist (scripts/ holds only install.sh; tools are commands of "
                       f"mobilegen/mobilegen-export, experiments live beside their measurement in docs/measurements/)")  # fmt: skip
    named = {a.split("=")[0] for a in args if re.match(r"^--?[a-zA-Z]", a)} - {"-h", "--help"}
    missing = sorted(named - defined_options(ROOT / script))
    if missing:
        raise DocError(f"{script} defines no option {', '.join(missing)}")


def check_line(line: str) -> None:
    m = PREFIX.match(line)
    if m is None:
        raise DocError(f"not a command line: {line!r}")
    args = tokens(line[m.end():])
    if m["cli"]:
        check_click(export_cli if m["cli"].endswith("mobilegen-export") else main_cli, args)
    elif m["module"] or m["torchrun"]:
        check_click(export_cli if m["module"] == "mobilegen.cli" else main_cli, args)
    elif m["script"]:
        check_script(m["script"], args)
    else:  # scripts/install.sh installs whatever it is given: a syntax check only, never a run
        script = ROOT / m["shell"]
        if not script.is_file():
            raise DocError(f"{m['shell']} does not exist")
        run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        if run.returncode != 0:
            raise DocError(f"bash -n {m['shell']}: {run.stderr.strip()}")


def command_params():
    for where, line in doc_commands():
        yield pytest.param(line, id=f"{where} {line[:60]}")


@pytest.mark.parametrize("line", list(command_params()))
def test_doc_command_runs_as_written(line):
    check_line(line)


def test_the_docs_show_commands_of_every_kind():
    lines = [line for _, line in doc_commands()]
    assert any(PREFIX.match(x)["cli"] for x in lines)
    assert any((PREFIX.match(x)["script"] or "").startswith("docs/measurements/") for x in lines)
    assert any(x.split()[:2] == ["mobilegen-export", "perf-tables"] for x in lines)
    assert any(PREFIX.match(x)["shell"] for x in lines)


@pytest.mark.parametrize(
    "line",
    [
        "mobilegen-export tflite CKPT --fp17",  # no such option
        "mobilegen-export convert CKPT",  # no such command
        "mobilegen-export --debug tflite --int8 half",  # not a choice
        "mobilegen-export verify artifacts/v2 --classes",  # an option without its value
        "mobilegen train --steps 10 -o runs/x",  # an option of another command (prune)
        "mobilegen-export tflite --debug",  # a group option after the command
        "python -m mobilegen sample CKPT --n many",  # not a number
        ".venv/bin/python scripts/no_such_script.py --help",
        "python scripts/perf_tables.py docs/measurements/compare-cpu/compare.json",  # now a command
        "mobilegen-export perf-tables docs/measurements/compare-cpu/compare.json --table variants",
        ".venv/bin/python docs/measurements/int8-cpu/int8_error.py /tmp/i8.failed --no-such-option",
        ".venv/bin/python docs/measurements/int8-cpu/no_such_experiment.py",
    ],
)
def test_a_doc_naming_what_does_not_exist_fails(line):
    with pytest.raises(DocError):
        check_line(line)


@pytest.mark.parametrize("where, path", doc_paths())
def test_doc_paths_exist(where, path):
    assert (ROOT / path).exists(), f"{where}: `{path}` does not exist in the repository"


@pytest.mark.parametrize("where, target", doc_links())
def test_doc_links_exist(where, target):
    assert target.exists(), f"{where}: the link to {target} leads nowhere"


def test_readme_is_a_quickstart():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move detail into docs/"


def perf_blocks() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        for m in re.finditer(r"^<!-- perf_tables: ([^\n]*?) -->\n(.*?)^<!-- /perf_tables -->$", doc.read_text(), re.S | re.M):
            found.append((str(doc.relative_to(ROOT)), m.group(1), m.group(2)))
    return found


def test_the_generated_tables_live_in_docs_performance():
    where = {doc for doc, _, _ in perf_blocks()}
    assert where == {"docs/performance.md"}, where


@pytest.mark.parametrize("doc, args, text", perf_blocks(), ids=lambda v: str(v)[:50])
def test_generated_tables_equal_their_measurement(doc, args, text, monkeypatch):
    monkeypatch.chdir(ROOT)  # ARGS name files relative to the repository
    res = CliRunner().invoke(export_cli, ["perf-tables", *shlex.split(args)], prog_name="mobilegen-export")
    assert res.exit_code == 0, res.output
    assert text == "\n" + res.stdout + "\n", (
        f"{doc}: the block `perf_tables: {args}` differs from `mobilegen-export perf-tables {args}`; "
        f"regenerate with `mobilegen-export perf-tables --update {doc}`"
    )


# What a run script names: a repository path, or a command of our tools (mg.py is `mobilegen`).
RUN_PATH = re.compile(r"(?<![\w./-])((?:scripts|docs/measurements|mobilegen|tests)/[\w./-]*[\w])")
RUN_COMMAND = re.compile(r"(?<![\w./-])(mobilegen-export|mobilegen|\.gpu/mg\.py|mg)[ \t]+([a-z][\w-]*)")


def run_script_names() -> list[tuple[str, str, str]]:
    """(where, kind, name) of every path and command a measurement's run script names."""
    found = []
    for script in RUN_SCRIPTS:
        for n, line in enumerate(script.read_text().splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            where = f"{script.relative_to(ROOT)}:{n}"
            found += [(where, "path", m.group(1)) for m in RUN_PATH.finditer(line)]
            found += [(where, m.group(1), m.group(2)) for m in RUN_COMMAND.finditer(line)]
    return found


@pytest.mark.parametrize("where, kind, name", run_script_names())
def test_run_scripts_name_what_exists(where, kind, name):
    if kind == "path":
        assert (ROOT / name).exists(), f"{where}: {name} does not exist in the repository"
    else:
        cli = export_cli if kind == "mobilegen-export" else main_cli
        assert name in cli.commands, f"{where}: {kind} {name} is not a command: {sorted(cli.commands)}"


def test_run_scripts_are_read():
    kinds = {kind for _, kind, _ in run_script_names()}
    assert {"path", "mobilegen"} <= kinds, kinds
