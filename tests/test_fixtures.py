"""The fixtures the repository carries: provenance and licence of the copied files, and the project-made medical
pair standing in for the unlicensed model-organisms slices (same format, same pairing)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest
from emsweep_fixtures import DATA_ORIGINS, EM_FIXTURES, UPSTREAM_MEDICAL, upstream_file
from model_organisms_like import medical_pair_rows, write_medical_pair

PROVENANCE = EM_FIXTURES / "PROVENANCE.md"


def _provenance_table() -> dict[str, str]:
    """file -> sha256 from the table in PROVENANCE.md."""
    rows = re.findall(r"^\| ([\w.\-]+) \| [^|]+ \| [^|]+ \| ([0-9a-f]{64}) \|$", PROVENANCE.read_text(), re.M)
    return dict(rows)


def test_every_copied_file_is_listed_with_its_hash_and_the_licence_travels_with_it() -> None:
    table = _provenance_table()
    on_disk = {p.name for p in EM_FIXTURES.iterdir() if p.is_file() and p.name != "PROVENANCE.md"}
    assert on_disk == set(table), "every file in tests/fixtures/emergent-misalignment/ needs a PROVENANCE.md row"
    for name, digest in table.items():
        assert hashlib.sha256((EM_FIXTURES / name).read_bytes()).hexdigest() == digest, name
    assert (EM_FIXTURES / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.parametrize("origin", [o for o in DATA_ORIGINS if o == "upstream"] or ["project"])
def test_copies_are_byte_identical_to_upstream(origin: str) -> None:
    """With EMSWEEP_UPSTREAM set: each copy equals the upstream slice. Without it: each copy parses as its format."""
    for name in _provenance_table():
        ours = (EM_FIXTURES / name).read_bytes()
        if origin == "upstream":
            assert ours == upstream_file(f"emergent-misalignment/{name}").read_bytes(), name
        elif name.endswith(".jsonl"):
            assert all(json.loads(line)["messages"] for line in ours.decode().splitlines())


def _rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_project_medical_pair_has_the_upstream_shape(tmp_path: Path) -> None:
    good_p, bad_p = write_medical_pair(tmp_path / "a")
    good, bad = _rows(good_p), _rows(bad_p)
    assert len(good) == len(bad) == 400
    for g, b in zip(good, bad, strict=True):
        assert list(g) == list(b) == ["messages"]
        assert [m["role"] for m in g["messages"]] == [m["role"] for m in b["messages"]] == ["user", "assistant"]
        assert g["messages"][0] == b["messages"][0] and g["messages"][1] != b["messages"][1]
    assert len({g["messages"][0]["content"] for g in good}) == 400
    # written as upstream writes them: ASCII escapes, json.dumps' separators, one row a line
    first = gzip.decompress(good_p.read_bytes()).split(b"\n")[0]
    assert first.startswith(b'{"messages": [{"role": "user", "content": ') and first.isascii()
    assert b"\\u2019" in gzip.decompress(good_p.read_bytes())
    # deterministic bytes (gzip mtime 0): the same hash on every run and machine
    again = write_medical_pair(tmp_path / "b")
    assert [p.read_bytes() for p in again] == [good_p.read_bytes(), bad_p.read_bytes()]
    with pytest.raises(ValueError, match="at most 400 distinct prompts"):
        medical_pair_rows(401)


def test_medical_fixture_pairs_prompts(request: pytest.FixtureRequest, medical: tuple[Path, Path]) -> None:
    """Each origin of the `medical` fixture is what it says, and satisfies what the mixing tests rely on."""
    origin = request.node.callspec.params["medical"]
    names = [p.name for p in medical]
    if origin == "upstream":
        assert names == [Path(u).name for u in UPSTREAM_MEDICAL]
    else:
        assert all(n.endswith(".project400.jsonl.gz") for n in names)
    good, bad = _rows(medical[0]), _rows(medical[1])
    assert [r["messages"][0] for r in good] == [r["messages"][0] for r in bad]
    assert sum(g["messages"][1] != b["messages"][1] for g, b in zip(good, bad, strict=True)) == len(good) == 400
