"""Series import filters, site and project, over real HTTP.

GradualDicomImporter drops an instance silently when the site filter or the project's filter
excludes its series (l.171-193). The site filter is off by default and set through the site
preferences (`/xapi/siteConfig`); a project's lives at `/data/projects/{P}/config/
seriesImportFilter/config` (ConfigResource), JSON contents `{"mode", "list"}`. Data: the GE
localizer series 1 and 5 of `ge_signa_premier_table` (both "3-Plane Localizer"); series 5 copies
are given another SeriesDescription in tmp_path where a test needs two kinds of series.
"""

from __future__ import annotations

import json
import re

import pytest

CONFIG = "/data/projects/SPN01/config/seriesImportFilter/config"


def h3(response) -> str:
    return re.search(r"<h3>(.*)</h3>", response.text, re.S).group(1)


def mixed(dicom):
    """2 localizer files (series 1) and 2 files of series 5 renamed to a T1."""
    localizer = dicom.files("1", count=2)
    t1 = [dicom.rewrite(p, SeriesDescription="t1_mprage_sag") for p in dicom.files("5", count=2)]
    return localizer + t1


def scans_of(svc, response) -> list[str]:
    assert response.status_code == 200, response.text
    return [s["ID"] for s in svc.json_rows(response.text.strip() + "/scans")]


def put_filter(client, mode: str, patterns: str, **params: str):
    body = json.dumps({"mode": mode, "enabled": True, "list": patterns})
    return client.put(
        CONFIG,
        params={"inbody": "true", **params},
        data=body,
        headers={"Content-Type": "text/plain"},
    )


def test_the_site_filter_is_off_by_default(svc, reader, dicom):
    assert reader.get("/xapi/siteConfig/enableSitewideSeriesImportFilter").json() is False
    assert reader.get("/xapi/siteConfig/sitewideSeriesImportFilterMode").text == "blacklist"
    response = svc.import_zip(dicom.zip(mixed(dicom)), project="SPN01", dest="/prearchive")
    assert scans_of(svc, response) == ["1", "5"]


def test_a_site_blacklist_drops_the_localizers(svc, dicom):
    settings = {
        "enableSitewideSeriesImportFilter": True,
        "sitewideSeriesImportFilterMode": "blacklist",
        "sitewideSeriesImportFilter": "# scouts\nlocalizer\n",
    }
    assert svc.post("/xapi/siteConfig", json=settings).status_code == 200
    response = svc.import_zip(
        dicom.zip(mixed(dicom)), project="SPN01", session="F01", dest="/prearchive"
    )
    assert scans_of(svc, response) == ["5"]
    assert len(svc.json_rows(response.text.strip() + "/scans/5/resources/DICOM/files")) == 2


def test_a_project_whitelist_keeps_only_matching_series(sandbox, svc, dicom, caplog):
    created = put_filter(svc, "whitelist", "MPRAGE", status="enabled")
    assert created.status_code == 201
    [row] = svc.json_rows(CONFIG)
    assert (row["tool"], row["path"], row["project"], row["status"]) == (
        "seriesImportFilter",
        "config",
        "SPN01",
        "enabled",
    )
    assert json.loads(row["contents"])["list"] == "MPRAGE"
    caplog.set_level("INFO", logger="xnat_sandbox")
    response = svc.import_zip(
        dicom.zip(mixed(dicom)), project="SPN01", session="F02", dest="/prearchive"
    )
    assert scans_of(svc, response) == ["5"]
    assert "2 file(s) of series 1 dropped by the project series import filter" in caplog.text
    other = svc.import_zip(dicom.zip(mixed(dicom)), project="SPN02", dest="/prearchive")
    assert scans_of(svc, other) == ["1", "5"]  # SPN02 has no filter


