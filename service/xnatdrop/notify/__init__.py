"""Telling people what xnatdrop does, without ever holding up what it does.

One module per channel, each usable on its own and each tested against a real peer:

- `outbox`: a background thread per channel, so that sending never blocks or fails a push;
- `mail`: SMTP (SSL or STARTTLS) with smtplib: one message, one connection check for doctor;
- `alerts`: the `Alerts` object (one per daemon): an e-mail at once per alert, rate-limited per
  (kind, key), a "resolved" note when it clears; the free-space check;
- `digest`: the daily digest (plain text and HTML) from plain records built from the ledger
  and the receipts in done/;
- `ping`: the dead-man's switch (a healthchecks-style GET after each cycle, /fail on errors);
- `sharestatus`: `_XNATDROP_STATUS.txt` in each drop root, written atomically, in plain words;
- `metrics`: Prometheus metrics on a private registry, served on a local port;
- `service`: `Notifier`, the one object the daemon holds: all of the above, built from the
  configuration, behind a handful of calls.

The rule of every module here is borgmatic's for its monitoring hooks: monitoring never fails
the job. A channel that fails logs one warning (host and reason, never a password, a ping URL or
patient data) and keeps quiet until it works again, which it says once too.
"""
