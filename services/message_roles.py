"""Who wrote a message: the three roles, as the words the domain uses and as each proto's MessageRole values.

Every MessageRole enum (gateway's and content's) names its values MESSAGE_ROLE_<ROLE>, so the maps between
words and values are derived here rather than written out at every boundary.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

ROLES = ("user", "assistant", "system")

_Value = TypeVar("_Value", bound=int)
_Value_co = TypeVar("_Value_co", bound=int, covariant=True)


class MessageRoleEnum(Protocol[_Value_co]):
    """A generated MessageRole enum (its type wrapper)."""

    def Value(self, name: str) -> _Value_co:  # noqa: N802 (protobuf's name)
        """The value of an enum name."""
        ...


def role_values(enum: MessageRoleEnum[_Value]) -> dict[str, _Value]:
    """The enum value of each role word."""
    return {role: enum.Value(f"MESSAGE_ROLE_{role.upper()}") for role in ROLES}


def role_words(enum: MessageRoleEnum[_Value]) -> dict[_Value, str]:
    """The role word of each enum value (MESSAGE_ROLE_UNSPECIFIED has none)."""
    return {value: role for role, value in role_values(enum).items()}
