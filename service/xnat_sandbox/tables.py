"""How XNAT renders things on the wire: JSON tables, item JSON, XFTTable XML, error pages.

Everything here is pure (values in, bytes out) so the endpoint modules stay about behaviour.
The shapes follow docs/reference/xnat-rest.md §1: table cells are ALWAYS strings (XFTTable calls
`toString()` and turns null into ""), item JSON keeps typed `data_fields`, and every error on
`/data` is Restlet's HTML status page with the message in `<h3>`.
"""

from __future__ import annotations

import csv
import datetime
import html
import http
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

#: RFC 2616 anchors Restlet links to from its status page (`#sec10.x.y`).
_RFC_ANCHOR = {
    400: "10.4.1",
    401: "10.4.2",
    403: "10.4.4",
    404: "10.4.5",
    405: "10.4.6",
    406: "10.4.7",
    409: "10.4.10",
    417: "10.4.18",
    500: "10.5.1",
    502: "10.5.3",
    503: "10.5.4",
    504: "10.5.5",
}

URI_LIST = "text/uri-list"
TEXT = "text/plain;charset=UTF-8"
HTML = "text/html;charset=UTF-8"
JSON = "application/json;charset=UTF-8"
XML = "text/xml;charset=UTF-8"
CSV = "text/csv;charset=UTF-8"


@dataclass
class Response:
    """One HTTP answer. `file` streams a file from disk instead of `body` (downloads, zips)."""

    status: int = 200
    content_type: str = TEXT
    body: bytes = b""
    file: Path | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    reason: str | None = None
    delete_file_after: bool = False


class HttpError(Exception):
    """Raised anywhere below a handler to answer with XNAT's HTML status page."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def error_page(status: int, message: str) -> bytes:
    """Restlet's status page; clients scrape `<h3>(.*)</h3>` for the message (§1.6)."""
    anchor = _RFC_ANCHOR.get(status, "10")
    return (
        "<html>\n<head>\n   <title>Status page</title>\n</head>\n<body>\n"
        f"<h3>{html.escape(message, quote=False)}</h3>"
        "<p>You can get technical details "
        f'<a href="http://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html#sec{anchor}">here</a>.<br>\n'
        'Please continue your visit at our <a href="/">home page</a>.\n</p>\n</body>\n</html>\n'
    ).encode()


def error_response(error: HttpError) -> Response:
    return Response(
        error.status, HTML, error_page(error.status, error.message), headers=error.headers
    )


#: Tomcat 9's `http.NNN.desc` texts for the statuses the servlet filters send with `sendError`.
_TOMCAT_DESCRIPTIONS = {
    401: "The request has not been applied because it lacks valid authentication credentials "
    "for the target resource.",
    403: "The server understood the request but refuses to authorize it.",
}
TOMCAT_VERSION = "Apache Tomcat/9.0.82"


def tomcat_error(status: int, message: str) -> Response:
    """Tomcat's ErrorReportValve page: what a servlet filter's `response.sendError(status, msg)`
    answers (XNAT's Spring Security filters run before Restlet, so no Restlet status page).

    The message is in `<p><b>Message</b> …</p>`; the only `<h3>` holds the Tomcat version, so a
    client that scrapes Restlet's `<h3>` gets the server name, not the reason.
    """
    phrase = http.HTTPStatus(status).phrase
    page = (
        f'<!doctype html><html lang="en"><head><title>HTTP Status {status} – {phrase}</title>'
        '<style type="text/css">body {font-family:Tahoma,Arial,sans-serif;} h1, h2, h3, b '
        "{color:white;background-color:#525D76;} h1 {font-size:22px;} h2 {font-size:16px;} "
        "h3 {font-size:14px;} p {font-size:12px;} a {color:black;} .line {height:1px;"
        "background-color:#525D76;border:none;}</style></head><body>"
        f'<h1>HTTP Status {status} – {phrase}</h1><hr class="line" />'
        "<p><b>Type</b> Status Report</p>"
        f"<p><b>Message</b> {html.escape(message, quote=False)}</p>"
        f"<p><b>Description</b> {_TOMCAT_DESCRIPTIONS.get(status, phrase)}</p>"
        f'<hr class="line" /><h3>{TOMCAT_VERSION}</h3></body></html>'
    )
    return Response(status, "text/html;charset=utf-8", page.encode())


def text(body: str, status: int = 200) -> Response:
    """`SecureResource.returnString`: a plain-text body, no trailing newline added."""
    return Response(status, TEXT, body.encode())


def uri_list(uris: Sequence[str], fmt: str | None = None, status: int = 200) -> Response:
    """Import/prearchive success bodies: each URI followed by CRLF, `text/uri-list` (§3.5).

    `format=txt` with exactly one URI gives `text/plain` without the CRLF, as `Importer.represent`.
    """
    if fmt == "txt" and len(uris) == 1:
        return Response(status, TEXT, uris[0].encode())
    return Response(status, URI_LIST, "".join(f"{u}\r\n" for u in uris).encode())


