"""`Config`, the whole file: every section, and the checks that span sections.

Cross-field checks run after the schema (borgmatic's `apply_logical_validation()`): drop roots
are distinct, no xnatdrop folder sits inside a drop root, e-mail settings agree, the DICOM
receiver defaults to XNAT's host.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from xnatdrop.config.drops import DropSettings, PathSettings, RulesSettings, SettleSettings
from xnatdrop.config.notify import MailSettings, MetricsSettings, NotifySettings
from xnatdrop.config.push import PushSettings, ScheduleSettings
from xnatdrop.config.server import DicomSettings, XnatSettings


class Config(BaseModel):
    """The whole file. `source` records where it came from, for messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    xnat: XnatSettings = Field(default_factory=XnatSettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    drop: list[DropSettings] = Field(default_factory=list)
    settle: SettleSettings = Field(default_factory=SettleSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    push: PushSettings = Field(default_factory=PushSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    mail: MailSettings = Field(default_factory=MailSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @model_validator(mode="after")
    def _dicom_host(self) -> Config:
        """Without `dicom.host`, the receiver is on the XNAT server itself (stock XNAT)."""
        if self.dicom.host is not None:
            return self
        host = urllib.parse.urlsplit(self.xnat.url).hostname or "127.0.0.1"
        dicom = self.dicom.model_copy(update={"host": host})
        updated = self.model_copy(update={"dicom": dicom})
        # model_copy counts an updated field as given; `model_fields_set` must keep saying what
        # the file gave (doctor checks the receiver when a [dicom] section is there).
        object.__setattr__(dicom, "__pydantic_fields_set__", set(self.dicom.model_fields_set))
        object.__setattr__(updated, "__pydantic_fields_set__", set(self.model_fields_set))
        return updated

    @model_validator(mode="after")
    def _logical(self) -> Config:
        roots = [d.path.resolve() for d in self.drop]
        if len(set(roots)) != len(roots):
            raise ValueError("drop roots must be distinct")
        for name in ("quarantine", "done", "state"):
            folder = getattr(self.paths, name).resolve()
            for root in roots:
                if folder == root or root in folder.parents:
                    raise ValueError(f"paths.{name} must not be inside drop root {root}")
        return self

    @model_validator(mode="after")
    def _mail(self) -> Config:
        """Addresses need a server to send through, and a server needs a sender and someone to
        tell."""
        wanted = self.mail.to or any(d.notify_email for d in self.drop)
        if self.mail.host is None:
            if wanted:
                raise ValueError(
                    "e-mail addresses are set (mail.to or drop.notify_email) but mail.host is "
                    "not: set mail.host to your SMTP server"
                )
            return self
        if self.mail.sender is None:
            raise ValueError("mail.host is set: also set mail.sender, the From address")
        if not wanted:
            raise ValueError("mail.host is set: also set mail.to (the site's addresses)")
        return self

    def rules_for(self, drop: DropSettings | None) -> RulesSettings:
        """The rule settings for one drop: `[rules]`, overridden by the keys `[drop.rules]` sets.

        `actions` merge code by code; `sidecars` falls back to `push.sidecars`.
        """
        merged = self.rules.model_dump()
        if drop is not None and drop.rules is not None:
            for name in drop.rules.model_fields_set:
                value = getattr(drop.rules, name)
                merged[name] = {**merged["actions"], **value} if name == "actions" else value
        if merged["sidecars"] is None:
            merged["sidecars"] = list(self.push.sidecars)
        return RulesSettings.model_validate(merged)

    def control_files(self) -> frozenset[str]:
        """Names of xnatdrop's own files a technologist may put at the top of a subject folder
        (the subject metadata file, the settle marker): not DICOM, not uploaded, not findings."""
        names = {self.push.subject_file, self.settle.marker_name}
        return frozenset(name for name in names if name)

    def drop_for(self, folder: Path) -> DropSettings | None:
        """The drop root a subject folder sits in, if any."""
        parent = folder.resolve().parent
        return next((d for d in self.drop if d.path.resolve() == parent), None)
