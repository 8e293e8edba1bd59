"""The YAML folder of shared personas: the shipped examples, then the user's folder (which overrides by
name), read and written one file per persona. Kept apart from PersonaStore, which decides versions and
caching, so the file format has one owner (`anima personas import` writes through it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from personas.models import Persona, PersonaError, validate_persona

EXAMPLES = Path(__file__).parent / "examples"


def persona_files(folder: Path | None, *, examples: bool) -> list[Path]:
    """Shipped examples first, then the folder's files: a folder file overrides an example by name."""
    folders = ([EXAMPLES] if examples else []) + ([folder] if folder else [])
    files: list[Path] = []
    for where in folders:
        if where.is_dir():
            files += sorted(p for p in where.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return files


def folder_signature(files: list[Path]) -> tuple[Any, ...]:
    """Path, modification time and size of each file: a change in any of them means a reload."""
    out = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


def read_persona_file(path: Path) -> Persona:
    """One YAML file as a persona; its stem must be the persona's name (or the name is taken from it)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PersonaError(f"{path.name}: not readable YAML: {exc}", field=None) from exc
    if not isinstance(data, dict):
        raise PersonaError(f"{path.name}: expected a mapping of persona fields", field=None)
    data.setdefault("name", path.stem)
    persona = validate_persona(data, where=path.name)
    if persona.name != path.stem:
        raise PersonaError(f"{path.name}: name: '{persona.name}' must match the file name", field="name")
    return persona


def write_persona_file(persona: Persona, folder: Path) -> Path:
    path = folder / f"{persona.name}.yaml"
    data = persona.model_dump(exclude_defaults=True) | {"name": persona.name}
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100), encoding="utf-8")
    return path
