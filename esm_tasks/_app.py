"""The application: a Lilya app, the home of app-wide task settings."""

from __future__ import annotations

from lilya.apps import Lilya


class App(Lilya):
    """A `lilya.apps.Lilya` app. esm_tasks routes work in a plain Lilya app too."""