def java_timestamp(epoch: float | None) -> str:
    """`java.sql.Timestamp.toString()` of a local time: `2024-01-01 12:00:00.123` or `….0`."""
    if epoch is None:
        return ""
    moment = datetime.datetime.fromtimestamp(epoch)
    millis = moment.microsecond // 1000
    fraction = f"{millis:03d}".rstrip("0") or "0"
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + fraction


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def table(
    rows: Iterable[Mapping[str, object]],
    columns: Sequence[str],
    fmt: str | None,
    *,
    title: str | None = None,
    total: bool = True,
    column_props: list[dict[str, str]] | None = None,
) -> Response:
    """An XFTTable in the requested format; the default (no `format`) is JSON.

    Real XNAT's default variant differs per resource (HTML or XML, §1.3, unverified); the sandbox
    answers JSON so that a client that forgets `format=json` still gets something parseable.
    """
    cells = [{c: _cell(row.get(c)) for c in columns} for row in rows]
    fmt = (fmt or "json").lower()
    if fmt == "json":
        result: dict[str, object] = {"Result": cells}
        if column_props:
            result["Columns"] = column_props
        if total:
            result["totalRecords"] = str(len(cells))
        if title:
            result["title"] = title
        return Response(200, JSON, json.dumps({"ResultSet": result}).encode())
    if fmt == "xml":
        out = io.StringIO()
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        out.write(f'<ResultSet xmlns="http://www.nrg.wustl.edu/xe" totalRecords="{len(cells)}"')
        out.write(f" title={quoteattr(title)}>" if title else ">")
        out.write("<results><columns>")
        out.writelines(f"<column>{escape(c)}</column>" for c in columns)
        out.write("</columns><rows>")
        for row in cells:
            out.write("<row>")
            out.writelines(f"<cell>{escape(row[c])}</cell>" for c in columns)
            out.write("</row>")
        out.write("</rows></results></ResultSet>\n")
        return Response(200, XML, out.getvalue().encode())
    if fmt in ("csv", "txt"):
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([row[c] for c in columns] for row in cells)
        return Response(200, CSV if fmt == "csv" else TEXT, out.getvalue().encode())
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(row[c])}</td>" for c in columns) + "</tr>"
            for row in cells
        )
        page = f"<html><body><table><tr>{head}</tr>{body}</table></body></html>\n"
        return Response(200, HTML, page.encode())
    raise HttpError(400, f"Unsupported format {fmt}")


def item(
    xsi_type: str,
    data_fields: Mapping[str, object],
    children: list[dict[str, object]] | None = None,
    meta: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """One node of `ItemJSONBuilder` output: meta, typed data_fields, children (§1.5)."""
    head: dict[str, object] = {"isHistory": False, "xsi:type": xsi_type}
    head.update(meta or {})
    fields = {k: v for k, v in data_fields.items() if v is not None and v != ""}
    return {"meta": head, "data_fields": fields, "children": children or []}


def items_response(node: dict[str, object]) -> Response:
    return Response(200, JSON, json.dumps({"items": [node]}).encode())


#: xsi:type → XML element name of the document root (XNAT's XSD element names).
_ELEMENT = {
    "xnat:projectData": "xnat:Project",
    "xnat:subjectData": "xnat:Subject",
    "xnat:mrSessionData": "xnat:MRSession",
    "xnat:ctSessionData": "xnat:CTSession",
    "xnat:petSessionData": "xnat:PETSession",
    "xnat:petmrSessionData": "xnat:PETMRSession",
    "xnat:otherDicomSessionData": "xnat:OtherDicomSession",
}


def item_xml(node: Mapping[str, object]) -> bytes:
    """A compact XNAT XML document for an item node (enough for pyxnat-style attribute reads).

    Scalar data_fields become attributes when XNAT writes them as attributes (ID, project, label)
    and child elements otherwise; children are nested the same way, one level per child field.
    """

    def render(node: Mapping[str, object], tag: str, root: bool) -> str:
        meta = node["meta"]
        assert isinstance(meta, dict)
        fields = dict(node["data_fields"])  # type: ignore[call-overload]
        xsi = str(meta.get("xsi:type", ""))
        attr_names = ("ID", "project", "label", "type", "UID", "URI", "format", "content")
        attrs = "".join(
            f" {k}={quoteattr(_cell(fields.pop(k)))}" for k in attr_names if k in fields
        )
        if root:
            attrs += (
                ' xmlns:xnat="http://nrg.wustl.edu/xnat"'
                ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
            )
        attrs += f' xsi:type="{xsi}"'
        inner = "".join(
            f"<xnat:{k}>{escape(_cell(v))}</xnat:{k}>"
            for k, v in fields.items()
            if not isinstance(v, dict | list)
        )
        for child in node.get("children", []):  # type: ignore[attr-defined]
            path = str(child["field"]).split("/")
            nodes = "".join(render(n, "xnat:" + path[-1], False) for n in child["items"])
            inner += f"<xnat:{path[0]}>{nodes}</xnat:{path[0]}>" if len(path) > 1 else nodes
        return f"<{tag}{attrs}>{inner}</{tag}>"

    xsi_type = str(node["meta"]["xsi:type"])  # type: ignore[index]
    tag = _ELEMENT.get(xsi_type, "xnat:" + xsi_type.split(":")[-1].removesuffix("Data"))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + render(node, tag, True) + "\n").encode()


def item_in_format(node: dict[str, object], fmt: str | None) -> Response:
    """Item GETs: `format=json` gives item JSON; the default and `xml` give the XML document."""
    if (fmt or "xml").lower() == "json":
        return items_response(node)
    if (fmt or "xml").lower() == "xml":
        return Response(200, XML, item_xml(node))
    raise HttpError(400, f"Unsupported format {fmt}")
