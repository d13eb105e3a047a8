"""Generates the API reference pages at build time (mkdocs-gen-files): one page per module of the
project's packages, rendered from its docstrings by mkdocstrings, and the section's navigation
(``api/SUMMARY.md``, read by mkdocs-literate-nav). Nothing is written to the source tree."""
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("baichuan_audio_jax", "data_pipelines")

nav = mkdocs_gen_files.Nav()
for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__" or any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
            doc = Path(*parts, "index.md")
        else:
            doc = Path(*parts).with_suffix(".md")
        if not (path.parent / "__init__.py").exists():
            continue  # a script folder, not an importable package
        nav[parts] = doc.as_posix()
        with mkdocs_gen_files.open(Path("api", doc), "w") as f:
            f.write(f"# `{'.'.join(parts)}`\n\n::: {'.'.join(parts)}\n")
        mkdocs_gen_files.set_edit_path(Path("api", doc), path.relative_to(ROOT))

with mkdocs_gen_files.open("api/SUMMARY.md", "w") as f:
    f.write("* [Overview](index.md)\n")
    f.writelines(nav.build_literate_nav())
