"""The only code that speaks HTTP to XNAT.

Every call names its endpoint and the section of ../shared/reference/xnat-rest.md ("the
reference") or the XNAT source file it follows; "stock" refers to
../shared/reference/xnat-stock.md, which lists what a fresh XNAT install does.

- `connection`: the `requests` session, login and logout, one request with its timeout;
- `answers`: what XNAT's answers mean (tables, items), errors sorted into transient,
  permanent (`XnatAnswer`) and authentication;
- `site`: access and roles, site preferences, anonymisation scripts, series import filters;
- `prearchive`: the import service and the prearchive (list, read, rebuild, delete);
- `archive`: archiving with explicit labels; reading back sessions, files, DICOM catalogs;
- `resources`: session resources (the sidecar folders) and the subject's fields;
- `parallel`: a few reads at once, each thread with its own client on one XNAT session;
- `client`: `XnatClient`, the one handle that puts them together.

Callers import the package and use the names below: `xnat.XnatClient`, `xnat.XnatAnswer`, ….
"""

from xnatdrop.xnat.answers import (
    ARCHIVE_BUSY,
    ARCHIVE_CONFLICTS,
    CHANGE_PASSWORD_PAGE,
    FIXED_WORDING,
    RemoteFile,
    XnatAnswer,
    archive_cause,
    as_bool,
    fixed_wording,
    public_url,
)
from xnatdrop.xnat.archive import DICOM_RESOURCES, ArchivedSession, CatalogEntry
from xnatdrop.xnat.client import XnatClient
from xnatdrop.xnat.connection import USER_AGENT
from xnatdrop.xnat.parallel import READERS, fan_out
from xnatdrop.xnat.prearchive import PrearchiveEntry
from xnatdrop.xnat.site import ALL_DATA_ADMIN, WRITER_ROLES, Anonymization, SeriesFilter

__all__ = [
    "ALL_DATA_ADMIN",
    "ARCHIVE_BUSY",
    "ARCHIVE_CONFLICTS",
    "CHANGE_PASSWORD_PAGE",
    "DICOM_RESOURCES",
    "FIXED_WORDING",
    "READERS",
    "USER_AGENT",
    "WRITER_ROLES",
    "Anonymization",
    "ArchivedSession",
    "CatalogEntry",
    "PrearchiveEntry",
    "RemoteFile",
    "SeriesFilter",
    "XnatAnswer",
    "XnatClient",
    "archive_cause",
    "as_bool",
    "fan_out",
    "fixed_wording",
    "public_url",
]
