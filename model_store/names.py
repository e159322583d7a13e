"""The one naming rule for models and aliases. No path is ever built from a request."""

from __future__ import annotations

import re

from model_store.errors import InvalidName

_MODEL = re.compile(r"[a-z0-9](?:[a-z0-9_-]|\.(?!\.)){0,62}")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def check_model_name(name: str) -> str:
    if not _MODEL.fullmatch(name):
        raise InvalidName(
            "model names are 1-63 characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit, without '..'"
        )
    return name


def check_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias):
        raise InvalidName("aliases are 1-32 characters of a-z, 0-9, '_' and '-', starting with a letter")
    return alias


def check_tenant_name(name: str) -> str:
    if not _TENANT.fullmatch(name):
        raise InvalidName(
            "tenant names are 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    return name


def is_tenant_name(name: str) -> bool:
    return _TENANT.fullmatch(name) is not None


def parse_version_ref(ref: str) -> int | str:
    """A version reference is a positive number or an alias name."""
    if _VERSION.fullmatch(ref):
        return int(ref)
    return check_alias(ref)
