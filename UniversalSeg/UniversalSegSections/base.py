"""What every panel section shares: its widget, the parameter node it works on, and the update hook."""

from __future__ import annotations


class Section:
    """One section of the panel. Subclasses load their ``.ui`` into ``self.uiWidget`` (on the scene) and ``self.ui``.

    ``parameters`` is the module's parameter node (``None`` while none is bound); ``update`` is called with it and
    the enabled states (``widget_glue.control_states``) whenever either changes.
    """

    uiWidget = None
    parameters = None

    def setParameter(self, name: str, value) -> None:
        """Write one parameter, only when it changes (a write fires the node's Modified event)."""
        if self.parameters is not None and getattr(self.parameters, name) != value:
            setattr(self.parameters, name, value)

    def update(self, parameters, states) -> None:
        """Show ``parameters`` and ``states``; most sections only have widgets bound to the parameter node."""

    def cleanup(self) -> None:
        """The module is closing: stop what runs."""
