"""The README and the cluster configs say only what the settings declarations say.

The README's settings reference is generated from the declarations (``python tests/integration/test_settings_docs.py
--write`` rewrites it); every ``--flag`` the README names is a setting of a job, a flag of a benchmark in tests/perf, or
one of Ray's own. The cluster configs are checked against their job's declaration in test_cluster.py.
"""

import ast
import glob
import importlib
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO, "README.md")
BEGIN, END = "<!-- settings reference: generated from the declarations -->", "<!-- end of the settings reference -->"
RAYS_OWN = {"--address", "--no-wait", "--runtime-env", "--working-dir", "--head", "--num-cpus", "--port", "--block",
            "--entrypoint-num-gpus"}


def declarations() -> dict:
    sys.path.insert(0, REPO)
    from jobs.cli import STAGES

    return {stage: importlib.import_module(f"jobs.{stage}").Settings for stage in STAGES}


def reference() -> str:
    from showcase_core.settings import reference as table

    return "\n\n".join(table(stage, settings) for stage, settings in declarations().items())


def readme_section(text: str) -> str:
    assert BEGIN in text and END in text, f"README.md has no generated settings reference ({BEGIN})"
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def benchmark_flags() -> set[str]:
    flags = set()
    for path in glob.glob(os.path.join(REPO, "tests", "perf", "*.py")):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    return flags


def test_the_readme_reference_is_the_declarations():
    assert readme_section(open(README).read()) == reference(), \
        "the README's settings reference is stale: run python tests/integration/test_settings_docs.py --write"


def test_every_flag_the_readme_names_exists():
    settings = {"--" + name.replace("_", "-") for s in declarations().values() for name in s.model_fields}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", open(README).read()))
    unknown = named - settings - benchmark_flags() - RAYS_OWN - {"--config", "--help", "--key"}
    assert not unknown, f"the README names settings no job declares: {sorted(unknown)}"


def test_the_reference_lists_every_setting_with_its_help():
    text = reference()
    for stage, settings in declarations().items():
        for name, field in settings.model_fields.items():
            assert field.description, f"{stage} --{name} has no help line"
            assert f"| `--{name.replace('_', '-')}` | `{field.default!r}` |" in text


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    current = open(README).read()
    before, rest = current.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    with open(README, "w") as f:
        f.write(f"{before}{BEGIN}\n\n{reference()}\n\n{END}{after}")
    print(f"rewrote the settings reference in {README}")
