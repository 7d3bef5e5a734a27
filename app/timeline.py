"""The account page's timeline and panels, gathered from every feature without app
importing one.

A feature registers its contributions when its console blueprint is registered
(``bp.record_once``): item providers ``(session, account_id) -> list[Item]`` for the one
timeline, and panel providers ``(session, account_id) -> Panel | None`` for the sections
above it (links, offers and plans, with their actions). The account page asks them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy.orm import Session

EXTENSION = "paylink.timeline"


@dataclass(frozen=True)
class Item:
    """One line of the account's timeline."""

    at: datetime
    kind: str  # message, link, offer, payment, signature, plan, event, hold ...
    title: str
    detail: str = ""
    status: str | None = None  # a badge: delivered, failed, paid, revoked ...
    href: str | None = None  # a console page about it


@dataclass(frozen=True)
class Panel:
    """A section of the account page, rendered by ``template`` with ``context``."""

    order: int
    title: str
    template: str
    context: dict[str, Any] = field(default_factory=dict)


ItemProvider = Callable[[Session, int], list[Item]]
PanelProvider = Callable[[Session, int], Panel | None]


@dataclass
class Registry:
    items: dict[str, ItemProvider] = field(default_factory=dict)
    panels: dict[str, PanelProvider] = field(default_factory=dict)


def registry(app: Flask) -> Registry:
    return app.extensions.setdefault(EXTENSION, Registry())


def register_items(app: Flask, name: str, provider: ItemProvider) -> None:
    """Add a timeline source; registering the same name again replaces it."""
    registry(app).items[name] = provider


def register_panel(app: Flask, name: str, provider: PanelProvider) -> None:
    registry(app).panels[name] = provider


def items(app: Flask, session: Session, account_id: int) -> list[Item]:
    """Every source's items for the account, newest first (ties keep registration order)."""
    found: list[Item] = []
    for provider in registry(app).items.values():
        found.extend(provider(session, account_id))
    return sorted(found, key=lambda item: item.at, reverse=True)


def panels(app: Flask, session: Session, account_id: int) -> list[Panel]:
    found = [provider(session, account_id) for provider in registry(app).panels.values()]
    return sorted((p for p in found if p is not None), key=lambda p: p.order)
