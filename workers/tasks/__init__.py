"""Task modules: importing this package registers every task the workers run."""

from workers.tasks import demo

__all__ = ["demo"]
