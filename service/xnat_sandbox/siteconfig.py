"""`/xapi/siteConfig`: reading and setting the site preferences the sandbox models.

XNAT's `SiteConfigApi` (XW `web/.../xapi/rest/settings/SiteConfigApi.java`):

* `GET /xapi/siteConfig/{property}`: the value (`restrictTo = Authorizer`: the preferences listed
  under `authenticated` in `META-INF/xnat/security/site-config-access.yaml`, which include every
  one modelled here, may be read by any user); `GET /xapi/siteConfig/values/{a,b}` a map;
  `GET /xapi/siteConfig` the map of all;
* `POST /xapi/siteConfig/{property}` with the value as a text/plain or JSON body, and
  `POST /xapi/siteConfig` with a JSON (or form) map: site admins only.

The modelled preferences are those of `prefs.DEFAULTS` (checksums, the site anonymisation script
and its switch, the site series import filter). Any other property is left to the rest of the
sandbox's `/xapi` (build info, uptime) or answered 404. Setting a property the sandbox does not
model is refused with 400 rather than stored and ignored.
"""

from __future__ import annotations

import json
import logging
import urllib.parse

from xnat_sandbox import anonymize, bodies, dicomedit, prefs, seriesfilter, tables
from xnat_sandbox.wire import Request

log = logging.getLogger(__name__)

JSON = "application/json"
BOOLEANS = ("checksums", "enableSitewideAnonymizationScript", "enableSitewideSeriesImportFilter")


def handle(request: Request) -> tables.Response | None:
    """Answer `/xapi/siteConfig[/values/…|/{property}]` for modelled preferences, else None."""
    parts = [p for p in request.path.split("/") if p]
    if parts[:2] != ["xapi", "siteConfig"]:
        return None
    rest = parts[2:]
    try:
        if not rest:
            return _root(request)
        if len(rest) == 2 and rest[0] == "values":
            if request.method != "GET":
                return None
            wanted = [name for name in rest[1].split(",") if name in prefs.DEFAULTS]
            return _map(request, wanted)
        if len(rest) == 1 and rest[0] in prefs.DEFAULTS:
            return _property(request, rest[0])
    except anonymize.XapiError as error:
        return error.response()
    return None


def _root(request: Request) -> tables.Response:
    if request.method == "GET":
        return _map(request, list(prefs.DEFAULTS))
    if request.method != "POST":
        raise anonymize.XapiError(405, f"Request method '{request.method}' not supported")
    _admin(request)
    media = bodies.media_type(request.headers.get("Content-Type"))
    raw = anonymize.read_body(request).decode("utf-8", "replace")
    if media == "application/json":
        try:
            values = json.loads(raw or "{}")
        except json.JSONDecodeError as error:
            raise anonymize.XapiError(400, f"The body is not JSON: {error}") from error
        if not isinstance(values, dict):
            raise anonymize.XapiError(400, "The body must be a JSON object of preferences.")
    elif media == "application/x-www-form-urlencoded":
        values = dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))
    else:
        raise anonymize.XapiError(415, f"Content type '{media}' not supported")
    unknown = sorted(set(values) - set(prefs.DEFAULTS))
    if unknown:
        raise anonymize.XapiError(
            400, f"The sandbox does not model the site preference(s) {', '.join(unknown)}."
        )
    checked = {name: _checked(name, value) for name, value in values.items()}
    _check_filter(request, checked)
    for name, value in checked.items():
        prefs.put(request.sandbox.store, name, value)
        log.info("site preference %s set", name)
    return tables.Response(200, JSON, b"")


def _property(request: Request, name: str) -> tables.Response:
    store = request.sandbox.store
    if request.method == "GET":
        return tables.Response(200, JSON, prefs.get(store, name).encode())
    if request.method != "POST":
        raise anonymize.XapiError(405, f"Request method '{request.method}' not supported")
    _admin(request)
    media = bodies.media_type(request.headers.get("Content-Type"))
    if media not in ("text/plain", "application/json"):
        raise anonymize.XapiError(415, f"Content type '{media}' not supported")
    value = anonymize.read_body(request).decode("utf-8", "replace")
    if media == "application/json" and value.strip().startswith('"'):
        try:
            value = str(json.loads(value))
        except json.JSONDecodeError as error:
            raise anonymize.XapiError(400, f"The body is not JSON: {error}") from error
    checked = {name: _checked(name, value)}
    _check_filter(request, checked)
    prefs.put(store, name, checked[name])
    log.info("site preference %s set", name)
    return tables.Response(200, JSON, b"")


def _map(request: Request, names: list[str]) -> tables.Response:
    if request.method != "GET":
        raise anonymize.XapiError(405, f"Request method '{request.method}' not supported")
    store = request.sandbox.store
    values: dict[str, object] = {}
    for name in names:
        text = prefs.get(store, name)
        values[name] = text.strip().lower() == "true" if name in BOOLEANS else text
    return tables.Response(200, JSON, json.dumps(values).encode())


def _admin(request: Request) -> None:
    if not request.user.admin:
        raise anonymize.XapiError(403)


def _check_filter(request: Request, values: dict[str, str]) -> None:
    """The site series import filter these values would make must be one the sandbox applies."""
    names = ("sitewideSeriesImportFilterMode", "sitewideSeriesImportFilter")
    if not any(name in values for name in names):
        return
    store = request.sandbox.store
    mode, text = (values.get(name, prefs.get(store, name)) for name in names)
    try:
        seriesfilter.parse(mode, text)
    except seriesfilter.FilterError as error:
        raise anonymize.XapiError(
            400, f"The sandbox cannot interpret this series import filter: {error}"
        ) from error


def _checked(name: str, value: object) -> str:
    """The value as stored; a boolean must be one, a script must be interpretable."""
    text = str(value).strip() if not isinstance(value, bool) else ("true" if value else "false")
    if name in BOOLEANS:
        if text.lower() not in ("true", "false"):
            raise anonymize.XapiError(400, f"{name} must be true or false, not {text!r}.")
        return text.lower()
    if name in ("sitewideSeriesImportFilterMode", "sitewideSeriesImportFilter"):
        return str(value)  # checked together by _check_filter once every value is known
    if name == "sitewideAnonymizationScript":
        try:
            anonymize.compiled(str(value))
        except dicomedit.ScriptError as error:
            raise anonymize.XapiError(
                400, f"The sandbox cannot interpret this anonymization script: {error}"
            ) from error
        return str(value)
    return str(value)
