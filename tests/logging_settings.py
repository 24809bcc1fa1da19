"""Lilya settings that choose a logging configuration of their own, for test_app."""

from typing import Any

from lilya.conf.global_settings import Settings
from lilya.logging import StandardLoggingConfig


class ProjectSettings(Settings):
    @property
    def logging_config(self) -> Any:
        return StandardLoggingConfig(
            config={
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"project": {"format": "PROJECT %(name)s: %(message)s"}},
                "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "project"}},
                "root": {"level": "INFO", "handlers": ["out"]},
            }
        )