def test_every_file_filtered_is_200_with_nothing_imported(svc, dicom):
    assert put_filter(svc, "blacklist", "localizer").status_code == 201
    response = svc.import_zip(
        dicom.zip(dicom.files("1", count=2)), project="SPN01", dest="/prearchive"
    )
    assert (response.status_code, response.text) == (200, "")
    assert svc.json_rows("/data/prearchive/projects/SPN01") == []
    [source] = dicom.files("5", count=1)
    gradual = svc.post(
        "/data/services/import",
        params={"PROJECT_ID": "SPN01", "EXPT_LABEL": "G1"},
        data=source.read_bytes(),
        headers={"Content-Type": "application/dicom"},
    )
    assert (gradual.status_code, gradual.text) == (200, "")


def test_a_disabled_filter_filters_nothing(svc, dicom):
    assert put_filter(svc, "blacklist", "localizer").status_code == 201
    assert svc.put(CONFIG, params={"status": "disabled"}).status_code == 200
    assert svc.json_rows(CONFIG)[0]["status"] == "disabled"
    response = svc.import_zip(dicom.zip(dicom.files("1", count=1)), project="SPN01")
    assert scans_of(svc, response) == ["1"]
    assert svc.get(CONFIG, params={"contents": "true"}).status_code == 404


def test_a_filter_on_an_element_after_study_comments(svc, dicom):
    """(0040,0242) PerformedStationName lies past (0032,4000), where the importer normally stops
    reading; a filter on it makes the importer read that far, as GradualDicomImporter does."""
    assert put_filter(svc, "blacklist", "[PerformedStationName]\nGEHC3TMR").status_code == 201
    response = svc.import_zip(dicom.zip(mixed(dicom)), project="SPN01")
    assert (response.status_code, response.text) == (200, "")
    assert put_filter(svc, "blacklist", "[(0040,0242)]\n!EXISTS").status_code == 200
    response = svc.import_zip(dicom.zip(mixed(dicom)), project="SPN01", session="F03")
    assert scans_of(svc, response) == ["1", "5"]


def test_config_errors_and_permissions(svc, reader):
    missing = reader.get(CONFIG)
    assert missing.status_code == 404
    assert h3(missing) == (
        "Couldn't find config for user reader and project SPN01 on tool [seriesImportFilter] "
        "path [config]"
    )
    assert reader.get(CONFIG, params={"accept-not-found": "true"}).status_code == 204
    assert put_filter(reader, "blacklist", "localizer").status_code == 403
    empty = svc.put(CONFIG)
    assert empty.status_code == 400 and h3(empty).startswith("You must specify either")
    assert svc.put(CONFIG, params={"status": "maybe"}).status_code == 400
    modality_map = svc.put(
        CONFIG,
        params={"inbody": "true"},
        data=json.dumps({"mode": "modalityMap", "PT": "true"}),
        headers={"Content-Type": "text/plain"},
    )
    assert modality_map.status_code == 400 and "modalityMap" in h3(modality_map)
    bad_regex = put_filter(svc, "blacklist", "ok\n(unclosed")
    assert bad_regex.status_code == 400 and "line 2" in h3(bad_regex)
    assert svc.get(CONFIG).status_code == 404  # nothing was stored
    refused = svc.post(
        "/xapi/siteConfig/sitewideSeriesImportFilter",
        data="[NoSuchKeyword]\nx",
        headers={"Content-Type": "text/plain"},
    )
    assert refused.status_code == 400


@pytest.mark.parametrize(
    ("mode", "patterns", "kept"),
    [
        ("blacklist", "localizer", ["5"]),
        ("whitelist", "localizer", ["1"]),
        ("blacklist", "[ImageType]\nDERIVED", ["1", "5"]),
        ("whitelist", "[SeriesNumber]\n^5$", ["5"]),
        ("blacklist", "[SeriesNumber]\nEXISTS", []),
    ],
)
def test_filter_modes(svc, dicom, mode, patterns, kept):
    assert put_filter(svc, mode, patterns).status_code == 201
    response = svc.import_zip(dicom.zip(mixed(dicom)), project="SPN01", dest="/prearchive")
    assert response.status_code == 200
    if not kept:
        assert response.text == ""  # nothing imported, nothing to name
        return
    assert [s["ID"] for s in svc.json_rows(response.text.strip() + "/scans")] == kept
