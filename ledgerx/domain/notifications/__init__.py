"""Notifications: mail to a project's billing contact or admins when something needs them.

- `kinds.py`: what can be notified (each kind's audience and the facts its templates need).
- `templates.py` and `templates/`: subject, plain text and HTML of each kind (stdlib
  `string.Template`, values HTML-escaped in the HTML part).
- `recipients.py`: who gets a kind (the billing email, else the owner and admins) and whether the
  project turned it off.
- `notify.py`: `notify(tx, project_id, kind, occurrence_key, facts)`, the one entry point; it
  writes to the mail outbox in the caller's transaction, once per occurrence and recipient.
- `billing_details.py`, `preferences.py`: the billing contact and the opt-outs (mutations).
- `policy.py`: who may read and change them.
"""
