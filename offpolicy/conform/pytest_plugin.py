"""The former ``pytest11`` entry point, for environments installed before it moved to the light
:mod:`offpolicy._pytest_plugin` (their metadata still names this module until reinstalled).
Delete once no editable install predates the move."""

from offpolicy._pytest_plugin import conform_check

__all__ = ["conform_check"]
