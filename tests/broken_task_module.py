"""A module that fails on import, as a task module with a bad deploy would."""

raise RuntimeError("this module is broken")
