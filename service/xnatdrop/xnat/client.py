"""`XnatClient`: one logged-in connection to one XNAT, with every endpoint xnatdrop uses.

The class is put together from one part per concern, each in its own module and each a
`Connection` subclass (the layout of docker-py's `APIClient`, built from `ContainerApiMixin`,
`ImageApiMixin`, …): `site` (access, roles, preferences, anonymisation, filters), `prearchive`
(import and the prearchive), `archive` (archiving and reading back) and `resources` (sidecar
folders, subject fields). `connection` holds the session, login and the one `request` they all
go through; `answers` says what each answer means. So callers keep one handle with a lifetime,
`with XnatClient(settings, password) as client: client.import_zip(...)`, while each module stays
one concern.
"""

from __future__ import annotations

from xnatdrop.xnat.archive import Archive
from xnatdrop.xnat.prearchive import Prearchive
from xnatdrop.xnat.resources import Resources
from xnatdrop.xnat.site import SiteSettings


class XnatClient(SiteSettings, Prearchive, Archive, Resources):
    """A logged-in connection to one XNAT server; use it as a context manager."""

    def __enter__(self) -> XnatClient:
        return self
