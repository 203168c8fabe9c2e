"""Every golden file is read by some test: a file that no family claims fails here."""

from __future__ import annotations

import re


def test_every_golden_file_is_claimed(golden_registry):
    golden_dir, families, owned_elsewhere = golden_registry
    stems = sorted(p.stem for p in golden_dir.glob("*.npz"))
    assert stems, f"no golden files in {golden_dir}"
    problems = []
    for stem in stems:
        mine = [f for f, rx in families.items() if re.fullmatch(rx, stem)]
        theirs = [f for f, rx in owned_elsewhere.items() if re.fullmatch(rx, stem)]
        if len(mine) + len(theirs) != 1:
            problems.append(f"{stem}: claimed by {mine + theirs or 'nobody'}")
    assert not problems, "golden files need exactly one owner:\n" + "\n".join(problems)


def test_every_family_has_files(golden_registry):
    golden_dir, families, _ = golden_registry
    stems = [p.stem for p in golden_dir.glob("*.npz")]
    empty = [f for f, rx in families.items() if not any(re.fullmatch(rx, s) for s in stems)]
    assert not empty, f"families without golden files (a typo in a pattern?): {empty}"
