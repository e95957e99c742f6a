"""TotalSegmentator's label table, read from the header of its multi-label NIfTI.

With ``--ml``, TotalSegmentator (``totalsegmentator/nifti_ext_header.py``, ``add_label_map_to_nifti``)
appends one NIfTI header extension (code 0, nibabel's ``ignore``) holding a Caret-style XML document::

    <CaretExtension> ... <VolumeInformation Index="0"> <LabelTable>
        <Label Key="5" Red="..." Green="..." Blue="..." Alpha="1"><![CDATA[liver]]></Label> ...
    </LabelTable> ... </VolumeInformation></CaretExtension>

The same layout under code 30 (``caret``, as Caret/Workbench writes it) is read too: the extension is found
by its content, not its code. The table is the file's own truth: class numbers differ between tasks and
TotalSegmentator versions (``total`` v1 has the portal vein at 9, v2 at 64, ``total_mr`` at 25).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from foscu.errors import InputError

TABLE_TAG = b"<CaretExtension"


def read_label_table(path: Path) -> dict[str, int] | None:
    """The label table {name (lower case): value} in a NIfTI's header extensions, or None if it has none.

    Reads the header only. Raises InputError naming the file for an unreadable header, more than one
    table, or a table that is not well-formed (see ``parse_label_table``).
    """
    import nibabel as nib

    try:
        img: Any = nib.load(str(path))
        extensions = list(img.header.extensions)
    except Exception as err:  # nibabel raises many types for truncated/corrupt files
        raise InputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None
    contents = [_raw(ext) for ext in extensions]
    tables = [c for c in contents if c is not None and TABLE_TAG in c]
    if not tables:
        return None
    if len(tables) > 1:
        raise InputError(path, f"{len(tables)} label tables in its header extensions; expected one")
    return parse_label_table(tables[0], path)


def _raw(extension: Any) -> bytes | None:
    """An extension's bytes, whatever its code (``content``: nibabel >= 5.2; before, ``get_content``)."""
    content = getattr(extension, "content", None)
    if content is None:
        content = extension.get_content()  # raw bytes for the plain Nifti1Extension of nibabel < 5.2
    return content if isinstance(content, bytes) else None


def parse_label_table(xml: bytes, path: Path) -> dict[str, int]:
    """``<LabelTable><Label Key="5">liver</Label>...`` -> {"liver": 5}; refuses anything malformed.

    A document type declaration is refused before parsing (TotalSegmentator writes none, and it is the
    route to entity expansion); names are stripped and lower-cased like every other source's names.
    """
    if b"<!DOCTYPE" in xml.upper() or b"<!ENTITY" in xml.upper():
        raise InputError(path, "label table in the header extension has a DOCTYPE/ENTITY declaration")
    try:
        root = ET.fromstring(xml.rstrip(b"\0 \n\t\r"))  # nibabel pads extensions to 16 bytes
    except ET.ParseError as err:
        raise InputError(
            path, f"label table in the header extension is not well-formed XML ({err})"
        ) from None
    labels = root.findall("./VolumeInformation/LabelTable/Label")
    if root.tag != "CaretExtension" or not labels:
        raise InputError(path, "header extension has no CaretExtension/VolumeInformation/LabelTable/Label")
    table: dict[str, int] = {}
    for label in labels:
        key, name = label.get("Key", ""), (label.text or "").strip().lower()
        if not key.strip().isdigit() or not name:
            raise InputError(
                path, f"label table entry Key={key!r} {name!r}: expected an integer Key and a name"
            )
        if name in table or int(key) in table.values():
            raise InputError(path, f"label table names {name!r} or value {key} twice")
        table[name] = int(key)
    return table


def check_agreement(table: dict[str, int], classes: dict[str, int], path: Path, classes_path: Path) -> None:
    """Refuse a ``--classes`` map that gives any of its values another name than the header's table.

    The table may hold more classes than the map (a map of the classes one cares about is fine).
    """
    names = {value: name for name, value in table.items()}
    for name, value in sorted(classes.items(), key=lambda item: item[1]):
        if names.get(value) != name:
            theirs = repr(names[value]) if value in names else "nothing"
            raise InputError(
                path,
                f"value {value} is {name!r} in --classes {classes_path} but {theirs} in the file's own label "
                "table (leave out --classes to use the table)",
            )
