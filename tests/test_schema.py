"""The JSON outputs (`--json`, `"schema": 1`) against their tables in the README's
"Machine-readable outputs" (issue 20, item 5): every field emitted is documented, every field
documented as *always* is present, with the documented type."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np

from secmoe.cli import main
from secmoe.model.weights import load_heldout

from .test_serve_infer import SECMOE, free_port, infer, serve, wait_listening

README = Path(__file__).parent.parent / "README.md"
TYPES = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "str/null": lambda v: v is None or isinstance(v, str),
    "int/null": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def documented() -> dict[str, dict[str, tuple[str, bool]]]:
    """Per command (``infer``, ``generate``, ``demo``, ``bench``): field -> (type, always)
    from the README."""
    text = README.read_text().split("### Machine-readable outputs", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^`secmoe (infer|generate|demo|bench OP) --json`", text, flags=re.M)
    out: dict[str, dict[str, tuple[str, bool]]] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        rows = re.findall(r"^\| `(\w+)` \| ([\w/]+) \|[^|]*\| ([^|]+) \|", body, flags=re.M)
        fields = {f: (t, when.strip() == "always") for f, t, when in rows}
        out[name.split()[0]] = fields
    # demo: the intro lists the infer cost fields it shares (all "always")
    intro = parts[parts.index("demo") + 1].split("(", 1)[1].split(")", 1)[0]
    for f in re.findall(r"`(\w+)`", intro):
        out["demo"].setdefault(f, (out["infer"][f][0], True))
    out["demo"].setdefault("schema", ("int", True))
    return out


def check_schema(result: dict, command: str, open_ended: bool = False) -> None:
    """``result`` against the README's table of ``command`` (``open_ended``: ops may add
    their own fields)."""
    table = documented()[command]
    assert result["schema"] == 1
    missing = [f for f, (_, always) in table.items() if always and f not in result]
    assert not missing, f"documented as always but not emitted: {missing}"
    if not open_ended:
        extra = sorted(set(result) - set(table))
        assert not extra, f"emitted but not documented: {extra}"
    for field, value in result.items():
        if field in table:
            kind = table[field][0]
            assert TYPES[kind](value), f"{field}: {value!r} is not {kind}"


def test_the_readme_documents_every_command_with_types_it_knows():
    tables = documented()
    assert set(tables) == {"infer", "generate", "demo", "bench"}
    for table in tables.values():
        assert {t for t, _ in table.values()} <= set(TYPES)
    assert tables["infer"]["per_batch"] == ("list", True)
    assert tables["demo"]["setup_bytes"] == ("int", True)


def test_infer_json_follows_the_schema(tmp_path):
    port = free_port()
    server = serve(port, "--sessions", "1")
    np.save(tmp_path / "x.npy", load_heldout()[0][:2])
    try:
        wait_listening(port, server)
        out = infer(port, "--input", str(tmp_path / "x.npy"), "--strategy", "all", "--json")
        server.communicate(timeout=60)
    finally:
        server.kill()
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    check_schema(res, "infer")
    assert "text" not in res and len(res["prediction"]) == res["sequences"] == 2
    for batch in res["per_batch"]:
        fields = {"session", "sequences", "seconds", "bytes_c2s", "bytes_s2c", "rounds"}
        assert set(batch) == fields | {"messages"}
    assert set(res["per_session"][0]) == {
        "setup_seconds",
        "setup_bytes",
        "setup_rounds",
        "batches",
        "ended",
    }


def test_demo_json_follows_the_schema(capsys):
    assert main(["demo", "--samples", "1", "--strategy", "all", "--json"]) == 0
    check_schema(json.loads(capsys.readouterr().out.strip().splitlines()[-1]), "demo")


def test_bench_json_follows_the_schema():
    for args in (["channel", "--count", "2", "--pings", "4"], ["trunc", "--n", "100"]):
        out = subprocess.run(
            [*SECMOE, "bench", *args, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        res = json.loads(out.stdout.strip().splitlines()[-1])
        check_schema(res, "bench", open_ended=True)
    assert "bytes_per_item" in res  # trunc has n
