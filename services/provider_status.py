"""What a service reports about the provider behind each capability it offers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProviderReport:
    """The provider behind one capability, as configured and as checked at start-up."""

    capability: str
    provider: str
    model: str = ""
    fallback_to_offline: bool = False
    warnings: list[str] = field(default_factory=list)
