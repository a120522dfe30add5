"""XML from outside (an EPUB's OPF, NCX and nav, an OPDS feed) parsed without entity tricks.

ElementTree expands the entities a document declares (a billion-laughs bomb) and lets expat see
external entity references. This parser drives expat itself and refuses, before anything is
expanded or resolved, any entity declaration (general or parameter, internal or external) and
any reference to an external entity. A DOCTYPE naming an external DTD is accepted, as NCX and
XHTML files carry one, but the DTD is never loaded, so an entity it would define (`&nbsp;`) is an
undefined entity, as it is for ElementTree.
"""

from __future__ import annotations

from xml.etree import ElementTree as ET
from xml.parsers import expat


class UnsafeXml(ValueError):
    """The document uses a DTD feature that is refused; the message says which."""


class MalformedXml(ValueError):
    """The document is not well-formed XML; the message is expat's, with line and column."""


def _clark(name: str) -> str:
    """expat's 'uri}local' (namespace_separator '}') as ElementTree's '{uri}local'."""
    return "{" + name if "}" in name else name


def parse_xml(data: bytes) -> ET.Element:
    """The document's root element; raise UnsafeXml or MalformedXml."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def start(tag: str, attributes: dict[str, str]) -> None:
        builder.start(_clark(tag), {_clark(k): v for k, v in attributes.items()})

    def end(tag: str) -> None:
        builder.end(_clark(tag))

    def entity_declaration(name: str, is_parameter: int, *_: object) -> None:
        kind = "parameter entity" if is_parameter else "entity"
        raise UnsafeXml(f"it declares the XML {kind} {name!r}")

    def external_reference(
        context: str, base: str | None, system_id: str | None, public_id: str | None
    ) -> int:
        raise UnsafeXml(f"it references the external entity {system_id!r}")

    def skipped(name: str, is_parameter: int) -> None:
        raise MalformedXml(f"undefined entity &{name};")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.EntityDeclHandler = entity_declaration
    parser.UnparsedEntityDeclHandler = lambda name, *_: entity_declaration(name, 0)
    parser.ExternalEntityRefHandler = external_reference
    parser.SkippedEntityHandler = skipped
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise MalformedXml(str(e)) from e
    return builder.close()
