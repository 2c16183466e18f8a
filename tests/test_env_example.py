"""Every variable config/settings.py reads from the environment is listed in .env.example."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A variable in .env.example, set or commented out: "NAME=value" or "# NAME=value".
_LISTED = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)


def _is_os_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os")


def _first_str(call: ast.Call) -> str | None:
    arg = call.args[0] if call.args else None
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def settings_env_names(source: str) -> set[str]:
    """Names read by ``env(...)`` or any ``env.<cast>(...)`` (django-environ), ``os.environ[...]``,
    ``os.environ.get(...)`` and ``os.getenv(...)``."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            reads = (
                (isinstance(f, ast.Name) and f.id == "env")
                or (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                    and f.value.id == "env")
                or (isinstance(f, ast.Attribute) and f.attr in ("get", "setdefault")
                    and _is_os_environ(f.value))
                or (isinstance(f, ast.Attribute) and f.attr == "getenv"
                    and isinstance(f.value, ast.Name) and f.value.id == "os")
            )
            if reads and (name := _first_str(node)):
                names.add(name)
        elif (isinstance(node, ast.Subscript) and _is_os_environ(node.value)
              and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
            names.add(node.slice.value)
    return names


def missing_from_example(settings_source: str, example: str) -> set[str]:
    return settings_env_names(settings_source) - set(_LISTED.findall(example))


def test_every_setting_read_from_the_environment_is_in_env_example():
    # given
    settings_source = (ROOT / "config" / "settings.py").read_text()
    example = (ROOT / ".env.example").read_text()

    # when
    missing = missing_from_example(settings_source, example)

    # then
    assert not missing, f".env.example does not list {sorted(missing)} (read in config/settings.py)"


def test_the_settings_parser_finds_every_kind_of_read():
    source = (
        "import os\n"
        "A = env('A', default=1)\n"
        "B = env.bool('B', default=False)\n"
        "C = env.db('C')\n"
        "D = os.environ['D']\n"
        "E = os.environ.get('E')\n"
        "F = os.getenv('F', '')\n"
        "G = environ.Env.read_env(BASE_DIR / '.env')\n"
    )

    assert settings_env_names(source) == {"A", "B", "C", "D", "E", "F"}


def test_a_setting_left_out_of_the_example_is_reported():
    source = "X = env.int('DB_POOL_SIZE', default=8)\nY = env('LOG_LEVEL', default='INFO')\n"

    assert missing_from_example(source, "# LOG_LEVEL=INFO\n") == {"DB_POOL_SIZE"}
    assert missing_from_example(source, "# LOG_LEVEL=INFO\nDB_POOL_SIZE=4\n") == set()


def test_the_real_settings_are_parsed():
    # Guards the first test against passing on a parser that finds nothing.
    names = settings_env_names((ROOT / "config" / "settings.py").read_text())

    assert {"DATABASE_URL", "SECRET_KEY", "DB_POOL", "RATING_FAST_PATH"} <= names
