"""One exception hierarchy; each class's docstring is its default message."""

from __future__ import annotations


class PingAnError(Exception):
    """pingan-broadcast failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class SettingsError(PingAnError):
    """The settings are invalid."""


class ConfigError(PingAnError):
    """A configuration file is invalid."""

    def __init__(self, path: object, problems: list[str] | str) -> None:
        self.path = str(path)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{self.path}: invalid configuration\n{lines}")


class InputFileError(PingAnError):
    """An input file cannot be read."""


class InvalidPhoneNumber(PingAnError):
    """Not a valid Chinese mobile number."""


class TemplateError(PingAnError):
    """A message template is invalid."""


class TemplateNotApproved(TemplateError):
    """A template's current content has not been approved for sending."""


class UnknownName(PingAnError):
    """No such name."""


class LockNotAcquired(PingAnError):
    """Another scheduler holds the lock for this database."""


class ProviderError(PingAnError):
    """The SMS provider failed."""
