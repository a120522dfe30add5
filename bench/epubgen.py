"""A generated illustrated book: a valid EPUB 3 of any size, mostly large incompressible images.

The plates are real PNG files (signature, IHDR, IDAT, IEND, with CRCs) of random RGB pixels, so
neither zstd nor deflate shrinks them: the worst case for memory, a book as big on the wire as on
flash. Deterministic for a seed.
"""

from __future__ import annotations

import random
import struct
import zipfile
import zlib
from pathlib import Path

PLATE_WIDTH = 1024  # pixels; each row is 1 filter byte + 3 bytes per pixel

CONTAINER = """<?xml version="1.0" encoding="UTF-8"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles>
    <rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>
  </rootfiles>
</container>
"""

OPF = """<?xml version="1.0" encoding="UTF-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="uid">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/">
    <dc:identifier id="uid">{identifier}</dc:identifier>
    <dc:title>{title}</dc:title>
    <dc:creator>shelfsync bench</dc:creator>
    <dc:language>en</dc:language>
  </metadata>
  <manifest>
    <item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>
{items}
  </manifest>
  <spine>
{spine}
  </spine>
</package>
"""

PAGE = """<?xml version="1.0" encoding="UTF-8"?>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Plate {n}</title></head>
<body><h1>Plate {n}</h1>
{text}
<p><img src="images/plate-{n:03d}.png" alt="Plate {n}"/></p>
</body></html>
"""

NAV = """<?xml version="1.0" encoding="UTF-8"?>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">
<head><title>Contents</title></head><body><nav epub:type="toc"><ol>
{entries}
</ol></nav></body></html>
"""


def png(width: int, height: int, rng: random.Random) -> bytes:
    """A valid RGB PNG of random pixels (deflate level 0: random bytes do not compress)."""
    rows = b"".join(b"\x00" + rng.randbytes(3 * width) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 0))
        + chunk(b"IEND", b"")
    )


def write_illustrated_epub(
    path: Path, total_bytes: int, plate_bytes: int = 2 * 1024 * 1024, seed: int = 0
) -> Path:
    """An EPUB of about `total_bytes`: one chapter per plate of about `plate_bytes`."""
    rng = random.Random(seed)
    plates = max(1, round(total_bytes / plate_bytes))
    height = max(1, plate_bytes // (3 * PLATE_WIDTH + 1))
    text = "\n".join(
        f"<p>Plate {{n}}, paragraph {i}: the text a reader meets before the picture.</p>"
        for i in range(40)
    )  # over 2 KiB, so plate 1 is the first chapter
    items, spine, entries = [], [], []
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        z.writestr("META-INF/container.xml", CONTAINER, compress_type=zipfile.ZIP_DEFLATED)
        for n in range(1, plates + 1):
            page = PAGE.format(n=n, text=text.replace("{n}", str(n)))
            z.writestr(f"OEBPS/plate-{n:03d}.xhtml", page, compress_type=zipfile.ZIP_DEFLATED)
            z.writestr(
                f"OEBPS/images/plate-{n:03d}.png",
                png(PLATE_WIDTH, height, rng),
                compress_type=zipfile.ZIP_STORED,
            )
            cover = ' properties="cover-image"' if n == 1 else ""
            items.append(
                f'    <item id="p{n}" href="plate-{n:03d}.xhtml"'
                ' media-type="application/xhtml+xml"/>\n'
                f'    <item id="i{n}" href="images/plate-{n:03d}.png"'
                f' media-type="image/png"{cover}/>'
            )
            spine.append(f'    <itemref idref="p{n}"/>')
            entries.append(f'<li><a href="plate-{n:03d}.xhtml">Plate {n}</a></li>')
        z.writestr("OEBPS/nav.xhtml", NAV.format(entries="\n".join(entries)))
        opf = OPF.format(
            identifier=f"urn:shelfsync:bench:illustrated:{total_bytes}:{seed}",
            title=f"An Illustrated Book of {total_bytes / 1e6:.0f} MB",
            items="\n".join(items),
            spine="\n".join(spine),
        )
        z.writestr("OEBPS/content.opf", opf, compress_type=zipfile.ZIP_DEFLATED)
    return path
