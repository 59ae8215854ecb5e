"""One patch of the series: a git format-patch mail with DEP-3 style fields."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError

FIELD_ORDER = ("Origin", "Forwarded", "Upstream-Plan", "Overlay", "Last-Update")
REQUIRED_FIELDS = ("Origin", "Forwarded", "Upstream-Plan", "Last-Update")
VENDOR_ONLY_FIELDS = ("Origin", "Forwarded", "Upstream-Plan", "Overlay", "Last-Update")

_FIELD_RE = re.compile(r"^([A-Z][A-Za-z-]*): ?(.*)$")
_PLAN_RE = re.compile(r"^(upstream|vendor-only|drop-when:\S.*)$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class MailError(UserError):
    """A file of the series that is not a git format-patch mail."""


@dataclass
class PatchMail:
    """A mail split into headers, commit message body and diff."""

    headers: str  # "From ...", "From:", "Date:", "Subject:" lines, no blank line
    body: str  # message body after the subject, fields included
    diff: str  # from the "---" separator to the end

    @classmethod
    def parse(cls, text: str) -> PatchMail:
        head, sep, rest = text.partition("\n\n")
        if not sep or "\nSubject: " not in "\n" + head:
            raise MailError("not a git format-patch mail (no Subject header)")
        marker = re.search(r"^---$", rest, flags=re.MULTILINE)
        if marker is None:
            raise MailError("mail has no '---' line before its diff")
        return cls(head, rest[: marker.start()], rest[marker.start() :])

    def render(self) -> str:
        return f"{self.headers}\n\n{self.body}{self.diff}"

    @property
    def subject(self) -> str:
        lines = self.headers.split("\n")
        for i, line in enumerate(lines):
            if line.startswith("Subject: "):
                value = line[len("Subject: ") :]
                for cont in lines[i + 1 :]:
                    if not cont.startswith((" ", "\t")):
                        break
                    value += cont
                return re.sub(r"^\[PATCH[^\]]*\]\s*", "", value)
        raise MailError("mail has no Subject header")

    @property
    def fields(self) -> dict[str, str]:
        return parse_fields(self.body)

    def with_field(self, name: str, value: str | None) -> PatchMail:
        return PatchMail(self.headers, set_field(self.body, name, value), self.diff)


def _field_block(message: str) -> tuple[list[str], list[str]]:
    """Split a message into (lines before the field block, field lines)."""
    lines = message.rstrip("\n").split("\n")
    start = len(lines)
    while start > 0 and _FIELD_RE.match(lines[start - 1]):
        start -= 1
    return lines[:start], lines[start:]


def parse_fields(message: str) -> dict[str, str]:
    _, block = _field_block(message)
    fields: dict[str, str] = {}
    for line in block:
        match = _FIELD_RE.match(line)
        if match:
            fields[match.group(1)] = match.group(2).strip()
    return fields


def set_field(message: str, name: str, value: str | None) -> str:
    """Set (or drop, with None) one field, keeping the canonical field order."""
    prose, block = _field_block(message)
    fields = {k: v for k, v in (_FIELD_RE.match(x).groups() for x in block)}  # type: ignore[union-attr]
    if value is None:
        fields.pop(name, None)
    else:
        fields[name] = value
    ordered = [k for k in FIELD_ORDER if k in fields]
    ordered += sorted(k for k in fields if k not in FIELD_ORDER)
    while prose and prose[-1] == "":
        prose.pop()
    out = prose + ([""] if prose else []) + [f"{k}: {fields[k]}" for k in ordered]
    return "\n".join(out) + "\n"


def strip_fields(message: str, names: tuple[str, ...] = VENDOR_ONLY_FIELDS) -> str:
    for name in names:
        message = set_field(message, name, None)
    return message


def overlay_paths(fields: dict[str, str]) -> list[str]:
    value = fields.get("Overlay", "")
    return [p.strip() for p in value.split(",") if p.strip()]


def lint_fields(fields: dict[str, str]) -> list[str]:
    problems = [f"missing field {name}:" for name in REQUIRED_FIELDS if name not in fields]
    plan = fields.get("Upstream-Plan")
    if plan is not None and not _PLAN_RE.match(plan):
        problems.append(
            f"Upstream-Plan '{plan}' is not upstream, vendor-only or drop-when:<condition>"
        )
    date = fields.get("Last-Update")
    if date is not None and not _DATE_RE.match(date):
        problems.append(f"Last-Update '{date}' is not YYYY-MM-DD")
    return problems


def slug(subject: str) -> str:
    """The patch file name for a subject, as format-patch names it, unnumbered."""
    text = re.sub(r"[^A-Za-z0-9._]+", "-", subject).strip("-.")
    text = re.sub(r"\.\.+", ".", text)
    return text[:64].rstrip("-.") + ".patch"
